//! The gateway's optional public TLS: a certificate and key for its host names (from the
//! operator's CA, not the internal one), reloaded when the files change, offered with ALPN
//! `h2` and `http/1.1`, TLS 1.3 with X25519MLKEM768 preferred. No client certificates.

use std::path::PathBuf;
use std::sync::{Arc, RwLock, Weak};
use std::time::{Duration, SystemTime};

use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use crate::{PostQuantum, TlsError};

struct Inner {
    cert: PathBuf,
    key: PathBuf,
    current: RwLock<(Arc<CertifiedKey>, Vec<Option<SystemTime>>)>,
    provider: Arc<rustls::crypto::CryptoProvider>,
    interval: Duration,
}

/// The edge certificate, kept current from its files.
#[derive(Clone)]
pub struct EdgeCert {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for EdgeCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EdgeCert")
            .field("cert", &self.inner.cert)
            .finish_non_exhaustive()
    }
}

fn modified(path: &PathBuf) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

fn load(
    cert: &PathBuf,
    key: &PathBuf,
    provider: &rustls::crypto::CryptoProvider,
) -> Result<Arc<CertifiedKey>, TlsError> {
    let bad = |path: &PathBuf, reason: &str| TlsError::File {
        file: path.display().to_string(),
        reason: reason.to_owned(),
    };
    let read = |path: &PathBuf| {
        std::fs::read(path).map_err(|e| TlsError::File {
            file: path.display().to_string(),
            reason: e.to_string(),
        })
    };
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&read(cert)?)
        .collect::<Result<_, _>>()
        .map_err(|_| bad(cert, "not a PEM certificate chain"))?;
    if chain.is_empty() {
        return Err(bad(cert, "no certificate in it"));
    }
    let private = PrivateKeyDer::from_pem_slice(&read(key)?)
        .map_err(|_| bad(key, "not a PEM private key"))?;
    let signing = provider
        .key_provider
        .load_private_key(private)
        .map_err(|_| bad(key, "an unsupported private key"))?;
    let certified = CertifiedKey::new(chain, signing);
    certified
        .keys_match()
        .map_err(|_| bad(key, "it does not match the certificate"))?;
    Ok(Arc::new(certified))
}

impl EdgeCert {
    /// Loads `cert` and `key` and checks them every `interval` for changes.
    pub fn load(
        cert: PathBuf,
        key: PathBuf,
        post_quantum: PostQuantum,
        interval: Duration,
    ) -> Result<EdgeCert, TlsError> {
        let provider = Arc::new(crate::material::provider(post_quantum));
        let certified = load(&cert, &key, &provider)?;
        let stamp = vec![modified(&cert), modified(&key)];
        let edge = EdgeCert {
            inner: Arc::new(Inner {
                cert,
                key,
                current: RwLock::new((certified, stamp)),
                provider,
                interval,
            }),
        };
        tokio::spawn(watch(Arc::downgrade(&edge.inner)));
        Ok(edge)
    }

    /// A TLS 1.3 server config offering `h2` and `http/1.1`.
    pub fn server_config(&self) -> Arc<ServerConfig> {
        let mut config = ServerConfig::builder_with_provider(self.inner.provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap_or_else(|_| unreachable!("aws-lc-rs supports TLS 1.3"))
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(self.clone()));
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Arc::new(config)
    }
}

impl ResolvesServerCert for EdgeCert {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(
            self.inner
                .current
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .0
                .clone(),
        )
    }
}

async fn watch(inner: Weak<Inner>) {
    loop {
        let Some(interval) = inner.upgrade().map(|i| i.interval) else {
            return;
        };
        tokio::time::sleep(interval).await;
        let Some(inner) = inner.upgrade() else { return };
        let now = vec![modified(&inner.cert), modified(&inner.key)];
        if inner.current.read().unwrap_or_else(|p| p.into_inner()).1 == now {
            continue;
        }
        let mut current = inner.current.write().unwrap_or_else(|p| p.into_inner());
        match load(&inner.cert, &inner.key, &inner.provider) {
            Ok(certified) => {
                tracing::info!(cert = %inner.cert.display(), "edge certificate reloaded");
                *current = (certified, now);
            }
            Err(e) => {
                tracing::warn!(error = %e, "edge certificate not reloaded: keeping the previous one");
                current.1 = now;
            }
        }
    }
}

//! A process's TLS material — its certified key, its identity, the trust bundle — loaded
//! from PEM files and reloaded when they change: rotated certificates (and a rotated CA,
//! given as a bundle of the old and the new) are used for new handshakes without a
//! restart; connections already open keep theirs. A file that does not load leaves the
//! previous material in place (logged and counted).

use std::path::Path;
use std::sync::{Arc, RwLock, Weak};
use std::time::SystemTime;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use rustls::RootCertStore;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, TrustAnchor, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::ClientCertVerifier;
use rustls::sign::CertifiedKey;

use crate::{Identity, PostQuantum, TlsError, TlsSettings};

/// What one load of the files gave.
pub struct Loaded {
    pub key: Arc<CertifiedKey>,
    pub identity: Identity,
    /// Trust anchors of the bundle (for verifying servers).
    pub anchors: Vec<TrustAnchor<'static>>,
    /// The client-certificate verifier over the bundle (for verifying clients).
    pub client_verifier: Arc<dyn ClientCertVerifier>,
    /// When the certificate expires (seconds since the epoch).
    pub not_after: i64,
    /// The files' modification times and sizes when loaded.
    stamp: Vec<Option<(SystemTime, u64)>>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct HandshakeLabels {
    pub role: &'static str,
    /// The peer's service (closed set: Borough's services, or `unknown`).
    pub peer: String,
    /// The negotiated key exchange group.
    pub group: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct FailureLabels {
    pub role: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReloadLabels {
    outcome: &'static str,
}

/// TLS metrics of a process (register once).
#[derive(Clone, Default)]
pub struct TlsMetrics {
    pub(crate) handshakes: Family<HandshakeLabels, Counter>,
    pub(crate) failures: Family<FailureLabels, Counter>,
    reloads: Family<ReloadLabels, Counter>,
    expiry: Gauge,
}

impl TlsMetrics {
    pub fn register(metrics: &borough_telemetry::Metrics) -> Self {
        let m = TlsMetrics::default();
        metrics.register(
            "tls_handshakes",
            "Completed TLS handshakes by role (server, client), peer service and key exchange group",
            m.handshakes.clone(),
        );
        metrics.register(
            "tls_handshake_failures",
            "Failed TLS handshakes by role (refused certificates, plaintext, timeouts)",
            m.failures.clone(),
        );
        metrics.register(
            "tls_reloads",
            "Certificate and trust bundle reloads by outcome (loaded, failed)",
            m.reloads.clone(),
        );
        metrics.register(
            "tls_certificate_expiry_timestamp_seconds",
            "When this process's certificate expires",
            m.expiry.clone(),
        );
        m
    }

    /// Counts a completed handshake: `role` (`server`, `client`, `edge`), the peer's
    /// service (`client` for the public at the edge), the group agreed.
    pub fn handshake(&self, role: &'static str, peer: String, group: Option<&'static str>) {
        self.handshakes
            .get_or_create(&HandshakeLabels {
                role,
                peer,
                group: group.unwrap_or("none"),
            })
            .inc();
    }

    /// Counts a failed handshake.
    pub fn failure(&self, role: &'static str) {
        self.failures.get_or_create(&FailureLabels { role }).inc();
    }

    /// A peer's service as a label: one of Borough's, or `unknown` (bounded).
    pub(crate) fn peer_label(identity: Option<&Identity>) -> String {
        match identity.map(|i| i.service.as_str()) {
            Some(s @ ("gateway" | "user" | "query" | "config" | "dev" | "bench")) => s.to_owned(),
            _ => "unknown".to_owned(),
        }
    }
}

struct Inner {
    settings: TlsSettings,
    service: String,
    provider: Arc<CryptoProvider>,
    current: RwLock<Arc<Loaded>>,
    metrics: TlsMetrics,
}

/// A process's TLS material, kept current from its files. Cheap to clone.
#[derive(Clone)]
pub struct Materials {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Materials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Materials")
            .field("identity", &self.current().identity)
            .finish_non_exhaustive()
    }
}

/// The crypto provider: aws-lc-rs, TLS 1.3 only in the configs built on it, its key
/// exchange groups as `post_quantum` says (X25519MLKEM768 first; alone when required).
pub fn provider(post_quantum: PostQuantum) -> CryptoProvider {
    let mut provider = rustls::crypto::aws_lc_rs::default_provider();
    if post_quantum == PostQuantum::Required {
        provider.kx_groups = vec![rustls::crypto::aws_lc_rs::kx_group::X25519MLKEM768];
    }
    provider
}

fn stamp(path: &Path) -> Option<(SystemTime, u64)> {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

impl Materials {
    /// Loads `service`'s material as `settings` say and keeps it current (a background
    /// task, ending with the last clone). Fails naming the file that is missing or wrong.
    pub fn load(
        settings: &TlsSettings,
        service: &str,
        metrics: TlsMetrics,
    ) -> Result<Materials, TlsError> {
        let provider = Arc::new(provider(settings.post_quantum));
        let loaded = load(settings, &provider)?;
        if loaded.identity.trust_domain != settings.trust_domain
            || loaded.identity.service != service
        {
            return Err(TlsError::WrongIdentity {
                file: settings.cert.display().to_string(),
                found: loaded.identity.uri(),
                expected: Identity::new(&settings.trust_domain, service).uri(),
            });
        }
        metrics.expiry.set(loaded.not_after);
        let materials = Materials {
            inner: Arc::new(Inner {
                settings: settings.clone(),
                service: service.to_owned(),
                provider,
                current: RwLock::new(Arc::new(loaded)),
                metrics,
            }),
        };
        tokio::spawn(watch(Arc::downgrade(&materials.inner)));
        tracing::info!(identity = %materials.current().identity, "TLS material loaded");
        Ok(materials)
    }

    /// The material in use now.
    pub fn current(&self) -> Arc<Loaded> {
        self.inner
            .current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn settings(&self) -> &TlsSettings {
        &self.inner.settings
    }

    pub fn provider(&self) -> &Arc<CryptoProvider> {
        &self.inner.provider
    }

    pub fn metrics(&self) -> &TlsMetrics {
        &self.inner.metrics
    }

    /// The identity this process's certificate names.
    pub fn identity(&self) -> Identity {
        self.current().identity.clone()
    }
}

/// Reloads the files when they change, until the material is dropped.
async fn watch(inner: Weak<Inner>) {
    loop {
        let Some(interval) = inner.upgrade().map(|i| i.settings.reload_interval) else {
            return;
        };
        tokio::time::sleep(interval).await;
        let Some(inner) = inner.upgrade() else { return };
        let settings = &inner.settings;
        let now = [&settings.ca, &settings.cert, &settings.key].map(|p| stamp(p));
        let current = inner
            .current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        if current.stamp.as_slice() == now.as_slice() {
            continue;
        }
        match load(settings, &inner.provider) {
            Ok(loaded) if loaded.identity.service == inner.service => {
                tracing::info!(
                    identity = %loaded.identity,
                    not_after = loaded.not_after,
                    "TLS material reloaded"
                );
                inner.metrics.expiry.set(loaded.not_after);
                inner
                    .metrics
                    .reloads
                    .get_or_create(&ReloadLabels { outcome: "loaded" })
                    .inc();
                *inner.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(loaded);
            }
            outcome => {
                let error = match outcome {
                    Err(e) => e.to_string(),
                    Ok(loaded) => format!("it names {}, not this service", loaded.identity),
                };
                tracing::warn!(error = %error, "TLS material not reloaded: keeping the previous one");
                inner
                    .metrics
                    .reloads
                    .get_or_create(&ReloadLabels { outcome: "failed" })
                    .inc();
                // Not again until the files change once more.
                let mut kept = inner.current.write().unwrap_or_else(|p| p.into_inner());
                let mut same = Loaded::clone_of(&kept);
                same.stamp = now.to_vec();
                *kept = Arc::new(same);
            }
        }
    }
}

impl Loaded {
    fn clone_of(other: &Loaded) -> Loaded {
        Loaded {
            key: other.key.clone(),
            identity: other.identity.clone(),
            anchors: other.anchors.clone(),
            client_verifier: other.client_verifier.clone(),
            not_after: other.not_after,
            stamp: other.stamp.clone(),
        }
    }
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|e| TlsError::File {
        file: path.display().to_string(),
        reason: e.to_string(),
    })
}

/// Loads the three files.
fn load(settings: &TlsSettings, provider: &Arc<CryptoProvider>) -> Result<Loaded, TlsError> {
    let stamp_before = [&settings.ca, &settings.cert, &settings.key].map(|p| stamp(p));
    let bad = |path: &Path, reason: &str| TlsError::File {
        file: path.display().to_string(),
        reason: reason.to_owned(),
    };
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(&read(&settings.cert)?)
            .collect::<Result<_, _>>()
            .map_err(|_| bad(&settings.cert, "not a PEM certificate chain"))?;
    let leaf = chain
        .first()
        .ok_or_else(|| bad(&settings.cert, "no certificate in it"))?;
    let identity = Identity::of_certificate(leaf).ok_or_else(|| {
        bad(
            &settings.cert,
            "its certificate names no spiffe://<trust domain>/borough/<service> URI",
        )
    })?;
    let not_after = x509_parser::parse_x509_certificate(leaf)
        .map(|(_, c)| c.validity().not_after.timestamp())
        .unwrap_or(0);
    let key = PrivateKeyDer::from_pem_slice(&read(&settings.key)?)
        .map_err(|_| bad(&settings.key, "not a PEM private key"))?;
    let signing = provider
        .key_provider
        .load_private_key(key)
        .map_err(|_| bad(&settings.key, "an unsupported private key"))?;
    let key = Arc::new(CertifiedKey::new(chain, signing));
    key.keys_match()
        .map_err(|_| bad(&settings.key, "it does not match the certificate"))?;
    let mut roots = RootCertStore::empty();
    let mut anchors = Vec::new();
    for cert in CertificateDer::pem_slice_iter(&read(&settings.ca)?) {
        let cert = cert.map_err(|_| bad(&settings.ca, "not a PEM certificate bundle"))?;
        let anchor = webpki::anchor_from_trusted_cert(&cert)
            .map_err(|_| bad(&settings.ca, "a certificate that is not a usable CA"))?
            .to_owned();
        anchors.push(anchor);
        roots
            .add(cert)
            .map_err(|_| bad(&settings.ca, "a certificate that is not a usable CA"))?;
    }
    if anchors.is_empty() {
        return Err(bad(&settings.ca, "no CA certificate in it"));
    }
    let client_verifier =
        WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
            .build()
            .map_err(|e| bad(&settings.ca, &e.to_string()))?;
    // A certificate already past its end is not loaded (peers would refuse it anyway).
    if not_after < UnixTime::now().as_secs() as i64 {
        return Err(bad(&settings.cert, "the certificate has expired"));
    }
    Ok(Loaded {
        key,
        identity,
        anchors,
        client_verifier,
        not_after,
        stamp: stamp_before.to_vec(),
    })
}

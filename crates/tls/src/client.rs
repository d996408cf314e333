//! The client side: TLS 1.3 presenting this process's current certificate, and a server
//! accepted only when its certificate chains to the current trust bundle and names the
//! identity the caller expects (`spiffe://<domain>/borough/<service>`) — whatever address
//! or DNS name it was reached at.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use rustls::client::ResolvesClientCert;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, DigitallySignedStruct, SignatureScheme};
use tokio::net::TcpStream;

use crate::material::{FailureLabels, HandshakeLabels, TlsMetrics};
use crate::{Identity, Materials};

/// The current client certificate.
#[derive(Debug)]
struct CurrentClientCert(Materials);

impl ResolvesClientCert for CurrentClientCert {
    fn resolve(&self, _: &[&[u8]], _: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        Some(self.0.current().key.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// Accepts a server whose chain verifies against the current bundle and whose certificate
/// names `expected`.
#[derive(Debug)]
pub struct ExpectIdentity {
    materials: Materials,
    expected: Identity,
}

impl ServerCertVerifier for ExpectIdentity {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let current = self.materials.current();
        let cert = webpki::EndEntityCert::try_from(end_entity).map_err(|_| {
            rustls::Error::InvalidCertificate(rustls::CertificateError::BadEncoding)
        })?;
        cert.verify_for_usage(
            self.materials
                .provider()
                .signature_verification_algorithms
                .all,
            &current.anchors,
            intermediates,
            now,
            webpki::KeyUsage::server_auth(),
            None,
            None,
        )
        .map_err(|e| {
            rustls::Error::InvalidCertificate(match e {
                webpki::Error::CertExpired { .. } => rustls::CertificateError::Expired,
                webpki::Error::UnknownIssuer => rustls::CertificateError::UnknownIssuer,
                _ => rustls::CertificateError::BadSignature,
            })
        })?;
        match Identity::of_certificate(end_entity) {
            Some(found) if found == self.expected => Ok(ServerCertVerified::assertion()),
            found => {
                tracing::warn!(
                    expected = %self.expected,
                    found = ?found.as_ref().map(Identity::uri),
                    "a server presented another identity"
                );
                Err(rustls::Error::InvalidCertificate(
                    rustls::CertificateError::NotValidForName,
                ))
            }
        }
    }

    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        // TLS 1.3 only: never called.
        Err(rustls::Error::PeerIncompatible(
            rustls::PeerIncompatible::Tls12NotOffered,
        ))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.materials.provider().signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.materials
            .provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// A TLS 1.3 client config on `materials` that accepts only `expected`'s certificate.
pub fn client_config(materials: &Materials, expected: &str) -> Arc<ClientConfig> {
    client_config_with(materials, expected, materials.provider().clone())
}

/// As [`client_config`], negotiating with `provider` (its key exchange groups) instead.
pub fn client_config_with(
    materials: &Materials,
    expected: &str,
    provider: Arc<rustls::crypto::CryptoProvider>,
) -> Arc<ClientConfig> {
    let expected = Identity::new(&materials.settings().trust_domain, expected);
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap_or_else(|_| unreachable!("aws-lc-rs supports TLS 1.3"))
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(ExpectIdentity {
            materials: materials.clone(),
            expected,
        }))
        .with_client_cert_resolver(Arc::new(CurrentClientCert(materials.clone())));
    config.alpn_protocols = vec![b"h2".to_vec()];
    Arc::new(config)
}

/// Connects to a Borough service over mutual TLS: a tower service from a URI (its
/// authority is where to connect, `host:port`; a DNS name is resolved at each connect) to
/// an IO tonic's channel runs HTTP/2 on.
#[derive(Clone)]
pub struct Connector {
    /// Where to connect when the URI has no authority.
    addr: Option<SocketAddr>,
    expected: String,
    config: Arc<ClientConfig>,
    connect_timeout: Duration,
    metrics: TlsMetrics,
}

impl Connector {
    /// To `expected` (a service name), at the URI's authority, or at `addr` (a fixed
    /// address, whatever the URI says).
    pub fn new(
        materials: &Materials,
        expected: &str,
        addr: Option<SocketAddr>,
        connect_timeout: Duration,
    ) -> Connector {
        Connector::with_config(
            client_config(materials, expected),
            materials,
            expected,
            addr,
            connect_timeout,
        )
    }

    /// As [`Connector::new`], with a client config of the caller's (from
    /// [`client_config_with`]).
    pub fn with_config(
        config: Arc<ClientConfig>,
        materials: &Materials,
        expected: &str,
        addr: Option<SocketAddr>,
        connect_timeout: Duration,
    ) -> Connector {
        Connector {
            addr,
            expected: expected.to_owned(),
            config,
            connect_timeout,
            metrics: materials.metrics().clone(),
        }
    }
}

type Connecting = Pin<
    Box<
        dyn Future<Output = io::Result<TokioIo<tokio_rustls::client::TlsStream<TcpStream>>>> + Send,
    >,
>;

impl tower::Service<http::Uri> for Connector {
    type Response = TokioIo<tokio_rustls::client::TlsStream<TcpStream>>;
    type Error = io::Error;
    type Future = Connecting;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: http::Uri) -> Connecting {
        let this = self.clone();
        Box::pin(async move {
            let target = match (this.addr, uri.authority()) {
                (Some(addr), _) => addr.to_string(),
                (None, Some(authority)) => authority.as_str().to_owned(),
                (None, None) => {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidInput,
                        "no address to connect to",
                    ));
                }
            };
            let connected = tokio::time::timeout(this.connect_timeout, async {
                let tcp = TcpStream::connect(&target).await?;
                tcp.set_nodelay(true)?;
                // The name is not what is checked (the identity is): any valid one will do.
                let name = ServerName::try_from(format!("{}.borough", this.expected))
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
                tokio_rustls::TlsConnector::from(this.config.clone())
                    .connect(name, tcp)
                    .await
            })
            .await;
            let stream = match connected {
                Ok(Ok(stream)) => stream,
                Ok(Err(e)) => {
                    this.metrics
                        .failures
                        .get_or_create(&FailureLabels { role: "client" })
                        .inc();
                    return Err(e);
                }
                Err(_) => {
                    return Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "connecting (with the TLS handshake) timed out",
                    ));
                }
            };
            let group = stream
                .get_ref()
                .1
                .negotiated_key_exchange_group()
                .map(|g| crate::group_name(g.name()));
            this.metrics
                .handshakes
                .get_or_create(&HandshakeLabels {
                    role: "client",
                    peer: TlsMetrics::peer_label(Some(&Identity::new("", &this.expected))),
                    group: group.unwrap_or("none"),
                })
                .inc();
            tracing::debug!(peer = %this.expected, addr = %target, group, "TLS handshake");
            Ok(TokioIo::new(stream))
        })
    }
}

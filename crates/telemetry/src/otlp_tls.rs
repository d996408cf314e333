//! OTLP to a collector over TLS, when `OTEL_EXPORTER_OTLP_ENDPOINT` is `https://…`.
//!
//! TLS 1.2+ (rustls on aws-lc-rs, X25519MLKEM768 offered first), the collector verified by
//! name against `OTEL_EXPORTER_OTLP_CERTIFICATE` (a PEM bundle) or, without it, Mozilla's
//! roots; a client certificate when `OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE` and
//! `OTEL_EXPORTER_OTLP_CLIENT_KEY` are set (the specification's variables).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

/// A TLS client config from the `OTEL_EXPORTER_OTLP_*` variables; the error names the
/// file that is wrong.
pub fn client_config(
    ca: Option<&str>,
    client_cert: Option<&str>,
    client_key: Option<&str>,
) -> Result<Arc<ClientConfig>, String> {
    let read = |path: &str| std::fs::read(path).map_err(|e| format!("{path}: {e}"));
    let mut roots = RootCertStore::empty();
    match ca {
        Some(path) => {
            for cert in CertificateDer::pem_slice_iter(&read(path)?) {
                let cert = cert.map_err(|_| format!("{path}: not a PEM certificate bundle"))?;
                roots
                    .add(cert)
                    .map_err(|e| format!("{path}: not a usable CA ({e})"))?;
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    let builder = ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_root_certificates(roots);
    let mut config = match (client_cert, client_key) {
        (Some(cert), Some(key)) => {
            let chain = CertificateDer::pem_slice_iter(&read(cert)?)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|_| format!("{cert}: not a PEM certificate chain"))?;
            let key = PrivateKeyDer::from_pem_slice(&read(key)?)
                .map_err(|_| format!("{key}: not a PEM private key"))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| format!("the OTLP client certificate: {e}"))?
        }
        (None, None) => builder.with_no_client_auth(),
        _ => {
            return Err("OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE and \
                        OTEL_EXPORTER_OTLP_CLIENT_KEY go together"
                .to_owned());
        }
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// Connects to the URI's host over TLS, verifying the server by that name.
#[derive(Clone)]
pub struct Connector {
    config: Arc<ClientConfig>,
}

impl Connector {
    pub fn new(config: Arc<ClientConfig>) -> Self {
        Connector { config }
    }
}

type Connecting = Pin<Box<dyn Future<Output = io::Result<TokioIo<TlsStream<TcpStream>>>> + Send>>;

impl tower::Service<http::Uri> for Connector {
    type Response = TokioIo<TlsStream<TcpStream>>;
    type Error = io::Error;
    type Future = Connecting;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: http::Uri) -> Connecting {
        let config = self.config.clone();
        Box::pin(async move {
            let invalid = |why: &str| io::Error::new(io::ErrorKind::InvalidInput, why.to_owned());
            let host = uri
                .host()
                .ok_or_else(|| invalid("the OTLP endpoint has no host"))?
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_owned();
            let port = uri.port_u16().unwrap_or(443);
            let name = ServerName::try_from(host.clone())
                .map_err(|_| invalid("the OTLP endpoint's host is not a valid server name"))?;
            let tcp = TcpStream::connect((host.as_str(), port)).await?;
            tcp.set_nodelay(true)?;
            let tls = tokio_rustls::TlsConnector::from(config)
                .connect(name, tcp)
                .await?;
            Ok(TokioIo::new(tls))
        })
    }
}

/// A lazily connecting channel to an `https://` collector.
pub fn channel(endpoint: &str) -> Result<tonic::transport::Channel, String> {
    let env = borough_config_client::Env::process();
    let config = client_config(
        env.optional(&crate::settings::OTLP_CERTIFICATE).as_deref(),
        env.optional(&crate::settings::OTLP_CLIENT_CERTIFICATE)
            .as_deref(),
        env.optional(&crate::settings::OTLP_CLIENT_KEY).as_deref(),
    )?;
    let endpoint = tonic::transport::Endpoint::from_shared(endpoint.to_owned())
        .map_err(|e| format!("the OTLP endpoint: {e}"))?;
    Ok(endpoint.connect_with_connector_lazy(Connector::new(config)))
}

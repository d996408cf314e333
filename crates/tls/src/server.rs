//! The server side: TLS 1.3 with a client certificate required (mutual) or not (the
//! gateway's optional edge), the certificate and trust bundle always the current ones,
//! and the peer's identity and key exchange group handed to the service with each
//! connection ([`PeerInfo`]).

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{DigitallySignedStruct, DistinguishedName, ServerConfig, SignatureScheme};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};

use crate::material::{FailureLabels, HandshakeLabels, TlsMetrics};
use crate::{Identity, Materials};

/// Who is on the other end of a connection: its address, the identity its certificate
/// names (`None` without mutual TLS), and the key exchange group the handshake agreed.
#[derive(Debug, Clone)]
pub struct PeerInfo {
    pub remote: Option<SocketAddr>,
    pub identity: Option<Identity>,
    pub group: Option<&'static str>,
}

/// The current certificate, whatever was loaded last.
#[derive(Debug)]
struct CurrentCert(Materials);

impl ResolvesServerCert for CurrentCert {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.current().key.clone())
    }
}

/// Client certificates verified against the current trust bundle.
#[derive(Debug)]
struct CurrentClientVerifier(Materials);

impl ClientCertVerifier for CurrentClientVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        // Hints would have to outlive a reload; clients have one certificate each anyway.
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.0
            .current()
            .client_verifier
            .verify_client_cert(end_entity, intermediates, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0
            .current()
            .client_verifier
            .verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0
            .current()
            .client_verifier
            .verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.current().client_verifier.supported_verify_schemes()
    }
}

/// A TLS 1.3 server config on `materials`: client certificates required when `mutual`,
/// `alpn` protocols offered.
pub fn server_config(materials: &Materials, mutual: bool, alpn: &[&[u8]]) -> Arc<ServerConfig> {
    let builder = ServerConfig::builder_with_provider(materials.provider().clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap_or_else(|_| unreachable!("aws-lc-rs supports TLS 1.3"));
    let builder = if mutual {
        builder.with_client_cert_verifier(Arc::new(CurrentClientVerifier(materials.clone())))
    } else {
        builder.with_no_client_auth()
    };
    let mut config = builder.with_cert_resolver(Arc::new(CurrentCert(materials.clone())));
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(config)
}

/// A server-side TLS connection, with its [`PeerInfo`].
pub struct TlsConn {
    stream: tokio_rustls::server::TlsStream<TcpStream>,
    info: PeerInfo,
}

impl TlsConn {
    pub fn peer(&self) -> &PeerInfo {
        &self.info
    }
}

/// Accepts `stream` as a TLS connection within `timeout`, counting it.
pub async fn accept(
    acceptor: &tokio_rustls::TlsAcceptor,
    stream: TcpStream,
    timeout: Duration,
    metrics: &TlsMetrics,
) -> io::Result<TlsConn> {
    let remote = stream.peer_addr().ok();
    let handshake = tokio::time::timeout(timeout, acceptor.accept(stream)).await;
    let stream = match handshake {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => {
            metrics
                .failures
                .get_or_create(&FailureLabels { role: "server" })
                .inc();
            tracing::debug!(peer = ?remote, error = %e, "TLS handshake refused");
            return Err(e);
        }
        Err(_) => {
            metrics
                .failures
                .get_or_create(&FailureLabels { role: "server" })
                .inc();
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "TLS handshake timed out",
            ));
        }
    };
    let connection = stream.get_ref().1;
    let identity = connection
        .peer_certificates()
        .and_then(|chain| chain.first())
        .and_then(|leaf| Identity::of_certificate(leaf));
    let group = connection
        .negotiated_key_exchange_group()
        .map(|g| crate::group_name(g.name()));
    metrics
        .handshakes
        .get_or_create(&HandshakeLabels {
            role: "server",
            peer: TlsMetrics::peer_label(identity.as_ref()),
            group: group.unwrap_or("none"),
        })
        .inc();
    tracing::debug!(peer = ?remote, identity = ?identity.as_ref().map(Identity::uri), group, "TLS handshake");
    Ok(TlsConn {
        stream,
        info: PeerInfo {
            remote,
            identity,
            group,
        },
    })
}

/// Accepted TLS connections of `listener` for a tonic server: each handshake runs in a
/// task of its own (a slow client holds up nobody else), at most 256 at once, each within
/// `timeout`; failed ones are counted and dropped.
pub fn incoming(listener: TcpListener, materials: &Materials, timeout: Duration) -> Incoming {
    let acceptor = tokio_rustls::TlsAcceptor::from(server_config(materials, true, &[b"h2"]));
    let metrics = materials.metrics().clone();
    let (connections, receiver) = mpsc::channel::<io::Result<TlsConn>>(64);
    let handshakes = Arc::new(Semaphore::new(256));
    tokio::spawn(async move {
        loop {
            let (stream, _) = tokio::select! {
                () = connections.closed() => return,
                accepted = listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        tracing::warn!(error = %e, "accepting a connection failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let _ = stream.set_nodelay(true);
            let Ok(permit) = handshakes.clone().acquire_owned().await else {
                return;
            };
            let (acceptor, metrics, connections) =
                (acceptor.clone(), metrics.clone(), connections.clone());
            tokio::spawn(async move {
                if let Ok(conn) = accept(&acceptor, stream, timeout, &metrics).await {
                    let _ = connections.send(Ok(conn)).await;
                }
                drop(permit);
            });
        }
    });
    Incoming { receiver }
}

/// The connections [`incoming`] accepted, as a stream.
pub struct Incoming {
    receiver: mpsc::Receiver<io::Result<TlsConn>>,
}

impl futures_util::Stream for Incoming {
    type Item = io::Result<TlsConn>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.receiver.poll_recv(cx)
    }
}

/// tonic hands each request its connection's [`PeerInfo`] (a request extension).
impl tonic::transport::server::Connected for TlsConn {
    type ConnectInfo = PeerInfo;

    fn connect_info(&self) -> PeerInfo {
        self.info.clone()
    }
}

impl AsyncRead for TlsConn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsConn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

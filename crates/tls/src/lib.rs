//! Mutual TLS between Borough's processes.
//!
//! Every gRPC call inside Borough is TLS 1.3 with both sides authenticated: each process
//! has a certificate naming its SPIFFE ID (`spiffe://<trust domain>/borough/<service>`,
//! [`Identity`]), servers require a client certificate of the trust bundle and hand its
//! identity to the service ([`server::PeerInfo`]) for per-method authorisation, and
//! clients accept a server only if it names the service they meant to call
//! ([`client::Connector`]). Key exchange prefers the post-quantum hybrid X25519MLKEM768
//! (`BOROUGH_TLS_PQ=required` accepts nothing else). Certificates and the trust bundle are
//! reloaded from their files when they change ([`Materials`]); the negotiated group of
//! every handshake is counted (`borough_tls_handshakes_total{group}`).
//!
//! With the `generate` feature: the development PKI ([`generate`]).

pub mod client;
pub mod edge;
#[cfg(feature = "generate")]
pub mod generate;
pub mod identity;
pub mod material;
pub mod server;
pub mod settings;

pub use identity::Identity;
pub use material::{Materials, TlsMetrics};
pub use settings::{Mode, PostQuantum, TlsSettings};

/// Why TLS material could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{file}: {reason}")]
    File { file: String, reason: String },
    #[error(
        "{file} names {found}, not {expected} (set BOROUGH_TLS_CERT and BOROUGH_TLS_KEY to this service's)"
    )]
    WrongIdentity {
        file: String,
        found: String,
        expected: String,
    },
    #[error("{0}")]
    Generate(String),
}

/// The IANA name of a key exchange group, as labels and logs show it.
pub fn group_name(group: rustls::NamedGroup) -> &'static str {
    use rustls::NamedGroup;
    match group {
        NamedGroup::X25519MLKEM768 => "X25519MLKEM768",
        NamedGroup::X25519 => "X25519",
        NamedGroup::secp256r1 => "secp256r1",
        NamedGroup::secp384r1 => "secp384r1",
        NamedGroup::secp521r1 => "secp521r1",
        NamedGroup::MLKEM768 => "MLKEM768",
        NamedGroup::secp256r1MLKEM768 => "secp256r1MLKEM768",
        _ => "other",
    }
}

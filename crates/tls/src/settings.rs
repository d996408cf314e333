//! `BOROUGH_TLS_*`: where a process's certificate, key and trust bundle are, and how it
//! negotiates.

use std::path::PathBuf;
use std::time::Duration;

use borough_config_client::{Env, SettingsError};

/// Whether calls between Borough processes are mutually authenticated TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// TLS 1.3, both sides authenticated by certificates of the trust bundle (the default,
    /// and the only mode for a deployment).
    Mutual,
    /// Plaintext, no identities, nothing authorised by caller: for measuring what mTLS
    /// costs (`make bench`), never for a deployment. Said loudly at start-up.
    Off,
}

/// Which key exchange a handshake may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PostQuantum {
    /// X25519MLKEM768 offered and preferred; a classical-only peer still connects.
    Preferred,
    /// X25519MLKEM768 only: a classical-only peer is refused.
    Required,
}

/// A process's TLS settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSettings {
    /// `BOROUGH_INTERNAL_TLS` (`mutual`; `off` for benchmarks only).
    pub mode: Mode,
    /// `BOROUGH_TLS_CA` (`<dir>/ca.crt`): the trust bundle, PEM, one or more CAs (two
    /// while a CA is rotated).
    pub ca: PathBuf,
    /// `BOROUGH_TLS_CERT` (`<dir>/<service>.crt`): this process's certificate chain.
    pub cert: PathBuf,
    /// `BOROUGH_TLS_KEY` (`<dir>/<service>.key`): its private key.
    pub key: PathBuf,
    /// `BOROUGH_TLS_PQ` (`preferred`): `required` refuses classical-only key exchange.
    pub post_quantum: PostQuantum,
    /// `BOROUGH_TRUST_DOMAIN` (`borough.internal`): the SPIFFE trust domain of every
    /// identity (`spiffe://<domain>/borough/<service>`).
    pub trust_domain: String,
    /// `BOROUGH_TLS_RELOAD_INTERVAL` (5s): how often the files are checked for changes
    /// (rotated certificates are used for new handshakes without a restart).
    pub reload_interval: Duration,
}

/// The directory `make run` writes its PKI to (`BOROUGH_TLS_DIR` overrides it).
pub const DEFAULT_DIR: &str = ".data/pki";

impl TlsSettings {
    /// The settings of `service` (which names its default certificate files).
    pub fn from_env(env: &Env, service: &str) -> Result<Self, SettingsError> {
        let invalid = |name: &str, value: String, reason: &str| SettingsError::Invalid {
            name: name.to_owned(),
            value,
            reason: reason.to_owned(),
        };
        let mode = match env.string("BOROUGH_INTERNAL_TLS", "mutual").as_str() {
            "mutual" | "on" => Mode::Mutual,
            "off" => Mode::Off,
            other => {
                return Err(invalid(
                    "BOROUGH_INTERNAL_TLS",
                    other.to_owned(),
                    "expected mutual or off",
                ));
            }
        };
        let post_quantum = match env.string("BOROUGH_TLS_PQ", "preferred").as_str() {
            "preferred" => PostQuantum::Preferred,
            "required" => PostQuantum::Required,
            other => {
                return Err(invalid(
                    "BOROUGH_TLS_PQ",
                    other.to_owned(),
                    "expected preferred or required",
                ));
            }
        };
        let trust_domain = env.string("BOROUGH_TRUST_DOMAIN", "borough.internal");
        if crate::Identity::parse(&format!("spiffe://{trust_domain}/borough/x")).is_none() {
            return Err(invalid(
                "BOROUGH_TRUST_DOMAIN",
                trust_domain,
                "expected lowercase letters, digits, '.', '-', '_'",
            ));
        }
        let dir = PathBuf::from(env.string("BOROUGH_TLS_DIR", DEFAULT_DIR));
        let path = |name: &str, file: String| {
            env.optional(name)
                .map(PathBuf::from)
                .unwrap_or_else(|| dir.join(file))
        };
        Ok(TlsSettings {
            mode,
            ca: path("BOROUGH_TLS_CA", "ca.crt".to_owned()),
            cert: path("BOROUGH_TLS_CERT", format!("{service}.crt")),
            key: path("BOROUGH_TLS_KEY", format!("{service}.key")),
            post_quantum,
            trust_domain,
            reload_interval: env.duration_in(
                "BOROUGH_TLS_RELOAD_INTERVAL",
                Duration::from_secs(5),
                Duration::from_millis(10)..=Duration::from_secs(3600),
            )?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_point_at_the_make_run_pki_and_bad_values_name_their_variable() {
        let settings =
            TlsSettings::from_env(&Env::from_pairs([("", "")]), "query").expect("defaults");
        assert_eq!(settings.mode, Mode::Mutual);
        assert_eq!(settings.cert, PathBuf::from(".data/pki/query.crt"));
        assert_eq!(settings.ca, PathBuf::from(".data/pki/ca.crt"));
        assert_eq!(settings.post_quantum, PostQuantum::Preferred);
        for (name, value) in [
            ("BOROUGH_INTERNAL_TLS", "maybe"),
            ("BOROUGH_TLS_PQ", "always"),
            ("BOROUGH_TRUST_DOMAIN", "Not Valid"),
            ("BOROUGH_TLS_RELOAD_INTERVAL", "0s"),
        ] {
            let err =
                TlsSettings::from_env(&Env::from_pairs([(name, value)]), "query").expect_err(name);
            assert!(err.to_string().contains(name), "{err}");
        }
    }
}

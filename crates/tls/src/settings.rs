//! Where a process's certificate, key and trust bundle are, and how it negotiates.

use std::path::PathBuf;
use std::time::Duration;

use borough_config_client::{Env, SettingsError, Var};

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

impl std::str::FromStr for Mode {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            "mutual" | "on" => Ok(Mode::Mutual),
            "off" => Ok(Mode::Off),
            _ => Err("expected mutual or off".to_owned()),
        }
    }
}

impl std::str::FromStr for PostQuantum {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            "preferred" => Ok(PostQuantum::Preferred),
            "required" => Ok(PostQuantum::Required),
            _ => Err("expected preferred or required".to_owned()),
        }
    }
}

/// A process's TLS settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSettings {
    /// [`TlsSettings::INTERNAL_TLS`].
    pub mode: Mode,
    /// [`TlsSettings::CA`]: the trust bundle, PEM, one or more CAs (two while a CA is
    /// rotated).
    pub ca: PathBuf,
    /// [`TlsSettings::CERT`]: this process's certificate chain.
    pub cert: PathBuf,
    /// [`TlsSettings::KEY`]: its private key.
    pub key: PathBuf,
    /// [`TlsSettings::PQ`].
    pub post_quantum: PostQuantum,
    /// [`TlsSettings::TRUST_DOMAIN`]: the SPIFFE trust domain of every identity
    /// (`spiffe://<domain>/borough/<service>`).
    pub trust_domain: String,
    /// [`TlsSettings::RELOAD_INTERVAL`].
    pub reload_interval: Duration,
}

/// The directory `make run` writes its PKI to ([`TlsSettings::DIR`] overrides it).
pub const DEFAULT_DIR: &str = ".data/pki";

impl TlsSettings {
    pub const INTERNAL_TLS: Var = Var::new(
        "BOROUGH_INTERNAL_TLS",
        "mutual",
        "Calls between Borough processes: mutual (TLS 1.3, both sides authenticated) or off \
         (plaintext, for measuring what mTLS costs; never a deployment)",
    );
    pub const DIR: Var = Var::new(
        "BOROUGH_TLS_DIR",
        DEFAULT_DIR,
        "Where ca.crt, <service>.crt and <service>.key are (borough-pki writes them)",
    );
    pub const CA: Var = Var::new(
        "BOROUGH_TLS_CA",
        "<BOROUGH_TLS_DIR>/ca.crt",
        "The trust bundle (PEM, one or more CAs: two while a CA is rotated)",
    );
    pub const CERT: Var = Var::new(
        "BOROUGH_TLS_CERT",
        "<BOROUGH_TLS_DIR>/<service>.crt",
        "This process's certificate chain",
    );
    pub const KEY: Var = Var::new(
        "BOROUGH_TLS_KEY",
        "<BOROUGH_TLS_DIR>/<service>.key",
        "This process's private key",
    );
    pub const PQ: Var = Var::new(
        "BOROUGH_TLS_PQ",
        "preferred",
        "Post-quantum key exchange (X25519MLKEM768): preferred, or required (classical-only \
         peers refused)",
    );
    pub const TRUST_DOMAIN: Var = Var::new(
        "BOROUGH_TRUST_DOMAIN",
        "borough.internal",
        "The SPIFFE trust domain of every identity",
    );
    pub const RELOAD_INTERVAL: Var = Var::new(
        "BOROUGH_TLS_RELOAD_INTERVAL",
        "5s",
        "How often the files are checked for changes (10ms to 1h); rotated certificates \
         serve new handshakes without a restart",
    );
    pub const VARS: &[&Var] = &[
        &Self::INTERNAL_TLS,
        &Self::DIR,
        &Self::CA,
        &Self::CERT,
        &Self::KEY,
        &Self::PQ,
        &Self::TRUST_DOMAIN,
        &Self::RELOAD_INTERVAL,
    ];

    /// The settings of `service` (which names its default certificate files).
    pub fn from_env(env: &Env, service: &str) -> Result<Self, SettingsError> {
        let trust_domain = env.string(&Self::TRUST_DOMAIN);
        if crate::Identity::parse(&format!("spiffe://{trust_domain}/borough/x")).is_none() {
            return Err(SettingsError::Invalid {
                name: Self::TRUST_DOMAIN.name.to_owned(),
                value: trust_domain,
                reason: "expected lowercase letters, digits, '.', '-', '_'".to_owned(),
            });
        }
        let dir = PathBuf::from(env.string(&Self::DIR));
        let path = |var: &Var, file: String| {
            env.optional(var)
                .map(PathBuf::from)
                .unwrap_or_else(|| dir.join(file))
        };
        Ok(TlsSettings {
            mode: env.parse(&Self::INTERNAL_TLS)?,
            ca: path(&Self::CA, "ca.crt".to_owned()),
            cert: path(&Self::CERT, format!("{service}.crt")),
            key: path(&Self::KEY, format!("{service}.key")),
            post_quantum: env.parse(&Self::PQ)?,
            trust_domain,
            reload_interval: env.duration_in(
                &Self::RELOAD_INTERVAL,
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

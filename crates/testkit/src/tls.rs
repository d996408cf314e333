//! The test PKI: one CA per test process (in a temp directory, removed with it), a
//! certificate per Borough service naming its SPIFFE ID, and mutual-TLS gRPC channels
//! for tests that call a service directly, as the service of their choice.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use borough_tls::generate::{self, Authority, Validity};
use borough_tls::{Identity, Materials, TlsMetrics, TlsSettings};
use tonic::transport::{Channel, Endpoint};

/// The trust domain of the test PKI.
pub const TRUST_DOMAIN: &str = "borough.test";

/// Every identity the test PKI issues a certificate for.
pub const IDENTITIES: [&str; 4] = ["gateway", "user", "query", "config"];

/// A PKI in a directory: `ca.crt`, `<service>.crt`/`.key`, `postgres.crt`/`.key`.
#[derive(Debug)]
pub struct TestPki {
    pub dir: PathBuf,
    // Keeps the directory for the process's life.
    _temp: Option<tempfile::TempDir>,
}

static PKI: OnceLock<std::result::Result<TestPki, String>> = OnceLock::new();

/// This process's test PKI, made on first use.
pub fn pki() -> Result<&'static TestPki> {
    PKI.get_or_init(|| TestPki::create().map_err(|e| format!("{e:#}")))
        .as_ref()
        .map_err(|e| anyhow!("the test PKI: {e}"))
}

impl TestPki {
    /// A new PKI in a temp directory of its own.
    pub fn create() -> Result<TestPki> {
        let temp = tempfile::Builder::new().prefix("borough-pki-").tempdir()?;
        let dir = temp.path().to_path_buf();
        generate::ensure(&dir, TRUST_DOMAIN, &IDENTITIES, &[])?;
        Ok(TestPki {
            dir,
            _temp: Some(temp),
        })
    }

    /// The settings a process takes to use this PKI as `BOROUGH_TLS_*` (its certificate
    /// files follow from its service name).
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("BOROUGH_TLS_DIR", self.dir.display().to_string()),
            ("BOROUGH_TRUST_DOMAIN", TRUST_DOMAIN.to_owned()),
        ]
    }

    /// The CA, to issue more certificates (expired ones, other identities).
    pub fn authority(&self) -> Result<Authority> {
        Ok(Authority::load(&self.dir)?)
    }

    /// TLS settings of `service` on this PKI.
    pub fn settings(&self, service: &str) -> TlsSettings {
        settings_in(&self.dir, service)
    }

    /// `service`'s TLS material (its certificate and this CA).
    pub fn materials(&self, service: &str) -> Result<Materials> {
        Ok(Materials::load(
            &self.settings(service),
            service,
            TlsMetrics::default(),
        )?)
    }
}

/// TLS settings of `service` whose files are in `dir` (`ca.crt`, `<service>.crt/.key`).
pub fn settings_in(dir: &Path, service: &str) -> TlsSettings {
    let pairs = [
        ("BOROUGH_TLS_DIR", dir.display().to_string()),
        ("BOROUGH_TRUST_DOMAIN", TRUST_DOMAIN.to_owned()),
        ("BOROUGH_TLS_RELOAD_INTERVAL", "50ms".to_owned()),
    ];
    TlsSettings::from_env(&borough_config_client::Env::from_pairs(pairs), service)
        .unwrap_or_else(|e| unreachable!("fixed settings parse: {e}"))
}

/// Writes a certificate for `identity`, issued by `authority`, as `<dir>/<name>.crt/.key`.
pub fn issue_into(
    authority: &Authority,
    dir: &Path,
    name: &str,
    identity: &Identity,
    validity: Validity,
) -> Result<()> {
    let issued = authority.issue_identity(identity, validity)?;
    generate::write(&dir.join(format!("{name}.key")), &issued.key_pem, true)?;
    generate::write(&dir.join(format!("{name}.crt")), &issued.cert_pem, false)?;
    Ok(())
}

/// A mutual-TLS channel to the service `callee` at `url` (`https://host:port`), presenting
/// `caller`'s certificate from this process's test PKI. Connects lazily.
pub fn channel(url: &str, caller: &str, callee: &str) -> Result<Channel> {
    let materials = pki()?.materials(caller)?;
    channel_with(url, &materials, callee)
}

/// As [`channel`], with the caller's material given.
pub fn channel_with(url: &str, materials: &Materials, callee: &str) -> Result<Channel> {
    let url = url.replacen("http://", "https://", 1);
    let endpoint = Endpoint::from_shared(url.clone())
        .with_context(|| format!("not a URL: {url}"))?
        .connect_timeout(Duration::from_secs(5));
    Ok(
        endpoint.connect_with_connector_lazy(borough_tls::client::Connector::new(
            materials,
            callee,
            None,
            Duration::from_secs(5),
        )),
    )
}

/// Settings for a service under test: `pairs` on top of the test PKI's.
pub fn service_env(pairs: &[(&str, &str)]) -> Result<borough_config_client::Env> {
    let mut all: Vec<(String, String)> = pki()?
        .env()
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
    all.extend(
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
    );
    Ok(borough_config_client::Env::from_pairs(all))
}

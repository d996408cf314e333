//! The development PKI (`make run`, compose, tests): a CA, a certificate per service
//! naming its SPIFFE ID, and a server certificate for PostgreSQL — written as PEM files a
//! process loads with its default `BOROUGH_TLS_*` settings:
//!
//! ```text
//! <dir>/ca.crt, ca.key          the CA (the key stays here, mode 0600)
//! <dir>/<service>.crt, .key     spiffe://<trust domain>/borough/<service>
//! <dir>/postgres.crt, .key      DNS localhost, IP 127.0.0.1 and ::1, and `extra` names
//! ```
//!
//! Production certificates come from the operator's CA (cert-manager, a vault): anything
//! that puts the SPIFFE ID in a URI SAN and the files where the settings point.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};

use crate::{Identity, TlsError};

fn failed(what: &str, e: impl std::fmt::Display) -> TlsError {
    TlsError::Generate(format!("{what}: {e}"))
}

/// A CA that issues certificates.
pub struct Authority {
    cert_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

/// A certificate and its private key, PEM.
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
}

/// When a certificate ends, in seconds from now (negative: already expired). It starts an
/// hour before now (for clocks a little behind), or a day before its end if that is earlier.
#[derive(Debug, Clone, Copy)]
pub struct Validity {
    pub seconds: i64,
}

impl Validity {
    pub const YEAR: Validity = Validity::days(365);

    pub const fn days(days: i64) -> Validity {
        Validity {
            seconds: days * 86_400,
        }
    }

    /// Ended a day ago.
    pub const EXPIRED: Validity = Validity::days(-1);
}

fn validity(params: &mut CertificateParams, validity: Validity) {
    let now = time::OffsetDateTime::now_utc();
    params.not_after = now + time::Duration::seconds(validity.seconds);
    params.not_before =
        (now - time::Duration::hours(1)).min(params.not_after - time::Duration::days(1));
}

impl Authority {
    /// A new CA named `name`, valid ten years.
    pub fn new(name: &str) -> Result<Authority, TlsError> {
        let key = KeyPair::generate().map_err(|e| failed("generating the CA key", e))?;
        let mut params = CertificateParams::default();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, name);
        params.distinguished_name = dn;
        validity(&mut params, Validity::days(3650));
        let cert = params
            .self_signed(&key)
            .map_err(|e| failed("signing the CA", e))?;
        Ok(Authority {
            cert_pem: cert.pem(),
            issuer: Issuer::new(params, key),
        })
    }

    /// The CA kept in `dir` (`ca.crt`, `ca.key`).
    pub fn load(dir: &Path) -> Result<Authority, TlsError> {
        let read = |file: &str| {
            std::fs::read_to_string(dir.join(file)).map_err(|e| TlsError::File {
                file: dir.join(file).display().to_string(),
                reason: e.to_string(),
            })
        };
        let cert_pem = read("ca.crt")?;
        let key = KeyPair::from_pem(&read("ca.key")?).map_err(|e| failed("reading ca.key", e))?;
        let issuer =
            Issuer::from_ca_cert_pem(&cert_pem, key).map_err(|e| failed("reading ca.crt", e))?;
        Ok(Authority { cert_pem, issuer })
    }

    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA's private key, PEM.
    pub fn key_pem(&self) -> String {
        self.issuer.key().serialize_pem()
    }

    fn issue(
        &self,
        mut params: CertificateParams,
        validity_: Validity,
    ) -> Result<Issued, TlsError> {
        let key = KeyPair::generate().map_err(|e| failed("generating a key", e))?;
        validity(&mut params, validity_);
        let cert = params
            .signed_by(&key, &self.issuer)
            .map_err(|e| failed("signing a certificate", e))?;
        Ok(Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// A certificate for `identity` (client and server use): its URI SAN is the SPIFFE ID.
    pub fn issue_identity(
        &self,
        identity: &Identity,
        validity: Validity,
    ) -> Result<Issued, TlsError> {
        let mut params = CertificateParams::default();
        params.subject_alt_names = vec![SanType::URI(
            identity
                .uri()
                .try_into()
                .map_err(|e| failed("the SPIFFE ID", e))?,
        )];
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, identity.service.clone());
        params.distinguished_name = dn;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        self.issue(params, validity)
    }

    /// A server certificate for host names and addresses (PostgreSQL's, the edge's).
    pub fn issue_server(&self, names: &[String], validity: Validity) -> Result<Issued, TlsError> {
        let mut params = CertificateParams::default();
        for name in names {
            params.subject_alt_names.push(match name.parse() {
                Ok(ip) => SanType::IpAddress(ip),
                Err(_) => SanType::DnsName(
                    name.clone()
                        .try_into()
                        .map_err(|e| failed("a server name", e))?,
                ),
            });
        }
        let mut dn = DistinguishedName::new();
        dn.push(
            DnType::CommonName,
            names.first().cloned().unwrap_or_default(),
        );
        params.distinguished_name = dn;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.issue(params, validity)
    }
}

/// Writes `contents` to `path` (mode 0600 when `private`), replacing it atomically.
pub fn write(path: &Path, contents: &str, private: bool) -> Result<(), TlsError> {
    let io = |e: std::io::Error| TlsError::File {
        file: path.display().to_string(),
        reason: e.to_string(),
    };
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, contents).map_err(io)?;
    let mode = if private { 0o600 } else { 0o644 };
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode)).map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}

/// The services `make run` and compose start.
pub const SERVICES: [&str; 4] = ["gateway", "user", "query", "config"];

/// Creates the PKI in `dir` where it is missing (an existing CA is kept, and with it every
/// certificate it issued), issuing a certificate for each of `services` that has none, and
/// PostgreSQL's for `postgres_names` (plus localhost). Idempotent.
pub fn ensure(
    dir: &Path,
    trust_domain: &str,
    services: &[&str],
    postgres_names: &[String],
) -> Result<(), TlsError> {
    std::fs::create_dir_all(dir).map_err(|e| TlsError::File {
        file: dir.display().to_string(),
        reason: e.to_string(),
    })?;
    let authority = if dir.join("ca.crt").exists() && dir.join("ca.key").exists() {
        Authority::load(dir)?
    } else {
        let authority = Authority::new(&format!("Borough development CA ({trust_domain})"))?;
        write(&dir.join("ca.key"), &authority.key_pem(), true)?;
        write(&dir.join("ca.crt"), authority.cert_pem(), false)?;
        authority
    };
    for service in services {
        let (cert, key) = (
            dir.join(format!("{service}.crt")),
            dir.join(format!("{service}.key")),
        );
        if cert.exists() && key.exists() {
            continue;
        }
        let issued =
            authority.issue_identity(&Identity::new(trust_domain, service), Validity::YEAR)?;
        write(&key, &issued.key_pem, true)?;
        write(&cert, &issued.cert_pem, false)?;
    }
    let (cert, key) = (dir.join("postgres.crt"), dir.join("postgres.key"));
    if !(cert.exists() && key.exists()) {
        let mut names = vec![
            "localhost".to_owned(),
            "127.0.0.1".to_owned(),
            "::1".to_owned(),
        ];
        names.extend(postgres_names.iter().cloned());
        let issued = authority.issue_server(&names, Validity::YEAR)?;
        write(&key, &issued.key_pem, true)?;
        write(&cert, &issued.cert_pem, false)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_issued_certificate_names_its_identity_and_chains_to_the_ca() {
        let ca = Authority::new("test").expect("a CA");
        let id = Identity::new("borough.internal", "query");
        let issued = ca.issue_identity(&id, Validity::YEAR).expect("issued");
        let der = rustls::pki_types::CertificateDer::from_pem_slice(issued.cert_pem.as_bytes())
            .expect("PEM");
        assert_eq!(Identity::of_certificate(&der), Some(id));
    }

    use rustls::pki_types::pem::PemObject;
}

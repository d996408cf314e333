//! Who a certificate names: a SPIFFE ID, `spiffe://<trust domain>/borough/<service>`, in
//! its URI subject alternative name (X.509-SVID).

use std::fmt;

/// A Borough process's identity.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Identity {
    pub trust_domain: String,
    /// `gateway`, `user`, `query`, `config`, …
    pub service: String,
}

impl Identity {
    pub fn new(trust_domain: &str, service: &str) -> Identity {
        Identity {
            trust_domain: trust_domain.to_owned(),
            service: service.to_owned(),
        }
    }

    /// `spiffe://<trust domain>/borough/<service>`.
    pub fn uri(&self) -> String {
        format!("spiffe://{}/borough/{}", self.trust_domain, self.service)
    }

    /// Parses a SPIFFE ID of Borough's form; anything else is `None`.
    pub fn parse(uri: &str) -> Option<Identity> {
        let rest = uri.strip_prefix("spiffe://")?;
        let (trust_domain, path) = rest.split_once('/')?;
        let service = path.strip_prefix("borough/")?;
        let valid = |s: &str, extra: &[u8]| {
            !s.is_empty()
                && s.len() <= 255
                && s.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || extra.contains(&b))
        };
        (valid(trust_domain, b".-_") && valid(service, b"-")).then(|| Identity {
            trust_domain: trust_domain.to_owned(),
            service: service.to_owned(),
        })
    }

    /// The identity a DER certificate names in its URI SANs (exactly one Borough SPIFFE
    /// ID, as X.509-SVIDs have).
    pub fn of_certificate(der: &[u8]) -> Option<Identity> {
        let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
        let san = cert.subject_alternative_name().ok()??;
        let mut found = san
            .value
            .general_names
            .iter()
            .filter_map(|name| match name {
                x509_parser::extensions::GeneralName::URI(uri) => Identity::parse(uri),
                _ => None,
            });
        let first = found.next()?;
        found.next().is_none().then_some(first)
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.uri())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spiffe_ids_of_borough_services_parse_and_others_do_not() {
        let id = Identity::parse("spiffe://borough.internal/borough/gateway").expect("valid");
        assert_eq!(id, Identity::new("borough.internal", "gateway"));
        assert_eq!(id.uri(), "spiffe://borough.internal/borough/gateway");
        for bad in [
            "spiffe://borough.internal/gateway",
            "https://borough.internal/borough/gateway",
            "spiffe://Borough/borough/gateway",
            "spiffe://borough.internal/borough/",
            "spiffe:///borough/gateway",
            "spiffe://td/borough/gate/way",
        ] {
            assert_eq!(Identity::parse(bad), None, "{bad}");
        }
    }
}

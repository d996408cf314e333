//! The configured names of a backend: `scheme://host:port`, comma-separated.

/// A backend's URL list that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("{var} has an invalid URL {url:?}: {reason}")]
    Url {
        var: &'static str,
        url: String,
        reason: String,
    },
}

/// One configured name: `scheme://host:port`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) struct Target {
    pub(super) scheme: String,
    pub(super) host: String,
    pub(super) port: u16,
}

/// The URLs of `var`: `https://` with internal TLS (`tls`), `http://` without.
pub(super) fn parse_targets(
    var: &'static str,
    urls: &str,
    tls: bool,
) -> Result<Vec<Target>, BackendError> {
    let wanted = if tls { "https" } else { "http" };
    let mut targets = Vec::new();
    for url in urls.split(',').map(str::trim).filter(|u| !u.is_empty()) {
        let bad = |reason: &str| BackendError::Url {
            var,
            url: borough_config_client::redact_url(url),
            reason: reason.to_owned(),
        };
        let uri: http::Uri = url.parse().map_err(|_| bad("not a URL"))?;
        let scheme = uri.scheme_str().ok_or_else(|| bad("no scheme"))?;
        if scheme != wanted {
            return Err(bad(if tls {
                "calls inside Borough are mutual TLS: use https://"
            } else {
                "BOROUGH_INTERNAL_TLS=off: calls are plaintext: use http://"
            }));
        }
        let host = uri.host().ok_or_else(|| bad("no host"))?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        targets.push(Target {
            scheme: scheme.to_owned(),
            host: host.to_owned(),
            port: uri.port_u16().unwrap_or(if tls { 443 } else { 80 }),
        });
    }
    if targets.is_empty() {
        return Err(BackendError::Url {
            var,
            url: String::new(),
            reason: "no URL given".to_owned(),
        });
    }
    Ok(targets)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_lists_parse_and_bad_ones_name_their_variable() {
        let targets = parse_targets("V", "https://a:1, https://10.0.0.1:2,https://[::1]:3", true)
            .expect("valid");
        assert_eq!(targets.len(), 3);
        assert_eq!(targets[2].host, "::1");
        for bad in ["", "a:1", "http://a:1", "https://"] {
            let err = parse_targets("V", bad, true).expect_err(bad);
            assert!(err.to_string().contains('V'), "{err}");
        }
        // Plaintext only when internal TLS is off.
        assert!(parse_targets("V", "http://a:1", false).is_ok());
        assert!(parse_targets("V", "https://a:1", false).is_err());
    }
}

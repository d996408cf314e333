//! Settings declared once: each variable is a [`Var`] — its name, its default as an
//! operator writes it, the `platform/<service>` key that changes it live, and what it
//! means — declared beside the field it fills. [`Env`] reads a `Var` from the process
//! environment, from fixed pairs (tests), or from a config snapshot's hot values
//! ([`Env::hot`]), always through the same parser, so a hot value means what the same text
//! in the environment means. `docs/settings.md` is generated from the declarations.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::str::FromStr;
use std::time::Duration;

/// A setting that could not be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SettingsError {
    #[error("{name}={value:?} is not valid: {reason}")]
    Invalid {
        name: String,
        value: String,
        reason: String,
    },
    #[error("{name} must be set")]
    Missing { name: String },
}

/// One setting, declared once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Var {
    /// The environment variable (`BOROUGH_…`).
    pub name: &'static str,
    /// The default as an operator would write it, parsed by the setting's own parser
    /// when the variable is unset. A default that depends on something else (another
    /// setting, the service) is described in words and given by the reader (`*_or`).
    /// Empty: unset means off.
    pub default: &'static str,
    /// The key of `platform/<service>` that changes it while the service runs.
    pub hot: Option<&'static str>,
    /// What it does, for `docs/settings.md`.
    pub meaning: &'static str,
    /// A secret (a password, a token, a key, a URL with a password): also read from the
    /// file named by `<name>_FILE` (a mounted secret), and only through [`Env::secret`]
    /// or [`Env::secret_url`].
    pub secret: bool,
}

impl Var {
    pub const fn new(name: &'static str, default: &'static str, meaning: &'static str) -> Var {
        Var {
            name,
            default,
            hot: None,
            meaning,
            secret: false,
        }
    }

    /// A secret: may come from the file named by `<name>_FILE` instead.
    pub const fn secret(self) -> Var {
        Var {
            secret: true,
            ..self
        }
    }

    /// Also changed live by `key` of `platform/<service>`.
    pub const fn hot(self, key: &'static str) -> Var {
        Var {
            hot: Some(key),
            ..self
        }
    }
}

/// Where settings are read from.
#[derive(Debug, Clone, Default)]
enum Source {
    /// The process environment.
    #[default]
    Process,
    /// Fixed variables (tests, embedding).
    Pairs(HashMap<String, String>),
    /// A config snapshot's values, by hot key.
    Hot(HashMap<String, String>),
}

/// Where settings are read from: the process environment, fixed pairs, or a snapshot's
/// hot values.
#[derive(Debug, Clone, Default)]
pub struct Env {
    source: Source,
}

impl Env {
    /// The process environment.
    pub fn process() -> Self {
        Env {
            source: Source::Process,
        }
    }

    /// A fixed set of variables (tests, embedding).
    pub fn from_pairs<I, K, V>(pairs: I) -> Self
    where
        I: IntoIterator<Item = (K, V)>,
        K: Into<String>,
        V: Into<String>,
    {
        Env {
            source: Source::Pairs(
                pairs
                    .into_iter()
                    .map(|(k, v)| (k.into(), v.into()))
                    .collect(),
            ),
        }
    }

    /// A snapshot's hot values (`key` → text as an operator writes it): a [`Var`] reads
    /// its hot key, and one without a hot key reads nothing. Readers use the `*_or`
    /// methods with the value in force, which a key that is absent keeps.
    pub fn hot<I, K, V>(values: I) -> Self
    where
        I: IntoIterator<Item = (K, V)>,
        K: Into<String>,
        V: Into<String>,
    {
        Env {
            source: Source::Hot(
                values
                    .into_iter()
                    .map(|(k, v)| (k.into(), v.into()))
                    .collect(),
            ),
        }
    }

    /// How errors name `var`: its variable, or its hot key when read from a snapshot.
    pub fn label(&self, var: &Var) -> &'static str {
        match self.source {
            Source::Hot(_) => var.hot.unwrap_or(var.name),
            _ => var.name,
        }
    }

    /// The raw value; an empty value counts as unset.
    pub fn raw(&self, var: &Var) -> Option<String> {
        let value = match &self.source {
            Source::Hot(values) => var.hot.and_then(|key| values.get(key).cloned()),
            _ => self.variable(var.name),
        };
        value.filter(|v| !v.trim().is_empty())
    }

    /// A variable of the environment or of the fixed pairs (never of a snapshot).
    fn variable(&self, name: &str) -> Option<String> {
        match &self.source {
            Source::Process => std::env::var(name).ok(),
            Source::Pairs(vars) => vars.get(name).cloned(),
            Source::Hot(_) => None,
        }
    }

    /// A secret's value, `None` when unset: the variable itself, or the contents of the
    /// file `<name>_FILE` names (one trailing newline removed), as Docker and Kubernetes
    /// mount secrets. Both set is an error, as is a file that cannot be read; neither the
    /// value nor the file's contents are ever part of an error.
    pub fn secret(&self, var: &Var) -> Result<Option<String>, SettingsError> {
        debug_assert!(var.secret, "{} is not declared secret", var.name);
        let file_var = format!("{}_FILE", var.name);
        let path = self.variable(&file_var).filter(|p| !p.trim().is_empty());
        match (self.raw(var), path) {
            (Some(_), Some(_)) => Err(SettingsError::Invalid {
                name: file_var,
                value: "<set>".to_owned(),
                reason: format!("set {} or {}_FILE, not both", var.name, var.name),
            }),
            (value, None) => Ok(value),
            (None, Some(path)) => {
                let text =
                    std::fs::read_to_string(path.trim()).map_err(|e| SettingsError::Invalid {
                        name: file_var.clone(),
                        value: path.clone(),
                        reason: format!("cannot read the secret file: {}", e.kind()),
                    })?;
                let text = text.strip_suffix('\n').unwrap_or(&text);
                let text = text.strip_suffix('\r').unwrap_or(text);
                Ok(Some(text.to_owned()).filter(|v| !v.trim().is_empty()))
            }
        }
    }

    /// The value of `var` by `parse`: what is set, else `default`, else the declared
    /// default (which must parse: a declaration that does not is a bug, named as such).
    fn get<T>(
        &self,
        var: &Var,
        default: Option<T>,
        parse: impl Fn(&str) -> Result<T, String>,
    ) -> Result<T, SettingsError> {
        let set = match var.secret {
            true => self.secret(var)?,
            false => self.raw(var),
        };
        let (value, declared) = match (set, default) {
            (Some(value), _) => (value, false),
            (None, Some(default)) => return Ok(default),
            (None, None) => (var.default.to_owned(), true),
        };
        parse(value.trim()).map_err(|reason| SettingsError::Invalid {
            name: self.label(var).to_owned(),
            // A secret is never echoed (a URL keeps its shape, its password hidden).
            value: match var.secret {
                true if value.contains("://") => redact_url(&value),
                true => "<redacted>".to_owned(),
                false => value,
            },
            reason: if declared {
                format!("the declared default does not parse: {reason}")
            } else {
                reason
            },
        })
    }

    /// A value parsed with `FromStr` (the declared default when unset).
    pub fn parse<T>(&self, var: &Var) -> Result<T, SettingsError>
    where
        T: FromStr,
        T::Err: std::fmt::Display,
    {
        self.get(var, None, from_str)
    }

    /// As [`Env::parse`], with `default` when unset.
    pub fn parse_or<T>(&self, var: &Var, default: T) -> Result<T, SettingsError>
    where
        T: FromStr,
        T::Err: std::fmt::Display,
    {
        self.get(var, Some(default), from_str)
    }

    /// As [`Env::parse`], within `range`.
    pub fn parse_in<T>(
        &self,
        var: &Var,
        range: std::ops::RangeInclusive<T>,
    ) -> Result<T, SettingsError>
    where
        T: FromStr + PartialOrd + std::fmt::Display,
        T::Err: std::fmt::Display,
    {
        let value = self.parse(var)?;
        check_range(self.label(var), value, &range, |v| v.to_string())
    }

    /// As [`Env::parse_or`], within `range`.
    pub fn parse_in_or<T>(
        &self,
        var: &Var,
        default: T,
        range: std::ops::RangeInclusive<T>,
    ) -> Result<T, SettingsError>
    where
        T: FromStr + PartialOrd + std::fmt::Display,
        T::Err: std::fmt::Display,
    {
        let value = self.parse_or(var, default)?;
        check_range(self.label(var), value, &range, |v| v.to_string())
    }

    /// A duration: `250ms`, `5s`, `2m`, `1h`, or a bare number of seconds.
    pub fn duration(&self, var: &Var) -> Result<Duration, SettingsError> {
        self.get(var, None, duration)
    }

    /// As [`Env::duration`], with `default` when unset.
    pub fn duration_or(&self, var: &Var, default: Duration) -> Result<Duration, SettingsError> {
        self.get(var, Some(default), duration)
    }

    /// As [`Env::duration`], within `range`.
    pub fn duration_in(
        &self,
        var: &Var,
        range: std::ops::RangeInclusive<Duration>,
    ) -> Result<Duration, SettingsError> {
        let value = self.duration(var)?;
        check_range(self.label(var), value, &range, |d| format!("{d:?}"))
    }

    /// As [`Env::duration_or`], within `range`.
    pub fn duration_in_or(
        &self,
        var: &Var,
        default: Duration,
        range: std::ops::RangeInclusive<Duration>,
    ) -> Result<Duration, SettingsError> {
        let value = self.duration_or(var, default)?;
        check_range(self.label(var), value, &range, |d| format!("{d:?}"))
    }

    /// A byte size: `1048576`, `64KiB`, `1MiB`, `2GiB`.
    pub fn bytes(&self, var: &Var) -> Result<usize, SettingsError> {
        self.get(var, None, bytes)
    }

    /// As [`Env::bytes`], with `default` when unset.
    pub fn bytes_or(&self, var: &Var, default: usize) -> Result<usize, SettingsError> {
        self.get(var, Some(default), bytes)
    }

    /// As [`Env::bytes`], within `range`.
    pub fn bytes_in(
        &self,
        var: &Var,
        range: std::ops::RangeInclusive<usize>,
    ) -> Result<usize, SettingsError> {
        let value = self.bytes(var)?;
        check_range(self.label(var), value, &range, |b| b.to_string())
    }

    /// As [`Env::bytes_or`], within `range`.
    pub fn bytes_in_or(
        &self,
        var: &Var,
        default: usize,
        range: std::ops::RangeInclusive<usize>,
    ) -> Result<usize, SettingsError> {
        let value = self.bytes_or(var, default)?;
        check_range(self.label(var), value, &range, |b| b.to_string())
    }

    /// A socket address such as `127.0.0.1:8080` or `[::]:50051`, with `default` (the
    /// service's own) when unset.
    pub fn socket_addr_or(&self, var: &Var, default: &str) -> Result<SocketAddr, SettingsError> {
        let parse = |text: &str| {
            text.parse::<SocketAddr>().map_err(|_| {
                "expected host:port with an IP address, e.g. 127.0.0.1:8080".to_owned()
            })
        };
        let default = parse(default).map_err(|reason| SettingsError::Invalid {
            name: var.name.to_owned(),
            value: default.to_owned(),
            reason,
        })?;
        self.get(var, Some(default), parse)
    }

    /// A string (the declared default when unset).
    pub fn string(&self, var: &Var) -> String {
        debug_assert!(!var.secret, "read the secret {} with Env::secret", var.name);
        self.raw(var).unwrap_or_else(|| var.default.to_owned())
    }

    /// A string, `None` when unset.
    pub fn optional(&self, var: &Var) -> Option<String> {
        debug_assert!(!var.secret, "read the secret {} with Env::secret", var.name);
        self.raw(var)
    }

    /// A URL whose scheme is one of `schemes` (e.g. `http`, `postgres`); the declared
    /// default when unset.
    pub fn url(&self, var: &Var, schemes: &[&str]) -> Result<String, SettingsError> {
        self.url_with(var, None, schemes)
    }

    /// As [`Env::url`], with `default` when unset.
    pub fn url_or(
        &self,
        var: &Var,
        default: &str,
        schemes: &[&str],
    ) -> Result<String, SettingsError> {
        self.url_with(var, Some(default.to_owned()), schemes)
    }

    fn url_with(
        &self,
        var: &Var,
        default: Option<String>,
        schemes: &[&str],
    ) -> Result<String, SettingsError> {
        self.get(var, default, |text| {
            let ok = text
                .split_once("://")
                .is_some_and(|(scheme, rest)| schemes.contains(&scheme) && !rest.is_empty());
            match ok {
                true => Ok(text.to_owned()),
                false => Err(format!(
                    "expected a URL starting with {}://",
                    schemes.join("://, ")
                )),
            }
        })
        .map_err(|e| match e {
            // The value may carry a password: never echo it.
            SettingsError::Invalid {
                name,
                value,
                reason,
            } => SettingsError::Invalid {
                name,
                value: redact_url(&value),
                reason,
            },
            other => other,
        })
    }

    /// A URL holding a secret ([`Env::url`], kept as a [`SecretUrl`]).
    pub fn secret_url(&self, var: &Var, schemes: &[&str]) -> Result<SecretUrl, SettingsError> {
        self.url(var, schemes).map(SecretUrl)
    }
}

fn from_str<T>(text: &str) -> Result<T, String>
where
    T: FromStr,
    T::Err: std::fmt::Display,
{
    text.parse().map_err(|e: T::Err| e.to_string())
}

fn duration(text: &str) -> Result<Duration, String> {
    parse_duration(text).ok_or_else(|| "expected a duration such as 250ms, 5s or 2m".to_owned())
}

fn bytes(text: &str) -> Result<usize, String> {
    parse_bytes(text).ok_or_else(|| "expected a size such as 65536, 64KiB, 1MiB or 1GiB".to_owned())
}

/// `value` if it lies in `range`; otherwise an error naming the setting and the range.
pub fn check_range<T: PartialOrd>(
    name: &str,
    value: T,
    range: &std::ops::RangeInclusive<T>,
    show: impl Fn(&T) -> String,
) -> Result<T, SettingsError> {
    if range.contains(&value) {
        Ok(value)
    } else {
        Err(SettingsError::Invalid {
            name: name.to_owned(),
            value: show(&value),
            reason: format!(
                "must be between {} and {}",
                show(range.start()),
                show(range.end())
            ),
        })
    }
}

/// The longest duration any setting accepts (deadlines are computed as `now + d`: this
/// keeps them far from overflowing).
pub const MAX_DURATION: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// The largest byte size any setting accepts.
pub const MAX_BYTES: usize = 1 << 40;

/// A URL that may carry a password (a database URL): its `Debug` shows it with the
/// password replaced by `***`, so no settings dump, log line or error prints the secret.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretUrl(String);

impl SecretUrl {
    pub fn new(url: impl Into<String>) -> Self {
        SecretUrl(url.into())
    }

    /// The URL itself, password included: for connecting, never for printing.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for SecretUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", redact_url(&self.0))
    }
}

/// Replaces the password of `scheme://user:password@host/...` with `***`.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split(':').next().unwrap_or_default();
            format!("{scheme}://{user}:***@{host}{path}")
        }
        None => url.to_owned(),
    }
}

pub(crate) fn parse_duration(value: &str) -> Option<Duration> {
    let value = value.trim();
    let split = value
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(value.len());
    let (number, unit) = value.split_at(split);
    let number: f64 = number.parse().ok()?;
    if !number.is_finite() || number < 0.0 {
        return None;
    }
    let seconds = match unit.trim() {
        "" | "s" => number,
        "ms" => number / 1000.0,
        "m" => number * 60.0,
        "h" => number * 3600.0,
        _ => return None,
    };
    Duration::try_from_secs_f64(seconds)
        .ok()
        .filter(|d| *d <= MAX_DURATION)
}

pub(crate) fn parse_bytes(value: &str) -> Option<usize> {
    let value = value.trim();
    let split = value
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(value.len());
    let (number, unit) = value.split_at(split);
    let number: usize = number.parse().ok()?;
    let multiplier = match unit.trim() {
        "" | "B" => 1,
        "KiB" | "K" | "KB" => 1024,
        "MiB" | "M" | "MB" => 1024 * 1024,
        "GiB" | "G" | "GB" => 1024 * 1024 * 1024,
        _ => return None,
    };
    number.checked_mul(multiplier).filter(|n| *n <= MAX_BYTES)
}

#[cfg(test)]
mod tests {
    use super::*;

    const X: Var = Var::new("BOROUGH_X", "7", "test");
    const ADDR: Var = Var::new("BOROUGH_HTTP_ADDR", "", "test");
    const A: Var = Var::new("A", "", "test");
    const B: Var = Var::new("B", "", "test");
    const C: Var = Var::new("C", "", "test");
    const D: Var = Var::new("D", "", "test");
    const E: Var = Var::new("E", "", "test");

    #[test]
    fn unset_and_empty_values_take_the_declared_or_given_default() {
        let env = Env::from_pairs([("BOROUGH_X", "  ")]);
        assert_eq!(env.parse::<u32>(&X), Ok(7));
        assert_eq!(env.parse_or::<u32>(&A, 8), Ok(8));
    }

    #[test]
    fn a_bad_value_names_the_variable_and_a_bad_declaration_says_so() {
        let env = Env::from_pairs([("BOROUGH_HTTP_ADDR", "localhost:eighty")]);
        let err = env
            .socket_addr_or(&ADDR, "127.0.0.1:8080")
            .expect_err("not an address");
        assert!(
            err.to_string()
                .starts_with("BOROUGH_HTTP_ADDR=\"localhost:eighty\""),
            "{err}"
        );
        let wrong = Var::new("BOROUGH_WRONG", "soon", "test");
        let err = Env::from_pairs([("", "")])
            .duration(&wrong)
            .expect_err("not a duration");
        assert!(err.to_string().contains("declared default"), "{err}");
    }

    #[test]
    fn durations_accept_units() {
        let env = Env::from_pairs([
            ("A", "250ms"),
            ("B", "5s"),
            ("C", "2m"),
            ("D", "3"),
            ("E", "soon"),
        ]);
        let d = |v: &Var| env.duration_or(v, Duration::ZERO);
        assert_eq!(d(&A), Ok(Duration::from_millis(250)));
        assert_eq!(d(&B), Ok(Duration::from_secs(5)));
        assert_eq!(d(&C), Ok(Duration::from_secs(120)));
        assert_eq!(d(&D), Ok(Duration::from_secs(3)));
        assert!(d(&E).is_err());
    }

    #[test]
    fn byte_sizes_accept_binary_units() {
        let env = Env::from_pairs([("A", "64KiB"), ("B", "1MiB"), ("C", "100"), ("D", "1TiB")]);
        assert_eq!(env.bytes_or(&A, 0), Ok(65536));
        assert_eq!(env.bytes_or(&B, 0), Ok(1 << 20));
        assert_eq!(env.bytes_or(&C, 0), Ok(100));
        assert!(env.bytes_or(&D, 0).is_err(), "no TiB unit");
    }

    #[test]
    fn huge_durations_and_sizes_are_refused_when_parsed() {
        let env = Env::from_pairs([
            ("A", "100000000h"),
            ("B", "99999999999999999999"),
            ("C", "1000000000GiB"),
            ("D", "2GiB"),
        ]);
        assert!(env.duration_or(&A, Duration::ZERO).is_err());
        assert!(env.duration_or(&B, Duration::ZERO).is_err());
        assert!(env.bytes_or(&C, 0).is_err());
        assert_eq!(env.bytes_or(&D, 0), Ok(2 << 30));
        assert_eq!(parse_duration("3650d"), None, "no day unit");
        assert!(parse_duration(&format!("{}", MAX_DURATION.as_secs() + 1)).is_none());
    }

    #[test]
    fn ranged_settings_name_the_variable_and_the_range() {
        let env = Env::from_pairs([("A", "2h"), ("B", "0"), ("C", "1GiB")]);
        let err = env
            .duration_in_or(
                &A,
                Duration::ZERO,
                Duration::ZERO..=Duration::from_secs(3600),
            )
            .expect_err("over the range");
        assert!(
            err.to_string().contains("A=") && err.to_string().contains("between"),
            "{err}"
        );
        assert!(env.parse_in_or(&B, 5u32, 1..=10).is_err());
        assert!(env.bytes_in_or(&C, 0, 0..=1024).is_err());
        assert_eq!(env.parse_in_or(&D, 5u32, 1..=10), Ok(5));
    }

    #[test]
    fn urls_are_checked_by_scheme_and_passwords_never_echoed() {
        let db = Var::new("DB", "", "test");
        let ok = Var::new("OK", "", "test");
        let env = Env::from_pairs([
            ("DB", "mysql://app:hunter2@db/x"),
            ("OK", "postgres://db/x"),
        ]);
        let err = env
            .url(&db, &["postgres", "postgresql"])
            .expect_err("wrong scheme");
        assert!(!err.to_string().contains("hunter2"), "{err}");
        assert!(err.to_string().contains("DB="), "{err}");
        assert_eq!(
            env.url(&ok, &["postgres"]),
            Ok("postgres://db/x".to_owned())
        );
    }

    #[test]
    fn hot_values_are_read_by_their_key_with_the_same_parser_and_named_by_it() {
        let timeout =
            Var::new("BOROUGH_REQUEST_TIMEOUT", "10s", "test").hot("http.request_timeout");
        let cold = Var::new("BOROUGH_COLD", "1s", "test");
        let hot = Env::hot([("http.request_timeout", "250ms"), ("BOROUGH_COLD", "5s")]);
        assert_eq!(
            hot.duration_or(&timeout, Duration::from_secs(10)),
            Ok(Duration::from_millis(250))
        );
        // A bare number means seconds, as in the environment.
        let hot = Env::hot([("http.request_timeout", "3")]);
        assert_eq!(
            hot.duration_or(&timeout, Duration::ZERO),
            Ok(Duration::from_secs(3))
        );
        // Absent (or not hot): the value in force stays.
        assert_eq!(
            hot.duration_or(&cold, Duration::from_secs(1)),
            Ok(Duration::from_secs(1))
        );
        let err = Env::hot([("http.request_timeout", "soon")])
            .duration_or(&timeout, Duration::ZERO)
            .expect_err("not a duration");
        assert!(
            err.to_string().starts_with("http.request_timeout="),
            "{err}"
        );
    }

    #[test]
    fn a_secret_url_never_shows_its_password_in_debug() {
        let url = SecretUrl::new("postgres://app:hunter2@db:5432/x");
        assert!(!format!("{url:?}").contains("hunter2"));
        assert!(format!("{url:?}").contains("app:***@db"));
        assert_eq!(url.expose(), "postgres://app:hunter2@db:5432/x");
    }

    #[test]
    fn redact_url_hides_only_the_password() {
        assert_eq!(
            redact_url("postgres://app:secret@127.0.0.1:5432/borough"),
            "postgres://app:***@127.0.0.1:5432/borough"
        );
        assert_eq!(
            redact_url("http://127.0.0.1:50051"),
            "http://127.0.0.1:50051"
        );
    }

    const TOKEN: Var = Var::new("BOROUGH_T_TOKEN", "", "a token").secret();

    #[test]
    fn a_secret_comes_from_its_variable_or_from_the_file_its_file_variable_names()
    -> Result<(), Box<dyn std::error::Error>> {
        let dir = std::env::temp_dir().join(format!("borough-env-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let file = dir.join("token");
        std::fs::write(&file, "from-file\n")?;
        let path = file.display().to_string();

        let env = Env::from_pairs([("BOROUGH_T_TOKEN", "direct")]);
        assert_eq!(env.secret(&TOKEN), Ok(Some("direct".to_owned())));
        let env = Env::from_pairs([("BOROUGH_T_TOKEN_FILE", path.as_str())]);
        assert_eq!(env.secret(&TOKEN), Ok(Some("from-file".to_owned())));
        let unset: [(&str, &str); 0] = [];
        assert_eq!(Env::from_pairs(unset).secret(&TOKEN), Ok(None));

        // Both: refused, naming both, showing neither.
        let env = Env::from_pairs([
            ("BOROUGH_T_TOKEN", "direct"),
            ("BOROUGH_T_TOKEN_FILE", path.as_str()),
        ]);
        let error = env
            .secret(&TOKEN)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            error.contains("BOROUGH_T_TOKEN_FILE") && error.contains("not both"),
            "{error}"
        );
        assert!(
            !error.contains("direct") && !error.contains("from-file"),
            "{error}"
        );

        // A file that cannot be read: its path and why, not a panic.
        let missing = dir.join("absent").display().to_string();
        let env = Env::from_pairs([("BOROUGH_T_TOKEN_FILE", missing.as_str())]);
        let error = env
            .secret(&TOKEN)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            error.contains("absent") && error.contains("cannot read"),
            "{error}"
        );
        std::fs::remove_dir_all(&dir)?;
        Ok(())
    }

    #[test]
    fn a_secret_that_does_not_parse_is_never_echoed() {
        const URL: Var = Var::new("BOROUGH_T_URL", "", "a URL").secret();
        const NUMBER: Var = Var::new("BOROUGH_T_NUMBER", "1", "a number").secret();
        let env = Env::from_pairs([
            ("BOROUGH_T_URL", "mysql://app:hunter2@db/x"),
            ("BOROUGH_T_NUMBER", "hunter2"),
        ]);
        let error = env
            .url(&URL, &["postgres"])
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            !error.contains("hunter2") && error.contains("app:***@db"),
            "{error}"
        );
        let error = env
            .parse::<u32>(&NUMBER)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            !error.contains("hunter2") && error.contains("<redacted>"),
            "{error}"
        );
    }
}

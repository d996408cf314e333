//! Secrets at rest: the operator-given database URLs of tenants (`database_url`,
//! `read_url` in `control.tenants`) are stored sealed with AES-256-GCM (aws-lc-rs), as
//!
//! ```text
//! enc:v1:<key id>:<base64 of 12-byte nonce ‖ ciphertext ‖ 16-byte tag>
//! ```
//!
//! The associated data binds each value to its row and column (`control.tenants/<tenant
//! id>/<column>`): a value copied to another tenant or column does not open. Keys come from
//! `BOROUGH_SECRET_KEYS`, `<id>:<base64 of 32 bytes>` separated by commas; the first seals,
//! every one opens (the old ones stay listed while [`rekey`] moves values to the new one).
//!
//! Only the user service (and `borough-user migrate`/`rekey`) holds the keys; the query
//! and config services' database logins cannot even read the sealed columns.

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use sqlx::{Connection, PgConnection};
use uuid::Uuid;

/// The prefix of a sealed value (version 1 of the format).
pub const SEALED_PREFIX: &str = "enc:v1:";

/// The columns of `control.tenants` that hold secrets.
pub const SECRET_COLUMNS: [&str; 2] = ["database_url", "read_url"];

/// Why a secret could not be sealed or opened. Never carries the secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretError {
    #[error("BOROUGH_SECRET_KEYS: {0}")]
    BadKeys(String),
    #[error(
        "a tenant's {column} is sealed with key {kid:?}, which BOROUGH_SECRET_KEYS does not list"
    )]
    UnknownKey { column: String, kid: String },
    #[error(
        "a tenant's {column} does not open (altered, moved from another row, or the wrong key)"
    )]
    DoesNotOpen { column: String },
    #[error(
        "a tenant's {column} is stored in clear: run `borough-user migrate` with BOROUGH_SECRET_KEYS to seal it"
    )]
    NotSealed { column: String },
    #[error("a tenant's {column} is sealed but BOROUGH_SECRET_KEYS is not set")]
    NoKeys { column: String },
    #[error("the system random generator failed")]
    Random,
    #[error("{0} tenant database URLs are stored in clear: set BOROUGH_SECRET_KEYS to seal them")]
    ClearWithoutKeys(i64),
}

/// The keys: the first seals, all open.
pub struct Keyring {
    keys: Vec<(String, LessSafeKey)>,
    random: SystemRandom,
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Key ids only, never key material.
        f.debug_struct("Keyring")
            .field("ids", &self.ids())
            .finish_non_exhaustive()
    }
}

fn is_key_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 32
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

impl Keyring {
    /// Parses `BOROUGH_SECRET_KEYS` (`<id>:<base64 of 32 bytes>[,...]`). The error names
    /// the entry by position, never its value.
    pub fn parse(spec: &str) -> Result<Keyring, SecretError> {
        let mut keys: Vec<(String, LessSafeKey)> = Vec::new();
        for (n, entry) in spec.split(',').map(str::trim).enumerate() {
            let bad = |why: &str| SecretError::BadKeys(format!("entry {}: {why}", n + 1));
            let (id, material) = entry
                .split_once(':')
                .ok_or_else(|| bad("expected <id>:<base64 key>"))?;
            if !is_key_id(id) {
                return Err(bad("the id must be 1 to 32 of [A-Za-z0-9_-]"));
            }
            if keys.iter().any(|(k, _)| k == id) {
                return Err(bad("the id is listed twice"));
            }
            let bytes = B64
                .decode(material.trim())
                .map_err(|_| bad("the key is not base64"))?;
            if bytes.len() != 32 {
                return Err(bad("the key must be 32 bytes (AES-256)"));
            }
            let key = UnboundKey::new(&AES_256_GCM, &bytes).map_err(|_| bad("unusable key"))?;
            keys.push((id.to_owned(), LessSafeKey::new(key)));
        }
        if keys.is_empty() {
            return Err(SecretError::BadKeys("no key".to_owned()));
        }
        Ok(Keyring {
            keys,
            random: SystemRandom::new(),
        })
    }

    /// A new key entry for `BOROUGH_SECRET_KEYS`, `<id>:<base64>`.
    pub fn generate_entry(id: &str) -> Result<String, SecretError> {
        if !is_key_id(id) {
            return Err(SecretError::BadKeys(
                "the id must be 1 to 32 of [A-Za-z0-9_-]".to_owned(),
            ));
        }
        let mut bytes = [0u8; 32];
        SystemRandom::new()
            .fill(&mut bytes)
            .map_err(|_| SecretError::Random)?;
        Ok(format!("{id}:{}", B64.encode(bytes)))
    }

    /// The key ids, the sealing one first.
    pub fn ids(&self) -> Vec<&str> {
        self.keys.iter().map(|(id, _)| id.as_str()).collect()
    }

    /// The id of the key new values are sealed with.
    pub fn current(&self) -> &str {
        &self.keys[0].0
    }

    /// Seals `plaintext` for `column` of `tenant`'s row.
    pub fn seal(&self, tenant: Uuid, column: &str, plaintext: &str) -> Result<String, SecretError> {
        let (id, key) = &self.keys[0];
        let mut nonce = [0u8; NONCE_LEN];
        self.random
            .fill(&mut nonce)
            .map_err(|_| SecretError::Random)?;
        let mut sealed = plaintext.as_bytes().to_vec();
        key.seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(aad(tenant, column).as_bytes()),
            &mut sealed,
        )
        .map_err(|_| SecretError::DoesNotOpen {
            column: column.to_owned(),
        })?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&sealed);
        Ok(format!("{SEALED_PREFIX}{id}:{}", B64.encode(out)))
    }

    /// Opens a value [`Keyring::seal`] made for `column` of `tenant`'s row.
    pub fn open(&self, tenant: Uuid, column: &str, sealed: &str) -> Result<String, SecretError> {
        let not = || SecretError::DoesNotOpen {
            column: column.to_owned(),
        };
        let (kid, body) = sealed
            .strip_prefix(SEALED_PREFIX)
            .and_then(|rest| rest.split_once(':'))
            .ok_or_else(|| SecretError::NotSealed {
                column: column.to_owned(),
            })?;
        let key = self
            .keys
            .iter()
            .find(|(id, _)| id == kid)
            .map(|(_, key)| key)
            .ok_or_else(|| SecretError::UnknownKey {
                column: column.to_owned(),
                kid: kid.chars().take(32).collect(),
            })?;
        let bytes = B64.decode(body).map_err(|_| not())?;
        if bytes.len() < NONCE_LEN + AES_256_GCM.tag_len() {
            return Err(not());
        }
        let (nonce, rest) = bytes.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| not())?;
        let mut buffer = rest.to_vec();
        let plain = key
            .open_in_place(
                nonce,
                Aad::from(aad(tenant, column).as_bytes()),
                &mut buffer,
            )
            .map_err(|_| not())?;
        String::from_utf8(plain.to_vec()).map_err(|_| not())
    }

    /// The id of the key `sealed` was sealed with.
    pub fn key_of(sealed: &str) -> Option<&str> {
        sealed
            .strip_prefix(SEALED_PREFIX)?
            .split_once(':')
            .map(|(kid, _)| kid)
    }
}

/// What binds a sealed value to its place.
fn aad(tenant: Uuid, column: &str) -> String {
    format!("control.tenants/{tenant}/{column}")
}

/// Opens a stored secret column: `None` stays `None`; a sealed value needs `keys`.
pub fn open_column(
    keys: Option<&Keyring>,
    tenant: Uuid,
    column: &str,
    stored: Option<String>,
) -> Result<Option<String>, SecretError> {
    let Some(stored) = stored else {
        return Ok(None);
    };
    if !stored.starts_with(SEALED_PREFIX) {
        return Err(SecretError::NotSealed {
            column: column.to_owned(),
        });
    }
    match keys {
        Some(keys) => keys.open(tenant, column, &stored).map(Some),
        None => Err(SecretError::NoKeys {
            column: column.to_owned(),
        }),
    }
}

/// What [`seal_all`] did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SealReport {
    /// Values stored in clear, now sealed.
    pub sealed: usize,
    /// Values sealed under another key, now under the current one (`rekey`).
    pub resealed: usize,
    /// Values already under the current key.
    pub unchanged: usize,
}

/// Seals every secret column of `control.tenants` stored in clear (and fills the
/// locations derived from it); with `rekey`, also moves values sealed under an older key
/// to the current one. One transaction: all rows or none. Fails, naming the column, on a
/// value that does not open.
pub async fn seal_all(
    conn: &mut PgConnection,
    keys: &Keyring,
    rekey: bool,
) -> Result<SealReport, SealError> {
    let mut tx = conn.begin().await?;
    #[derive(sqlx::FromRow)]
    struct Urls {
        id: Uuid,
        database_url: Option<String>,
        read_url: Option<String>,
    }
    let rows: Vec<Urls> = sqlx::query_as(
        "SELECT id, database_url, read_url FROM control.tenants
          WHERE database_url IS NOT NULL OR read_url IS NOT NULL
          ORDER BY id FOR UPDATE",
    )
    .fetch_all(&mut *tx)
    .await?;
    let mut report = SealReport::default();
    for Urls {
        id,
        database_url,
        read_url,
    } in rows
    {
        let mut values = Vec::new();
        for (column, stored) in [("database_url", database_url), ("read_url", read_url)] {
            let Some(stored) = stored else {
                values.push((None, None));
                continue;
            };
            let plain = if !stored.starts_with(SEALED_PREFIX) {
                report.sealed += 1;
                stored
            } else if rekey && Keyring::key_of(&stored) != Some(keys.current()) {
                report.resealed += 1;
                keys.open(id, column, &stored)?
            } else {
                report.unchanged += 1;
                // Check it opens: a rekey that leaves a value behind would lose it later.
                let plain = keys.open(id, column, &stored)?;
                values.push((Some(stored), location_of(&plain)));
                continue;
            };
            let location = location_of(&plain);
            values.push((Some(keys.seal(id, column, &plain)?), location));
        }
        sqlx::query(
            "UPDATE control.tenants
                SET database_url = $2, read_url = $3,
                    database_location = COALESCE($4, database_location),
                    read_location = COALESCE($5, read_location)
              WHERE id = $1",
        )
        .bind(id)
        .bind(&values[0].0)
        .bind(&values[1].0)
        .bind(&values[0].1)
        .bind(&values[1].1)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok(report)
}

/// What `borough-user migrate` (and `rekey`) does with the secrets: seals what is in clear
/// (and, with `rekey`, moves everything to the current key), then validates that every
/// row is sealed. Without keys it only checks that nothing is in clear.
pub async fn seal_stored(
    conn: &mut PgConnection,
    keys: Option<&Keyring>,
    rekey: bool,
) -> Result<SealReport, SealError> {
    let report = match keys {
        Some(keys) => seal_all(conn, keys, rekey).await?,
        None => {
            let clear: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM control.tenants
                  WHERE database_url NOT LIKE 'enc:v1:%' OR read_url NOT LIKE 'enc:v1:%'",
            )
            .fetch_one(&mut *conn)
            .await?;
            if clear > 0 {
                return Err(SecretError::ClearWithoutKeys(clear).into());
            }
            SealReport::default()
        }
    };
    sqlx::query("ALTER TABLE control.tenants VALIDATE CONSTRAINT tenants_urls_sealed")
        .execute(&mut *conn)
        .await?;
    Ok(report)
}

/// Why [`seal_all`] stopped (nothing was changed).
#[derive(Debug, thiserror::Error)]
pub enum SealError {
    #[error(transparent)]
    Secret(#[from] SecretError),
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

/// `postgres://host:port/database` of a PostgreSQL URL: where it points, without user,
/// password or options. `None` when it does not parse.
pub fn location_of(url: &str) -> Option<String> {
    let options: sqlx::postgres::PgConnectOptions = url.parse().ok()?;
    let host = options.get_host();
    let host = if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]")
    } else {
        host.to_owned()
    };
    Some(format!(
        "postgres://{host}:{}/{}",
        options.get_port(),
        options.get_database()?
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_location_keeps_where_a_url_points_and_drops_who_and_how() {
        assert_eq!(
            location_of(
                "postgres://u:hunter2@db.example:6432/tenant?sslmode=verify-full&application_name=x"
            )
            .as_deref(),
            Some("postgres://db.example:6432/tenant")
        );
        assert_eq!(
            location_of("postgresql://u@[::1]/d").as_deref(),
            Some("postgres://[::1]:5432/d")
        );
        assert_eq!(location_of("not a url"), None);
    }

    fn ring(spec: &str) -> Keyring {
        Keyring::parse(spec).expect("keys")
    }

    const K1: &str = "k1:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
    const K2: &str = "k2:ICEiIyQlJicoKSorLC0uLzAxMjM0NTY3ODk6Ozw9Pj8=";

    #[test]
    fn a_sealed_value_opens_only_for_its_row_and_column_and_never_shows_the_secret() {
        let keys = ring(K1);
        let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
        let url = "postgres://u:hunter2@db.example/x";
        let sealed = keys.seal(a, "database_url", url).expect("sealed");
        assert!(sealed.starts_with("enc:v1:k1:"));
        assert!(!sealed.contains("hunter2"));
        assert_ne!(
            sealed,
            keys.seal(a, "database_url", url).expect("again"),
            "fresh nonce"
        );
        assert_eq!(keys.open(a, "database_url", &sealed).as_deref(), Ok(url));
        assert!(matches!(
            keys.open(b, "database_url", &sealed),
            Err(SecretError::DoesNotOpen { .. })
        ));
        assert!(matches!(
            keys.open(a, "read_url", &sealed),
            Err(SecretError::DoesNotOpen { .. })
        ));
        let mut tampered = sealed.clone();
        tampered.pop();
        tampered.push(if sealed.ends_with('A') { 'B' } else { 'A' });
        assert!(keys.open(a, "database_url", &tampered).is_err());
    }

    #[test]
    fn the_first_key_seals_and_every_listed_key_opens() {
        let old = ring(K1);
        let tenant = Uuid::now_v7();
        let sealed = old
            .seal(tenant, "read_url", "postgres://r@h/d")
            .expect("sealed");
        let both = ring(&format!("{K2},{K1}"));
        assert_eq!(both.current(), "k2");
        assert_eq!(
            both.open(tenant, "read_url", &sealed).as_deref(),
            Ok("postgres://r@h/d")
        );
        let new_only = ring(K2);
        assert_eq!(
            new_only.open(tenant, "read_url", &sealed),
            Err(SecretError::UnknownKey {
                column: "read_url".into(),
                kid: "k1".into()
            })
        );
    }

    #[test]
    fn bad_key_lists_are_refused_without_echoing_them() {
        for spec in [
            "",
            "k1",
            "k1:notbase64!",
            "k1:AAAA",
            "bad id:AAAA",
            &format!("{K1},{K1}"),
        ] {
            let err = Keyring::parse(spec).expect_err(spec);
            assert!(!err.to_string().contains("AAEC"), "{err}");
        }
        let entry = Keyring::generate_entry("k3").expect("entry");
        assert!(Keyring::parse(&entry).is_ok());
        assert!(!format!("{:?}", ring(K1)).contains("AAEC"));
    }

    #[test]
    fn clear_values_and_missing_keys_are_errors_not_silent_passes() {
        let tenant = Uuid::now_v7();
        assert_eq!(
            open_column(
                None,
                tenant,
                "database_url",
                Some("postgres://u:p@h/d".into())
            ),
            Err(SecretError::NotSealed {
                column: "database_url".into()
            })
        );
        let sealed = ring(K1).seal(tenant, "database_url", "x").expect("sealed");
        assert_eq!(
            open_column(None, tenant, "database_url", Some(sealed)),
            Err(SecretError::NoKeys {
                column: "database_url".into()
            })
        );
        assert_eq!(open_column(None, tenant, "read_url", None), Ok(None));
    }
}

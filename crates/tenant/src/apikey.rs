//! API keys: `bk_<prefix>_<secret>`.
//!
//! The prefix (12 hex digits) is the public half, stored in clear for lookup and shown in
//! listings; the secret (32 hex digits, 128 random bits) is never stored. What is stored
//! is the SHA-256 of the whole key: a fast hash is right for a random 128-bit secret (no
//! dictionary to guard against), and it keeps authentication cheap on the hot path.

use sha2::{Digest, Sha256};

const SCHEME: &str = "bk";
const PREFIX_BYTES: usize = 6;
const SECRET_BYTES: usize = 16;

/// A newly issued key: the plain text is returned to the caller once (and never shown
/// by `Debug`).
#[derive(Clone)]
pub struct IssuedKey {
    pub prefix: String,
    pub plain: String,
    pub hash: [u8; 32],
}

impl std::fmt::Debug for IssuedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuedKey")
            .field("prefix", &self.prefix)
            .field("plain", &"<redacted>")
            .finish_non_exhaustive()
    }
}

/// A key as presented by a caller, split for lookup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PresentedKey {
    pub prefix: String,
    pub hash: [u8; 32],
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KeyError {
    #[error("the API key is malformed")]
    Malformed,
    #[error("the system random number generator failed")]
    Rng,
}

/// Issues a new random key.
pub fn issue() -> Result<IssuedKey, KeyError> {
    let mut prefix = [0u8; PREFIX_BYTES];
    let mut secret = [0u8; SECRET_BYTES];
    getrandom::fill(&mut prefix).map_err(|_| KeyError::Rng)?;
    getrandom::fill(&mut secret).map_err(|_| KeyError::Rng)?;
    let prefix = hex::encode(prefix);
    let plain = format!("{SCHEME}_{prefix}_{}", hex::encode(secret));
    let hash = hash(&plain);
    Ok(IssuedKey {
        prefix,
        plain,
        hash,
    })
}

/// Parses a presented key. Any deviation from the format is `Malformed`.
pub fn parse(presented: &str) -> Result<PresentedKey, KeyError> {
    let mut parts = presented.split('_');
    let (scheme, prefix, secret) = (
        parts.next().ok_or(KeyError::Malformed)?,
        parts.next().ok_or(KeyError::Malformed)?,
        parts.next().ok_or(KeyError::Malformed)?,
    );
    let is_hex = |s: &str, len: usize| {
        s.len() == len
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    if scheme != SCHEME
        || parts.next().is_some()
        || !is_hex(prefix, PREFIX_BYTES * 2)
        || !is_hex(secret, SECRET_BYTES * 2)
    {
        return Err(KeyError::Malformed);
    }
    Ok(PresentedKey {
        prefix: prefix.to_owned(),
        hash: hash(presented),
    })
}

/// SHA-256 of a key (or any token).
pub fn hash(plain: &str) -> [u8; 32] {
    Sha256::digest(plain.as_bytes()).into()
}

/// Compares two digests in constant time.
pub fn digests_equal(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_issued_key_parses_to_its_prefix_and_hash() {
        let key = issue().expect("rng");
        let presented = parse(&key.plain).expect("well-formed");
        assert_eq!(presented.prefix, key.prefix);
        assert!(digests_equal(&presented.hash, &key.hash));
        assert!(key.plain.starts_with("bk_"));
    }

    #[test]
    fn an_issued_key_never_shows_its_secret_in_debug() {
        let key = issue().expect("rng");
        let secret = key.plain.rsplit('_').next().unwrap_or_default().to_owned();
        assert!(!format!("{key:?}").contains(&secret));
    }

    #[test]
    fn two_issued_keys_differ() {
        let (a, b) = (issue().expect("rng"), issue().expect("rng"));
        assert_ne!(a.plain, b.plain);
        assert_ne!(a.prefix, b.prefix);
    }

    #[test]
    fn malformed_keys_are_rejected() {
        for bad in [
            "",
            "bk_",
            "bk_0123456789ab",
            "xx_0123456789ab_0123456789abcdef0123456789abcdef",
            "bk_0123456789AB_0123456789abcdef0123456789abcdef",
            "bk_0123456789ab_0123456789abcdef0123456789abcde",
            "bk_0123456789ab_0123456789abcdef0123456789abcdef_x",
        ] {
            assert_eq!(parse(bad), Err(KeyError::Malformed), "{bad:?}");
        }
    }

    #[test]
    fn digest_comparison_detects_any_difference() {
        let a = hash("one");
        let mut b = a;
        assert!(digests_equal(&a, &b));
        b[31] ^= 1;
        assert!(!digests_equal(&a, &b));
        assert!(!digests_equal(&a, &b[..31]));
    }
}

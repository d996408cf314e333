//! Field validation. Each function returns the value to store, or a message for the
//! caller naming the field.

/// A display name: trimmed, 1 to 200 characters, no control characters.
pub fn name(raw: &str) -> Result<String, String> {
    let name = raw.trim();
    if name.is_empty() {
        return Err("name must not be empty".to_owned());
    }
    if name.chars().count() > 200 {
        return Err("name must be at most 200 characters".to_owned());
    }
    if name.chars().any(char::is_control) {
        return Err("name must not contain control characters".to_owned());
    }
    Ok(name.to_owned())
}

/// An email address: trimmed, at most 254 bytes, `local@domain` with a dotted domain and
/// no spaces. Deliverability is not checked; uniqueness is per tenant, ignoring case.
pub fn email(raw: &str) -> Result<String, String> {
    let email = raw.trim();
    if email.len() > 254 {
        // Not echoed: an error must not grow with the input.
        return Err(format!(
            "email is {} bytes long; an address is at most 254",
            email.len()
        ));
    }
    let invalid = || Err(format!("email {email:?} is not a valid address"));
    if email.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return invalid();
    }
    let Some((local, domain)) = email.rsplit_once('@') else {
        return invalid();
    };
    let domain_ok = domain.contains('.')
        && !domain.starts_with('.')
        && !domain.ends_with('.')
        && !domain.contains("..")
        && domain
            .chars()
            .all(|c| c.is_alphanumeric() || c == '.' || c == '-');
    if local.is_empty() || local.len() > 64 || local.contains('@') || !domain_ok {
        return invalid();
    }
    Ok(email.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_trimmed_and_bounded() {
        assert_eq!(name("  Ada Lovelace "), Ok("Ada Lovelace".to_owned()));
        assert!(name("   ").is_err());
        assert!(name(&"x".repeat(201)).is_err());
        assert!(name("a\u{0}b").is_err());
        assert!(name(&"é".repeat(200)).is_ok());
    }

    #[test]
    fn plausible_emails_pass_and_malformed_ones_fail() {
        assert_eq!(email(" ada@example.com "), Ok("ada@example.com".to_owned()));
        assert!(email("ada.l+tag@mail.example.co.uk").is_ok());
        for bad in [
            "",
            "ada",
            "ada@",
            "@example.com",
            "ada@example",
            "ada@@example.com",
            "ada lovelace@example.com",
            "ada@.example.com",
            "ada@example..com",
            "ada@exa_mple.com",
        ] {
            assert!(email(bad).is_err(), "{bad:?}");
        }
    }
}

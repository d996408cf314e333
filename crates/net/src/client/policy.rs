//! Which calls may be sent twice: named by the service that calls.

/// Which calls may be sent twice.
#[derive(Debug, Clone, Copy, Default)]
pub struct RetryPolicy {
    /// Full method paths (`/package.Service/Method`) safe to repeat as they are.
    pub idempotent: &'static [&'static str],
    /// Methods safe to repeat when the call carries an `idempotency-key`.
    pub keyed: &'static [&'static str],
}

impl RetryPolicy {
    pub(super) fn allows(&self, path: &str, has_key: bool) -> bool {
        self.idempotent.contains(&path) || (has_key && self.keyed.contains(&path))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_policy_needs_an_idempotent_method_or_a_key() {
        let policy = RetryPolicy {
            idempotent: &["/s.S/Get"],
            keyed: &["/s.S/Create"],
        };
        assert!(policy.allows("/s.S/Get", false));
        assert!(!policy.allows("/s.S/Create", false));
        assert!(policy.allows("/s.S/Create", true));
        assert!(!policy.allows("/s.S/Delete", true));
    }
}

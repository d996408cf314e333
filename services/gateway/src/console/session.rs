//! Console sessions: an operator signs in once with the admin token and gets a cookie.
//!
//! - The cookie (`borough_console`) is `HttpOnly`, `SameSite=Strict`, `Path=/`, `Secure`
//!   when the request came over TLS, and a session cookie (no `Max-Age`: the browser
//!   forgets it when it closes). It names a random 256-bit id; the gateway keeps only its
//!   SHA-256, so a memory dump gives no usable cookie.
//! - A session ends after `BOROUGH_CONSOLE_IDLE_TIMEOUT` without a request, at sign-out,
//!   and when the admin token changes (rotated through `platform/gateway`): it remembers
//!   the token it was opened with.
//! - Every change made with the cookie needs the session's CSRF token in `X-CSRF-Token`
//!   (synchronizer token: given to the page at sign-in, or by `GET /console/session` to a
//!   same-origin page after a reload). A request with an `Authorization` header is not a
//!   console request and needs none (a bearer token is not sent by the browser on its own).
//! - At most `BOROUGH_CONSOLE_MAX_SESSIONS` at once: beyond that the least recently used
//!   goes. Sessions live in the gateway replica that opened them.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use borough_config_client::{Env, SettingsError, Var};
use borough_tenant::apikey;

/// The session cookie's name.
pub const COOKIE: &str = "borough_console";
/// The header carrying the CSRF token on a change.
pub const CSRF_HEADER: &str = "x-csrf-token";

/// How console sessions are bounded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionSettings {
    /// [`SessionSettings::IDLE_TIMEOUT`].
    pub idle_timeout: Duration,
    /// [`SessionSettings::MAX_SESSIONS`].
    pub max_sessions: usize,
}

impl SessionSettings {
    pub const IDLE_TIMEOUT: Var = Var::new(
        "BOROUGH_CONSOLE_IDLE_TIMEOUT",
        "30m",
        "How long a console session lasts without a request (1m to 24h)",
    );
    pub const MAX_SESSIONS: Var = Var::new(
        "BOROUGH_CONSOLE_MAX_SESSIONS",
        "100",
        "Console sessions kept at once per gateway replica; beyond it the least recently \
         used ends (1 to 10000)",
    );

    pub const VARS: &[&Var] = &[&Self::IDLE_TIMEOUT, &Self::MAX_SESSIONS];

    pub fn from_env(env: &Env) -> Result<Self, SettingsError> {
        Ok(SessionSettings {
            idle_timeout: env.duration_in(
                &Self::IDLE_TIMEOUT,
                Duration::from_secs(60)..=Duration::from_secs(24 * 3600),
            )?,
            max_sessions: env.parse_in(&Self::MAX_SESSIONS, 1..=10_000)?,
        })
    }
}

impl Default for SessionSettings {
    fn default() -> Self {
        SessionSettings {
            idle_timeout: Duration::from_secs(30 * 60),
            max_sessions: 100,
        }
    }
}

struct Session {
    csrf: String,
    /// The admin token's SHA-256 when the session began.
    token: [u8; 32],
    last_seen: Instant,
}

/// The sessions of this gateway replica.
pub struct Sessions {
    settings: SessionSettings,
    /// By the SHA-256 of the cookie's id.
    entries: Mutex<HashMap<[u8; 32], Session>>,
}

/// What a valid session gives: its CSRF token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Live {
    pub csrf: String,
}

/// Why a console request is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// No session cookie.
    NotSignedIn,
    /// A cookie of a session that has ended (idle, signed out, another admin token).
    Ended,
    /// A change without the session's CSRF token.
    Csrf,
}

impl Refused {
    /// The problem a refused request gets: 403 for the CSRF token, else 401.
    pub fn problem(self) -> borough_error::Problem {
        use borough_error::{ErrorKind, Problem};
        match self {
            Refused::NotSignedIn => Problem::new(ErrorKind::Unauthenticated, "not signed in"),
            Refused::Ended => Problem::new(
                ErrorKind::Unauthenticated,
                "the console session has ended: sign in again",
            ),
            Refused::Csrf => Problem::new(
                ErrorKind::PermissionDenied,
                "the CSRF token is missing or wrong: reload the console",
            ),
        }
    }
}

/// A started session: the cookie's id (for the browser only) and the CSRF token.
pub struct Started {
    pub id: String,
    pub csrf: String,
}

fn random_token() -> Result<String, getrandom::Error> {
    let mut bytes = [0_u8; 32];
    getrandom::fill(&mut bytes)?;
    Ok(hex::encode(bytes))
}

impl Sessions {
    pub fn new(settings: SessionSettings) -> Self {
        Sessions {
            settings,
            entries: Mutex::new(HashMap::new()),
        }
    }

    pub fn idle_timeout(&self) -> Duration {
        self.settings.idle_timeout
    }

    /// A new session for the admin whose token hashes to `token`.
    pub fn start(&self, token: [u8; 32]) -> Result<Started, getrandom::Error> {
        let started = Started {
            id: random_token()?,
            csrf: random_token()?,
        };
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if entries.len() >= self.settings.max_sessions {
            let idle = self.settings.idle_timeout;
            entries.retain(|_, s| s.last_seen.elapsed() < idle);
        }
        while entries.len() >= self.settings.max_sessions {
            let oldest = entries
                .iter()
                .min_by_key(|(_, s)| s.last_seen)
                .map(|(k, _)| *k);
            match oldest {
                Some(key) => entries.remove(&key),
                None => break,
            };
        }
        entries.insert(
            apikey::hash(&started.id),
            Session {
                csrf: started.csrf.clone(),
                token,
                last_seen: Instant::now(),
            },
        );
        Ok(started)
    }

    /// The session `id` names, if it is live and was opened with the current admin token
    /// (`current`); using it keeps it alive. A dead one is forgotten.
    pub fn check(&self, id: &str, current: Option<&[u8; 32]>) -> Option<Live> {
        let key = apikey::hash(id);
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        let session = entries.get_mut(&key)?;
        let live = session.last_seen.elapsed() < self.settings.idle_timeout
            && current.is_some_and(|t| apikey::digests_equal(t, &session.token));
        if !live {
            entries.remove(&key);
            return None;
        }
        session.last_seen = Instant::now();
        Some(Live {
            csrf: session.csrf.clone(),
        })
    }

    /// The live session a request's cookie names, its CSRF token checked when the request
    /// is a change: what the admin API, the session's page and sign-out all ask.
    pub fn authorize<'h>(
        &self,
        headers: &'h http::HeaderMap,
        method: &http::Method,
        current: Option<&[u8; 32]>,
    ) -> Result<(&'h str, Live), Refused> {
        let id = cookie(headers).ok_or(Refused::NotSignedIn)?;
        let live = self.check(id, current).ok_or(Refused::Ended)?;
        if is_change(method) && !csrf_matches(headers, &live.csrf) {
            return Err(Refused::Csrf);
        }
        Ok((id, live))
    }

    /// Ends the session `id` names (sign-out).
    pub fn end(&self, id: &str) {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        entries.remove(&apikey::hash(id));
    }
}

/// The session id in the request's cookies, if any.
pub fn cookie(headers: &http::HeaderMap) -> Option<&str> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value.trim())
        .filter(|value| !value.is_empty())
}

/// Whether the request is a change (anything but GET, HEAD and OPTIONS).
pub fn is_change(method: &http::Method) -> bool {
    !matches!(
        *method,
        http::Method::GET | http::Method::HEAD | http::Method::OPTIONS
    )
}

/// Whether the request's CSRF header carries `expected`.
pub fn csrf_matches(headers: &http::HeaderMap, expected: &str) -> bool {
    headers
        .get(CSRF_HEADER)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|given| apikey::digests_equal(given.as_bytes(), expected.as_bytes()))
}

/// The `Set-Cookie` value that starts (`Some(id)`) or clears (`None`) the session cookie.
pub fn set_cookie(id: Option<&str>, secure: bool) -> String {
    let secure = if secure { "; Secure" } else { "" };
    match id {
        Some(id) => format!("{COOKIE}={id}; Path=/; HttpOnly; SameSite=Strict{secure}"),
        None => format!("{COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0{secure}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(idle_ms: u64, max: usize) -> SessionSettings {
        SessionSettings {
            idle_timeout: Duration::from_millis(idle_ms),
            max_sessions: max,
        }
    }

    #[test]
    fn a_session_lives_while_used_and_ends_idle_at_sign_out_or_with_a_new_admin_token()
    -> Result<(), getrandom::Error> {
        let sessions = Sessions::new(settings(200, 10));
        let token = apikey::hash("the-admin-token-1");
        let s = sessions.start(token)?;
        assert_eq!(
            sessions.check(&s.id, Some(&token)),
            Some(Live {
                csrf: s.csrf.clone()
            })
        );
        assert_eq!(sessions.check("not-a-session", Some(&token)), None);
        // Another admin token (rotated): over.
        let rotated = apikey::hash("the-admin-token-2");
        assert_eq!(sessions.check(&s.id, Some(&rotated)), None);
        assert_eq!(sessions.check(&s.id, Some(&token)), None);
        // Idle: over.
        let s = sessions.start(token)?;
        std::thread::sleep(Duration::from_millis(250));
        assert_eq!(sessions.check(&s.id, Some(&token)), None);
        // Signed out: over.
        let s = sessions.start(token)?;
        sessions.end(&s.id);
        assert_eq!(sessions.check(&s.id, Some(&token)), None);
        Ok(())
    }

    #[test]
    fn sessions_never_exceed_their_bound_and_the_least_recently_used_goes_first()
    -> Result<(), getrandom::Error> {
        let sessions = Sessions::new(settings(60_000, 2));
        let token = apikey::hash("the-admin-token-1");
        let (a, b) = (sessions.start(token)?, sessions.start(token)?);
        std::thread::sleep(Duration::from_millis(5));
        assert!(sessions.check(&a.id, Some(&token)).is_some()); // a used after b
        let c = sessions.start(token)?;
        assert!(sessions.check(&b.id, Some(&token)).is_none());
        assert!(sessions.check(&a.id, Some(&token)).is_some());
        assert!(sessions.check(&c.id, Some(&token)).is_some());
        let len = sessions.entries.lock().map(|e| e.len()).unwrap_or(0);
        assert_eq!(len, 2);
        Ok(())
    }

    #[test]
    fn the_cookie_is_found_among_others_and_set_with_every_attribute() {
        let mut headers = http::HeaderMap::new();
        headers.insert(
            http::header::COOKIE,
            http::HeaderValue::from_static("a=1; borough_console=abc; b=2"),
        );
        assert_eq!(cookie(&headers), Some("abc"));
        assert_eq!(
            set_cookie(Some("abc"), true),
            "borough_console=abc; Path=/; HttpOnly; SameSite=Strict; Secure"
        );
        assert!(set_cookie(None, false).contains("Max-Age=0"));
        assert!(!set_cookie(Some("abc"), false).contains("Secure"));
    }
}

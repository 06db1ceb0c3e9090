//! Dashboard sessions: a random secret in an `HttpOnly; Secure; SameSite=Strict` cookie, kept
//! here only as its SHA-256, with a CSRF token that every state-changing request must echo in
//! `X-CSRF-Token`. Bounded in number, idle time and age.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bulwark_auth::token::{Role, digest, random_secret, same};

/// The cookie's name.
pub const COOKIE: &str = "bulwark_session";
/// Sessions held at most; a login beyond this ends the oldest one.
pub const MAX_SESSIONS: usize = 1000;
/// A session unused for this long ends.
pub const IDLE: Duration = Duration::from_secs(30 * 60);
/// A session ends this long after its login, used or not.
pub const LIFETIME: Duration = Duration::from_secs(8 * 3600);

/// One logged-in dashboard user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    /// The password-store user.
    pub user: String,
    /// Their role (from their groups).
    pub role: Role,
    /// What state-changing requests must carry in `X-CSRF-Token`.
    pub csrf: String,
    created: Instant,
    used: Instant,
}

/// The sessions in force, by the SHA-256 of their cookie.
#[derive(Debug, Default)]
pub struct Sessions {
    table: Mutex<HashMap<[u8; 32], Session>>,
}

impl Sessions {
    /// A new session for `user`; the cookie's secret and the session. `None` if the system's
    /// random source fails.
    pub fn open(&self, user: &str, role: Role, now: Instant) -> Option<(String, Session)> {
        let secret = random_secret(32)?;
        let session = Session {
            user: user.to_owned(),
            role,
            csrf: random_secret(32)?,
            created: now,
            used: now,
        };
        let mut table = self.lock();
        table.retain(|_, s| live(s, now));
        if table.len() >= MAX_SESSIONS
            && let Some(oldest) = table
                .iter()
                .min_by_key(|(_, s)| s.used)
                .map(|(key, _)| *key)
        {
            table.remove(&oldest);
        }
        table.insert(digest(secret.as_bytes()), session.clone());
        Some((secret, session))
    }

    /// The session of a cookie's secret, if it is in force (and marks it used).
    pub fn get(&self, secret: &str, now: Instant) -> Option<Session> {
        let key = digest(secret.as_bytes());
        let mut table = self.lock();
        match table.get_mut(&key) {
            Some(session) if live(session, now) => {
                session.used = now;
                Some(session.clone())
            }
            Some(_) => {
                table.remove(&key);
                None
            }
            None => None,
        }
    }

    /// Ends the session of a cookie's secret.
    pub fn close(&self, secret: &str) {
        self.lock().remove(&digest(secret.as_bytes()));
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; 32], Session>> {
        // Every update under this lock is one step: a poisoned lock is taken as it is.
        self.table
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl Session {
    /// Whether `presented` is this session's CSRF token.
    pub fn csrf_matches(&self, presented: &str) -> bool {
        same(self.csrf.as_bytes(), presented.as_bytes())
    }
}

fn live(session: &Session, now: Instant) -> bool {
    now.saturating_duration_since(session.used) < IDLE
        && now.saturating_duration_since(session.created) < LIFETIME
}

/// A `Set-Cookie` value for `secret` (empty with `max_age` 0: the cookie is removed).
pub fn cookie(secret: &str, max_age: Duration) -> String {
    format!(
        "{COOKIE}={secret}; Path=/; HttpOnly; Secure; SameSite=Strict; Max-Age={}",
        max_age.as_secs()
    )
}

/// The session cookie's secret in a `Cookie` header, if there is one.
pub fn from_header(header: &str) -> Option<&str> {
    header
        .split(';')
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value.trim())
        .filter(|v| !v.is_empty())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests")]
mod tests {
    use super::*;

    #[test]
    fn sessions_end_when_idle_old_closed_or_crowded_out() {
        let sessions = Sessions::default();
        let t0 = Instant::now();
        let (secret, session) = sessions.open("alice", Role::Operator, t0).unwrap();
        assert_eq!(sessions.get(&secret, t0).unwrap(), session);
        assert!(sessions.get("forged", t0).is_none());
        // Used within the idle time, it lives on; until its lifetime.
        let mut t = t0;
        while t < t0 + LIFETIME - IDLE {
            t += IDLE / 2;
            assert!(sessions.get(&secret, t).is_some());
        }
        assert!(sessions.get(&secret, t0 + LIFETIME).is_none());
        let (idle, _) = sessions.open("bob", Role::Viewer, t0).unwrap();
        assert!(sessions.get(&idle, t0 + IDLE).is_none());
        let (closed, _) = sessions.open("carol", Role::Viewer, t0).unwrap();
        sessions.close(&closed);
        assert!(sessions.get(&closed, t0).is_none());
        let (first, _) = sessions.open("dave", Role::Viewer, t0).unwrap();
        for n in 0..MAX_SESSIONS {
            let later = t0 + Duration::from_millis(1 + n as u64);
            sessions.open("eve", Role::Viewer, later).unwrap();
        }
        assert!(sessions.get(&first, t0 + Duration::from_secs(2)).is_none());
    }

    #[test]
    fn the_cookie_is_strict_and_read_back() {
        let set = cookie("abc", Duration::from_secs(60));
        for attribute in [
            "HttpOnly",
            "Secure",
            "SameSite=Strict",
            "Path=/",
            "Max-Age=60",
        ] {
            assert!(set.contains(attribute), "{set}");
        }
        assert_eq!(from_header("a=1; bulwark_session=abc; b=2"), Some("abc"));
        assert_eq!(from_header("bulwark_session="), None);
        assert_eq!(from_header("other=abc"), None);
        let session = Sessions::default()
            .open("a", Role::Viewer, Instant::now())
            .unwrap()
            .1;
        assert!(session.csrf_matches(&session.csrf.clone()));
        assert!(!session.csrf_matches("nope"));
    }
}

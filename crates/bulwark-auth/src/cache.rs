//! A cache of recently verified passwords, so that a device that reconnects often does not pay
//! a full argon2id check (tens of milliseconds of CPU and 19 MiB) at every connect.
//!
//! Each entry is the HMAC-SHA256, under a random key that exists only in this process's memory,
//! of the username and the password that last logged in successfully; the password itself is
//! never kept. A login whose username and password match a live entry is accepted without the
//! argon2id check; anything else (a wrong password, an unknown user, an expired entry) takes
//! the full check, so the cache makes no guess cheaper for an attacker: a hit needs the right
//! password. Entries expire after the TTL; the caller clears the cache whenever the password
//! store changes, so a changed, removed or disabled user is never served from it. The cache
//! holds at most `max_entries` users; when full, expired entries go first, then the oldest.

use std::collections::HashMap;
use std::fmt;
use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use rand_core::{OsRng, RngCore};
use sha2::Sha256;
use subtle::ConstantTimeEq;

/// Default time an entry lives.
pub const DEFAULT_TTL: Duration = Duration::from_secs(900);
/// Default number of users held.
pub const DEFAULT_MAX_ENTRIES: usize = 100_000;

struct Entry {
    digest: [u8; 32],
    expires: Instant,
}

/// Recently verified credentials (see the module documentation).
pub struct CredentialCache {
    key: [u8; 32],
    ttl: Duration,
    max_entries: usize,
    entries: HashMap<String, Entry>,
}

impl fmt::Debug for CredentialCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CredentialCache")
            .field("ttl", &self.ttl)
            .field("max_entries", &self.max_entries)
            .field("entries", &self.entries.len())
            .finish_non_exhaustive()
    }
}

impl CredentialCache {
    /// An empty cache with a fresh random key; `None` if the operating system's generator is
    /// unavailable. A zero `ttl` or `max_entries` makes a cache that never holds anything.
    pub fn new(ttl: Duration, max_entries: usize) -> Option<Self> {
        let mut key = [0u8; 32];
        OsRng.try_fill_bytes(&mut key).ok()?;
        Some(Self {
            key,
            ttl,
            max_entries,
            entries: HashMap::new(),
        })
    }

    fn digest(&self, name: &str, password: &[u8]) -> Option<[u8; 32]> {
        let mut mac = <Hmac<Sha256> as hmac::KeyInit>::new_from_slice(&self.key).ok()?;
        mac.update(&u64::try_from(name.len()).unwrap_or(u64::MAX).to_be_bytes());
        mac.update(name.as_bytes());
        mac.update(password);
        Some(mac.finalize().into_bytes().into())
    }

    /// A keyed fingerprint of `name` and `password` (the HMAC the cache keeps), to recognise
    /// logins with the same credentials without holding the password; `None` only if the MAC
    /// cannot be keyed.
    pub fn fingerprint(&self, name: &str, password: &[u8]) -> Option<[u8; 32]> {
        self.digest(name, password)
    }

    /// Whether `name` logged in with exactly `password` within the TTL.
    pub fn check(&self, name: &str, password: &[u8], now: Instant) -> bool {
        let Some(entry) = self.entries.get(name) else {
            return false;
        };
        if entry.expires <= now {
            return false;
        }
        self.digest(name, password)
            .is_some_and(|digest| bool::from(digest.ct_eq(&entry.digest)))
    }

    /// Remembers a successful login of `name` with `password`.
    pub fn insert(&mut self, name: &str, password: &[u8], now: Instant) {
        if self.ttl.is_zero() || self.max_entries == 0 {
            return;
        }
        let Some(digest) = self.digest(name, password) else {
            return;
        };
        if !self.entries.contains_key(name) && self.entries.len() >= self.max_entries {
            self.entries.retain(|_, e| e.expires > now);
            if self.entries.len() >= self.max_entries {
                let oldest = self
                    .entries
                    .iter()
                    .min_by_key(|(_, e)| e.expires)
                    .map(|(n, _)| n.clone());
                if let Some(oldest) = oldest {
                    self.entries.remove(&oldest);
                }
            }
        }
        let expires = now.checked_add(self.ttl).unwrap_or(now);
        self.entries
            .insert(name.to_owned(), Entry { digest, expires });
    }

    /// Forgets `name` (a failed login with another password, say).
    pub fn forget(&mut self, name: &str) {
        self.entries.remove(name);
    }

    /// Forgets everything (the password store changed).
    pub fn clear(&mut self) {
        self.entries.clear();
    }

    /// Users held.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no user is held.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "test code")]

    use super::*;

    #[test]
    fn a_hit_needs_the_same_user_and_password_within_the_ttl() {
        let now = Instant::now();
        let mut cache = CredentialCache::new(Duration::from_secs(60), 10).unwrap();
        assert!(!cache.check("alice", b"pw", now));
        cache.insert("alice", b"pw", now);
        assert!(cache.check("alice", b"pw", now + Duration::from_secs(59)));
        assert!(!cache.check("alice", b"pw2", now));
        assert!(!cache.check("alicE", b"pw", now));
        // Name and password are framed: ("al", "icepw") is not ("alice", "pw").
        assert!(!cache.check("al", b"icepw", now));
        assert!(!cache.check("alice", b"pw", now + Duration::from_secs(60)));
        cache.forget("alice");
        assert!(!cache.check("alice", b"pw", now));
        cache.insert("bob", b"x", now);
        cache.clear();
        assert!(cache.is_empty());
    }

    #[test]
    fn two_caches_have_different_keys_and_the_size_is_bounded() {
        let now = Instant::now();
        let a = CredentialCache::new(Duration::from_secs(60), 3).unwrap();
        let b = CredentialCache::new(Duration::from_secs(60), 3).unwrap();
        assert_ne!(a.digest("u", b"p"), b.digest("u", b"p"));
        let mut cache = a;
        for i in 0..10u64 {
            cache.insert(&format!("user{i}"), b"p", now + Duration::from_secs(i));
            assert!(cache.len() <= 3);
        }
        // The newest stay.
        assert!(cache.check("user9", b"p", now + Duration::from_secs(10)));
        assert!(!cache.check("user0", b"p", now + Duration::from_secs(10)));
    }

    #[test]
    fn a_zero_ttl_or_size_holds_nothing() {
        let now = Instant::now();
        let mut cache = CredentialCache::new(Duration::ZERO, 10).unwrap();
        cache.insert("alice", b"pw", now);
        assert!(!cache.check("alice", b"pw", now));
        let mut cache = CredentialCache::new(Duration::from_secs(1), 0).unwrap();
        cache.insert("alice", b"pw", now);
        assert!(cache.is_empty());
    }
}

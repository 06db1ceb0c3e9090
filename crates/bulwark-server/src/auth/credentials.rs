//! The credentials: the password store in force, the credential cache, and their reload.
//!
//! One lock holds the store, the file's modification time last seen, the store's generation
//! and the cache, so that a reload replaces the store, bumps the generation and empties the
//! cache in one step: a password check that started from the old store can never leave its
//! password in the cache afterwards ([`Credentials::remember`] compares generations under the
//! same lock). The SCRAM decoy secret (fixed at start) lives here too, since SCRAM reads the
//! store.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

use bulwark_auth::cache::CredentialCache;
use bulwark_auth::password::PasswordStore;
use bulwark_auth::scram::{ScramConfig, ScramCredentials, ScramError, ScramHash, ScramServer};
use bulwark_proto::ReasonCode;
use tracing::warn;

use super::{AuthSettings, Identity, Refusal, mtime};
use crate::sync::lock;

/// The file, next to the password store, that keeps the secret SCRAM decoys are derived from.
pub const SCRAM_DECOY_FILE: &str = "scram-decoy.secret";

/// The password store, the credential cache and their reload, behind one lock.
#[derive(Debug)]
pub(super) struct Credentials {
    path: Option<PathBuf>,
    scram: ScramConfig,
    state: Mutex<State>,
}

/// What the lock of [`Credentials`] holds.
#[derive(Debug)]
struct State {
    store: Arc<PasswordStore>,
    /// The store file's modification time when it was last read.
    seen: Option<SystemTime>,
    /// Bumped at every reload.
    generation: u64,
    /// Recently verified passwords; emptied at every reload.
    cache: CredentialCache,
}

/// What a password check starts from, read in one step.
#[derive(Debug)]
pub(super) struct Snapshot {
    /// The store generation the check starts from.
    pub(super) generation: u64,
    pub(super) store: Arc<PasswordStore>,
    /// Whether the cache knows this username and password.
    pub(super) cached: bool,
    /// The key of concurrent checks of the same credentials (`None`: the cache is off).
    pub(super) fingerprint: Option<[u8; 32]>,
}

impl Credentials {
    /// The store the settings name, read at start (an unreadable one is an error); an empty
    /// one without a password file.
    pub(super) fn load_initial(settings: &AuthSettings) -> Result<PasswordStore, String> {
        match &settings.password_file {
            Some(path) => crate::files::load_store(path, false),
            None => Ok(PasswordStore::new()),
        }
    }

    /// The credentials with `store` (from [`load_initial`](Self::load_initial)) in force, the
    /// SCRAM decoy secret and an empty cache.
    pub(super) fn new(settings: &AuthSettings, store: PasswordStore) -> Result<Self, String> {
        let scram = scram_config(settings.password_file.as_deref())?;
        let cache = CredentialCache::new(
            settings.credential_cache_ttl,
            settings.credential_cache_size,
        )
        .ok_or("the operating system's random generator is unavailable")?;
        Ok(Self::with_store(
            settings.password_file.clone(),
            store,
            cache,
            scram,
        ))
    }

    fn with_store(
        path: Option<PathBuf>,
        store: PasswordStore,
        cache: CredentialCache,
        scram: ScramConfig,
    ) -> Self {
        let seen = path.as_deref().and_then(mtime);
        Self {
            path,
            scram,
            state: Mutex::new(State {
                store: Arc::new(store),
                seen,
                generation: 0,
                cache,
            }),
        }
    }

    /// The password store file, if there is one.
    pub(super) fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// The store in force.
    pub(super) fn store(&self) -> Arc<PasswordStore> {
        lock(&self.state).store.clone()
    }

    /// The current store generation.
    pub(super) fn generation(&self) -> u64 {
        lock(&self.state).generation
    }

    /// Whether the cache knows this username and password.
    pub(super) fn knows(&self, name: &str, password: &[u8], now: Instant) -> bool {
        lock(&self.state).cache.check(name, password, now)
    }

    /// Whether `name` is a user of the store in force that is not disabled.
    pub(super) fn active(&self, name: &str) -> bool {
        lock(&self.state)
            .store
            .get(name)
            .is_some_and(|u| !u.disabled)
    }

    /// The generation, the store and what the cache knows of these credentials, in one step.
    pub(super) fn snapshot(&self, name: &str, password: &[u8], now: Instant) -> Snapshot {
        let state = lock(&self.state);
        Snapshot {
            generation: state.generation,
            store: state.store.clone(),
            cached: state.cache.check(name, password, now),
            fingerprint: state.cache.fingerprint(name, password),
        }
    }

    /// Remembers a verified password, unless the store was reloaded since the check started
    /// (at `generation`): the password it checked may be one the reload replaced.
    pub(super) fn remember(&self, generation: u64, name: &str, password: &[u8], now: Instant) {
        let mut state = lock(&self.state);
        if state.generation == generation {
            state.cache.insert(name, password, now);
        }
    }

    /// Whether the store file is to be read again: it changed since it was last read (or
    /// `force`). Records the time seen either way.
    pub(super) fn changed(&self, force: bool) -> bool {
        let Some(path) = &self.path else {
            return false;
        };
        let now = mtime(path);
        let mut state = lock(&self.state);
        if !force && state.seen == now {
            return false;
        }
        state.seen = now;
        true
    }

    /// Reads the store file (`None` without one).
    pub(super) fn load(&self) -> Option<Result<PasswordStore, String>> {
        self.path
            .as_deref()
            .map(|path| crate::files::load_store(path, false))
    }

    /// Puts `store` in force: in one step the store is replaced, the generation bumped and the
    /// cache emptied (a changed, removed or disabled user must not be let in on a remembered
    /// password). Returns the store now in force.
    pub(super) fn install(&self, store: PasswordStore) -> Arc<PasswordStore> {
        let store = Arc::new(store);
        let mut state = lock(&self.state);
        state.store = store.clone();
        state.generation = state.generation.wrapping_add(1);
        state.cache.clear();
        store
    }

    /// The chain's `certificate` authenticator: a verified certificate's identity is enough,
    /// unless the store has that user disabled.
    pub(super) fn certificate(&self, name: &str) -> Result<Identity, Refusal> {
        let store = self.store();
        let record = store.get(name);
        if record.is_some_and(|r| r.disabled) {
            return Err(Refusal::failure(
                ReasonCode::BadUserNameOrPassword,
                "certificate user is disabled in the password store",
            ));
        }
        Ok(Identity {
            username: Some(Arc::from(name)),
            groups: groups_of(&store, name),
            method: "certificate",
            expires_at: None,
            acl: None,
            in_store: record.is_some(),
        })
    }

    /// Starts a SCRAM exchange against the store in force (see `AuthService::scram_start`).
    pub(super) fn scram_start(
        &self,
        hash: ScramHash,
        client_first: &[u8],
    ) -> Result<(ScramServer, Vec<u8>), ScramError> {
        let store = self.store();
        ScramServer::start_os_rng(&self.scram, hash, client_first, |name| {
            let user = store.get(name).filter(|u| !u.disabled)?;
            let text = match hash {
                ScramHash::Sha256 => user.scram_sha256.as_deref(),
                ScramHash::Sha512 => user.scram_sha512.as_deref(),
            }?;
            ScramCredentials::parse_store_string(hash, text).ok()
        })
    }
}

/// The identity of a store user who proved their password (or SCRAM proof).
pub(super) fn store_identity(store: &PasswordStore, name: &str, method: &'static str) -> Identity {
    Identity {
        username: Some(Arc::from(name)),
        groups: groups_of(store, name),
        method,
        expires_at: None,
        acl: None,
        in_store: true,
    }
}

/// The store's groups of `name` (none for a user it does not have).
pub(super) fn groups_of(store: &PasswordStore, name: &str) -> Vec<Arc<str>> {
    store.get(name).map_or_else(Vec::new, |r| {
        r.groups.iter().map(|g| Arc::from(g.as_str())).collect()
    })
}

/// The SCRAM settings: decoy credentials for unknown users come from a secret kept beside the
/// password store (made once, mode 0600), so that an unknown name gets the same salt after a
/// restart, as a real user does. Without a store (or if the file cannot be written) the secret
/// is random for this run.
fn scram_config(store: Option<&Path>) -> Result<ScramConfig, String> {
    let random = || ScramConfig::random().map_err(|err| format!("SCRAM: {err}"));
    let Some(store) = store else {
        return random();
    };
    let path = store.with_file_name(SCRAM_DECOY_FILE);
    if let Ok(text) = crate::files::read_text(&path, "SCRAM decoy secret", 1024) {
        return match decode_secret(text.trim()) {
            Some(secret) => Ok(ScramConfig::new(secret)),
            None => Err(format!(
                "{}: expected 64 hexadecimal digits (delete it to have a new one made)",
                path.display()
            )),
        };
    }
    let secret = ScramConfig::random_secret().map_err(|err| format!("SCRAM: {err}"))?;
    let hex: String = secret.iter().map(|b| format!("{b:02x}")).collect();
    match crate::files::write_new(&path, format!("{hex}\n").as_bytes()) {
        Ok(()) => Ok(ScramConfig::new(secret)),
        Err(err) => {
            warn!(%err, "SCRAM decoy secret not kept: unknown users' salts change at each start");
            random()
        }
    }
}

fn decode_secret(text: &str) -> Option<[u8; 32]> {
    let bytes = text.as_bytes();
    if bytes.len() != 64 {
        return None;
    }
    let mut secret = [0u8; 32];
    for (byte, pair) in secret.iter_mut().zip(bytes.chunks(2)) {
        let pair = std::str::from_utf8(pair).ok()?;
        *byte = u8::from_str_radix(pair, 16).ok()?;
    }
    Some(secret)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use bulwark_auth::password::{Argon2Params, hash_password};

    use super::*;
    use crate::auth::test_support::TempDir;

    fn params() -> Argon2Params {
        Argon2Params {
            m_kib: 8,
            t: 1,
            p: 1,
        }
    }

    fn store_with(users: &[(&str, &str, bool)]) -> PasswordStore {
        let mut store = PasswordStore::new();
        for (name, password, disabled) in users {
            let hash = hash_password(password, &params()).unwrap();
            store.add(name, &hash, vec!["devices".into()]).unwrap();
            store.set_disabled(name, *disabled).unwrap();
        }
        store
    }

    fn credentials(path: Option<PathBuf>, store: PasswordStore) -> Credentials {
        let cache = CredentialCache::new(Duration::from_secs(60), 100).unwrap();
        Credentials::with_store(path, store, cache, ScramConfig::new([7; 32]))
    }

    #[test]
    fn a_reload_swaps_the_store_bumps_the_generation_and_empties_the_cache_at_once() {
        let creds = credentials(None, store_with(&[("alice", "old-secret", false)]));
        let now = Instant::now();
        let before = creds.snapshot("alice", b"old-secret", now);
        assert!(!before.cached);
        creds.remember(before.generation, "alice", b"old-secret", now);
        assert!(creds.knows("alice", b"old-secret", now));

        // A check that started before the reload...
        let straddling = creds.snapshot("alice", b"old-secret", now);
        assert!(straddling.cached);
        let installed = creds.install(store_with(&[("alice", "new-secret", false)]));
        // ...sees the new store and an empty cache afterwards, with nothing in between.
        let after = creds.snapshot("alice", b"old-secret", now);
        assert_eq!(after.generation, straddling.generation + 1);
        assert!(Arc::ptr_eq(&after.store, &installed));
        assert!(!after.cached);
        // ...and cannot put the old password back into the cache.
        creds.remember(straddling.generation, "alice", b"old-secret", now);
        assert!(!creds.knows("alice", b"old-secret", now));
        // A check that started after it can.
        creds.remember(after.generation, "alice", b"new-secret", now);
        assert!(creds.knows("alice", b"new-secret", now));
    }

    #[test]
    fn users_removed_or_disabled_are_no_longer_active() {
        let creds = credentials(None, store_with(&[("alice", "pw", false)]));
        assert!(creds.active("alice"));
        assert!(!creds.active("bob"));
        creds.install(store_with(&[("alice", "pw", true)]));
        assert!(!creds.active("alice"));
        creds.install(PasswordStore::new());
        assert!(!creds.active("alice"));
    }

    #[test]
    fn the_store_file_is_read_again_only_when_it_changed_or_on_force() {
        let dir = TempDir::new("credentials");
        let path = dir.path().join("passwd");
        crate::files::save_store(&path, &store_with(&[("alice", "pw", false)])).unwrap();
        let creds = credentials(Some(path.clone()), PasswordStore::new());
        assert!(!creds.changed(false), "unchanged since start");
        assert!(creds.changed(true), "forced");
        assert_eq!(creds.load().unwrap().unwrap().len(), 1);
        // A later modification time is noticed once.
        let later = SystemTime::now() + Duration::from_secs(5);
        std::fs::File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_modified(later)
            .unwrap();
        assert!(creds.changed(false));
        assert!(!creds.changed(false));
        // Without a file there is nothing to read.
        let none = credentials(None, PasswordStore::new());
        assert!(!none.changed(true));
        assert!(none.load().is_none());
    }

    #[test]
    fn a_certificate_names_its_user_unless_the_store_disables_it() {
        let creds = credentials(
            None,
            store_with(&[("sensor", "pw", false), ("old", "pw", true)]),
        );
        let known = creds.certificate("sensor").unwrap();
        assert_eq!(known.username.as_deref(), Some("sensor"));
        assert_eq!(known.method, "certificate");
        assert!(known.in_store);
        assert_eq!(known.groups, vec![Arc::<str>::from("devices")]);
        let stranger = creds.certificate("stranger").unwrap();
        assert!(!stranger.in_store);
        assert!(stranger.groups.is_empty());
        let refused = creds.certificate("old").unwrap_err();
        assert_eq!(refused.code, ReasonCode::BadUserNameOrPassword);
    }

    #[test]
    fn the_scram_decoy_secret_is_made_once_and_read_back() {
        let dir = TempDir::new("scram-decoy");
        let store = dir.path().join("passwd");
        scram_config(Some(&store)).unwrap();
        let path = dir.path().join(SCRAM_DECOY_FILE);
        let first = std::fs::read_to_string(&path).unwrap();
        assert!(decode_secret(first.trim()).is_some());
        scram_config(Some(&store)).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), first);
        std::fs::write(&path, "not hex\n").unwrap();
        assert!(scram_config(Some(&store)).is_err());
    }

    #[test]
    fn a_decoy_secret_is_64_hexadecimal_digits() {
        let hex = "00ff".repeat(16);
        let secret = decode_secret(&hex).unwrap();
        assert_eq!(secret[0], 0);
        assert_eq!(secret[1], 0xff);
        assert!(decode_secret(&hex[2..]).is_none());
        assert!(decode_secret(&"zz".repeat(32)).is_none());
    }
}

//! Hash upgrades: a Mosquitto-imported (or weaker than default) hash is replaced with an
//! argon2id one, and SCRAM credentials are added, once a login has proved the password. The
//! broker's own writes of the password store file are serialized here (one lock, held while a
//! file is read, changed and written back); the reload of the file is the watcher's, like
//! that of any other change.

use std::path::Path;

use bulwark_auth::password::{Argon2Params, hash_password};
use bulwark_auth::scram::{DEFAULT_ITERATIONS, ScramCredentials, ScramHash};
use tracing::{info, warn};

use super::pool::HashPool;

/// The broker's writes of the password store file, one at a time.
#[derive(Debug, Default)]
pub(super) struct HashUpgrades {
    writing: tokio::sync::Mutex<()>,
}

/// What an upgrade did to the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Upgraded {
    /// The user's hash was replaced.
    Done,
    /// The user's hash changed meanwhile (by `bulwark user`), or the user went: left alone.
    Skipped,
    /// Hashing failed or the pool was busy; the old hash stays.
    NotHashed,
    /// The file could not be read or written; the old hash stays.
    Failed(String),
}

impl HashUpgrades {
    /// Replaces `name`'s hash in the file at `path` (if it is still `old_hash`) by an argon2id
    /// hash of `password`, with SCRAM credentials, hashed on `pool`. The file is rewritten from
    /// its current contents, so an edit by `bulwark user` is kept. A failure is logged and the
    /// old hash keeps working.
    pub(super) async fn upgrade(
        &self,
        path: &Path,
        pool: &HashPool,
        name: &str,
        password: &str,
        old_hash: &str,
    ) -> Upgraded {
        let owned = password.to_owned();
        let derived = pool
            .run(move || {
                let hash = hash_password(&owned, &Argon2Params::default()).ok()?;
                let scram = |h| {
                    ScramCredentials::derive(h, &owned, DEFAULT_ITERATIONS)
                        .ok()
                        .map(|c| c.to_store_string())
                };
                Some((hash, scram(ScramHash::Sha256), scram(ScramHash::Sha512)))
            })
            .await
            .flatten();
        let Some((hash, sha256, sha512)) = derived else {
            warn!(
                user = name,
                "password hash upgrade skipped: hashing failed or busy"
            );
            return Upgraded::NotHashed;
        };
        let _writing = self.writing.lock().await;
        let result = (|| {
            // The store as it is on disk now, edits not reloaded yet included.
            let mut store = crate::files::load_store(path, false)?;
            // Changed meanwhile (by `bulwark user`): leave it alone.
            if store.get(name).map(|r| r.password.as_str()) != Some(old_hash) {
                return Ok(false);
            }
            store
                .set_password(name, &hash)
                .and_then(|()| store.set_scram(name, sha256, sha512))
                .map_err(|err| err.to_string())?;
            crate::files::save_store(path, &store)?;
            Ok::<_, String>(true)
        })();
        match result {
            Ok(true) => {
                info!(user = name, "password hash upgraded to argon2id");
                Upgraded::Done
            }
            Ok(false) => Upgraded::Skipped,
            Err(err) => {
                warn!(user = name, %err, "password hash upgrade failed; the old hash stays");
                Upgraded::Failed(err)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use bulwark_auth::password::{PasswordStore, Verdict};

    use super::*;
    use crate::auth::test_support::TempDir;

    fn weak(password: &str) -> String {
        let params = Argon2Params {
            m_kib: 8,
            t: 1,
            p: 1,
        };
        hash_password(password, &params).unwrap()
    }

    #[tokio::test]
    async fn a_weak_hash_is_replaced_unless_it_changed_meanwhile() {
        let dir = TempDir::new("upgrade");
        let path = dir.path().join("passwd");
        let old = weak("secret");
        let mut store = PasswordStore::new();
        store.add("alice", &old, Vec::new()).unwrap();
        store.add("bob", &weak("other"), Vec::new()).unwrap();
        crate::files::save_store(&path, &store).unwrap();
        let upgrades = HashUpgrades::default();
        let pool = HashPool::new(1, 4);

        let done = upgrades
            .upgrade(&path, &pool, "alice", "secret", &old)
            .await;
        assert_eq!(done, Upgraded::Done);
        let store = crate::files::load_store(&path, false).unwrap();
        let alice = store.get("alice").unwrap();
        assert_ne!(alice.password, old);
        assert!(alice.scram_sha256.is_some() && alice.scram_sha512.is_some());
        assert!(matches!(
            store.verify("alice", b"secret"),
            Verdict::Allow { upgrade: false }
        ));

        // The hash in the file is no longer the one the login saw: left alone.
        let again = upgrades
            .upgrade(&path, &pool, "alice", "secret", &old)
            .await;
        assert_eq!(again, Upgraded::Skipped);
        let gone = upgrades.upgrade(&path, &pool, "carol", "x", &old).await;
        assert_eq!(gone, Upgraded::Skipped);

        let missing = dir.path().join("missing");
        let failed = upgrades
            .upgrade(&missing, &pool, "alice", "secret", &old)
            .await;
        assert!(matches!(failed, Upgraded::Failed(_)));
    }
}

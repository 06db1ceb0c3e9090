//! The JWT keys: the ones from files (PEM keys, an HMAC secret, a JWKS document) and the ones
//! fetched from a JWKS URL, with the state of their reloads and fetches.
//!
//! One lock holds the key set in force and what its reloads need (the last document fetched,
//! the files' modification times, when the URL was last fetched and whether a fetch is under
//! way). A verification reads the key set and lets go; a fetch holds no lock while it waits
//! for the network: it marks itself under way, and refreshes that come meanwhile wait for it
//! to end (single flight), then take its keys.

use std::future::Future;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime};

use bulwark_auth::jwt::{self, JwtError, JwtIdentity, JwtKeySet, JwtSettings};
use tokio::sync::watch;
use tracing::{info, warn};

use super::{JwtAuthSettings, mtime, unix_now};
use crate::sync::{read, write};

/// A JWKS fetch gives up after this long.
const JWKS_TIMEOUT: Duration = Duration::from_secs(10);

/// The JWT verifier and its keys.
#[derive(Debug)]
pub(super) struct JwtKeys {
    settings: JwtAuthSettings,
    verify: JwtSettings,
    state: RwLock<KeyState>,
}

/// What the lock of [`JwtKeys`] holds.
#[derive(Debug)]
struct KeyState {
    keys: Arc<JwtKeySet>,
    /// How many fetches succeeded.
    fetches: u64,
    /// The last JWKS document fetched, kept for reloads of the key files.
    fetched_text: Option<String>,
    /// Modification times of the key files, to notice changes.
    files_seen: Vec<Option<SystemTime>>,
    /// When the JWKS URL was last fetched (or a fetch was tried).
    last_fetch: Option<Instant>,
    /// A fetch under way: its sender is dropped when it ends.
    fetching: Option<watch::Receiver<()>>,
}

/// Marks a fetch under way; dropped (the fetch ended, or its caller went away), it lets the
/// refreshes that waited for it go on.
struct Fetching<'a> {
    keys: &'a JwtKeys,
    _done: watch::Sender<()>,
}

impl Drop for Fetching<'_> {
    fn drop(&mut self) {
        write(&self.keys.state).fetching = None;
    }
}

impl JwtKeys {
    /// Checks the settings and loads the key files; at least one key is needed unless a JWKS
    /// URL will bring them.
    pub(super) fn new(settings: &JwtAuthSettings) -> Result<Self, String> {
        let verify = settings.verify_settings();
        verify
            .validate()
            .map_err(|err| format!("[auth.jwt] {err}"))?;
        if let Some(url) = &settings.jwks_url {
            crate::jwks::JwksSource::new(url, settings.jwks_ca_file.clone(), JWKS_TIMEOUT)
                .map_err(|err| format!("[auth.jwt] jwks_url: {err}"))?;
        }
        let keys = load_keys(settings, None)?;
        if keys.is_empty() && settings.jwks_url.is_none() {
            return Err(
                "[auth.jwt] no keys: set public_key_files, hmac_secret_file, jwks_file or jwks_url"
                    .into(),
            );
        }
        let files_seen = files(settings).iter().map(|f| mtime(f)).collect();
        Ok(Self {
            settings: settings.clone(),
            verify,
            state: RwLock::new(KeyState {
                keys: Arc::new(keys),
                fetches: 0,
                fetched_text: None,
                files_seen,
                last_fetch: None,
                fetching: None,
            }),
        })
    }

    /// The settings.
    pub(super) fn settings(&self) -> &JwtAuthSettings {
        &self.settings
    }

    /// The key set in force.
    fn keys(&self) -> (u64, Arc<JwtKeySet>) {
        let state = read(&self.state);
        (state.fetches, state.keys.clone())
    }

    /// Verifies a token; a token signed by a key the set does not have makes the JWKS URL be
    /// fetched again (at most every `jwks_min_interval`) and the token checked once more.
    pub(super) async fn verify(
        &self,
        token: &str,
        client_id: &str,
    ) -> Result<JwtIdentity, JwtError> {
        let (seen, keys) = self.keys();
        let result = jwt::verify(&self.verify, &keys, token, client_id, unix_now());
        match result {
            Err(JwtError::UnknownKey { .. })
                if self.refresh(self.settings.jwks_min_interval, seen).await =>
            {
                let (_, keys) = self.keys();
                jwt::verify(&self.verify, &keys, token, client_id, unix_now())
            }
            other => other,
        }
    }

    /// Fetches the JWKS URL again unless that happened less than `gap` ago (or is happening);
    /// true if the keys may have changed since `seen` fetches.
    async fn refresh(&self, gap: Duration, seen: u64) -> bool {
        let Some(url) = self.settings.jwks_url.clone() else {
            return false;
        };
        let ca_file = self.settings.jwks_ca_file.clone();
        self.refresh_with(gap, seen, move || async move {
            let source = match crate::jwks::JwksSource::new(&url, ca_file, JWKS_TIMEOUT) {
                Ok(source) => source,
                Err(err) => {
                    warn!(%err, "JWKS URL unusable");
                    return None;
                }
            };
            let url = source.url.clone();
            match tokio::task::spawn_blocking(move || crate::jwks::fetch(&source)).await {
                Ok(Ok(text)) => Some((url, text)),
                Ok(Err(err)) => {
                    warn!(%url, %err, "JWKS fetch failed; the previous keys stay in use");
                    None
                }
                Err(_) => None,
            }
        })
        .await
    }

    /// [`refresh`](Self::refresh) with the fetch given: `fetch` yields the URL and the
    /// document, or `None` (it has said why).
    async fn refresh_with<F, Fut>(&self, gap: Duration, seen: u64, fetch: F) -> bool
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Option<(String, String)>>,
    {
        let _fetching = loop {
            let mut waiting = {
                let mut state = write(&self.state);
                if state.fetches != seen {
                    return true;
                }
                match &state.fetching {
                    Some(under_way) => under_way.clone(),
                    None => {
                        if state.last_fetch.is_some_and(|at| at.elapsed() < gap) {
                            return false;
                        }
                        state.last_fetch = Some(Instant::now());
                        let (done, under_way) = watch::channel(());
                        state.fetching = Some(under_way);
                        break Fetching {
                            keys: self,
                            _done: done,
                        };
                    }
                }
            };
            // Ends when the fetch under way does (its sender is dropped).
            let _ = waiting.changed().await;
        };
        let Some((url, text)) = fetch().await else {
            return false;
        };
        match load_keys(&self.settings, Some(&text)) {
            Ok(keys) => {
                info!(%url, keys = keys.len(), "JWKS fetched");
                let mut state = write(&self.state);
                state.keys = Arc::new(keys);
                state.fetched_text = Some(text);
                state.fetches = state.fetches.wrapping_add(1);
                true
            }
            Err(err) => {
                warn!(%url, %err, "JWKS refused; the previous keys stay in use");
                false
            }
        }
    }

    /// Reloads the key files if one changed (or `force`); a failure keeps the old keys.
    pub(super) fn reload_files(&self, force: bool) {
        let now: Vec<_> = files(&self.settings).iter().map(|f| mtime(f)).collect();
        let fetched = {
            let mut state = write(&self.state);
            if !force && state.files_seen == now {
                return;
            }
            state.files_seen = now;
            state.fetched_text.clone()
        };
        match load_keys(&self.settings, fetched.as_deref()) {
            Ok(keys) => {
                info!(keys = keys.len(), "JWT keys reloaded");
                write(&self.state).keys = Arc::new(keys);
            }
            Err(err) => warn!(%err, "JWT key reload failed; the previous keys stay in use"),
        }
    }

    /// Fetches the JWKS URL every `jwks_refresh` (at least every `jwks_min_interval`) until
    /// `stop`; returns at once without a URL.
    pub(super) async fn refresh_periodically(&self, mut stop: watch::Receiver<bool>) {
        if self.settings.jwks_url.is_none() {
            return;
        }
        let every = self
            .settings
            .jwks_refresh
            .max(self.settings.jwks_min_interval);
        loop {
            let (seen, _) = self.keys();
            self.refresh(Duration::ZERO, seen).await;
            tokio::select! {
                () = tokio::time::sleep(every) => {}
                _ = stop.changed() => return,
            }
        }
    }
}

/// The key files of `settings`.
fn files(settings: &JwtAuthSettings) -> Vec<PathBuf> {
    settings
        .public_key_files
        .iter()
        .chain(&settings.hmac_secret_file)
        .chain(&settings.jwks_file)
        .cloned()
        .collect()
}

/// The keys from files plus, if given, a fetched JWKS document.
fn load_keys(settings: &JwtAuthSettings, fetched: Option<&str>) -> Result<JwtKeySet, String> {
    let mut documents = Vec::new();
    if let Some(path) = &settings.jwks_file {
        documents.push(crate::files::read_text(path, "JWKS file", 1 << 20)?);
    }
    if let Some(text) = fetched {
        documents.push(text.to_owned());
    }
    let mut keys = if documents.is_empty() {
        JwtKeySet::new()
    } else {
        let mut all = Vec::new();
        for text in &documents {
            let doc: serde_json::Value = serde_json::from_str(text)
                .map_err(|err| format!("JWKS document is not JSON: {err}"))?;
            if let Some(list) = doc.get("keys").and_then(serde_json::Value::as_array) {
                all.extend(list.iter().cloned());
            }
        }
        let merged = serde_json::json!({ "keys": all }).to_string();
        JwtKeySet::from_jwks_json(&merged).map_err(|err| format!("JWKS: {err}"))?
    };
    for path in &settings.public_key_files {
        let pem = std::fs::read(path)
            .map_err(|err| format!("cannot read JWT key {}: {err}", path.display()))?;
        keys.add_pem(&pem, None)
            .map_err(|err| format!("JWT key {}: {err}", path.display()))?;
    }
    if let Some(path) = &settings.hmac_secret_file {
        let secret = std::fs::read(path)
            .map_err(|err| format!("cannot read JWT secret {}: {err}", path.display()))?;
        let trimmed = secret.trim_ascii_end();
        keys.add_hmac_secret(trimmed, None)
            .map_err(|err| format!("JWT secret {}: {err}", path.display()))?;
    }
    Ok(keys)
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;
    use crate::auth::test_support::TempDir;

    /// An Ed25519 public key (RFC 8037, appendix A), as a JWKS document.
    fn jwks(kid: &str) -> String {
        serde_json::json!({"keys": [{
            "kty": "OKP", "crv": "Ed25519", "kid": kid,
            "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"
        }]})
        .to_string()
    }

    fn with_url() -> JwtKeys {
        JwtKeys::new(&JwtAuthSettings {
            jwks_url: Some("https://keys.example/jwks.json".into()),
            ..JwtAuthSettings::default()
        })
        .unwrap()
    }

    #[test]
    fn settings_without_any_key_are_refused_unless_a_url_brings_them() {
        let err = JwtKeys::new(&JwtAuthSettings::default()).unwrap_err();
        assert!(err.contains("no keys"), "{err}");
        let keys = with_url();
        assert!(keys.keys().1.is_empty());
        let err = JwtKeys::new(&JwtAuthSettings {
            jwks_url: Some("http://keys.example/".into()),
            ..JwtAuthSettings::default()
        })
        .unwrap_err();
        assert!(err.contains("jwks_url"), "{err}");
    }

    #[tokio::test]
    async fn concurrent_refreshes_fetch_once_and_all_see_the_new_keys() {
        let keys = Arc::new(with_url());
        let fetched = Arc::new(AtomicUsize::new(0));
        let (release, gate) = watch::channel(false);
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..5 {
            let (keys, fetched, mut gate) = (keys.clone(), fetched.clone(), gate.clone());
            tasks.spawn(async move {
                keys.refresh_with(Duration::from_secs(60), 0, || async move {
                    fetched.fetch_add(1, Ordering::AcqRel);
                    // Held until every refresh has come.
                    let _ = gate.wait_for(|go| *go).await;
                    Some(("https://keys.example/jwks.json".into(), jwks("a")))
                })
                .await
            });
        }
        tokio::task::yield_now().await;
        release.send_replace(true);
        while let Some(changed) = tasks.join_next().await {
            assert!(changed.unwrap(), "every caller learns the keys changed");
        }
        assert_eq!(fetched.load(Ordering::Acquire), 1);
        let (fetches, set) = keys.keys();
        assert_eq!(fetches, 1);
        assert!(set.contains_kid("a"));
        assert!(read(&keys.state).fetching.is_none());
    }

    #[tokio::test]
    async fn a_refresh_within_the_gap_does_not_fetch_and_a_failed_fetch_keeps_the_keys() {
        let keys = with_url();
        let fetched = AtomicUsize::new(0);
        let fetch = |doc: Option<String>| {
            let fetched = &fetched;
            move || async move {
                fetched.fetch_add(1, Ordering::AcqRel);
                doc.map(|d| ("https://keys.example/jwks.json".to_owned(), d))
            }
        };
        assert!(
            keys.refresh_with(Duration::ZERO, 0, fetch(Some(jwks("a"))))
                .await
        );
        // Too soon after the last fetch: nothing fetched.
        assert!(
            !keys
                .refresh_with(Duration::from_secs(60), 1, fetch(Some(jwks("b"))))
                .await
        );
        assert_eq!(fetched.load(Ordering::Acquire), 1);
        // A caller that saw fewer fetches learns of the new keys without fetching.
        assert!(
            keys.refresh_with(Duration::from_secs(60), 0, fetch(None))
                .await
        );
        // A failed fetch, or a document without a usable key, leaves the keys as they were.
        assert!(!keys.refresh_with(Duration::ZERO, 1, fetch(None)).await);
        let refused = Some(r#"{"keys": []}"#.to_owned());
        assert!(!keys.refresh_with(Duration::ZERO, 1, fetch(refused)).await);
        assert_eq!(fetched.load(Ordering::Acquire), 3);
        assert!(keys.keys().1.contains_kid("a"));
        // A document fetched is kept for reloads of the key files.
        keys.reload_files(true);
        assert!(keys.keys().1.contains_kid("a"));
    }

    #[tokio::test]
    async fn a_fetch_whose_caller_went_away_lets_the_next_one_go_on() {
        let keys = with_url();
        {
            let never = keys.refresh_with(Duration::ZERO, 0, std::future::pending);
            tokio::pin!(never);
            let polled = tokio::time::timeout(Duration::from_millis(10), never.as_mut()).await;
            assert!(polled.is_err(), "the fetch hangs");
            assert!(read(&keys.state).fetching.is_some());
        }
        assert!(read(&keys.state).fetching.is_none());
        assert!(
            keys.refresh_with(Duration::ZERO, 0, || async {
                Some(("https://keys.example/".to_owned(), jwks("c")))
            })
            .await
        );
    }

    #[test]
    fn key_files_are_reloaded_when_they_change_and_a_bad_one_keeps_the_old_keys() {
        let dir = TempDir::new("jwt-keys");
        let jwks_file = dir.path().join("jwks.json");
        std::fs::write(&jwks_file, jwks("one")).unwrap();
        let keys = JwtKeys::new(&JwtAuthSettings {
            jwks_file: Some(jwks_file.clone()),
            ..JwtAuthSettings::default()
        })
        .unwrap();
        assert!(keys.keys().1.contains_kid("one"));
        let touch = |secs| {
            std::fs::File::options()
                .write(true)
                .open(&jwks_file)
                .unwrap()
                .set_modified(SystemTime::now() + Duration::from_secs(secs))
                .unwrap();
        };
        // Unchanged: nothing read (a forced reload reads them anyway).
        keys.reload_files(false);
        keys.reload_files(true);
        assert!(keys.keys().1.contains_kid("one"));
        std::fs::write(&jwks_file, jwks("two")).unwrap();
        touch(2);
        keys.reload_files(false);
        assert!(keys.keys().1.contains_kid("two"));
        std::fs::write(&jwks_file, "not json").unwrap();
        touch(5);
        keys.reload_files(false);
        assert!(keys.keys().1.contains_kid("two"), "the old keys stay");
        std::fs::write(&jwks_file, jwks("three")).unwrap();
        touch(10);
        keys.reload_files(false);
        assert!(keys.keys().1.contains_kid("three"));
    }
}

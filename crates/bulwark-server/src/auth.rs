//! Authentication of every connection, before the engine sees its CONNECT.
//!
//! Each listener has an ordered chain of [`Authenticator`]s. Each one answers allow, deny or
//! "not mine"; the first allow or deny decides, a backend error is a deny, and if nothing
//! allows the connection is refused (fail-closed). A client that presents no credentials at
//! all is refused too, unless its listener sets `dangerous_allow_anonymous`.
//!
//! Around the chain stands the [`LoginGuard`]: failures are counted per source address and
//! per username; past a threshold attempts wait (exponential backoff, serialized), and an
//! address with many failures is banned for a while. Unknown users and wrong passwords get
//! the same reason code after the same work (the store verifies a dummy hash for unknown
//! names). Password hashes are checked on blocking threads, at most `hash_concurrency` at a
//! time and with at most `max_pending_logins` waiting, so a login flood cannot take the
//! cores that move messages.
//!
//! Every decision is a [`SecurityEvent`] (see `audit`).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bulwark_core::ConnectionId;
use bulwark_proto::{Connect, ReasonCode};
use bulwark_security::cache::CredentialCache;
use bulwark_security::event::{EventKind, SecurityEvent};
use bulwark_security::guard::{Admission, GuardSettings, LoginGuard};
use bulwark_security::jwt::{self, JwtError, JwtIdentity, JwtKeySet, JwtSettings};
use bulwark_security::password::{Argon2Params, PasswordStore, Verdict, hash_password};
use bulwark_security::scram::{
    DEFAULT_ITERATIONS, ScramConfig, ScramCredentials, ScramError, ScramHash, ScramServer,
};
use tokio::sync::Semaphore;
use tracing::{info, warn};

use crate::audit::Audit;

/// One link of a listener's authenticator chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Authenticator {
    /// A verified client certificate (on a TLS listener that maps its identity) is enough.
    Certificate,
    /// A verified client certificate and the password of the user it names.
    CertificateAndPassword,
    /// A JWT in the password field (or, for 5.0, the `JWT` authentication method).
    Jwt,
    /// MQTT 5 enhanced authentication with SCRAM-SHA-256 or SCRAM-SHA-512.
    Scram,
    /// Username and password against the password store.
    Password,
}

impl Authenticator {
    /// Every authenticator, in the order of the default chain.
    pub const ALL: [Self; 5] = [
        Self::Certificate,
        Self::CertificateAndPassword,
        Self::Scram,
        Self::Jwt,
        Self::Password,
    ];

    /// The name used in configuration files.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Certificate => "certificate",
            Self::CertificateAndPassword => "certificate+password",
            Self::Jwt => "jwt",
            Self::Scram => "scram",
            Self::Password => "password",
        }
    }

    /// The authenticator a configuration name stands for.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|a| a.name() == name)
    }
}

/// JWT settings (see `docs/security.md`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwtAuthSettings {
    /// `iss` must equal this, if set.
    pub issuer: Option<String>,
    /// `aud` must contain one of these, if any.
    pub audiences: Vec<String>,
    /// Leeway for `exp` and `nbf`.
    pub clock_skew: Duration,
    /// The claim that names the MQTT username.
    pub username_claim: String,
    /// A claim that must equal the client identifier, if set.
    pub client_id_claim: Option<String>,
    /// A claim carrying per-connection ACL rules, if set.
    pub acl_claim: Option<String>,
    /// Refuse tokens without `exp` (default true).
    pub require_exp: bool,
    /// PEM public keys (RSA, EC P-256/P-384, Ed25519).
    pub public_key_files: Vec<PathBuf>,
    /// A file holding an HMAC secret (HS256/384/512), at least 32 bytes.
    pub hmac_secret_file: Option<PathBuf>,
    /// A JWKS document on disk.
    pub jwks_file: Option<PathBuf>,
    /// A JWKS document at an HTTPS URL, fetched at start, every `jwks_refresh`, and when a
    /// token names an unknown key (at most every `jwks_min_interval`).
    pub jwks_url: Option<String>,
    /// PEM roots trusted for `jwks_url` (default: the public web roots).
    pub jwks_ca_file: Option<PathBuf>,
    /// How often `jwks_url` is fetched again.
    pub jwks_refresh: Duration,
    /// The shortest time between two fetches of `jwks_url` (a flood of tokens with made-up
    /// `kid`s must not turn into a flood of requests).
    pub jwks_min_interval: Duration,
}

impl Default for JwtAuthSettings {
    fn default() -> Self {
        let verify = JwtSettings::default();
        Self {
            issuer: None,
            audiences: Vec::new(),
            clock_skew: Duration::from_secs(verify.clock_skew_secs),
            username_claim: verify.username_claim,
            client_id_claim: None,
            acl_claim: None,
            require_exp: true,
            public_key_files: Vec::new(),
            hmac_secret_file: None,
            jwks_file: None,
            jwks_url: None,
            jwks_ca_file: None,
            jwks_refresh: Duration::from_secs(300),
            jwks_min_interval: MIN_JWKS_FETCH_GAP,
        }
    }
}

impl JwtAuthSettings {
    fn verify_settings(&self) -> JwtSettings {
        JwtSettings {
            issuer: self.issuer.clone(),
            audiences: self.audiences.clone(),
            clock_skew_secs: self.clock_skew.as_secs(),
            username_claim: self.username_claim.clone(),
            client_id_claim: self.client_id_claim.clone(),
            acl_claim: self.acl_claim.clone(),
            require_exp: self.require_exp,
        }
    }
}

/// The default of [`JwtAuthSettings::jwks_min_interval`].
pub const MIN_JWKS_FETCH_GAP: Duration = Duration::from_secs(30);
/// A JWKS fetch gives up after this long.
const JWKS_TIMEOUT: Duration = Duration::from_secs(10);

/// The server's authentication settings, shared by every listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthSettings {
    /// The password store (`bulwark user` edits it); `None`: no password users.
    pub password_file: Option<PathBuf>,
    /// Security events are appended here as JSON lines, if set.
    pub audit_file: Option<PathBuf>,
    /// Password hashes checked at once, at most; 0: half the cores, at least one.
    pub hash_concurrency: usize,
    /// Logins waiting for a hash check, at most; more are refused with 0x89 Server busy.
    pub max_pending_logins: usize,
    /// How long a verified username and password are remembered, so that a reconnect skips
    /// the argon2id check (zero: never).
    pub credential_cache_ttl: Duration,
    /// Users remembered at most.
    pub credential_cache_size: usize,
    /// Failed-login backoff and bans.
    pub guard: GuardSettings,
    /// JWT authentication, if configured.
    pub jwt: Option<JwtAuthSettings>,
}

impl Default for AuthSettings {
    fn default() -> Self {
        Self {
            password_file: None,
            audit_file: None,
            hash_concurrency: 0,
            max_pending_logins: 1024,
            credential_cache_ttl: bulwark_security::cache::DEFAULT_TTL,
            credential_cache_size: bulwark_security::cache::DEFAULT_MAX_ENTRIES,
            guard: GuardSettings::default(),
            jwt: None,
        }
    }
}

impl AuthSettings {
    /// The number of hash checks `hash_concurrency` stands for.
    pub fn hash_threads(&self) -> usize {
        match self.hash_concurrency {
            0 => (std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get) / 2)
                .max(1),
            n => n,
        }
    }
}

/// A listener's view of authentication.
#[derive(Debug)]
pub(crate) struct ListenerAuth {
    pub(crate) name: Arc<str>,
    pub(crate) chain: Vec<Authenticator>,
    pub(crate) allow_anonymous: bool,
}

impl ListenerAuth {
    pub(crate) fn has(&self, authenticator: Authenticator) -> bool {
        self.chain.contains(&authenticator)
    }
}

/// Who a connection was authenticated as.
#[derive(Debug, Clone)]
pub(crate) struct Identity {
    /// `None` only for anonymous clients.
    pub(crate) username: Option<Arc<str>>,
    /// The store's groups of the user (for ACLs).
    #[allow(dead_code, reason = "read by the ACL engine (authorization issue)")]
    pub(crate) groups: Vec<Arc<str>>,
    pub(crate) method: &'static str,
    /// When the credentials stop being valid (a JWT's `exp`).
    pub(crate) expires_at: Option<SystemTime>,
    /// A JWT's ACL claim.
    #[allow(dead_code, reason = "read by the ACL engine (authorization issue)")]
    pub(crate) acl: Option<serde_json::Value>,
    /// Whether the user is in the password store: removing or disabling it there ends the
    /// connection.
    pub(crate) in_store: bool,
}

/// A refused login: the reason code for the client and the reason for the audit trail.
#[derive(Debug, Clone)]
pub(crate) struct Refusal {
    pub(crate) code: ReasonCode,
    pub(crate) reason: String,
    /// Whether this counts as a failed login (backoff and bans).
    pub(crate) counts: bool,
    pub(crate) kind: EventKind,
}

impl Refusal {
    fn failure(code: ReasonCode, reason: impl Into<String>) -> Self {
        Self {
            code,
            reason: reason.into(),
            counts: true,
            kind: EventKind::AuthFailure,
        }
    }

    /// A failed re-authentication.
    pub(crate) fn reauth(reason: impl Into<String>) -> Self {
        Self {
            code: ReasonCode::NotAuthorized,
            reason: reason.into(),
            counts: true,
            kind: EventKind::ReauthFailure,
        }
    }

    fn busy() -> Self {
        Self {
            code: ReasonCode::ServerBusy,
            reason: "too many logins waiting for a password check".into(),
            counts: false,
            kind: EventKind::AuthFailure,
        }
    }

    /// What the client is told: deliberately the same words for every credential failure.
    pub(crate) fn public_reason(&self) -> &'static str {
        match self.code {
            ReasonCode::BadUserNameOrPassword => "bad username or password",
            ReasonCode::Banned => "banned",
            ReasonCode::ServerBusy => "server busy",
            ReasonCode::BadAuthenticationMethod => "unsupported authentication method",
            _ => "not authorized",
        }
    }
}

/// Who is attempting a login, for the guard and the events.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Attempt<'a> {
    pub(crate) listener: &'a ListenerAuth,
    pub(crate) peer: SocketAddr,
    pub(crate) client_id: &'a str,
    pub(crate) username: Option<&'a str>,
    pub(crate) method: &'a str,
    /// A re-authentication during the session (events say so).
    pub(crate) reauth: bool,
}

impl Attempt<'_> {
    fn event(&self, kind: EventKind, reason: Option<String>) -> SecurityEvent {
        let mut event = SecurityEvent::new(kind, SystemTime::now());
        event.listener = Some(self.listener.name.to_string());
        event.remote = Some(self.peer.to_string());
        event.client_id = (!self.client_id.is_empty()).then(|| self.client_id.to_owned());
        event.username = self.username.map(str::to_owned);
        event.method = Some(self.method.to_owned());
        event.reason = reason;
        event
    }
}

/// What one authenticator said.
enum Step {
    Allow(Identity),
    Deny(Refusal),
    NotMine,
}

/// A live, authenticated connection.
#[derive(Debug)]
struct Live {
    username: Option<Arc<str>>,
    in_store: bool,
    listener: Arc<str>,
    peer: SocketAddr,
    client_id: String,
}

/// Blocking work (password hashing) with bounded concurrency and a bounded queue.
#[derive(Debug)]
struct HashPool {
    permits: Arc<Semaphore>,
    pending: AtomicUsize,
    max_pending: usize,
}

/// Gives back a place in the pool's queue.
struct Pending<'a>(&'a AtomicUsize);

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl HashPool {
    /// Runs `work` on a blocking thread; `None` if the queue is full.
    async fn run<T: Send + 'static>(&self, work: impl FnOnce() -> T + Send + 'static) -> Option<T> {
        if self.pending.fetch_add(1, Ordering::AcqRel) >= self.max_pending {
            self.pending.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        let _pending = Pending(&self.pending);
        let permit = self.permits.clone().acquire_owned().await.ok()?;
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            work()
        })
        .await
        .ok()
    }
}

/// The JWT verifier and its keys.
#[derive(Debug)]
struct JwtRuntime {
    settings: JwtAuthSettings,
    verify: JwtSettings,
    keys: RwLock<Arc<JwtKeySet>>,
    /// When the JWKS URL was last fetched, and how many fetches succeeded.
    fetched: tokio::sync::Mutex<(Option<Instant>, u64)>,
    /// The last JWKS document fetched, kept for reloads of the key files.
    fetched_text: Mutex<Option<String>>,
    /// Modification times of the key files, to notice changes.
    files_seen: Mutex<Vec<Option<SystemTime>>>,
}

impl JwtRuntime {
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

    fn source(&self) -> Option<Result<crate::jwks::JwksSource, String>> {
        let url = self.settings.jwks_url.as_ref()?;
        Some(
            crate::jwks::JwksSource::new(url, self.settings.jwks_ca_file.clone(), JWKS_TIMEOUT)
                .map_err(|err| err.to_string()),
        )
    }

    /// Fetches the JWKS URL again unless that happened less than `gap` ago (or is happening);
    /// true if the keys may have changed since `seen` fetches.
    async fn refresh(&self, gap: Duration, seen: u64) -> bool {
        let Some(source) = self.source() else {
            return false;
        };
        let mut fetched = self.fetched.lock().await;
        if fetched.1 != seen {
            return true;
        }
        if fetched.0.is_some_and(|at| at.elapsed() < gap) {
            return false;
        }
        fetched.0 = Some(Instant::now());
        let source = match source {
            Ok(source) => source,
            Err(err) => {
                warn!(%err, "JWKS URL unusable");
                return false;
            }
        };
        let url = source.url.clone();
        let text = match tokio::task::spawn_blocking(move || crate::jwks::fetch(&source)).await {
            Ok(Ok(text)) => text,
            Ok(Err(err)) => {
                warn!(%url, %err, "JWKS fetch failed; the previous keys stay in use");
                return false;
            }
            Err(_) => return false,
        };
        match Self::load_keys(&self.settings, Some(&text)) {
            Ok(keys) => {
                info!(%url, keys = keys.len(), "JWKS fetched");
                if let Ok(mut slot) = self.keys.write() {
                    *slot = Arc::new(keys);
                }
                if let Ok(mut kept) = self.fetched_text.lock() {
                    *kept = Some(text);
                }
                fetched.1 += 1;
                true
            }
            Err(err) => {
                warn!(%url, %err, "JWKS refused; the previous keys stay in use");
                false
            }
        }
    }

    fn files(&self) -> Vec<PathBuf> {
        let s = &self.settings;
        s.public_key_files
            .iter()
            .chain(&s.hmac_secret_file)
            .chain(&s.jwks_file)
            .cloned()
            .collect()
    }

    /// Reloads the key files if one changed (or `force`); a failure keeps the old keys.
    fn reload_files(&self, force: bool) {
        let now: Vec<_> = self.files().iter().map(|f| mtime(f)).collect();
        match self.files_seen.lock() {
            Ok(mut seen) if force || *seen != now => *seen = now,
            _ => return,
        }
        let fetched = self.fetched_text.lock().ok().and_then(|t| t.clone());
        match Self::load_keys(&self.settings, fetched.as_deref()) {
            Ok(keys) => {
                info!(keys = keys.len(), "JWT keys reloaded");
                if let Ok(mut slot) = self.keys.write() {
                    *slot = Arc::new(keys);
                }
            }
            Err(err) => warn!(%err, "JWT key reload failed; the previous keys stay in use"),
        }
    }

    async fn verify(&self, token: &str, client_id: &str) -> Result<JwtIdentity, JwtError> {
        let seen = self.fetched.lock().await.1;
        let keys = self.keys.read().map(|k| k.clone()).unwrap_or_default();
        let result = jwt::verify(&self.verify, &keys, token, client_id, unix_now());
        match result {
            Err(JwtError::UnknownKey { .. })
                if self.refresh(self.settings.jwks_min_interval, seen).await =>
            {
                let keys = self.keys.read().map(|k| k.clone()).unwrap_or_default();
                jwt::verify(&self.verify, &keys, token, client_id, unix_now())
            }
            other => other,
        }
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The authentication service: the store, the keys, the guard, the live registry.
#[derive(Debug)]
pub(crate) struct AuthService {
    password_file: Option<PathBuf>,
    store: RwLock<Arc<PasswordStore>>,
    store_seen: Mutex<Option<SystemTime>>,
    /// Serializes the broker's own writes of the store (hash upgrades).
    store_write: tokio::sync::Mutex<()>,
    scram: ScramConfig,
    jwt: Option<Arc<JwtRuntime>>,
    guard: Mutex<LoginGuard>,
    /// Recently verified passwords; cleared whenever the store is reloaded.
    verified: Mutex<CredentialCache>,
    pool: HashPool,
    live: Mutex<HashMap<ConnectionId, Live>>,
    pub(crate) audit: Audit,
}

impl AuthService {
    /// Loads the store and keys; any unusable file is an error.
    pub(crate) fn new(settings: &AuthSettings) -> Result<Self, String> {
        let store = match &settings.password_file {
            Some(path) => crate::files::load_store(path, false)?,
            None => PasswordStore::new(),
        };
        let store_seen = settings.password_file.as_deref().and_then(mtime);
        settings
            .guard
            .validate()
            .map_err(|err| format!("[auth] backoff: {err}"))?;
        let jwt = match &settings.jwt {
            None => None,
            Some(jwt) => {
                let verify = jwt.verify_settings();
                verify
                    .validate()
                    .map_err(|err| format!("[auth.jwt] {err}"))?;
                if let Some(url) = &jwt.jwks_url {
                    crate::jwks::JwksSource::new(url, jwt.jwks_ca_file.clone(), JWKS_TIMEOUT)
                        .map_err(|err| format!("[auth.jwt] jwks_url: {err}"))?;
                }
                let keys = JwtRuntime::load_keys(jwt, None)?;
                if keys.is_empty() && jwt.jwks_url.is_none() {
                    return Err(
                        "[auth.jwt] no keys: set public_key_files, hmac_secret_file, jwks_file or jwks_url"
                            .into(),
                    );
                }
                let mut runtime = JwtRuntime {
                    settings: jwt.clone(),
                    verify,
                    keys: RwLock::new(Arc::new(keys)),
                    fetched: tokio::sync::Mutex::new((None, 0)),
                    fetched_text: Mutex::new(None),
                    files_seen: Mutex::new(Vec::new()),
                };
                let seen = runtime.files().iter().map(|f| mtime(f)).collect();
                runtime.files_seen = Mutex::new(seen);
                Some(Arc::new(runtime))
            }
        };
        let audit = match &settings.audit_file {
            Some(path) => Audit::open(path)?,
            None => Audit::log_only(),
        };
        Ok(Self {
            password_file: settings.password_file.clone(),
            store: RwLock::new(Arc::new(store)),
            store_seen: Mutex::new(store_seen),
            store_write: tokio::sync::Mutex::new(()),
            scram: ScramConfig::random().map_err(|err| format!("SCRAM: {err}"))?,
            jwt,
            guard: Mutex::new(LoginGuard::new(settings.guard.clone())),
            verified: Mutex::new(
                CredentialCache::new(
                    settings.credential_cache_ttl,
                    settings.credential_cache_size,
                )
                .ok_or("the operating system's random generator is unavailable")?,
            ),
            pool: HashPool {
                permits: Arc::new(Semaphore::new(settings.hash_threads())),
                pending: AtomicUsize::new(0),
                max_pending: settings.max_pending_logins.max(1),
            },
            live: Mutex::new(HashMap::new()),
            audit,
        })
    }

    pub(crate) fn has_jwt(&self) -> bool {
        self.jwt.is_some()
    }

    fn store(&self) -> Arc<PasswordStore> {
        self.store
            .read()
            .map(|s| s.clone())
            .unwrap_or_else(|_| Arc::new(PasswordStore::new()))
    }

    /// Admission through the guard: waits out a backoff delay; refuses banned addresses and
    /// attempts the backoff queue cannot take.
    pub(crate) async fn gate(&self, attempt: &Attempt<'_>) -> Result<(), Refusal> {
        let admission = match self.guard.lock() {
            Ok(mut guard) => guard.admit(attempt.peer.ip(), attempt.username, Instant::now()),
            Err(_) => Admission::Proceed {
                delay: Duration::ZERO,
            },
        };
        match admission {
            Admission::Proceed { delay } => {
                if !delay.is_zero() {
                    tokio::time::sleep(delay).await;
                }
                Ok(())
            }
            Admission::Throttled => Err(Refusal {
                code: ReasonCode::BadUserNameOrPassword,
                reason: "too many failed logins: refused without checking".into(),
                counts: false,
                kind: EventKind::Throttled,
            }),
            Admission::Banned { remaining } => Err(Refusal {
                code: ReasonCode::Banned,
                reason: format!("address banned for {} s more", remaining.as_secs()),
                counts: false,
                kind: EventKind::BannedRefused,
            }),
        }
    }

    /// Records the outcome of a login: the guard's counts and the security event.
    pub(crate) async fn conclude(&self, attempt: &Attempt<'_>, result: &Result<Identity, Refusal>) {
        let now = Instant::now();
        match result {
            Ok(identity) => {
                if let Ok(mut guard) = self.guard.lock() {
                    guard.record_success(attempt.peer.ip(), attempt.username, now);
                }
                let kind = if attempt.reauth {
                    EventKind::ReauthSuccess
                } else {
                    EventKind::AuthSuccess
                };
                let mut event = attempt.event(kind, None);
                event.username = identity.username.as_deref().map(str::to_owned);
                event.method = Some(identity.method.to_owned());
                self.audit.record(event).await;
            }
            Err(refusal) => {
                let outcome = if refusal.counts {
                    self.guard
                        .lock()
                        .ok()
                        .map(|mut g| g.record_failure(attempt.peer.ip(), attempt.username, now))
                } else {
                    None
                };
                let kind = match refusal.kind {
                    EventKind::AuthFailure if attempt.reauth => EventKind::ReauthFailure,
                    kind => kind,
                };
                self.audit
                    .record(attempt.event(kind, Some(refusal.reason.clone())))
                    .await;
                if let Some(outcome) = outcome.filter(|o| o.banned) {
                    let reason = format!(
                        "{} failed logins from this address",
                        outcome.address_failures
                    );
                    self.audit
                        .record(attempt.event(EventKind::Ban, Some(reason)))
                        .await;
                }
            }
        }
    }

    /// Runs the listener's chain over a CONNECT without an Authentication Method.
    /// `certificate` is the identity of a verified client certificate, if the listener maps
    /// one.
    pub(crate) async fn check_connect(
        &self,
        listener: &ListenerAuth,
        connect: &Connect,
        certificate: Option<&str>,
    ) -> Result<Identity, Refusal> {
        let username = connect.username.as_ref().map(|u| u.as_str());
        let password = connect.password.as_deref();
        for authenticator in &listener.chain {
            let step = match authenticator {
                Authenticator::Certificate => match certificate {
                    Some(name) => self.certificate(name),
                    None => Step::NotMine,
                },
                Authenticator::CertificateAndPassword => match (certificate, password) {
                    (Some(name), Some(password)) => {
                        self.password(name, password, "certificate+password").await
                    }
                    (Some(_), None) => Step::Deny(Refusal::failure(
                        ReasonCode::BadUserNameOrPassword,
                        "certificate+password: no password given",
                    )),
                    (None, _) => Step::NotMine,
                },
                Authenticator::Jwt => match (&self.jwt, password) {
                    (Some(jwt), Some(token)) if jwt::looks_like_jwt(token) => {
                        self.jwt_step(jwt, token, username, connect.client_id.as_str())
                            .await
                    }
                    _ => Step::NotMine,
                },
                // Only through an Authentication Method (see the driver).
                Authenticator::Scram => Step::NotMine,
                Authenticator::Password => match (username, password) {
                    (Some(name), Some(password)) => self.password(name, password, "password").await,
                    (Some(_), None) => Step::Deny(Refusal::failure(
                        ReasonCode::BadUserNameOrPassword,
                        "no password given",
                    )),
                    (None, _) => Step::NotMine,
                },
            };
            match step {
                Step::Allow(identity) => return Ok(identity),
                Step::Deny(refusal) => return Err(refusal),
                Step::NotMine => {}
            }
        }
        let no_credentials = username.is_none() && password.is_none() && certificate.is_none();
        if no_credentials && listener.allow_anonymous {
            return Ok(Identity {
                username: None,
                groups: Vec::new(),
                method: "anonymous",
                expires_at: None,
                acl: None,
                in_store: false,
            });
        }
        Err(if no_credentials {
            Refusal::failure(
                ReasonCode::NotAuthorized,
                "no credentials (anonymous access is off)",
            )
        } else {
            Refusal::failure(
                ReasonCode::BadUserNameOrPassword,
                "no authenticator of this listener accepted the credentials",
            )
        })
    }

    fn certificate(&self, name: &str) -> Step {
        let store = self.store();
        let record = store.get(name);
        if record.is_some_and(|r| r.disabled) {
            return Step::Deny(Refusal::failure(
                ReasonCode::NotAuthorized,
                "certificate user is disabled in the password store",
            ));
        }
        Step::Allow(Identity {
            username: Some(Arc::from(name)),
            groups: groups_of(&store, name),
            method: "certificate",
            expires_at: None,
            acl: None,
            in_store: record.is_some(),
        })
    }

    async fn password(&self, name: &str, password: &[u8], method: &'static str) -> Step {
        let store = self.store();
        let allowed = |store: &PasswordStore| {
            Step::Allow(Identity {
                username: Some(Arc::from(name)),
                groups: groups_of(store, name),
                method,
                expires_at: None,
                acl: None,
                in_store: true,
            })
        };
        let cached = self
            .verified
            .lock()
            .is_ok_and(|cache| cache.check(name, password, Instant::now()));
        if cached && store.get(name).is_some_and(|r| !r.disabled) {
            return allowed(&store);
        }
        let old_hash = store.get(name).map(|r| r.password.clone());
        let (owned_name, owned_password) = (name.to_owned(), password.to_vec());
        let checked = store.clone();
        let Some(verdict) = self
            .pool
            .run(move || checked.verify(&owned_name, &owned_password))
            .await
        else {
            return Step::Deny(Refusal::busy());
        };
        match verdict {
            Verdict::Allow { upgrade } => {
                if let Ok(mut cache) = self.verified.lock() {
                    cache.insert(name, password, Instant::now());
                }
                if let (true, Some(old)) = (upgrade, old_hash)
                    && let Ok(text) = std::str::from_utf8(password)
                {
                    self.upgrade_hash(name, text, old).await;
                }
                allowed(&store)
            }
            Verdict::Deny => Step::Deny(Refusal::failure(
                ReasonCode::BadUserNameOrPassword,
                "unknown user or wrong password",
            )),
            Verdict::Disabled => Step::Deny(Refusal::failure(
                ReasonCode::BadUserNameOrPassword,
                "user is disabled",
            )),
        }
    }

    /// Replaces a Mosquitto-imported (or weaker than default) hash with an argon2id one, and
    /// adds SCRAM credentials, now that the password is known to be right. Runs in the
    /// background; a failure is logged and the old hash keeps working.
    async fn upgrade_hash(&self, name: &str, password: &str, old_hash: String) {
        let Some(path) = self.password_file.clone() else {
            return;
        };
        let password = password.to_owned();
        let derived = self
            .pool
            .run(move || {
                let hash = hash_password(&password, &Argon2Params::default()).ok()?;
                let scram = |h| {
                    ScramCredentials::derive(h, &password, DEFAULT_ITERATIONS)
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
            return;
        };
        let _writing = self.store_write.lock().await;
        let result = (|| {
            let mut store = crate::files::load_store(&path, false)?;
            // Changed meanwhile (by `bulwark user`): leave it alone.
            if store.get(name).map(|r| r.password.as_str()) != Some(old_hash.as_str()) {
                return Ok(None);
            }
            store
                .set_password(name, &hash)
                .and_then(|()| store.set_scram(name, sha256, sha512))
                .map_err(|err| err.to_string())?;
            crate::files::save_store(&path, &store)?;
            Ok::<_, String>(Some(store))
        })();
        match result {
            Ok(Some(store)) => {
                if let Ok(mut slot) = self.store.write() {
                    *slot = Arc::new(store);
                }
                if let Ok(mut seen) = self.store_seen.lock() {
                    *seen = mtime(&path);
                }
                info!(user = name, "password hash upgraded to argon2id");
            }
            Ok(None) => {}
            Err(err) => {
                warn!(user = name, %err, "password hash upgrade failed; the old hash stays")
            }
        }
    }

    async fn jwt_step(
        &self,
        jwt: &JwtRuntime,
        token: &[u8],
        username: Option<&str>,
        client_id: &str,
    ) -> Step {
        let Ok(token) = std::str::from_utf8(token) else {
            return Step::Deny(Refusal::failure(
                ReasonCode::BadUserNameOrPassword,
                "JWT: not UTF-8",
            ));
        };
        match jwt.verify(token, client_id).await {
            Ok(claims) => {
                if username.is_some_and(|u| !u.is_empty() && u != claims.username) {
                    return Step::Deny(Refusal::failure(
                        ReasonCode::BadUserNameOrPassword,
                        "JWT: the CONNECT username differs from the token's",
                    ));
                }
                let store = self.store();
                if store.get(&claims.username).is_some_and(|r| r.disabled) {
                    return Step::Deny(Refusal::failure(
                        ReasonCode::BadUserNameOrPassword,
                        "JWT: user is disabled in the password store",
                    ));
                }
                Step::Allow(Identity {
                    groups: groups_of(&store, &claims.username),
                    in_store: store.get(&claims.username).is_some(),
                    username: Some(Arc::from(claims.username.as_str())),
                    method: "jwt",
                    expires_at: claims
                        .expires_at
                        .map(|exp| UNIX_EPOCH + Duration::from_secs(exp)),
                    acl: claims.acl,
                })
            }
            Err(err) => Step::Deny(Refusal::failure(
                ReasonCode::BadUserNameOrPassword,
                format!("JWT: {err}"),
            )),
        }
    }

    /// Verifies a token given as 5.0 Authentication Data (method `JWT`).
    pub(crate) async fn check_jwt_data(
        &self,
        token: &[u8],
        username: Option<&str>,
        client_id: &str,
    ) -> Result<Identity, Refusal> {
        let Some(jwt) = &self.jwt else {
            return Err(Refusal {
                code: ReasonCode::BadAuthenticationMethod,
                reason: "JWT authentication is not configured".into(),
                counts: false,
                kind: EventKind::AuthFailure,
            });
        };
        match self.jwt_step(jwt, token, username, client_id).await {
            Step::Allow(identity) => Ok(identity),
            Step::Deny(refusal) => Err(refusal),
            Step::NotMine => Err(Refusal::failure(ReasonCode::NotAuthorized, "JWT refused")),
        }
    }

    /// Starts a SCRAM exchange: parses client-first-message and returns the server side and
    /// server-first-message. Unknown and disabled users get a decoy exchange that fails at the
    /// end like a wrong password.
    pub(crate) fn scram_start(
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

    /// The identity of a user who completed a SCRAM exchange.
    pub(crate) fn scram_identity(&self, name: &str, method: &'static str) -> Identity {
        let store = self.store();
        Identity {
            username: Some(Arc::from(name)),
            groups: groups_of(&store, name),
            method,
            expires_at: None,
            acl: None,
            in_store: true,
        }
    }

    /// A failed step of a SCRAM exchange, as a refusal.
    pub(crate) fn scram_refusal(err: &ScramError) -> Refusal {
        Refusal::failure(ReasonCode::BadUserNameOrPassword, format!("SCRAM: {err}"))
    }

    /// Remembers an authenticated connection (for store reloads).
    pub(crate) fn register(&self, conn: ConnectionId, attempt: &Attempt<'_>, identity: &Identity) {
        if let Ok(mut live) = self.live.lock() {
            live.insert(
                conn,
                Live {
                    username: identity.username.clone(),
                    in_store: identity.in_store,
                    listener: attempt.listener.name.clone(),
                    peer: attempt.peer,
                    client_id: attempt.client_id.to_owned(),
                },
            );
        }
    }

    pub(crate) fn unregister(&self, conn: ConnectionId) {
        if let Ok(mut live) = self.live.lock() {
            live.remove(&conn);
        }
    }

    /// A forced disconnect of `conn`, as a security event.
    pub(crate) fn forced_disconnect(&self, conn: ConnectionId, reason: &str) {
        let mut event = SecurityEvent::new(EventKind::ForcedDisconnect, SystemTime::now());
        event.reason = Some(reason.to_owned());
        if let Ok(live) = self.live.lock()
            && let Some(l) = live.get(&conn)
        {
            event.listener = Some(l.listener.to_string());
            event.remote = Some(l.peer.to_string());
            event.client_id = (!l.client_id.is_empty()).then(|| l.client_id.clone());
            event.username = l.username.as_deref().map(str::to_owned);
        }
        self.audit.record_now(event);
    }

    /// Reloads the JWT key files if they changed (or `force`).
    pub(crate) fn reload_jwt_files(&self, force: bool) {
        if let Some(jwt) = &self.jwt {
            jwt.reload_files(force);
        }
    }

    /// Reloads the password store if it changed (or `force`). Returns the live connections
    /// whose user was removed or disabled; an unreadable store keeps the old one and is
    /// logged.
    pub(crate) async fn reload_store(&self, force: bool) -> Vec<ConnectionId> {
        let Some(path) = &self.password_file else {
            return Vec::new();
        };
        let now = mtime(path);
        {
            let Ok(mut seen) = self.store_seen.lock() else {
                return Vec::new();
            };
            if !force && *seen == now {
                return Vec::new();
            }
            *seen = now;
        }
        let _writing = self.store_write.lock().await;
        let store = match crate::files::load_store(path, false) {
            Ok(store) => store,
            Err(err) => {
                warn!(%err, "password store reload failed; the previous users stay in force");
                return Vec::new();
            }
        };
        let affected: Vec<ConnectionId> = match self.live.lock() {
            Ok(live) => live
                .iter()
                .filter(|(_, l)| {
                    l.in_store
                        && l.username
                            .as_deref()
                            .is_some_and(|name| store.get(name).is_none_or(|u| u.disabled))
                })
                .map(|(conn, _)| *conn)
                .collect(),
            Err(_) => Vec::new(),
        };
        info!(
            users = store.len(),
            closing = affected.len(),
            "password store reloaded"
        );
        if let Ok(mut slot) = self.store.write() {
            *slot = Arc::new(store);
        }
        // A changed, removed or disabled user must not be let in on a remembered password.
        if let Ok(mut cache) = self.verified.lock() {
            cache.clear();
        }
        affected
    }

    /// Fetches the JWKS URL every `jwks_refresh` until `stop`.
    pub(crate) async fn refresh_jwks(
        self: Arc<Self>,
        mut stop: tokio::sync::watch::Receiver<bool>,
    ) {
        let Some(jwt) = self.jwt.clone() else {
            return;
        };
        if jwt.settings.jwks_url.is_none() {
            return;
        }
        let every = jwt
            .settings
            .jwks_refresh
            .max(jwt.settings.jwks_min_interval);
        loop {
            let seen = jwt.fetched.lock().await.1;
            jwt.refresh(Duration::ZERO, seen).await;
            tokio::select! {
                () = tokio::time::sleep(every) => {}
                _ = stop.changed() => return,
            }
        }
    }

    /// Prunes the guard's expired entries.
    pub(crate) fn prune(&self) {
        if let Ok(mut guard) = self.guard.lock() {
            guard.prune(Instant::now());
        }
    }
}

fn groups_of(store: &PasswordStore, name: &str) -> Vec<Arc<str>> {
    store.get(name).map_or_else(Vec::new, |r| {
        r.groups.iter().map(|g| Arc::from(g.as_str())).collect()
    })
}

fn mtime(path: &std::path::Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

//! Authentication of every connection, before the engine sees its CONNECT.
//!
//! Each listener has an ordered chain of [`Authenticator`]s. Each one answers allow, deny or
//! "not mine"; the first allow or deny decides, a backend error is a deny, and if nothing
//! allows the connection is refused (fail-closed). A client that presents no credentials at
//! all is refused too, unless its listener sets `dangerous_allow_anonymous`.
//!
//! Around the chain stands the [`LoginGuard`]: failures are counted per source address and
//! per username; past a threshold attempts wait (exponential backoff, serialized), and an
//! address with many failures is banned for a while. Only failures count: attempts in flight
//! never do, and an attempt admitted before its keys were in backoff is checked again right
//! before its credentials are evaluated ([`AuthService::before_verdict`]). A CONNECT without
//! any credentials on an anonymous listener, and a login the credential cache knows, guess
//! nothing: they skip the backoff (not the address's ban). Unknown users and wrong passwords
//! get the same reason code after the same work (the store verifies a dummy hash for unknown
//! names). Password hashes are checked on blocking threads, at most `hash_concurrency` at a
//! time and with at most `max_pending_logins` waiting, so a login flood cannot take the
//! cores that move messages; concurrent logins with the same username and password share one
//! check (single flight), and the credential cache serves the ones after it.
//!
//! Every decision is a [`SecurityEvent`] (see `audit`).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bulwark_acl::AclRules;
use bulwark_acl::event::{EventKind, SecurityEvent};
use bulwark_auth::cache::CredentialCache;
use bulwark_auth::guard::{Admission, GuardSettings, LoginGuard};
use bulwark_auth::jwt::{self, JwtError, JwtIdentity, JwtKeySet, JwtSettings};
use bulwark_auth::password::{Argon2Params, PasswordStore, Verdict, hash_password};
use bulwark_auth::scram::{
    DEFAULT_ITERATIONS, ScramConfig, ScramCredentials, ScramError, ScramHash, ScramServer,
};
use bulwark_core::ConnectionId;
use bulwark_proto::{Connect, ReasonCode};
use tokio::sync::Semaphore;
use tracing::{info, warn};

use crate::audit::Audit;
use crate::sync::{lock, read, write};

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

/// Refusals of a banned or throttled address are recorded at most once per this period.
const QUIET_PERIOD: Duration = Duration::from_secs(10);
/// Addresses remembered for that, at most.
const QUIET_TABLE: usize = 10_000;

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
    /// Connections one username may have open at once; 0: no cap. A connection with a
    /// client id the user already has open takes the old one over and is not refused.
    pub max_connections_per_user: usize,
}

impl Default for AuthSettings {
    fn default() -> Self {
        Self {
            password_file: None,
            audit_file: None,
            hash_concurrency: 0,
            max_pending_logins: 1024,
            credential_cache_ttl: bulwark_auth::cache::DEFAULT_TTL,
            credential_cache_size: bulwark_auth::cache::DEFAULT_MAX_ENTRIES,
            guard: GuardSettings::default(),
            jwt: None,
            max_connections_per_user: 0,
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
    pub(crate) groups: Vec<Arc<str>>,
    pub(crate) method: &'static str,
    /// When the credentials stop being valid (a JWT's `exp`).
    pub(crate) expires_at: Option<SystemTime>,
    /// The rules of a JWT's ACL claim.
    pub(crate) acl: Option<Arc<AclRules>>,
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
    pub(crate) counts: Counts,
    pub(crate) kind: EventKind,
}

/// Whether a refusal counts towards backoff and bans, and against which keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Counts {
    /// Not a guess (server busy, banned, throttled, an unsupported method).
    No,
    /// Against the address only: an exchange the client left, which says nothing about the
    /// username it named (and must not let anyone slow down that user).
    AddressOnly,
    /// Against the address and the username.
    Both,
}

impl Refusal {
    pub(crate) fn failure(code: ReasonCode, reason: impl Into<String>) -> Self {
        Self {
            code,
            reason: reason.into(),
            counts: Counts::Both,
            kind: EventKind::AuthFailure,
        }
    }

    /// A banned client (by username, client id or address): not a guess.
    pub(crate) fn banned(reason: impl Into<String>) -> Self {
        Self {
            code: ReasonCode::Banned,
            reason: reason.into(),
            counts: Counts::No,
            kind: EventKind::BannedRefused,
        }
    }

    /// Valid credentials refused for a quota: not a guess, and not a failed login.
    pub(crate) fn quota(reason: impl Into<String>) -> Self {
        Self {
            code: ReasonCode::QuotaExceeded,
            reason: reason.into(),
            counts: Counts::No,
            kind: EventKind::AuthFailure,
        }
    }

    /// A failed re-authentication.
    pub(crate) fn reauth(reason: impl Into<String>) -> Self {
        Self {
            code: ReasonCode::NotAuthorized,
            reason: reason.into(),
            counts: Counts::Both,
            kind: EventKind::ReauthFailure,
        }
    }

    fn busy() -> Self {
        Self {
            code: ReasonCode::ServerBusy,
            reason: "too many logins waiting for a password check".into(),
            counts: Counts::No,
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
            ReasonCode::QuotaExceeded => "quota exceeded",
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

/// An attempt past the gate: its outcome must be counted, or the attempt released (on drop)
/// so that it stops counting as in flight.
pub(crate) struct Ticket<'a> {
    auth: &'a AuthService,
    address: std::net::IpAddr,
    username: Option<String>,
    /// Whether the guard counts this attempt in flight (false for attempts that skipped the
    /// backoff: no credentials on an anonymous listener, a login the cache knows).
    guarded: bool,
    /// Whether the guard is to be asked again before the credentials are evaluated: the
    /// attempt was admitted while none of its keys was in backoff.
    recheck: AtomicBool,
    open: bool,
}

impl std::fmt::Debug for Ticket<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ticket")
            .field("address", &self.address)
            .field("open", &self.open)
            .finish_non_exhaustive()
    }
}

impl Drop for Ticket<'_> {
    fn drop(&mut self) {
        if self.open && self.guarded {
            lock(&self.auth.guard).release(self.address, self.username.as_deref());
        }
    }
}

/// What one authenticator said.
enum Step {
    Allow(Identity),
    Deny(Refusal),
    NotMine,
}

/// The live, authenticated connections, and each user's.
#[derive(Debug, Default)]
struct LiveTable {
    conns: HashMap<ConnectionId, Live>,
    by_user: HashMap<Arc<str>, Vec<ConnectionId>>,
}

/// Why a connection could not be registered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NotRegistered {
    /// The user was removed or disabled during the login.
    Gone,
    /// The user has `max_connections_per_user` connections (other than the client id's own,
    /// which this one takes over).
    Quota,
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

/// A turn of the pool: a place in its queue and a thread's permit.
struct Turn<'a> {
    _pending: Pending<'a>,
    permit: tokio::sync::OwnedSemaphorePermit,
}

impl Turn<'_> {
    /// Runs `work` on a blocking thread with this turn.
    async fn run<T: Send + 'static>(self, work: impl FnOnce() -> T + Send + 'static) -> Option<T> {
        let Self { _pending, permit } = self;
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            work()
        })
        .await
        .ok()
    }
}

impl HashPool {
    /// Waits for a turn; `None` if the queue is full.
    async fn turn(&self) -> Option<Turn<'_>> {
        if self.pending.fetch_add(1, Ordering::AcqRel) >= self.max_pending {
            self.pending.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        let pending = Pending(&self.pending);
        let permit = self.permits.clone().acquire_owned().await.ok()?;
        Some(Turn {
            _pending: pending,
            permit,
        })
    }

    /// Runs `work` on a blocking thread; `None` if the queue is full.
    async fn run<T: Send + 'static>(&self, work: impl FnOnce() -> T + Send + 'static) -> Option<T> {
        self.turn().await?.run(work).await
    }
}

/// The JWT verifier and its keys.
#[derive(Debug)]
struct JwtRuntime {
    settings: JwtAuthSettings,
    verify: JwtSettings,
    keys: RwLock<Arc<JwtKeySet>>,
    /// When the JWKS URL was last fetched; held only by refreshes, never by a verification.
    fetching: tokio::sync::Mutex<Option<Instant>>,
    /// How many fetches succeeded.
    fetches: AtomicU64,
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
        let mut fetched = self.fetching.lock().await;
        if self.fetches.load(Ordering::Acquire) != seen {
            return true;
        }
        if fetched.is_some_and(|at| at.elapsed() < gap) {
            return false;
        }
        *fetched = Some(Instant::now());
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
                *write(&self.keys) = Arc::new(keys);
                *lock(&self.fetched_text) = Some(text);
                self.fetches.fetch_add(1, Ordering::AcqRel);
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
        {
            let mut seen = lock(&self.files_seen);
            if !force && *seen == now {
                return;
            }
            *seen = now;
        }
        let fetched = lock(&self.fetched_text).clone();
        match Self::load_keys(&self.settings, fetched.as_deref()) {
            Ok(keys) => {
                info!(keys = keys.len(), "JWT keys reloaded");
                *write(&self.keys) = Arc::new(keys);
            }
            Err(err) => warn!(%err, "JWT key reload failed; the previous keys stay in use"),
        }
    }

    async fn verify(&self, token: &str, client_id: &str) -> Result<JwtIdentity, JwtError> {
        let seen = self.fetches.load(Ordering::Acquire);
        let keys = read(&self.keys).clone();
        let result = jwt::verify(&self.verify, &keys, token, client_id, unix_now());
        match result {
            Err(JwtError::UnknownKey { .. })
                if self.refresh(self.settings.jwks_min_interval, seen).await =>
            {
                let keys = read(&self.keys).clone();
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
    /// Password checks under way, by the fingerprint of their username and password: a login
    /// with the same credentials waits for that check instead of running its own.
    flights: Mutex<HashMap<[u8; 32], Arc<Flight>>>,
    /// Bumped at every store reload.
    generation: AtomicU64,
    /// Per address: when a refusal of a banned or throttled attempt was last recorded, and
    /// how many were not recorded since (they come in floods).
    quiet: Mutex<HashMap<std::net::IpAddr, (Instant, u32)>>,
    pool: HashPool,
    live: Mutex<LiveTable>,
    max_connections_per_user: usize,
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
                    fetching: tokio::sync::Mutex::new(None),
                    fetches: AtomicU64::new(0),
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
            scram: scram_config(settings.password_file.as_deref())?,
            jwt,
            guard: Mutex::new(LoginGuard::new(settings.guard.clone())),
            verified: Mutex::new(
                CredentialCache::new(
                    settings.credential_cache_ttl,
                    settings.credential_cache_size,
                )
                .ok_or("the operating system's random generator is unavailable")?,
            ),
            generation: AtomicU64::new(0),
            flights: Mutex::new(HashMap::new()),
            quiet: Mutex::new(HashMap::new()),
            pool: HashPool {
                permits: Arc::new(Semaphore::new(settings.hash_threads())),
                pending: AtomicUsize::new(0),
                max_pending: settings.max_pending_logins.max(1),
            },
            live: Mutex::new(LiveTable::default()),
            max_connections_per_user: settings.max_connections_per_user,
            audit,
        })
    }

    pub(crate) fn has_jwt(&self) -> bool {
        self.jwt.is_some()
    }

    fn store(&self) -> Arc<PasswordStore> {
        read(&self.store).clone()
    }

    /// Admission through the guard: waits out a backoff delay; refuses banned addresses and
    /// attempts the backoff queue cannot take. `password` is the CONNECT's, if it has one.
    ///
    /// Two kinds of attempt guess nothing and skip the backoff (an address ban still refuses
    /// them): a CONNECT without any credentials on a listener that lets anonymous clients in
    /// (there is nothing to guess, and it must not wait for someone else's bad passwords from
    /// the same address), and a login whose username and password the credential cache knows
    /// (a hit needs the right password, so this is no guess either).
    pub(crate) async fn gate(
        &self,
        attempt: &Attempt<'_>,
        password: Option<&[u8]>,
    ) -> Result<Ticket<'_>, Refusal> {
        let now = Instant::now();
        let anonymous = attempt.method == "connect"
            && attempt.username.is_none()
            && password.is_none()
            && attempt.listener.allow_anonymous;
        let known = match (attempt.username, password) {
            (Some(name), Some(password)) => lock(&self.verified).check(name, password, now),
            _ => false,
        };
        let address = attempt.peer.ip();
        let ticket = |guarded: bool, recheck: bool| Ticket {
            auth: self,
            address,
            username: attempt.username.map(str::to_owned),
            guarded,
            recheck: AtomicBool::new(recheck),
            open: true,
        };
        if anonymous || known {
            return match lock(&self.guard).banned_for(address, now) {
                Some(remaining) => Err(Self::address_banned(remaining)),
                None => Ok(ticket(false, false)),
            };
        }
        let (admission, recheck) = {
            let mut guard = lock(&self.guard);
            let recheck = !guard.in_backoff(address, attempt.username, now);
            (guard.admit(address, attempt.username, now), recheck)
        };
        match admission {
            Admission::Proceed { delay } => {
                let ticket = ticket(true, recheck);
                if !delay.is_zero() {
                    tokio::time::sleep(delay).await;
                    self.not_banned(address)?;
                }
                Ok(ticket)
            }
            Admission::Throttled => Err(Self::throttled()),
            Admission::Banned { remaining } => Err(Self::address_banned(remaining)),
        }
    }

    /// Refuses an attempt whose address was banned while it waited its turn.
    fn not_banned(&self, address: std::net::IpAddr) -> Result<(), Refusal> {
        match lock(&self.guard).banned_for(address, Instant::now()) {
            Some(remaining) => Err(Self::address_banned(remaining)),
            None => Ok(()),
        }
    }

    fn throttled() -> Refusal {
        Refusal {
            code: ReasonCode::BadUserNameOrPassword,
            reason: "too many failed logins: refused without checking".into(),
            counts: Counts::No,
            kind: EventKind::Throttled,
        }
    }

    fn address_banned(remaining: Duration) -> Refusal {
        Refusal {
            code: ReasonCode::Banned,
            reason: format!("address banned for {} s more", remaining.as_secs()),
            counts: Counts::No,
            kind: EventKind::BannedRefused,
        }
    }

    /// Called right before an attempt's credentials are evaluated (a password hash check gets
    /// its turn, a SCRAM proof arrived): if the attempt was admitted while none of its keys was
    /// in backoff, failures counted since then apply to it now (it waits its turn, or is
    /// refused unchecked), so that a burst of parallel guesses is slowed as soon as the first
    /// of them have failed. Attempts admitted in backoff already waited their turn.
    pub(crate) async fn before_verdict(&self, ticket: &Ticket<'_>) -> Result<(), Refusal> {
        let delay = self.recheck(ticket)?;
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
            self.not_banned(ticket.address)?;
        }
        Ok(())
    }

    /// The guard's re-check of [`before_verdict`](Self::before_verdict): the wait, or the
    /// refusal (once per ticket; zero after that).
    fn recheck(&self, ticket: &Ticket<'_>) -> Result<Duration, Refusal> {
        if !ticket.guarded || !ticket.recheck.swap(false, Ordering::AcqRel) {
            return Ok(Duration::ZERO);
        }
        let admission =
            lock(&self.guard).recheck(ticket.address, ticket.username.as_deref(), Instant::now());
        match admission {
            Admission::Proceed { delay } => Ok(delay),
            Admission::Throttled => Err(Self::throttled()),
            Admission::Banned { remaining } => Err(Self::address_banned(remaining)),
        }
    }

    /// Records the outcome of a login: the guard's counts (ending the admitted attempt, if
    /// there is a ticket) and the security event. A success clears the username's failures
    /// however it was verified (the credential cache included).
    pub(crate) async fn conclude(
        &self,
        ticket: Option<Ticket<'_>>,
        attempt: &Attempt<'_>,
        result: &Result<Identity, Refusal>,
    ) {
        let now = Instant::now();
        let address = attempt.peer.ip();
        let mut ticket = ticket;
        // The attempt the guard counts in flight, if any, under the username it was admitted.
        let in_flight = ticket
            .as_ref()
            .filter(|t| t.guarded)
            .map(|t| t.username.clone());
        if let Some(t) = ticket.as_mut() {
            t.open = false;
        }
        drop(ticket);
        let username = attempt.username;
        match result {
            Ok(identity) => {
                {
                    let mut guard = lock(&self.guard);
                    if let Some(admitted) = &in_flight {
                        guard.release(address, admitted.as_deref());
                    }
                    guard.record_success(address, username, now);
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
                let outcome = {
                    let mut guard = lock(&self.guard);
                    if let Some(admitted) = &in_flight {
                        guard.release(address, admitted.as_deref());
                    }
                    match refusal.counts {
                        Counts::No => None,
                        Counts::AddressOnly => Some(guard.record_failure(address, None, now)),
                        Counts::Both => Some(guard.record_failure(address, username, now)),
                    }
                };
                let kind = match refusal.kind {
                    EventKind::AuthFailure if attempt.reauth => EventKind::ReauthFailure,
                    kind => kind,
                };
                if let Some(reason) = self.worth_recording(kind, address, &refusal.reason, now) {
                    self.audit.record(attempt.event(kind, Some(reason))).await;
                }
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

    /// Refusals of banned and throttled attempts arrive in floods: one event per address every
    /// [`QUIET_PERIOD`], saying how many were left out. Every other event is recorded.
    fn worth_recording(
        &self,
        kind: EventKind,
        address: std::net::IpAddr,
        reason: &str,
        now: Instant,
    ) -> Option<String> {
        if !matches!(kind, EventKind::BannedRefused | EventKind::Throttled) {
            return Some(reason.to_owned());
        }
        let mut quiet = lock(&self.quiet);
        if quiet.len() >= QUIET_TABLE {
            quiet.retain(|_, (at, _)| now.saturating_duration_since(*at) < QUIET_PERIOD);
            if quiet.len() >= QUIET_TABLE {
                quiet.clear();
            }
        }
        let key = bulwark_auth::guard::address_key(address);
        match quiet.get_mut(&key) {
            Some((at, left_out)) if now.saturating_duration_since(*at) < QUIET_PERIOD => {
                *left_out = left_out.saturating_add(1);
                None
            }
            Some((at, left_out)) => {
                let reason = match *left_out {
                    0 => reason.to_owned(),
                    n => format!("{reason} ({n} more from this address not recorded)"),
                };
                *at = now;
                *left_out = 0;
                Some(reason)
            }
            None => {
                quiet.insert(key, (now, 0));
                Some(reason.to_owned())
            }
        }
    }

    /// Runs the listener's chain over a CONNECT without an Authentication Method.
    /// `certificate` is the identity of a verified client certificate, if the listener maps
    /// one.
    pub(crate) async fn check_connect(
        self: &Arc<Self>,
        listener: &ListenerAuth,
        connect: &Connect,
        certificate: Option<&str>,
        ticket: &Ticket<'_>,
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
                        self.password(ticket, name, password, "certificate+password")
                            .await
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
                    (Some(name), Some(password)) => {
                        self.password(ticket, name, password, "password").await
                    }
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
                ReasonCode::BadUserNameOrPassword,
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

    /// Checks a username and password: from the credential cache if it knows them, else by
    /// joining a check of the same credentials already under way (single flight: a fleet that
    /// reconnects at once costs one hash check per user), else by a hash check of its own.
    async fn password(
        self: &Arc<Self>,
        ticket: &Ticket<'_>,
        name: &str,
        password: &[u8],
        method: &'static str,
    ) -> Step {
        loop {
            // The store generation this check starts from: a reload meanwhile must not leave
            // the password it replaced in the credential cache.
            let generation = self.generation.load(Ordering::Acquire);
            let store = self.store();
            let (cached, fingerprint) = {
                let cache = lock(&self.verified);
                (
                    cache.check(name, password, Instant::now()),
                    cache.fingerprint(name, password),
                )
            };
            if cached && store.get(name).is_some_and(|r| !r.disabled) {
                return allowed(&store, name, method);
            }
            let role = fingerprint.map(|key| {
                let mut flights = lock(&self.flights);
                match flights.get(&key) {
                    Some(flight) => Err(flight.subscribe()),
                    None => {
                        let flight = Arc::new(Flight::default());
                        flights.insert(key, flight.clone());
                        Ok(Leader {
                            auth: self,
                            key,
                            flight,
                        })
                    }
                }
            });
            let leader = match role {
                Some(Err(mut waiting)) => {
                    let outcome = waiting
                        .wait_for(Option::is_some)
                        .await
                        .ok()
                        .and_then(|outcome| *outcome);
                    match outcome {
                        Some(FlightOutcome::Allowed { generation })
                            if generation == self.generation.load(Ordering::Acquire) =>
                        {
                            let store = self.store();
                            if store.get(name).is_some_and(|r| !r.disabled) {
                                return allowed(&store, name, method);
                            }
                            continue;
                        }
                        Some(FlightOutcome::Refused) => {
                            // The same guess as one that just failed: it tells nothing new, so
                            // it is not counted again.
                            return Step::Deny(Refusal {
                                code: ReasonCode::BadUserNameOrPassword,
                                reason: "unknown user or wrong password (the same credentials \
                                         failed in a concurrent login)"
                                    .into(),
                                counts: Counts::No,
                                kind: EventKind::AuthFailure,
                            });
                        }
                        // Abandoned, or the store changed meanwhile: check again.
                        _ => continue,
                    }
                }
                Some(Ok(leader)) => Some(leader),
                None => None,
            };
            let step = self
                .verify_password(ticket, name, password, method, generation, store)
                .await;
            if let Some(leader) = leader {
                leader.finish(match &step {
                    Step::Allow(_) => FlightOutcome::Allowed { generation },
                    Step::Deny(refusal) if refusal.counts == Counts::Both => FlightOutcome::Refused,
                    _ => FlightOutcome::Abandoned,
                });
            }
            return step;
        }
    }

    /// One hash check of a username and password, after the guard's re-check.
    async fn verify_password(
        self: &Arc<Self>,
        ticket: &Ticket<'_>,
        name: &str,
        password: &[u8],
        method: &'static str,
        generation: u64,
        store: Arc<PasswordStore>,
    ) -> Step {
        // The guard is asked again when the check gets its turn, not when it joins the queue:
        // the failures of the checks before it are known by then.
        let Some(mut turn) = self.pool.turn().await else {
            return Step::Deny(Refusal::busy());
        };
        match self.recheck(ticket) {
            Err(refusal) => return Step::Deny(refusal),
            Ok(delay) if !delay.is_zero() => {
                // Waiting is not done holding a thread's permit.
                drop(turn);
                tokio::time::sleep(delay).await;
                if let Err(refusal) = self.not_banned(ticket.address) {
                    return Step::Deny(refusal);
                }
                match self.pool.turn().await {
                    Some(again) => turn = again,
                    None => return Step::Deny(Refusal::busy()),
                }
            }
            Ok(_) => {}
        }
        let old_hash = store.get(name).map(|r| r.password.clone());
        let (owned_name, owned_password) = (name.to_owned(), password.to_vec());
        let checked = store.clone();
        let Some(verdict) = turn
            .run(move || checked.verify(&owned_name, &owned_password))
            .await
        else {
            return Step::Deny(Refusal::busy());
        };
        match verdict {
            Verdict::Allow { upgrade } => {
                {
                    let mut cache = lock(&self.verified);
                    if self.generation.load(Ordering::Acquire) == generation {
                        cache.insert(name, password, Instant::now());
                    }
                }
                if let (true, Some(old)) = (upgrade, old_hash)
                    && let Ok(text) = std::str::from_utf8(password)
                {
                    let (this, name, text) = (Arc::clone(self), name.to_owned(), text.to_owned());
                    tokio::spawn(async move { this.upgrade_hash(&name, &text, old).await });
                }
                allowed(&store, name, method)
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
    /// background; a failure is logged and the old hash keeps working. The file is rewritten
    /// from its current contents (so an edit by `bulwark user` is kept) and then left to the
    /// watcher, which reloads it like any other change: closing the connections of users that
    /// edit removed or disabled, and clearing the credential cache.
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
            // The store as it is on disk now, edits not reloaded yet included.
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
            Ok(Some(_)) => info!(user = name, "password hash upgraded to argon2id"),
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
                // The token is valid until exp plus the skew it was accepted with; a time past
                // what the clock can hold means no end (and never a panic).
                let skew = jwt.settings.clock_skew.as_secs();
                let expires_at = claims.expires_at.and_then(|exp| {
                    UNIX_EPOCH.checked_add(Duration::from_secs(exp.saturating_add(skew)))
                });
                let acl = match claims.acl.as_ref().map(AclRules::from_claim).transpose() {
                    Ok(rules) => rules.map(Arc::new),
                    Err(err) => {
                        return Step::Deny(Refusal::failure(
                            ReasonCode::NotAuthorized,
                            format!("JWT: the ACL claim is not usable: {err}"),
                        ));
                    }
                };
                Step::Allow(Identity {
                    groups: groups_of(&store, &claims.username),
                    in_store: store.get(&claims.username).is_some(),
                    username: Some(Arc::from(claims.username.as_str())),
                    method: "jwt",
                    expires_at,
                    acl,
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
                counts: Counts::No,
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

    /// Remembers an authenticated connection (for store reloads). Refused (false) if the
    /// user of the store it was authenticated as has been removed or disabled since: the check
    /// and a reload's scan of the live connections take the same lock, so a login that
    /// straddles a reload is either closed by it or refused here.
    pub(crate) fn register(
        &self,
        conn: ConnectionId,
        attempt: &Attempt<'_>,
        identity: &Identity,
    ) -> Result<(), NotRegistered> {
        let mut live = lock(&self.live);
        if identity.in_store
            && let Some(name) = identity.username.as_deref()
            && self.store().get(name).is_none_or(|u| u.disabled)
        {
            return Err(NotRegistered::Gone);
        }
        if let Some(name) = &identity.username {
            let max = self.max_connections_per_user;
            let theirs = live.by_user.get(name).map_or(&[][..], Vec::as_slice);
            // A connection with the same client id is about to be taken over: not counted.
            let others = theirs
                .iter()
                .filter(|c| {
                    attempt.client_id.is_empty()
                        || live
                            .conns
                            .get(c)
                            .is_none_or(|l| l.client_id != attempt.client_id)
                })
                .count();
            if max > 0 && others >= max {
                return Err(NotRegistered::Quota);
            }
            live.by_user.entry(name.clone()).or_default().push(conn);
        }
        live.conns.insert(
            conn,
            Live {
                username: identity.username.clone(),
                in_store: identity.in_store,
                listener: attempt.listener.name.clone(),
                peer: attempt.peer,
                client_id: attempt.client_id.to_owned(),
            },
        );
        Ok(())
    }

    pub(crate) fn unregister(&self, conn: ConnectionId) {
        let mut live = lock(&self.live);
        let Some(gone) = live.conns.remove(&conn) else {
            return;
        };
        if let Some(name) = gone.username
            && let Some(theirs) = live.by_user.get_mut(&name)
        {
            theirs.retain(|c| *c != conn);
            if theirs.is_empty() {
                live.by_user.remove(&name);
            }
        }
    }

    /// The live connections whose address, username and client id `hit` picks.
    pub(crate) fn live_matching(
        &self,
        hit: impl Fn(std::net::IpAddr, Option<&str>, &str) -> bool,
    ) -> Vec<ConnectionId> {
        lock(&self.live)
            .conns
            .iter()
            .filter(|(_, l)| hit(l.peer.ip(), l.username.as_deref(), &l.client_id))
            .map(|(conn, _)| *conn)
            .collect()
    }

    /// A forced disconnect of `conn`, as a security event.
    pub(crate) fn forced_disconnect(&self, conn: ConnectionId, reason: &str) {
        let mut event = SecurityEvent::new(EventKind::ForcedDisconnect, SystemTime::now());
        event.reason = Some(reason.to_owned());
        if let Some(l) = lock(&self.live).conns.get(&conn) {
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
            let mut seen = lock(&self.store_seen);
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
        // Under the live registry's lock: see `register`.
        let live = lock(&self.live);
        let affected: Vec<ConnectionId> = live
            .conns
            .iter()
            .filter(|(_, l)| {
                l.in_store
                    && l.username
                        .as_deref()
                        .is_some_and(|name| store.get(name).is_none_or(|u| u.disabled))
            })
            .map(|(conn, _)| *conn)
            .collect();
        info!(
            users = store.len(),
            closing = affected.len(),
            "password store reloaded"
        );
        *write(&self.store) = Arc::new(store);
        // A changed, removed or disabled user must not be let in on a remembered password:
        // the generation first, so that a check that started before cannot insert after.
        self.generation.fetch_add(1, Ordering::AcqRel);
        lock(&self.verified).clear();
        drop(live);
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
            let seen = jwt.fetches.load(Ordering::Acquire);
            jwt.refresh(Duration::ZERO, seen).await;
            tokio::select! {
                () = tokio::time::sleep(every) => {}
                _ = stop.changed() => return,
            }
        }
    }

    /// Prunes the guard's expired entries.
    pub(crate) fn prune(&self) {
        lock(&self.guard).prune(Instant::now());
    }
}

/// The identity of a user whose password was right.
fn allowed(store: &PasswordStore, name: &str, method: &'static str) -> Step {
    Step::Allow(Identity {
        username: Some(Arc::from(name)),
        groups: groups_of(store, name),
        method,
        expires_at: None,
        acl: None,
        in_store: true,
    })
}

/// How a shared password check ended, as the logins that waited for it see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FlightOutcome {
    /// The password is right (as of this store generation).
    Allowed { generation: u64 },
    /// The password is wrong, or the user unknown or disabled.
    Refused,
    /// No verdict (server busy, the check's client left, the guard refused it): each waiting
    /// login checks for itself.
    Abandoned,
}

/// A password check under way, that logins with the same credentials wait for.
#[derive(Debug, Default)]
struct Flight(tokio::sync::watch::Sender<Option<FlightOutcome>>);

impl Flight {
    fn subscribe(&self) -> tokio::sync::watch::Receiver<Option<FlightOutcome>> {
        self.0.subscribe()
    }
}

/// The login that runs a shared check. Dropped without [`Leader::finish`] (its client went
/// away mid-check), the check counts as abandoned.
struct Leader<'a> {
    auth: &'a AuthService,
    key: [u8; 32],
    flight: Arc<Flight>,
}

impl Leader<'_> {
    fn finish(self, outcome: FlightOutcome) {
        self.flight.0.send_replace(Some(outcome));
    }
}

impl Drop for Leader<'_> {
    fn drop(&mut self) {
        let mut flights = lock(&self.auth.flights);
        if flights
            .get(&self.key)
            .is_some_and(|f| Arc::ptr_eq(f, &self.flight))
        {
            flights.remove(&self.key);
        }
        drop(flights);
        self.flight.0.send_if_modified(|outcome| {
            if outcome.is_none() {
                *outcome = Some(FlightOutcome::Abandoned);
                true
            } else {
                false
            }
        });
    }
}

/// The file, next to the password store, that keeps the secret SCRAM decoys are derived from.
pub const SCRAM_DECOY_FILE: &str = "scram-decoy.secret";

/// The SCRAM settings: decoy credentials for unknown users come from a secret kept beside the
/// password store (made once, mode 0600), so that an unknown name gets the same salt after a
/// restart, as a real user does. Without a store (or if the file cannot be written) the secret
/// is random for this run.
fn scram_config(store: Option<&std::path::Path>) -> Result<ScramConfig, String> {
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

fn groups_of(store: &PasswordStore, name: &str) -> Vec<Arc<str>> {
    store.get(name).map_or_else(Vec::new, |r| {
        r.groups.iter().map(|g| Arc::from(g.as_str())).collect()
    })
}

fn mtime(path: &std::path::Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

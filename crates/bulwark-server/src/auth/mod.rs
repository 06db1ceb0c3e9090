//! Authentication of every connection, before the engine sees its CONNECT.
//!
//! Each listener has an ordered chain of [`Authenticator`]s. Each one answers allow, deny or
//! "not mine"; the first allow or deny decides, a backend error is a deny, and if nothing
//! allows the connection is refused (fail-closed). A client that presents no credentials at
//! all is refused too, unless its listener sets `dangerous_allow_anonymous`.
//!
//! Around the chain stands the [`LoginGuard`](bulwark_auth::guard::LoginGuard): failures are
//! counted per source address and per username; past a threshold attempts wait (exponential
//! backoff, serialized), and an address with many failures is banned for a while. Only
//! failures count: attempts in flight never do, and an attempt admitted before its keys were
//! in backoff is checked again right before its credentials are evaluated
//! ([`AuthService::before_verdict`]). A CONNECT without any credentials on an anonymous
//! listener, and a login the credential cache knows, guess nothing: they skip the backoff (not
//! the address's ban). Unknown users and wrong passwords get the same reason code after the
//! same work (the store verifies a dummy hash for unknown names). Password hashes are checked
//! on blocking threads, at most `hash_concurrency` at a time and with at most
//! `max_pending_logins` waiting, so a login flood cannot take the cores that move messages;
//! concurrent logins with the same username and password share one check (single flight),
//! and the credential cache serves the ones after it.
//!
//! Every decision is a [`SecurityEvent`] (see `audit`).
//!
//! [`AuthService`] is a facade over parts that each hold their state behind one lock and are
//! tested on their own:
//!
//! | module | holds |
//! |---|---|
//! | `settings` | [`Authenticator`], [`AuthSettings`], [`JwtAuthSettings`] |
//! | `chain` | the chain as a pure function: listener and CONNECT facts in, a decision out |
//! | `credentials` | the password store in force, the credential cache, reloads, SCRAM decoys |
//! | `jwt_keys` | the JWT keys from files and the JWKS URL, their reloads and fetches |
//! | `gate` | the login guard, shared password checks (single flight), quiet refusals |
//! | `registry` | the live authenticated connections, per-user caps, who to close |
//! | `pool`, `upgrade` | the bounded hashing pool; hash upgrades written to the store file |
//! | `checks` | the password and JWT checks, which use several parts |

mod chain;
mod checks;
mod credentials;
mod gate;
mod jwt_keys;
mod pool;
mod registry;
mod settings;
#[cfg(test)]
mod test_support;
mod upgrade;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bulwark_acl::AclRules;
use bulwark_acl::event::{EventKind, SecurityEvent};
use bulwark_auth::scram::{ScramError, ScramHash, ScramServer};
use bulwark_core::ConnectionId;
use bulwark_proto::{Connect, ReasonCode};
use tracing::{info, warn};

use self::chain::{Check, ConnectFacts, Decision};
use self::credentials::{Credentials, store_identity};
use self::gate::LoginGate;
pub(crate) use self::gate::Ticket;
use self::jwt_keys::JwtKeys;
use self::pool::HashPool;
use self::registry::{Live, Registry};
use self::upgrade::HashUpgrades;
use crate::audit::Audit;
pub use credentials::SCRAM_DECOY_FILE;
pub use settings::{AuthSettings, Authenticator, JwtAuthSettings, MIN_JWKS_FETCH_GAP};

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
#[derive(Debug, Clone, PartialEq, Eq)]
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

    /// The hash pool's queue is full (or its thread went away): not a guess.
    pub(super) fn busy() -> Self {
        Self {
            code: ReasonCode::ServerBusy,
            reason: "too many logins waiting for a password check".into(),
            counts: Counts::No,
            kind: EventKind::AuthFailure,
        }
    }

    /// An address in backoff whose turn is too far away: refused without a check.
    pub(super) fn throttled() -> Self {
        Self {
            code: ReasonCode::BadUserNameOrPassword,
            reason: "too many failed logins: refused without checking".into(),
            counts: Counts::No,
            kind: EventKind::Throttled,
        }
    }

    /// An address the login guard banned.
    pub(super) fn address_banned(remaining: Duration) -> Self {
        Self {
            code: ReasonCode::Banned,
            reason: format!("address banned for {} s more", remaining.as_secs()),
            counts: Counts::No,
            kind: EventKind::BannedRefused,
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
    /// A security event about this attempt.
    pub(super) fn event(&self, kind: EventKind, reason: Option<String>) -> SecurityEvent {
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

/// Why a connection could not be registered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NotRegistered {
    /// The user was removed or disabled during the login.
    Gone,
    /// The user has `max_connections_per_user` connections (other than the client id's own,
    /// which this one takes over).
    Quota,
}

/// A live, authenticated connection, as the admin API lists it.
#[derive(Debug, Clone)]
pub(crate) struct LiveClient {
    pub(crate) username: Option<Arc<str>>,
    pub(crate) listener: Arc<str>,
    pub(crate) peer: SocketAddr,
    pub(crate) client_id: String,
}

/// The authentication service: a facade over the credentials, the JWT keys, the login gate
/// and the live registry (see the module documentation).
#[derive(Debug)]
pub(crate) struct AuthService {
    credentials: Credentials,
    jwt: Option<JwtKeys>,
    gate: LoginGate,
    registry: Registry,
    pool: HashPool,
    upgrades: HashUpgrades,
    pub(crate) audit: Audit,
}

impl AuthService {
    /// Loads the store and keys; any unusable file is an error.
    pub(crate) fn new(settings: &AuthSettings, audit: Audit) -> Result<Self, String> {
        let store = Credentials::load_initial(settings)?;
        let gate = LoginGate::new(&settings.guard)?;
        let jwt = settings.jwt.as_ref().map(JwtKeys::new).transpose()?;
        Ok(Self {
            credentials: Credentials::new(settings, store)?,
            jwt,
            gate,
            registry: Registry::new(settings.max_connections_per_user),
            pool: HashPool::new(settings.hash_threads(), settings.max_pending_logins),
            upgrades: HashUpgrades::default(),
            audit,
        })
    }

    pub(crate) fn has_jwt(&self) -> bool {
        self.jwt.is_some()
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
        let known = match (attempt.username, password) {
            (Some(name), Some(password)) => self.credentials.knows(name, password, Instant::now()),
            _ => false,
        };
        let free = gate::guesses_nothing(attempt, password.is_some(), known);
        self.gate.admit(attempt, free).await
    }

    /// Called right before an attempt's credentials are evaluated (a password hash check gets
    /// its turn, a SCRAM proof arrived): if the attempt was admitted while none of its keys was
    /// in backoff, failures counted since then apply to it now (it waits its turn, or is
    /// refused unchecked), so that a burst of parallel guesses is slowed as soon as the first
    /// of them have failed. Attempts admitted in backoff already waited their turn.
    pub(crate) async fn before_verdict(&self, ticket: &Ticket<'_>) -> Result<(), Refusal> {
        self.gate.before_verdict(ticket).await
    }

    /// Records the outcome of a login: the guard's counts (ending the admitted attempt, if
    /// there is a ticket) and the security events. A success clears the username's failures
    /// however it was verified (the credential cache included).
    pub(crate) async fn conclude(
        &self,
        ticket: Option<Ticket<'_>>,
        attempt: &Attempt<'_>,
        result: &Result<Identity, Refusal>,
    ) {
        for event in self.gate.conclude(ticket, attempt, result) {
            self.audit.record(event);
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
        let facts = ConnectFacts {
            username: connect.username.as_ref().map(|u| u.as_str()),
            password: connect.password.as_deref(),
            certificate,
            jwt_configured: self.has_jwt(),
        };
        match chain::decide(listener, &facts) {
            Decision::Run(Check::Certificate { name }) => self.credentials.certificate(name),
            Decision::Run(Check::Password {
                name,
                password,
                method,
            }) => self.password(ticket, name, password, method).await,
            Decision::Run(Check::Jwt { token, username }) => {
                self.jwt(token, username, connect.client_id.as_str()).await
            }
            Decision::Refuse(refusal) => Err(refusal),
            Decision::Anonymous => Ok(Identity {
                username: None,
                groups: Vec::new(),
                method: "anonymous",
                expires_at: None,
                acl: None,
                in_store: false,
            }),
        }
    }

    /// A dashboard login of the password-store user `name`: admitted by the same guard as
    /// MQTT logins (backoff, address bans), checked the same way, counted and recorded the
    /// same way (on `listener`, the admin listener's).
    pub(crate) async fn dashboard_login(
        self: &Arc<Self>,
        listener: &ListenerAuth,
        peer: SocketAddr,
        name: &str,
        password: &[u8],
    ) -> Result<Identity, Refusal> {
        let attempt = Attempt {
            listener,
            peer,
            client_id: "",
            username: Some(name),
            method: "password",
            reauth: false,
        };
        let ticket = match self.gate(&attempt, Some(password)).await {
            Ok(ticket) => ticket,
            Err(refusal) => {
                let result = Err(refusal);
                self.conclude(None, &attempt, &result).await;
                return result;
            }
        };
        let result = match self.before_verdict(&ticket).await {
            Ok(()) => self.password(&ticket, name, password, "password").await,
            Err(refusal) => Err(refusal),
        };
        self.conclude(Some(ticket), &attempt, &result).await;
        result
    }

    /// Verifies a token given as 5.0 Authentication Data (method `JWT`).
    pub(crate) async fn check_jwt_data(
        &self,
        token: &[u8],
        username: Option<&str>,
        client_id: &str,
    ) -> Result<Identity, Refusal> {
        self.jwt(token, username, client_id).await
    }

    /// Starts a SCRAM exchange: parses client-first-message and returns the server side and
    /// server-first-message. Unknown and disabled users get a decoy exchange that fails at the
    /// end like a wrong password.
    pub(crate) fn scram_start(
        &self,
        hash: ScramHash,
        client_first: &[u8],
    ) -> Result<(ScramServer, Vec<u8>), ScramError> {
        self.credentials.scram_start(hash, client_first)
    }

    /// The identity of a user who completed a SCRAM exchange.
    pub(crate) fn scram_identity(&self, name: &str, method: &'static str) -> Identity {
        store_identity(&self.credentials.store(), name, method)
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
        let live = Live {
            username: identity.username.clone(),
            in_store: identity.in_store,
            listener: attempt.listener.name.clone(),
            peer: attempt.peer,
            client_id: attempt.client_id.to_owned(),
        };
        self.registry
            .register(conn, live, |name| self.credentials.active(name))
    }

    /// Forgets a connection that ended; its client id and username, if it had logged in.
    pub(crate) fn unregister(&self, conn: ConnectionId) -> Option<(String, Option<Arc<str>>)> {
        let live = self.registry.unregister(conn)?;
        Some((live.client_id, live.username))
    }

    /// A live connection's client id and username (`None` before it logged in).
    pub(crate) fn who(&self, conn: ConnectionId) -> Option<(Arc<str>, Option<Arc<str>>)> {
        self.registry.who(conn)
    }

    /// The live connections whose address, username and client id `hit` picks.
    pub(crate) fn live_matching(
        &self,
        hit: impl Fn(std::net::IpAddr, Option<&str>, &str) -> bool,
    ) -> Vec<ConnectionId> {
        self.registry.matching(hit)
    }

    /// A page of the live connections (by client id, after `after`) that `hit` picks, for
    /// the admin API: `(connection, username, listener, address, client id)`.
    pub(crate) fn live_page(
        &self,
        after: Option<&str>,
        limit: usize,
        hit: impl Fn(Option<&str>, &str, SocketAddr, &str) -> bool,
    ) -> Vec<LiveClient> {
        self.registry
            .page(after, limit, |l| {
                hit(l.username.as_deref(), &l.listener, l.peer, &l.client_id)
            })
            .into_iter()
            .map(|(_, l)| LiveClient {
                username: l.username,
                listener: l.listener,
                peer: l.peer,
                client_id: l.client_id,
            })
            .collect()
    }

    /// The password store's file, if there is one.
    pub(crate) fn password_file(&self) -> Option<std::path::PathBuf> {
        self.credentials.path().map(std::path::Path::to_path_buf)
    }

    /// The groups of the password-store user `name` (none if there is no such user).
    pub(crate) fn groups_of(&self, name: &str) -> Vec<Arc<str>> {
        credentials::groups_of(&self.credentials.store(), name)
    }

    /// Records the client identifier the engine gave `conn` (its CONNECT had none).
    pub(crate) fn assigned_client_id(&self, conn: ConnectionId, id: &str) {
        self.registry.set_client_id(conn, id);
    }

    /// Live connections per listener, for metrics.
    pub(crate) fn live_per_listener(&self) -> Vec<(Arc<str>, usize)> {
        self.registry.per_listener()
    }

    /// A forced disconnect of `conn`, as a security event.
    pub(crate) fn forced_disconnect(&self, conn: ConnectionId, reason: &str) {
        self.audit
            .record(self.registry.disconnect_event(conn, reason));
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
        if !self.credentials.changed(force) {
            return Vec::new();
        }
        let store = match self.credentials.load() {
            None => return Vec::new(),
            Some(Ok(store)) => store,
            Some(Err(err)) => {
                warn!(%err, "password store reload failed; the previous users stay in force");
                if let Some(path) = self.credentials.path() {
                    self.audit.record(crate::audit::reload_event(
                        "passwords",
                        path,
                        Err(err.to_string()),
                    ));
                }
                return Vec::new();
            }
        };
        let users = store.len();
        // The new store goes in force under the registry's lock: see `register`.
        let affected = self.registry.sweep(|| {
            let store = self.credentials.install(store);
            move |name: &str| store.get(name).is_none_or(|u| u.disabled)
        });
        info!(users, closing = affected.len(), "password store reloaded");
        if let Some(path) = self.credentials.path() {
            let done = format!(
                "reloaded: {users} users; {} connection(s) of removed or disabled users closed",
                affected.len()
            );
            self.audit
                .record(crate::audit::reload_event("passwords", path, Ok(done)));
        }
        affected
    }

    /// Fetches the JWKS URL every `jwks_refresh` until `stop`.
    pub(crate) async fn refresh_jwks(self: Arc<Self>, stop: tokio::sync::watch::Receiver<bool>) {
        if let Some(jwt) = &self.jwt {
            jwt.refresh_periodically(stop).await;
        }
    }

    /// Prunes the guard's expired entries.
    /// Logins decided since start, by result, method and reason.
    pub(crate) fn login_counts(&self) -> Vec<(gate::LoginKey, u64)> {
        self.gate.login_counts()
    }

    /// Source addresses and usernames the login guard holds in backoff now.
    pub(crate) fn backoff_counts(&self) -> (usize, usize) {
        self.gate.backoff_counts()
    }

    pub(crate) fn prune(&self) {
        self.gate.prune();
    }
}

/// The modification time of `path` (`None` if it cannot be read).
fn mtime(path: &std::path::Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

/// Seconds since the Unix epoch (zero for a clock before it).
fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

//! The admin listener's view of the broker: `bulwark_admin::Backend` over the router, the
//! live-connection registry, the ban list, the audit sink and the token file.
//!
//! Nothing here blocks the MQTT path: registry and ban-list reads take their locks briefly,
//! and what needs the engine is a bounded look ([`ToRouter::Inspect`]) the router runs between
//! two rounds, waited for with a timeout.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use bulwark_acl::Cidr;
use bulwark_acl::event::{EventKind, SecurityEvent};
use bulwark_admin::backend::{AclCandidate, AclDiff, AddedToken, NewToken, TokenView};
use bulwark_admin::backend::{AddedUser, LintFinding, LintReport, NewUser, UserChange, UserView};
use bulwark_admin::backend::{
    AdminAction, BanTargetView, BanView, Caller, CertificateView, ClientDetail, ClientQuery,
    ClientSummary, ExplainQuery, Explanation, Family, HistogramFamily, LoginRefusal, MetricKind,
    MetricsSnapshot, NewBan, Page, Readiness, Refusal, RuleView, SubscriptionView, Via,
};
use bulwark_admin::backend::{
    RetainedItem, RetainedQuery, SessionItem, SessionQuery, SubscriptionItem, SubscriptionQuery,
};
use bulwark_auth::password::{Argon2Params, NewCredentials};
use bulwark_auth::token::TokenStore;
use bulwark_core::{Broker, SessionView, Stats};
use bulwark_limits::ban::{Ban, BanTarget};
use bulwark_proto::ReasonCode;
use tokio::sync::{mpsc, oneshot};
use tracing::{info, warn};

use crate::auth::{AuthService, Authenticator, ListenerAuth, LiveClient};
use crate::bans::{Bans, unix_now};
use crate::config::AdminSettings;
use crate::durable::{COMMIT_BUCKETS, StoreMetrics};
use crate::router::{Inspection, ToRouter, Traffic};
use crate::sync::lock;
use crate::tls::TlsAcceptor;

mod config_view;
mod engine;

/// The configuration in force as `GET /api/v1/config` shows it.
pub(crate) fn effective_config(config: &crate::config::ServerConfig) -> serde_json::Value {
    config_view::effective(config)
}

/// How long a request waits for the router's answer before it is refused (503).
const ENGINE_WAIT: Duration = Duration::from_secs(5);
/// Largest token file read, in bytes.
const MAX_TOKEN_FILE: u64 = 1 << 20;
/// Addresses whose failed attempts are remembered at most.
const MAX_TRACKED: usize = 10_000;

/// What the admin backend reads and acts through.
#[derive(Debug)]
pub(crate) struct AdminParts {
    pub(crate) settings: AdminSettings,
    pub(crate) router: mpsc::Sender<ToRouter>,
    pub(crate) auth: Arc<AuthService>,
    pub(crate) bans: Arc<Bans>,
    pub(crate) traffic: Arc<Traffic>,
    /// The durable store's commit figures (`None`: no store).
    pub(crate) store: Option<StoreMetrics>,
    /// The TLS settings of each listener that has them (the admin listener's as `admin`).
    pub(crate) tls: Vec<(String, Arc<TlsAcceptor>)>,
    /// `[server] memory_watermark` (0: not watched).
    pub(crate) memory_watermark: u64,
    /// What `POST /api/v1/reload` checks and wakes.
    pub(crate) reload: ReloadParts,
    /// The configuration in force, without secrets (`GET /api/v1/config`).
    pub(crate) config: serde_json::Value,
}

/// The files a reload reads, and the file watcher to wake.
#[derive(Debug)]
pub(crate) struct ReloadParts {
    /// Woken to reload everything now, as SIGHUP does.
    pub(crate) now: Arc<tokio::sync::Notify>,
    /// `[acl] file`.
    pub(crate) acl_file: Option<PathBuf>,
    /// `[bans] file`.
    pub(crate) ban_file: Option<PathBuf>,
    /// The listeners' names, for the ACL lint.
    pub(crate) listener_names: Vec<String>,
    /// What besides the password store names users (the ACL lint does not check users then).
    pub(crate) other_identities: Option<&'static str>,
}

/// The broker, as the admin API sees it.
#[derive(Debug)]
pub(crate) struct AdminBackend {
    parts: AdminParts,
    tokens: Tokens,
    /// Failed attempts per address: how many, and when the last was.
    failures: Mutex<HashMap<IpAddr, (u32, Instant)>>,
    /// What dashboard logins are counted and recorded as: a listener named `admin` with
    /// passwords only.
    listener: ListenerAuth,
    /// Held while the password store file is read, changed and written: one edit at a time.
    store_edit: tokio::sync::Mutex<()>,
    /// Held while the token file is read, changed and written.
    token_edit: tokio::sync::Mutex<()>,
}

/// The token file, re-read when it changes.
#[derive(Debug)]
struct Tokens {
    path: PathBuf,
    /// The file's modification time when it was read, and what it held.
    cached: Mutex<(Option<SystemTime>, Arc<TokenStore>)>,
}

impl Tokens {
    fn new(path: PathBuf) -> Self {
        let tokens = Self {
            path,
            cached: Mutex::new((None, Arc::new(TokenStore::new()))),
        };
        let store = tokens.current();
        if store.records().is_empty() {
            warn!(
                file = %tokens.path.display(),
                "admin listener: no API tokens yet, every request will be refused; create one with \
                 `bulwark admin token add NAME --role admin --file {}`",
                tokens.path.display()
            );
        }
        tokens
    }

    /// The tokens in force: the file's, read again if it changed. A file that cannot be read
    /// or parsed keeps the tokens read before (and says why); a file that is gone has none.
    fn current(&self) -> Arc<TokenStore> {
        let mtime = std::fs::metadata(&self.path)
            .and_then(|m| m.modified())
            .ok();
        let mut cached = lock(&self.cached);
        if cached.0 == mtime && mtime.is_some() {
            return cached.1.clone();
        }
        if mtime.is_none() {
            *cached = (None, Arc::new(TokenStore::new()));
            return cached.1.clone();
        }
        let read = crate::files::read_text(&self.path, "the admin token file", MAX_TOKEN_FILE)
            .and_then(|text| {
                TokenStore::parse(&text, &self.path.display().to_string())
                    .map_err(|e| e.to_string())
            });
        match read {
            Ok(store) => {
                info!(file = %self.path.display(), tokens = store.records().len(), "admin tokens loaded");
                *cached = (mtime, Arc::new(store));
            }
            Err(err) => {
                warn!(file = %self.path.display(), %err, "admin token file not loaded; the tokens read before stay");
                cached.0 = mtime;
            }
        }
        cached.1.clone()
    }
}

impl AdminBackend {
    pub(crate) fn new(parts: AdminParts) -> Self {
        Self {
            tokens: Tokens::new(parts.settings.tokens.clone()),
            parts,
            failures: Mutex::new(HashMap::new()),
            listener: ListenerAuth {
                name: Arc::from("admin"),
                chain: vec![Authenticator::Password],
                allow_anonymous: false,
            },
            store_edit: tokio::sync::Mutex::new(()),
            token_edit: tokio::sync::Mutex::new(()),
        }
    }

    fn password_file(&self) -> Result<PathBuf, Refusal> {
        self.parts.auth.password_file().ok_or_else(|| {
            Refusal::NotFound("no password store is configured ([auth] password_file)".to_owned())
        })
    }

    /// Writes `store` and puts it in force at once: connections of users it removed or
    /// disabled are closed (DISCONNECT 0x98, a `forced_disconnect` event each).
    async fn install_store(
        &self,
        path: &std::path::Path,
        store: &bulwark_auth::password::PasswordStore,
    ) -> Result<(), Refusal> {
        crate::files::save_store(path, store).map_err(Refusal::Unavailable)?;
        let gone = self.parts.auth.reload_store(true).await;
        crate::bans::enforce(
            &self.parts.auth,
            &self.parts.router,
            gone,
            "user removed or disabled by an administrator",
        )
        .await;
        Ok(())
    }

    /// Runs `look` over the engine between two router rounds; `None` if the router is gone or
    /// did not answer within [`ENGINE_WAIT`].
    async fn inspect<T: Send + 'static>(
        &self,
        look: impl FnOnce(&Broker) -> T + Send + 'static,
    ) -> Option<T> {
        self.operate(move |broker, _| look(broker)).await
    }

    /// Runs `change` over the engine between two router rounds, as [`Self::inspect`] does;
    /// what it changes goes out (and to the durable store) with that round.
    async fn operate<T: Send + 'static>(
        &self,
        change: impl FnOnce(&mut Broker, Instant) -> T + Send + 'static,
    ) -> Option<T> {
        let (tx, rx) = oneshot::channel();
        let inspection = Inspection(Box::new(move |broker: &mut Broker, now| {
            let _ = tx.send(change(broker, now));
        }));
        let send = self.parts.router.send(ToRouter::Inspect(inspection));
        tokio::time::timeout(ENGINE_WAIT, async {
            send.await.ok()?;
            rx.await.ok()
        })
        .await
        .ok()
        .flatten()
    }

    fn event(&self, kind: EventKind, remote: SocketAddr) -> SecurityEvent {
        let mut event = SecurityEvent::new(kind, SystemTime::now());
        event.listener = Some("admin".to_owned());
        event.remote = Some(remote.to_string());
        event
    }
}

fn user_view(user: &bulwark_auth::password::UserRecord) -> UserView {
    let mut scram = Vec::new();
    if user.scram_sha256.is_some() {
        scram.push("SCRAM-SHA-256".to_owned());
    }
    if user.scram_sha512.is_some() {
        scram.push("SCRAM-SHA-512".to_owned());
    }
    UserView {
        name: user.name.clone(),
        groups: user.groups.clone(),
        disabled: user.disabled,
        hash: user.hash_kind().to_owned(),
        scram,
    }
}

fn summary(live: &LiveClient) -> ClientSummary {
    ClientSummary {
        client_id: live.client_id.clone(),
        username: live.username.as_deref().map(str::to_owned),
        listener: live.listener.to_string(),
        address: live.peer.to_string(),
    }
}

/// A ban target from the API's form: exactly one of address, username and client id, or a
/// username and a client id together (`username = ""`: anonymous clients).
fn target(view: &BanTargetView) -> Result<BanTarget, Refusal> {
    let invalid = |m: &str| Err(Refusal::Invalid(m.to_owned()));
    match (&view.address, &view.username, &view.client_id) {
        (Some(a), None, None) => Cidr::parse(a)
            .map(BanTarget::Address)
            .map_err(|e| Refusal::Invalid(format!("address: {e}"))),
        (Some(_), _, _) => {
            invalid("address: give an address alone, not with a username or client_id")
        }
        (None, Some(u), Some(c)) if !c.is_empty() => Ok(BanTarget::UserClientId {
            username: (!u.is_empty()).then(|| u.clone()),
            client_id: c.clone(),
        }),
        (None, Some(u), None) if !u.is_empty() => Ok(BanTarget::Username(u.clone())),
        (None, None, Some(c)) if !c.is_empty() => Ok(BanTarget::ClientId(c.clone())),
        (None, None, None) => invalid("give one of address, username, client_id"),
        _ => invalid("username and client_id must not be empty"),
    }
}

fn view(ban: &Ban) -> BanView {
    let mut target = BanTargetView::default();
    match &ban.target {
        BanTarget::Address(c) => target.address = Some(c.to_string()),
        BanTarget::Username(u) => target.username = Some(u.clone()),
        BanTarget::ClientId(c) => target.client_id = Some(c.clone()),
        BanTarget::UserClientId {
            username,
            client_id,
        } => {
            target.username = Some(username.clone().unwrap_or_default());
            target.client_id = Some(client_id.clone());
        }
    }
    BanView {
        target,
        expires: ban.expires,
        reason: ban.reason.clone(),
        created: ban.created,
        by: ban.by.clone(),
    }
}

fn protocol(view: &SessionView) -> String {
    match view.version {
        Some(bulwark_proto::ProtocolVersion::V3_1) => "3.1",
        Some(bulwark_proto::ProtocolVersion::V5) => "5.0",
        _ => "3.1.1",
    }
    .to_owned()
}

impl bulwark_admin::Backend for AdminBackend {
    fn authenticate(&self, token: &str, remote: SocketAddr) -> Option<Caller> {
        let store = self.tokens.current();
        let record = store.verify(token, unix_now())?;
        lock(&self.failures).remove(&remote.ip());
        Some(Caller {
            name: record.name.clone(),
            via: Via::Token {
                id: record.id.clone(),
            },
            role: record.role,
            remote,
        })
    }

    fn certificate_caller(&self, certificate: &[u8], remote: SocketAddr) -> Option<Caller> {
        let settings = &self.parts.settings;
        if settings.certificate_roles.is_empty() {
            return None;
        }
        let source = settings.tls.as_ref()?.identity;
        let der = rustls::pki_types::CertificateDer::from(certificate);
        let identity = crate::tls::certificate_identity(&der, source)
            .ok()
            .flatten()?;
        let role = settings
            .certificate_roles
            .iter()
            .find(|(name, _)| *name == identity)
            .map(|(_, role)| *role)?;
        Some(Caller {
            name: identity,
            via: Via::Certificate,
            role,
            remote,
        })
    }

    fn backoff(&self, remote: IpAddr) -> Option<Duration> {
        let failures = lock(&self.failures);
        let (count, last) = failures.get(&remote)?;
        let since = last.elapsed();
        (*count >= self.parts.settings.max_failures && since < self.parts.settings.lockout)
            .then(|| self.parts.settings.lockout - since)
    }

    fn authentication_failed(&self, remote: SocketAddr, why: &str) {
        let now = Instant::now();
        let count = {
            let mut failures = lock(&self.failures);
            let lockout = self.parts.settings.lockout;
            if failures.len() >= MAX_TRACKED {
                failures.retain(|_, (_, last)| now.saturating_duration_since(*last) < lockout);
            }
            if failures.len() < MAX_TRACKED || failures.contains_key(&remote.ip()) {
                let entry = failures.entry(remote.ip()).or_insert((0, now));
                if now.saturating_duration_since(entry.1) >= lockout {
                    *entry = (0, now);
                }
                entry.0 = entry.0.saturating_add(1);
                entry.1 = now;
                entry.0
            } else {
                0
            }
        };
        let mut event = self.event(EventKind::AdminAuthFailure, remote);
        event.method = Some("token".to_owned());
        event.reason = Some(if count >= self.parts.settings.max_failures {
            format!(
                "{why}; {count} failures: refused for {} s",
                self.parts.settings.lockout.as_secs()
            )
        } else {
            why.to_owned()
        });
        self.parts.auth.audit.record(event);
    }

    fn record(&self, action: AdminAction) {
        let mut event = self.event(EventKind::AdminAction, action.caller.remote);
        event.method = Some(match action.caller.via {
            Via::Token { .. } => "token".to_owned(),
            Via::Session => "session".to_owned(),
            Via::Certificate => "certificate".to_owned(),
        });
        event.actor = Some(action.caller.actor());
        event.action = Some(action.request);
        event.target = action.target;
        event.reason = Some(action.outcome);
        self.parts.auth.audit.record(event);
    }

    async fn readiness(&self) -> Readiness {
        match self
            .inspect(|broker| (broker.connected(), broker.sessions()))
            .await
        {
            Some((connected, sessions)) => Readiness {
                ready: true,
                connected,
                sessions,
            },
            None => Readiness {
                ready: false,
                connected: 0,
                sessions: 0,
            },
        }
    }

    fn clients(&self, query: &ClientQuery, limit: usize) -> Page<ClientSummary> {
        // One more than the page: whether there is a next page.
        let mut found = self.parts.auth.live_page(
            query.after.as_deref(),
            limit.saturating_add(1),
            |username, listener, peer, client_id| {
                query
                    .client_id
                    .as_deref()
                    .is_none_or(|p| client_id.starts_with(p))
                    && query
                        .username
                        .as_deref()
                        .is_none_or(|u| username == Some(u))
                    && query.listener.as_deref().is_none_or(|l| listener == l)
                    && query.address.is_none_or(|a| peer.ip() == a)
            },
        );
        let more = found.len() > limit;
        found.truncate(limit);
        let next = more
            .then(|| found.last().map(|l| l.client_id.clone()))
            .flatten();
        Page {
            items: found.iter().map(summary).collect(),
            next,
        }
    }

    async fn client(&self, client_id: &str) -> Option<ClientDetail> {
        if client_id.is_empty() {
            return None;
        }
        let live = self
            .parts
            .auth
            .live_page(None, 1, |_, _, _, id| id == client_id)
            .into_iter()
            .next()?;
        let id = client_id.to_owned();
        let session = self
            .inspect(move |broker| broker.session_view(&id))
            .await
            .flatten()?;
        Some(ClientDetail {
            summary: summary(&live),
            protocol: protocol(&session),
            subscriptions: session
                .subscriptions
                .iter()
                .map(|(filter, qos)| SubscriptionView {
                    filter: filter.clone(),
                    qos: *qos as u8,
                })
                .collect(),
            queued_messages: session.queued_messages,
            queued_bytes: session.queued_bytes,
            inflight: session.inflight,
            session_expiry_interval: session.expiry_interval,
        })
    }

    async fn kick(&self, client_id: &str, code: u8, caller: &Caller) -> Result<(), Refusal> {
        let code = ReasonCode::from_u8(code)
            .filter(|c| c.server_may_disconnect_with() && c.is_error())
            .ok_or_else(|| {
                Refusal::Invalid(format!(
                    "reason_code: 0x{code:02X} is not an error code a server may send in DISCONNECT"
                ))
            })?;
        let conns = if client_id.is_empty() {
            Vec::new()
        } else {
            self.parts.auth.live_matching(|_, _, id| id == client_id)
        };
        if conns.is_empty() {
            return Err(Refusal::NotFound(format!(
                "no client {client_id:?} is connected"
            )));
        }
        for conn in &conns {
            self.parts
                .auth
                .forced_disconnect(*conn, &format!("kicked by {}", caller.actor()));
        }
        self.parts
            .router
            .send(ToRouter::Kick {
                conns,
                code,
                why: "disconnected by an operator",
            })
            .await
            .map_err(|_| Refusal::Unavailable("the broker is stopping".to_owned()))
    }

    fn bans(&self) -> Vec<BanView> {
        self.parts.bans.in_force().iter().map(view).collect()
    }

    async fn add_ban(&self, ban: NewBan, caller: &Caller) -> Result<BanView, Refusal> {
        let target = target(&ban.target)?;
        engine::check_duration(ban.duration_seconds, "a ban until removed")?;
        let now = unix_now();
        let ban = Ban {
            target,
            expires: ban.duration_seconds.map(|d| now.saturating_add(d)),
            reason: ban.reason,
            created: now,
            by: format!("admin:{}", caller.name),
        };
        let written = self.parts.bans.add(ban.clone());
        // In force even when the file could not be written: close what it covers.
        let mut alone = bulwark_limits::ban::BanList::new();
        let conns = match alone.add(ban.clone()) {
            Ok(()) => self
                .parts
                .auth
                .live_matching(|ip, user, id| alone.client_ban(ip, user, id, now).is_some()),
            Err(_) => Vec::new(),
        };
        crate::bans::enforce(
            &self.parts.auth,
            &self.parts.router,
            conns,
            "banned by an operator",
        )
        .await;
        written.map_err(Refusal::Unavailable)?;
        Ok(view(&ban))
    }

    fn remove_ban(&self, target_view: &BanTargetView) -> Result<(), Refusal> {
        let target = target(target_view)?;
        match self.parts.bans.remove(&target) {
            Ok(true) => Ok(()),
            Ok(false) => Err(Refusal::NotFound(format!("no ban on {target}"))),
            Err(err) => Err(Refusal::Unavailable(err)),
        }
    }

    async fn login(
        &self,
        name: &str,
        password: &str,
        remote: SocketAddr,
    ) -> Result<Vec<String>, LoginRefusal> {
        if self
            .parts
            .bans
            .client_ban(remote.ip(), Some(name), "")
            .is_some()
        {
            return Err(LoginRefusal::Refused);
        }
        match self
            .parts
            .auth
            .dashboard_login(&self.listener, remote, name, password.as_bytes())
            .await
        {
            Ok(identity) => Ok(identity.groups.iter().map(|g| g.to_string()).collect()),
            Err(refusal) if refusal.kind == EventKind::Throttled => Err(LoginRefusal::Throttled),
            Err(refusal) if refusal.code == ReasonCode::Banned => Err(LoginRefusal::Throttled),
            Err(refusal) if refusal.code == ReasonCode::ServerBusy => {
                Err(LoginRefusal::Unavailable)
            }
            Err(_) => Err(LoginRefusal::Refused),
        }
    }

    fn users(&self) -> Result<Vec<UserView>, Refusal> {
        let path = self.password_file()?;
        let store = crate::files::load_store(&path, true).map_err(Refusal::Unavailable)?;
        Ok(store.users().map(user_view).collect())
    }

    async fn add_user(&self, user: NewUser) -> Result<AddedUser, Refusal> {
        let path = self.password_file()?;
        let generated = user.password.is_none();
        let password = match user.password {
            Some(password) => {
                bulwark_auth::policy::PasswordPolicy::default()
                    .check(&user.name, &password)
                    .map_err(|err| Refusal::Invalid(format!("password: {err}")))?;
                password
            }
            None => bulwark_auth::password::generate_password(24).ok_or_else(|| {
                Refusal::Unavailable("the system's random source failed".to_owned())
            })?,
        };
        let _edit = self.store_edit.lock().await;
        let mut store = crate::files::load_store(&path, true).map_err(Refusal::Unavailable)?;
        if store.get(&user.name).is_some() {
            return Err(Refusal::Conflict(format!("user {:?} exists", user.name)));
        }
        // Slow on purpose (argon2id): on a blocking thread, off the runtime's workers.
        let derived = {
            let password = password.clone();
            tokio::task::spawn_blocking(move || {
                NewCredentials::derive(&password, &Argon2Params::default())
            })
            .await
            .map_err(|_| Refusal::Unavailable("the hashing thread failed".to_owned()))?
            .map_err(Refusal::Unavailable)?
        };
        store
            .add_with(&user.name, &derived, user.groups)
            .map_err(|err| Refusal::Invalid(err.to_string()))?;
        self.install_store(&path, &store).await?;
        let added = store
            .get(&user.name)
            .map(user_view)
            .ok_or_else(|| Refusal::Unavailable("the user was not stored".to_owned()))?;
        Ok(AddedUser {
            user: added,
            password: generated.then_some(password),
        })
    }

    async fn change_user(&self, name: &str, change: UserChange) -> Result<(), Refusal> {
        let path = self.password_file()?;
        let _edit = self.store_edit.lock().await;
        let mut store = crate::files::load_store(&path, false).map_err(Refusal::Unavailable)?;
        let changed = match change {
            UserChange::Disable => store.set_disabled(name, true),
            UserChange::Enable => store.set_disabled(name, false),
            UserChange::Groups(groups) => store.set_groups(name, groups),
            UserChange::Remove => store.remove(name).map(|_| ()),
        };
        changed.map_err(|err| match err {
            bulwark_auth::password::StoreError::NoSuchUser(_) => {
                Refusal::NotFound(format!("no user {name:?}"))
            }
            other => Refusal::Invalid(other.to_string()),
        })?;
        self.install_store(&path, &store).await
    }

    fn reload(&self) -> Result<Vec<String>, Refusal> {
        // Every file is read first: with a mistake anywhere, nothing is reloaded and every
        // problem is named (the file watcher would keep the old version of that file and
        // reload the others, which is not what someone asking for "reload" expects).
        let mut problems = Vec::new();
        let mut files = Vec::new();
        let reload = &self.parts.reload;
        if let Some(path) = &reload.acl_file {
            match crate::acl::load(path) {
                Ok(_) => files.push(format!("ACL {}", path.display())),
                Err(err) => problems.push(format!("ACL: {err}")),
            }
        }
        if let Some(path) = &reload.ban_file {
            match crate::bans::load(path) {
                Ok(_) => files.push(format!("bans {}", path.display())),
                Err(err) => problems.push(format!("bans: {err}")),
            }
        }
        if let Some(path) = self.parts.auth.password_file() {
            match crate::files::load_store(&path, true) {
                Ok(_) => files.push(format!("password store {}", path.display())),
                Err(err) => problems.push(format!("password store: {err}")),
            }
        }
        for (listener, acceptor) in &self.parts.tls {
            match crate::tls::build(acceptor.settings()) {
                Ok(_) => files.push(format!("TLS of listener {listener}")),
                Err(err) => problems.push(format!("TLS of listener {listener}: {err}")),
            }
        }
        if !problems.is_empty() {
            return Err(Refusal::Invalid(format!(
                "nothing was reloaded: {}",
                problems.join("; ")
            )));
        }
        reload.now.notify_one();
        Ok(files)
    }

    fn certificates(&self) -> Vec<CertificateView> {
        let now = i64::try_from(unix_now()).unwrap_or(i64::MAX);
        self.parts
            .tls
            .iter()
            .flat_map(|(listener, acceptor)| {
                crate::tls::expiries(acceptor.settings())
                    .into_iter()
                    .map(move |e| CertificateView {
                        listener: listener.clone(),
                        kind: e.kind.to_owned(),
                        file: e.file.display().to_string(),
                        subject: e.subject,
                        until: e.until,
                        days_left: e.until.map(|u| u.saturating_sub(now).div_euclid(86_400)),
                    })
            })
            .collect()
    }

    async fn lint(&self) -> Result<LintReport, Refusal> {
        let rules = self
            .inspect(|broker| broker.acl())
            .await
            .ok_or_else(|| Refusal::Unavailable("the engine did not answer".to_owned()))?
            .ok_or_else(|| Refusal::NotFound("no ACL is in force".to_owned()))?;
        let reload = &self.parts.reload;
        let mut known = bulwark_acl::lint::Known {
            listeners: Some(reload.listener_names.clone()),
            ..Default::default()
        };
        let note = match (reload.other_identities, self.parts.auth.password_file()) {
            (Some(others), _) => Some(format!(
                "{others} also name users: users and groups are not checked against the password store"
            )),
            (None, None) => Some("no password store: users and groups are not checked".to_owned()),
            (None, Some(path)) => {
                let store = crate::files::load_store(&path, true).map_err(Refusal::Unavailable)?;
                known.users = Some(
                    store
                        .users()
                        .map(|u| (u.name.clone(), u.groups.clone()))
                        .collect(),
                );
                None
            }
        };
        let findings = bulwark_acl::lint::lint(&rules, &known)
            .into_iter()
            .map(|f| LintFinding {
                origin: f.origin.to_string(),
                kind: f.kind.as_str().to_owned(),
                message: f.message,
            })
            .collect();
        Ok(LintReport { findings, note })
    }

    async fn explain(&self, query: ExplainQuery) -> Result<Explanation, Refusal> {
        let subscribe = query.action == "subscribe";
        if query.retain && subscribe {
            return Err(Refusal::Invalid("retain: applies to publish".to_owned()));
        }
        let checked = if subscribe {
            bulwark_proto::TopicFilter::new(&query.topic)
                .map(|f| f.match_filter().to_owned())
                .map_err(|e| {
                    Refusal::Invalid(format!(
                        "topic: {:?} is not a topic filter: {e}",
                        query.topic
                    ))
                })?
        } else {
            bulwark_proto::TopicName::new(&query.topic)
                .map(|t| t.as_str().to_owned())
                .map_err(|e| {
                    Refusal::Invalid(format!("topic: {:?} is not a topic name: {e}", query.topic))
                })?
        };
        let rules = self
            .inspect(|broker| broker.acl())
            .await
            .ok_or_else(|| Refusal::Unavailable("the engine did not answer".to_owned()))?
            .ok_or_else(|| {
                Refusal::NotFound(
                    "no ACL is in force: authorization is off, every client may do everything"
                        .to_owned(),
                )
            })?;
        let groups = query
            .user
            .as_deref()
            .map_or_else(Vec::new, |user| self.parts.auth.groups_of(user));
        let client_id = match (&query.client_id, rules.rule_using_client_id()) {
            (Some(id), _) => id.clone(),
            (None, None) => String::new(),
            (None, Some(rule)) => {
                return Err(Refusal::Invalid(format!(
                    "client_id: the rule at {} depends on the client identifier ({rule}): give one",
                    rule.origin
                )));
            }
        };
        let principal = bulwark_acl::Principal {
            username: query.user.as_deref().map(Arc::from),
            groups: groups.clone(),
            cert_cn: query.cert_cn.as_deref().map(Arc::from),
            listener: query.listener.as_deref().map(Arc::from),
            address: query.address,
            authenticated: query.user.is_some() || query.cert_cn.is_some(),
            claim: None,
            quarantine: None,
        };
        let view = |origin: &bulwark_acl::Origin| RuleView {
            origin: origin.to_string(),
            rule: rules
                .rules()
                .iter()
                .find(|r| r.origin == *origin)
                .map_or_else(String::new, |r| r.to_string()),
        };
        let groups = groups.iter().map(|g| g.to_string()).collect();
        if !subscribe && (checked == "$SYS" || checked.starts_with("$SYS/")) {
            return Ok(Explanation {
                allowed: false,
                rule: None,
                reason: "the broker refuses every client publish to $SYS, whatever the rules"
                    .to_owned(),
                granted_qos: None,
                together: Vec::new(),
                carve_outs: Vec::new(),
                groups,
            });
        }
        let acl = rules.resolve(&principal, &client_id);
        let decision = if subscribe {
            acl.check_subscribe(&checked, query.qos.unwrap_or(2))
        } else {
            acl.check_publish(&checked, query.qos.unwrap_or(0), query.retain)
        };
        Ok(Explanation {
            allowed: decision.allowed,
            rule: decision.origin.as_ref().map(view),
            reason: decision.to_string(),
            granted_qos: (subscribe && decision.allowed).then_some(decision.qos),
            together: decision.together.iter().map(view).collect(),
            carve_outs: decision.carve_outs.iter().map(view).collect(),
            groups,
        })
    }

    fn events(&self) -> tokio::sync::broadcast::Receiver<Arc<SecurityEvent>> {
        self.parts.auth.audit.subscribe()
    }

    fn recent_events(&self, limit: usize) -> Vec<Arc<SecurityEvent>> {
        self.parts.auth.audit.recent(limit)
    }

    async fn sessions(
        &self,
        query: &SessionQuery,
        limit: usize,
    ) -> Result<Page<SessionItem>, Refusal> {
        self.session_page(query, limit).await
    }

    async fn delete_session(&self, client_id: &str) -> Result<(), Refusal> {
        self.remove_session(client_id).await
    }

    async fn subscriptions(
        &self,
        query: &SubscriptionQuery,
        limit: usize,
    ) -> Result<Page<SubscriptionItem>, Refusal> {
        self.subscription_page(query, limit).await
    }

    async fn retained(
        &self,
        query: &RetainedQuery,
        limit: usize,
    ) -> Result<Page<RetainedItem>, Refusal> {
        self.retained_list(query, limit).await
    }

    async fn delete_retained(&self, topic: &str) -> Result<(), Refusal> {
        self.remove_retained(topic).await
    }

    async fn acl_diff(&self, candidate: AclCandidate) -> Result<AclDiff, Refusal> {
        self.diff_acl(candidate).await
    }

    fn config(&self) -> serde_json::Value {
        self.parts.config.clone()
    }

    fn tokens(&self) -> Result<Vec<TokenView>, Refusal> {
        Ok(self.token_list())
    }

    async fn add_token(&self, token: NewToken) -> Result<AddedToken, Refusal> {
        self.issue_token(token).await
    }

    async fn remove_token(&self, name_or_id: &str) -> Result<(), Refusal> {
        self.revoke_token(name_or_id).await
    }

    async fn metrics(&self) -> MetricsSnapshot {
        let engine = self
            .inspect(|broker| {
                (
                    *broker.stats(),
                    broker.connected(),
                    broker.sessions(),
                    broker.subscription_count(),
                    broker.retained_count(),
                    broker.queue_totals(),
                    broker.connections_by_protocol(),
                )
            })
            .await;
        let mut families = Vec::new();
        let per_listener = self.parts.auth.live_per_listener();
        families.push(gauge(
            "connections",
            "Authenticated client connections open now, by listener.",
            per_listener
                .iter()
                .map(|(l, n)| (vec![("listener", l.to_string())], *n as u64))
                .collect(),
        ));
        families.push(counter(
            "bytes_received",
            "Bytes read from MQTT clients since start.",
            plain(
                self.parts
                    .traffic
                    .received
                    .load(std::sync::atomic::Ordering::Relaxed),
            ),
        ));
        families.push(counter(
            "bytes_sent",
            "Bytes written to MQTT clients since start.",
            plain(
                self.parts
                    .traffic
                    .sent
                    .load(std::sync::atomic::Ordering::Relaxed),
            ),
        ));
        if let Some((stats, connected, sessions, subscriptions, retained, queues, protocols)) =
            engine
        {
            families.push(gauge(
                "clients_by_protocol",
                "Clients the engine holds a connection for, by MQTT version.",
                ["3.1", "3.1.1", "5.0"]
                    .iter()
                    .zip(protocols)
                    .map(|(p, n)| (vec![("protocol", (*p).to_owned())], n as u64))
                    .collect(),
            ));
            engine_families(&mut families, &stats);
            families.push(gauge(
                "clients_connected",
                "Clients the engine holds a connection for.",
                plain(connected as u64),
            ));
            families.push(gauge(
                "sessions",
                "Sessions held, connected and parked.",
                plain(sessions as u64),
            ));
            families.push(gauge(
                "subscriptions",
                "Subscriptions of all sessions.",
                plain(subscriptions as u64),
            ));
            families.push(gauge(
                "retained_messages",
                "Retained messages held.",
                plain(retained as u64),
            ));
            families.push(gauge(
                "queued_messages",
                "Messages waiting in the queues of all sessions (connected and parked).",
                plain(queues.queued_messages as u64),
            ));
            families.push(gauge(
                "queued_bytes",
                "Bytes (payload and topic) of the messages waiting in all queues.",
                plain(queues.queued_bytes as u64),
            ));
            families.push(gauge(
                "inflight_messages",
                "QoS 1 and 2 messages sent to clients and not yet acknowledged.",
                plain(queues.inflight as u64),
            ));
            families.push(gauge(
                "longest_queue",
                "Messages waiting in the longest queue of one session (a slow or absent consumer).",
                plain(queues.longest_queue as u64),
            ));
        }
        let traffic = &self.parts.traffic;
        let mut refusals: Samples = traffic
            .refusals()
            .into_iter()
            .map(|(why, n)| (vec![("reason", why.label().to_owned())], n))
            .collect();
        refusals.push((
            vec![("reason", "listener_max_connections".to_owned())],
            traffic
                .listener_full
                .load(std::sync::atomic::Ordering::Relaxed),
        ));
        families.push(counter(
            "admission_refused",
            "Sockets refused before any handshake since start, by reason.",
            refusals,
        ));
        families.push(counter(
            "protocol_violations",
            "Connections closed for breaking the protocol or a limit since start, by the reason \
             code they were closed with.",
            traffic
                .violations()
                .into_iter()
                .map(|(code, n)| {
                    let name = ReasonCode::from_u8(code).map_or("unknown", ReasonCode::name);
                    (
                        vec![
                            ("code", format!("0x{code:02X}")),
                            ("reason", name.to_owned()),
                        ],
                        n,
                    )
                })
                .collect(),
        ));
        families.push(counter(
            "logins",
            "MQTT and dashboard logins decided since start, by result, method and (failures) the \
             reason the client was told.",
            self.parts
                .auth
                .login_counts()
                .into_iter()
                .map(|((result, method, reason), n)| {
                    (
                        vec![
                            ("result", result.to_owned()),
                            ("method", method.to_owned()),
                            ("reason", reason.to_owned()),
                        ],
                        n,
                    )
                })
                .collect(),
        ));
        let (addresses, usernames) = self.parts.auth.backoff_counts();
        families.push(gauge(
            "login_backoff_active",
            "Source addresses and usernames the login guard delays, serializes or bans now.",
            vec![
                (vec![("key", "address".to_owned())], addresses as u64),
                (vec![("key", "username".to_owned())], usernames as u64),
            ],
        ));
        families.push(gauge(
            "engine_up",
            "1 when the engine answered this scrape, 0 when it did not within 5 s.",
            plain(u64::from(engine.is_some())),
        ));
        families.push(gauge(
            "bans_active",
            "Bans in force (addresses, usernames, client ids).",
            plain(self.parts.bans.in_force().len() as u64),
        ));
        families.push(counter(
            "security_events",
            "Security events since start, by kind, authentication method and action.",
            self.parts
                .auth
                .audit
                .counts()
                .into_iter()
                .map(|((kind, method, action), n)| {
                    (
                        vec![
                            ("kind", kind.to_owned()),
                            ("method", method.to_owned()),
                            ("action", action.to_owned()),
                        ],
                        n,
                    )
                })
                .collect(),
        ));
        families.push(counter(
            "audit_events_dropped",
            "Security events the audit trail's queue had no room for (each in the log, and their count recorded in the trail).",
            plain(self.parts.auth.audit.dropped()),
        ));
        if let Some(detect) = self.parts.auth.audit.detect() {
            let counts = detect.counts();
            families.push(counter(
                "detections",
                "Responses of detection rules carried out since start, by rule and response (every detection is also a detection security event).",
                counts
                    .snapshot()
                    .into_iter()
                    .map(|((rule, response), n)| {
                        (vec![("rule", rule), ("response", response.to_owned())], n)
                    })
                    .collect(),
            ));
            families.push(counter(
                "detect_observations_dropped",
                "Observations the detection rules' queue had no room for.",
                plain(counts.dropped()),
            ));
            let tracked = counts.tracked();
            families.push(gauge(
                "detect_tracked",
                "Subjects (users, client ids, certificates, networks) each detection rule keeps track of.",
                tracked
                    .iter()
                    .map(|(rule, n, _)| (vec![("rule", rule.clone())], *n as u64))
                    .collect(),
            ));
            families.push(counter(
                "detect_untracked",
                "Observations a detection rule could not track: its table was full of active subjects.",
                tracked
                    .into_iter()
                    .map(|(rule, _, untracked)| (vec![("rule", rule)], untracked))
                    .collect(),
            ));
        }
        let exports = self.parts.auth.audit.export_counts();
        let by_target = |f: fn(&crate::audit::export::ExportCounts) -> u64| -> Samples {
            exports
                .iter()
                .map(|e| (vec![("target", e.target.to_owned())], f(e)))
                .collect()
        };
        families.push(counter(
            "audit_export_delivered",
            "Audit lines delivered to a remote export (syslog, http); a UDP datagram counts once sent.",
            by_target(|e| e.delivered),
        ));
        families.push(counter(
            "audit_export_dropped",
            "Audit lines a remote export dropped: queue full (oldest non-checkpoints first), too large to send, or still queued at stop.",
            by_target(|e| e.dropped),
        ));
        families.push(counter(
            "audit_export_failures",
            "Failed deliveries to a remote audit export (each retried with backoff, 1 s doubling to 60 s).",
            by_target(|e| e.failures),
        ));
        families.push(gauge(
            "audit_export_queued",
            "Audit lines waiting for a remote export now.",
            by_target(|e| e.queued),
        ));
        let (records, checkpoints, write_errors) = self.parts.auth.audit.trail_counts();
        families.push(counter(
            "audit_records",
            "Records written to the audit trail since start, checkpoints included.",
            plain(records),
        ));
        families.push(counter(
            "audit_checkpoints",
            "Signed checkpoints written to the audit trail since start.",
            plain(checkpoints),
        ));
        families.push(counter(
            "audit_write_errors",
            "Writes, syncs, rotations or removals of the audit trail (or its export) that failed.",
            plain(write_errors),
        ));
        let mut histograms = Vec::new();
        if let Some(store) = &self.parts.store {
            let reading = store.read();
            families.push(counter(
                "store_commit_failures",
                "Commits of the durable store that failed (each retried until it succeeds).",
                plain(reading.failed),
            ));
            families.push(gauge(
                "store_failing",
                "1 while the durable store refuses its commits (acknowledgements wait).",
                plain(u64::from(reading.failing)),
            ));
            histograms.push(HistogramFamily {
                name: "store_commit_seconds",
                help: "How long each commit of the durable store took (group commits: one per batch of rounds).",
                buckets: COMMIT_BUCKETS
                    .iter()
                    .copied()
                    .chain(std::iter::once(f64::MAX))
                    .zip(reading.buckets.iter().copied())
                    .collect(),
                sum: reading.seconds,
            });
        }
        if let Some(resident) = crate::memory::resident() {
            families.push(gauge(
                "memory_resident_bytes",
                "Resident memory of the broker process.",
                plain(resident),
            ));
        }
        families.push(gauge(
            "memory_watermark_bytes",
            "Resident memory above which new connections are refused and queues shed (0: not watched).",
            plain(self.parts.memory_watermark),
        ));
        families.push(gauge(
            "tls_expiry_timestamp_seconds",
            "When each TLS certificate runs out (notAfter) and each CRL is due to be replaced (nextUpdate), in Unix seconds.",
            self.parts.tls
                .iter()
                .flat_map(|(listener, acceptor)| {
                    crate::tls::expiries(acceptor.settings())
                        .into_iter()
                        .filter_map(|e| {
                            let until = u64::try_from(e.until?).ok()?;
                            Some((
                                vec![
                                    ("listener", listener.clone()),
                                    ("kind", e.kind.to_owned()),
                                    ("subject", e.subject),
                                ],
                                until,
                            ))
                        })
                        .collect::<Vec<_>>()
                })
                .collect(),
        ));
        MetricsSnapshot {
            families,
            histograms,
        }
    }
}

type Samples = Vec<(Vec<(&'static str, String)>, u64)>;

fn plain(value: u64) -> Samples {
    vec![(Vec::new(), value)]
}

fn gauge(name: &'static str, help: &'static str, samples: Samples) -> Family {
    family(MetricKind::Gauge, name, help, samples)
}

fn counter(name: &'static str, help: &'static str, samples: Samples) -> Family {
    family(MetricKind::Counter, name, help, samples)
}

fn family(kind: MetricKind, name: &'static str, help: &'static str, samples: Samples) -> Family {
    Family {
        name,
        help,
        kind,
        samples,
    }
}

/// The engine's counters.
fn engine_families(families: &mut Vec<Family>, stats: &Stats) {
    let labelled = |pairs: &[(&str, u64)], label: &'static str| -> Samples {
        pairs
            .iter()
            .map(|(v, n)| (vec![(label, (*v).to_owned())], *n))
            .collect()
    };
    families.push(counter(
        "connections_accepted",
        "Connections the engine accepted since start.",
        plain(stats.connections.total),
    ));
    families.push(counter(
        "connections_refused",
        "Sockets refused by admission control before any handshake, since start.",
        plain(stats.connections.refused),
    ));
    families.push(counter(
        "connections_expelled",
        "Connections closed because their client broke the protocol or a limit, since start.",
        plain(stats.connections.expelled),
    ));
    families.push(counter(
        "messages",
        "PUBLISH packets since start: received from clients, sent to them, expired undelivered.",
        labelled(
            &[
                ("received", stats.messages.received),
                ("sent", stats.messages.sent),
                ("expired", stats.messages.expired),
            ],
            "direction",
        ),
    ));
    let by_qos = |direction: &str, counts: &[u64; 3]| {
        counts
            .iter()
            .enumerate()
            .map(move |(qos, n)| {
                (
                    vec![
                        ("direction", direction.to_owned()),
                        ("qos", qos.to_string()),
                    ],
                    *n,
                )
            })
            .collect::<Vec<_>>()
    };
    let mut qos_samples = by_qos("received", &stats.messages.received_by_qos);
    qos_samples.extend(by_qos("sent", &stats.messages.sent_by_qos));
    families.push(counter(
        "messages_by_qos",
        "PUBLISH packets since start received from clients and sent to them, by QoS.",
        qos_samples,
    ));
    let mut payload_samples = by_qos("received", &stats.messages.received_payload_by_qos);
    payload_samples.extend(by_qos("sent", &stats.messages.sent_payload_by_qos));
    families.push(counter(
        "payload_bytes",
        "Payload bytes of the PUBLISH packets since start received from clients and sent to \
         them, by QoS.",
        payload_samples,
    ));
    families.push(counter(
        "acl_denials",
        "What the ACL refused since start: publishes (and wills), subscriptions.",
        labelled(
            &[
                ("publish", stats.denied.publishes),
                ("subscribe", stats.denied.subscriptions),
            ],
            "action",
        ),
    ));
    families.push(counter(
        "messages_dropped",
        "Messages not delivered to a subscriber since start, by reason.",
        labelled(
            &[
                ("queue_full", stats.dropped.queue_full),
                ("too_large", stats.dropped.too_large),
                ("offline_qos0", stats.dropped.offline_qos0),
                ("shed", stats.dropped.shed),
                ("backlog", stats.dropped.backlog),
            ],
            "reason",
        ),
    ));
}

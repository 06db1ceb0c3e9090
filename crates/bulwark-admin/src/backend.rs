//! What the admin API needs from the broker ([`Backend`]) and the records it answers with.
//! The server implements the trait; the API only speaks HTTP and JSON.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use std::sync::Arc;

use bulwark_acl::event::SecurityEvent;
use bulwark_auth::token::Role;
use serde::{Deserialize, Serialize};

/// Who made a request: the token or the dashboard user that authenticated it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The token's name (as given to `bulwark admin token add`), or the user's.
    pub name: String,
    /// How the caller was authenticated.
    pub via: Via,
    /// What it may do.
    pub role: Role,
    /// Where the request came from.
    pub remote: SocketAddr,
}

/// How a [`Caller`] was authenticated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Via {
    /// An API token, with its id (the part of the secret that is not secret).
    Token {
        /// The token's id.
        id: String,
    },
    /// A dashboard session (a password-store user's login).
    Session,
    /// A client certificate verified by the admin listener's TLS, whose identity
    /// `[admin.certificate_roles]` gives a role (the caller's name is that identity).
    Certificate,
}

/// The leaf certificate (DER) a client presented in the TLS handshake of its connection, as
/// the accept loop puts it in each request's extensions.
#[derive(Debug, Clone)]
pub struct PeerCertificate(pub Arc<Vec<u8>>);

impl Caller {
    /// Who, for the audit trail: `token:{name} ({id}, {role})` or `user:{name} ({role})`.
    pub fn actor(&self) -> String {
        match &self.via {
            Via::Token { id } => format!("token:{} ({id}, {})", self.name, self.role),
            Via::Session => format!("user:{} ({})", self.name, self.role),
            Via::Certificate => format!("cert:{} ({})", self.name, self.role),
        }
    }
}

/// Why a dashboard login was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LoginRefusal {
    /// Unknown user, wrong password, disabled or banned user: one answer for all.
    Refused,
    /// Too many failures: the login guard's backoff or an address ban.
    Throttled,
    /// The check could not be made (too many logins waiting).
    Unavailable,
}

/// A request that changed something (or tried to), for the audit trail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminAction {
    /// Who.
    pub caller: Caller,
    /// What, as `METHOD /path`.
    pub request: String,
    /// What it was about (a client id, a ban target), if anything.
    pub target: Option<String>,
    /// How it ended, in words (`done`, `no such client`, ...).
    pub outcome: String,
}

/// A page of a list: the items and the cursor of the next page (`None`: the last page).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Page<T> {
    /// This page's items.
    pub items: Vec<T>,
    /// Pass as `after` to get the next page.
    pub next: Option<String>,
}

/// Filters of the client list; every given one must match.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientQuery {
    /// Client identifiers starting with this.
    pub client_id: Option<String>,
    /// Exactly this username.
    pub username: Option<String>,
    /// Exactly this listener.
    pub listener: Option<String>,
    /// Clients from this address (an IP, without the port).
    pub address: Option<IpAddr>,
    /// At most this many items (1 to 1000, default 100).
    pub limit: Option<usize>,
    /// The cursor of the page before (`next` of the previous answer).
    pub after: Option<String>,
}

/// One connected client, as the list shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ClientSummary {
    /// Its client identifier.
    pub client_id: String,
    /// The username it was authenticated as (`null`: anonymous).
    pub username: Option<String>,
    /// The listener it connected to.
    pub listener: String,
    /// Its address and port.
    pub address: String,
}

/// One client in detail: the summary and its session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ClientDetail {
    /// What the list shows.
    #[serde(flatten)]
    pub summary: ClientSummary,
    /// `3.1`, `3.1.1` or `5.0`.
    pub protocol: String,
    /// Its subscriptions (filter and granted QoS).
    pub subscriptions: Vec<SubscriptionView>,
    /// Messages waiting to be sent to it.
    pub queued_messages: usize,
    /// Bytes of the messages waiting.
    pub queued_bytes: usize,
    /// QoS 1 and 2 messages sent to it and not yet acknowledged.
    pub inflight: usize,
    /// The Session Expiry Interval granted, in seconds (`4294967295`: never).
    pub session_expiry_interval: u32,
}

/// One subscription.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SubscriptionView {
    /// The topic filter (with `$share/{group}/` for shared subscriptions).
    pub filter: String,
    /// The maximum QoS granted.
    pub qos: u8,
}

/// What a ban is on: exactly one of address, username, client id, or a username and a
/// client id together (that user's use of that client id).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BanTargetView {
    /// An address or network (`203.0.113.7`, `203.0.113.0/24`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    /// A username (with `client_id`: `""` means anonymous clients).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// A client identifier.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
}

/// One ban in the list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BanView {
    /// Who.
    #[serde(flatten)]
    pub target: BanTargetView,
    /// Until when (Unix seconds); `null`: until removed.
    pub expires: Option<u64>,
    /// Why.
    pub reason: String,
    /// When it was made (Unix seconds).
    pub created: u64,
    /// Who made it (`auto` for the broker's own, `admin:{token}` for the API's).
    pub by: String,
}

/// A ban to add.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewBan {
    /// Who.
    #[serde(flatten)]
    pub target: BanTargetView,
    /// How long, in seconds; left out: until removed.
    pub duration_seconds: Option<u64>,
    /// Why (shown in the list and in the broker's events).
    #[serde(default)]
    pub reason: String,
}

/// What `bulwark acl lint` says of the ACL in force.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LintReport {
    /// One per rule that looks like a mistake.
    pub findings: Vec<LintFinding>,
    /// Why users and groups were not checked against the password store, if they were not.
    pub note: Option<String>,
}

/// One finding of a [`LintReport`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LintFinding {
    /// The rule's `file:line`.
    pub origin: String,
    /// `wide-grant`, `never-matches`, `shadowed` or `duplicate`.
    pub kind: String,
    /// What is wrong and why.
    pub message: String,
}

/// One certificate or CRL a TLS listener uses.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CertificateView {
    /// The listener (`admin` for the admin listener).
    pub listener: String,
    /// `server` (the certificate or an SNI one), `client_ca` (a CA of the client CA bundle) or
    /// `crl`.
    pub kind: String,
    /// The file it was read from.
    pub file: String,
    /// The certificate's subject, or the CRL's issuer.
    pub subject: String,
    /// `notAfter` of a certificate, `nextUpdate` of a CRL (Unix seconds; `null`: none).
    pub until: Option<i64>,
    /// Whole days from now to `until` (negative: past).
    pub days_left: Option<i64>,
}

/// An authorization question: may this client do this?
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExplainQuery {
    /// `publish` or `subscribe`.
    pub action: String,
    /// The topic (publish) or topic filter (subscribe).
    pub topic: String,
    /// The username (its groups in the password store apply); none: an anonymous client.
    pub user: Option<String>,
    /// The client identifier (needed when a rule depends on it).
    pub client_id: Option<String>,
    /// The listener the client is on.
    pub listener: Option<String>,
    /// The client's address.
    pub address: Option<IpAddr>,
    /// The common name of its client certificate.
    pub cert_cn: Option<String>,
    /// The QoS (publish: of the message, default 0; subscribe: asked for, default 2).
    pub qos: Option<u8>,
    /// A retained publish.
    #[serde(default)]
    pub retain: bool,
}

/// A rule of the ACL, where it is and what it says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RuleView {
    /// `file:line` (or the JWT claim it came from).
    pub origin: String,
    /// The rule, as text.
    pub rule: String,
}

/// The answer to an [`ExplainQuery`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Explanation {
    /// Whether it is allowed.
    pub allowed: bool,
    /// The rule that decided (`null`: none matched, the default deny).
    pub rule: Option<RuleView>,
    /// Why, in words.
    pub reason: String,
    /// For an allowed subscribe: the QoS granted.
    pub granted_qos: Option<u8>,
    /// For a subscribe no single rule covers: the other allow rules that cover it together.
    pub together: Vec<RuleView>,
    /// For an allowed subscribe: deny rules that keep some of its topics out (checked at
    /// delivery).
    pub carve_outs: Vec<RuleView>,
    /// The groups the user has in the password store (and so in the rules).
    pub groups: Vec<String>,
}

/// A user of the password store, without any secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UserView {
    /// The name.
    pub name: String,
    /// The groups.
    pub groups: Vec<String>,
    /// A disabled user cannot log in.
    pub disabled: bool,
    /// The kind of the stored hash (`argon2id`, or an imported Mosquitto kind).
    pub hash: String,
    /// The SCRAM mechanisms the user can log in with.
    pub scram: Vec<String>,
}

/// A user to add.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewUser {
    /// The name (the MQTT identity).
    pub name: String,
    /// The password (checked against the password policy); left out: one is generated and
    /// returned once.
    pub password: Option<String>,
    /// The groups.
    #[serde(default)]
    pub groups: Vec<String>,
}

/// A user added, with the generated password if there was one (shown this once).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AddedUser {
    /// The user.
    #[serde(flatten)]
    pub user: UserView,
    /// The generated password (`null` when the request gave one).
    pub password: Option<String>,
}

/// A change to a user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UserChange {
    /// Refuse their logins (live connections are closed).
    Disable,
    /// Let them log in again.
    Enable,
    /// Replace their groups.
    Groups(Vec<String>),
    /// Remove them (live connections are closed).
    Remove,
}

/// Filters of the session list.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SessionQuery {
    /// Client identifiers starting with this.
    pub client_id: Option<String>,
    /// At most this many items (1 to 1000, default 100).
    pub limit: Option<usize>,
    /// The cursor of the page before (`next` of the previous answer).
    pub after: Option<String>,
}

/// One session, connected or stored while its client is away.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SessionItem {
    /// Its client identifier.
    pub client_id: String,
    /// The user it belongs to (`null`: an anonymous client's).
    pub username: Option<String>,
    /// Whether its client is connected.
    pub connected: bool,
    /// Whether the durable store keeps it (it survives a restart).
    pub stored: bool,
    /// Subscriptions it holds.
    pub subscriptions: usize,
    /// Messages waiting to be sent to its client.
    pub queued_messages: usize,
    /// QoS 1 and 2 messages sent and not yet acknowledged.
    pub inflight: usize,
    /// The Session Expiry Interval, in seconds (`4294967295`: never).
    pub session_expiry_interval: u32,
}

/// Filters of the subscription list.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubscriptionQuery {
    /// Sessions whose client identifier starts with this.
    pub client_id: Option<String>,
    /// Exactly this topic filter (with `$share/{group}/` for shared subscriptions).
    pub filter: Option<String>,
    /// At most this many items (1 to 1000, default 100).
    pub limit: Option<usize>,
    /// The cursor of the page before (`next` of the previous answer).
    pub after: Option<String>,
}

/// One subscription of one session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SubscriptionItem {
    /// The session's client identifier.
    pub client_id: String,
    /// The topic filter (with `$share/{group}/` for shared subscriptions).
    pub filter: String,
    /// The maximum QoS granted.
    pub qos: u8,
    /// No Local (5.0).
    pub no_local: bool,
    /// Retain As Published (5.0).
    pub retain_as_published: bool,
    /// Retain Handling (5.0): 0, 1 or 2.
    pub retain_handling: u8,
    /// The Subscription Identifier (5.0), if one was given.
    pub subscription_identifier: Option<u32>,
}

/// Filters of the retained message list.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetainedQuery {
    /// The topic filter the topics must match (default `#`: every topic not starting with
    /// `$`; `$SYS/#` for the broker's own).
    pub filter: Option<String>,
    /// At most this many items (1 to 1000, default 100).
    pub limit: Option<usize>,
    /// The cursor of the page before (`next` of the previous answer).
    pub after: Option<String>,
}

/// One retained message, without its payload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RetainedItem {
    /// Its topic.
    pub topic: String,
    /// QoS as published.
    pub qos: u8,
    /// Payload size in bytes.
    pub payload_bytes: usize,
    /// Seconds left of its Message Expiry Interval (`null`: it does not expire).
    pub expires_in: Option<u32>,
    /// The user whose quota it counts against (`null`: anonymous or the broker's own).
    pub username: Option<String>,
}

/// What `POST /api/v1/acl/diff` compares with the ACL in force.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AclCandidate {
    /// The new ACL, as the text of an ACL file; left out: the ACL file as it is on disk now
    /// (what a reload would put in force).
    pub acl: Option<String>,
}

/// What putting a new ACL in force would do to the subscriptions of connected clients.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AclDiff {
    /// Where the new ACL came from: `request` or the ACL file's path.
    pub source: String,
    /// Connected clients checked.
    pub clients_checked: usize,
    /// Subscriptions it would remove or lower, in client identifier order (at most 1000).
    pub changes: Vec<AclChange>,
    /// How many changes there are in all (more than listed when `truncated`).
    pub total_changes: usize,
    /// Whether `changes` stops short of `total_changes`.
    pub truncated: bool,
}

/// One subscription a new ACL would remove or lower.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AclChange {
    /// The client's identifier.
    pub client_id: String,
    /// Its username (`null`: anonymous).
    pub username: Option<String>,
    /// The topic filter.
    pub filter: String,
    /// The QoS granted now.
    pub qos: u8,
    /// `revoke` (the subscription goes) or `lower` (it stays with a lower QoS).
    pub change: String,
    /// The QoS it would keep (`lower` only).
    pub new_qos: Option<u8>,
    /// Why, as the new ACL decides.
    pub reason: String,
}

/// An API token, without its secret or hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TokenView {
    /// Its name.
    pub name: String,
    /// Its id (the part of the token that is not secret).
    pub id: String,
    /// `viewer`, `operator` or `admin`.
    pub role: String,
    /// When it was made (Unix seconds).
    pub created: u64,
    /// When it expires (Unix seconds; `null`: never).
    pub expires: Option<u64>,
}

/// A token to make.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewToken {
    /// Its name (unique).
    pub name: String,
    /// `viewer`, `operator` or `admin`.
    pub role: String,
    /// How long it is valid, in seconds; left out: until removed.
    pub duration_seconds: Option<u64>,
}

/// A token made, with its secret (shown this once).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AddedToken {
    /// The token.
    #[serde(flatten)]
    pub token: TokenView,
    /// The secret to send as `Authorization: Bearer ...`.
    pub secret: String,
}

/// Whether the broker serves.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Readiness {
    /// Whether it is ready to serve clients.
    pub ready: bool,
    /// Clients connected now.
    pub connected: usize,
    /// Sessions held (connected and parked).
    pub sessions: usize,
}

/// Counters, levels and distributions for `/metrics`, gathered at each scrape.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MetricsSnapshot {
    /// Counters and gauges.
    pub families: Vec<Family>,
    /// Histograms.
    pub histograms: Vec<HistogramFamily>,
}

/// One histogram of a [`MetricsSnapshot`].
#[derive(Debug, Clone, PartialEq)]
pub struct HistogramFamily {
    /// Its name without the `bulwark_` prefix.
    pub name: &'static str,
    /// What it means.
    pub help: &'static str,
    /// `(upper bound, observations in this bucket)`, not cumulative, ascending; the last bound
    /// is `f64::MAX` (written `+Inf`).
    pub buckets: Vec<(f64, u64)>,
    /// The sum of the observations.
    pub sum: f64,
}

/// One metric of a [`MetricsSnapshot`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Family {
    /// Its name without the `bulwark_` prefix (counters without `_total`: the encoder adds it).
    pub name: &'static str,
    /// What it means.
    pub help: &'static str,
    /// Counter or gauge.
    pub kind: MetricKind,
    /// The values, each with its labels.
    pub samples: Vec<(Vec<(&'static str, String)>, u64)>,
}

/// The Prometheus type of a [`Family`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricKind {
    /// Only goes up (since start).
    Counter,
    /// Goes up and down.
    Gauge,
}

/// Why a kick or a ban did not happen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// There is nothing by that name.
    NotFound(String),
    /// It exists already (a user of that name).
    Conflict(String),
    /// The request is not valid (the field and why).
    Invalid(String),
    /// The broker could not do it now (stopping, a file that cannot be written).
    Unavailable(String),
}

/// The broker, as the admin API sees it. Methods that touch the engine are async: they wait
/// for the router, which answers between its rounds with bounded work.
pub trait Backend: Send + Sync + 'static {
    /// The caller a presented token belongs to (`None`: unknown, wrong or expired).
    fn authenticate(&self, token: &str, remote: SocketAddr) -> Option<Caller>;

    /// The caller a verified client certificate (DER) stands for, if its identity has a role
    /// (`None`: no role for it, or certificates are not an identity here).
    fn certificate_caller(&self, certificate: &[u8], remote: SocketAddr) -> Option<Caller> {
        let _ = (certificate, remote);
        None
    }

    /// How long `remote` must wait before its next attempt (`Some` after repeated failures).
    fn backoff(&self, remote: IpAddr) -> Option<Duration>;

    /// A request without a valid token: counted for the backoff and recorded as an event.
    fn authentication_failed(&self, remote: SocketAddr, why: &str);

    /// A request that changed something, for the audit trail.
    fn record(&self, action: AdminAction);

    /// Whether the broker serves, and how many clients and sessions it holds.
    fn readiness(&self) -> impl Future<Output = Readiness> + Send;

    /// The connected clients the query selects, a page at a time (by client id).
    fn clients(&self, query: &ClientQuery, limit: usize) -> Page<ClientSummary>;

    /// One connected client with its session.
    fn client(&self, client_id: &str) -> impl Future<Output = Option<ClientDetail>> + Send;

    /// Closes a connected client (5.0 clients get DISCONNECT with `code`).
    fn kick(
        &self,
        client_id: &str,
        code: u8,
        caller: &Caller,
    ) -> impl Future<Output = Result<(), Refusal>> + Send;

    /// The ban list in force.
    fn bans(&self) -> Vec<BanView>;

    /// Adds a ban (replacing one on the same target) and closes the connections it covers.
    fn add_ban(
        &self,
        ban: NewBan,
        caller: &Caller,
    ) -> impl Future<Output = Result<BanView, Refusal>> + Send;

    /// Lifts the ban on `target`.
    fn remove_ban(&self, target: &BanTargetView) -> Result<(), Refusal>;

    /// What `/metrics` shows.
    fn metrics(&self) -> impl Future<Output = MetricsSnapshot> + Send;

    /// A dashboard login: the groups of the password-store user `name` if `password` is
    /// theirs, through the same login guard (backoff, bans) and security events as MQTT
    /// logins.
    fn login(
        &self,
        name: &str,
        password: &str,
        remote: SocketAddr,
    ) -> impl Future<Output = Result<Vec<String>, LoginRefusal>> + Send;

    /// The users of the password store (`NotFound` without one).
    fn users(&self) -> Result<Vec<UserView>, Refusal>;

    /// Adds a user to the password store.
    fn add_user(&self, user: NewUser) -> impl Future<Output = Result<AddedUser, Refusal>> + Send;

    /// Changes (or removes) user `name`; connections of a disabled or removed user are closed.
    fn change_user(
        &self,
        name: &str,
        change: UserChange,
    ) -> impl Future<Output = Result<(), Refusal>> + Send;

    /// Checks that every file a reload reads (ACL, bans, password store, TLS) is valid, then
    /// has them reloaded now, as SIGHUP does; the files it will reload. `Invalid` (nothing
    /// reloaded) naming every problem otherwise.
    fn reload(&self) -> Result<Vec<String>, Refusal>;

    /// Every certificate and CRL of the TLS listeners, with when it runs out.
    fn certificates(&self) -> Vec<CertificateView>;

    /// Finds likely mistakes in the ACL in force (`NotFound` when there is none).
    fn lint(&self) -> impl Future<Output = Result<LintReport, Refusal>> + Send;

    /// Explains what the ACL in force decides for `query`.
    fn explain(
        &self,
        query: ExplainQuery,
    ) -> impl Future<Output = Result<Explanation, Refusal>> + Send;

    /// Security events as they happen.
    fn events(&self) -> tokio::sync::broadcast::Receiver<Arc<SecurityEvent>>;

    /// The most recent security events, oldest first, at most `limit`.
    fn recent_events(&self, limit: usize) -> Vec<Arc<SecurityEvent>>;

    /// Sessions, connected or stored, a page at a time (by client id).
    fn sessions(
        &self,
        query: &SessionQuery,
        limit: usize,
    ) -> impl Future<Output = Result<Page<SessionItem>, Refusal>> + Send;

    /// Deletes the stored session of a client that is not connected.
    fn delete_session(&self, client_id: &str) -> impl Future<Output = Result<(), Refusal>> + Send;

    /// Subscriptions of all sessions, a page at a time (by client id, then filter).
    fn subscriptions(
        &self,
        query: &SubscriptionQuery,
        limit: usize,
    ) -> impl Future<Output = Result<Page<SubscriptionItem>, Refusal>> + Send;

    /// Retained messages whose topic a filter matches, a page at a time (by topic).
    fn retained(
        &self,
        query: &RetainedQuery,
        limit: usize,
    ) -> impl Future<Output = Result<Page<RetainedItem>, Refusal>> + Send;

    /// Deletes the message retained on a topic.
    fn delete_retained(&self, topic: &str) -> impl Future<Output = Result<(), Refusal>> + Send;

    /// What a new ACL would remove from the subscriptions of connected clients.
    fn acl_diff(
        &self,
        candidate: AclCandidate,
    ) -> impl Future<Output = Result<AclDiff, Refusal>> + Send;

    /// The configuration in force, defaults included, without any secret.
    fn config(&self) -> serde_json::Value;

    /// The API tokens.
    fn tokens(&self) -> Result<Vec<TokenView>, Refusal>;

    /// Makes a token.
    fn add_token(
        &self,
        token: NewToken,
    ) -> impl Future<Output = Result<AddedToken, Refusal>> + Send;

    /// Removes a token by name or id.
    fn remove_token(&self, name_or_id: &str) -> impl Future<Output = Result<(), Refusal>> + Send;
}

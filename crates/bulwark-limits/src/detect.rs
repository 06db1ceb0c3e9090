//! Detection rules: patterns of suspicious behaviour over a sliding window, per identity (a
//! username, a client id, a certificate) or per source network (an IPv4 /24 or IPv6 /64).
//!
//! The server feeds [`Observation`]s (a failed login, an ACL denial, a protocol violation, a
//! connection opening or closing, a subscription, a sample of what a client published) to a
//! [`Detector`] with `now`; each rule keeps a bounded table of what it has seen per subject and
//! answers with a [`Detection`] when its limit is reached. What to do about it (an event, a
//! metric, a disconnect, a ban, ...) is the rule's [`Response`] list, carried out by the
//! server. After a rule fires for a subject it stays quiet for that subject for one window, so
//! a flood gives one detection per window, not one per packet.
//!
//! Responses that act against an identity are refused (by [`DetectSettings::validate`]) where
//! the identity is only claimed: the username of a failed login could be anyone's, and a rule
//! that banned it would let an attacker lock a legitimate user out.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal<'a> {
    /// A login was refused (wrong password, unknown user, bad token, ...).
    LoginFailed,
    /// The ACL refused a PUBLISH, SUBSCRIBE, will or retained delivery of this topic or filter.
    AclDenied {
        /// The topic or filter.
        topic: &'a str,
    },
    /// A connection was closed for breaking the protocol or a limit.
    ProtocolViolation,
    /// A client logged in.
    Connected,
    /// A client that had logged in went away.
    Disconnected,
    /// What a client published since its previous sample.
    Published {
        /// PUBLISH packets.
        messages: u64,
        /// Their payload bytes.
        bytes: u64,
    },
    /// A client subscribed to this filter (and the ACL allowed it).
    Subscribed {
        /// The filter as the client sent it.
        filter: &'a str,
    },
}

/// One observation: what happened and who it is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Observation<'a> {
    /// What.
    pub signal: Signal<'a>,
    /// The username (claimed, for a failed login; proven otherwise).
    pub username: Option<&'a str>,
    /// The client identifier.
    pub client_id: Option<&'a str>,
    /// The verified client certificate's identity.
    pub certificate: Option<&'a str>,
    /// The source address.
    pub address: Option<IpAddr>,
}

impl<'a> Observation<'a> {
    /// An observation of `signal` about nobody yet.
    pub const fn new(signal: Signal<'a>) -> Self {
        Self {
            signal,
            username: None,
            client_id: None,
            certificate: None,
            address: None,
        }
    }
}

/// What a rule counts per.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Per {
    /// The username.
    User,
    /// The client identifier.
    ClientId,
    /// The client certificate's identity.
    Certificate,
    /// The source's IPv4 /24 or IPv6 /64.
    Network,
}

impl Per {
    /// The name in the configuration.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::User => "user",
            Self::ClientId => "client_id",
            Self::Certificate => "certificate",
            Self::Network => "network",
        }
    }
}

/// Who a detection is about.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Subject {
    /// A username.
    User(String),
    /// A client identifier.
    ClientId(String),
    /// A client certificate's identity.
    Certificate(String),
    /// An IPv4 /24 or IPv6 /64, by its first address.
    Network(IpAddr),
}

impl Subject {
    /// The network's prefix length, for a network.
    pub const fn prefix_len(&self) -> Option<u8> {
        match self {
            Self::Network(IpAddr::V4(_)) => Some(24),
            Self::Network(IpAddr::V6(_)) => Some(64),
            _ => None,
        }
    }
}

impl fmt::Display for Subject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::User(name) => write!(f, "user {name}"),
            Self::ClientId(id) => write!(f, "client id {id}"),
            Self::Certificate(id) => write!(f, "certificate {id}"),
            Self::Network(ip) => write!(f, "network {ip}/{}", self.prefix_len().unwrap_or(0)),
        }
    }
}

/// The patterns a rule can look for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RuleKind {
    /// Failed logins in the window reach `threshold`.
    FailedLogins,
    /// ACL denials of `threshold` distinct topics or filters in the window (topic scanning).
    AclDenials,
    /// Connections closed for protocol violations in the window reach `threshold`.
    ProtocolViolations,
    /// Messages published in one window above `factor` times the subject's own baseline
    /// (its average per window so far) and at least `threshold`.
    MessageRate,
    /// The mean bytes read per PUBLISH (headers included) in one window above `factor` times the subject's baseline and at
    /// least `threshold` bytes.
    MessageSize,
    /// One credential logged in from `threshold` networks at once.
    SharedCredential,
    /// Logins of one client id that ended in the window reach `threshold` (a client that keeps
    /// coming back, or two that take the id from each other).
    ClientIdFlapping,
    /// Subscriptions to a filter with a wildcard at level `max_depth` or nearer the root
    /// (`#`, `+/#`, ...) in the window reach `threshold`.
    RootWildcard,
}

impl RuleKind {
    /// The name in the configuration.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::FailedLogins => "failed_logins",
            Self::AclDenials => "acl_denials",
            Self::ProtocolViolations => "protocol_violations",
            Self::MessageRate => "message_rate",
            Self::MessageSize => "message_size",
            Self::SharedCredential => "shared_credential",
            Self::ClientIdFlapping => "client_id_flapping",
            Self::RootWildcard => "root_wildcard",
        }
    }

    /// Every kind, in the order of the documentation.
    pub const ALL: [Self; 8] = [
        Self::FailedLogins,
        Self::AclDenials,
        Self::ProtocolViolations,
        Self::MessageRate,
        Self::MessageSize,
        Self::SharedCredential,
        Self::ClientIdFlapping,
        Self::RootWildcard,
    ];

    /// Whether the subject's identity is only claimed in what this kind counts (a failed
    /// login's username or client id was never proven).
    const fn claimed(self, per: Per) -> bool {
        matches!(self, Self::FailedLogins) && !matches!(per, Per::Network)
    }
}

/// What the server does when a rule fires. An event is always recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Response {
    /// A `detection` security event (always, whether listed or not).
    Event,
    /// Counted in `bulwark_detections_total`.
    Metric,
    /// The subject's clients get a message rate cap (`throttle_messages_per_second`).
    Throttle,
    /// The subject's clients are restricted to the ACL group `quarantine_group`.
    Quarantine,
    /// The subject's live connections are closed.
    Disconnect,
    /// The subject is banned for `duration`.
    Ban,
}

impl Response {
    /// The name in the configuration.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Event => "event",
            Self::Metric => "metric",
            Self::Throttle => "throttle",
            Self::Quarantine => "quarantine",
            Self::Disconnect => "disconnect",
            Self::Ban => "ban",
        }
    }

    /// Whether it acts against the subject (rather than only telling).
    pub const fn acts(self) -> bool {
        !matches!(self, Self::Event | Self::Metric)
    }
}

/// One rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// Its name, in events and metrics.
    pub name: String,
    /// What it looks for.
    pub kind: RuleKind,
    /// Per what it counts.
    pub per: Per,
    /// The sliding window (for rate and size: the length of one measured period).
    pub window: Duration,
    /// The count (or distinct topics, or networks, or the minimum messages or bytes) at which
    /// it fires.
    pub threshold: u64,
    /// For rate and size: how many times the subject's baseline.
    pub factor: u32,
    /// For rate and size: complete windows measured before the baseline counts.
    pub warmup: u32,
    /// For root wildcards: the deepest level a wildcard may be at to count (1: `#` or `+/...`).
    pub max_depth: usize,
    /// What the server does when it fires.
    pub responses: Vec<Response>,
    /// How long a ban, throttle or quarantine lasts.
    pub duration: Duration,
    /// The message rate a throttled client gets.
    pub throttle_messages_per_second: u32,
    /// The ACL group a quarantined client is restricted to.
    pub quarantine_group: Option<String>,
}

impl Rule {
    /// A rule of `kind` per `per` with the documented defaults of that kind, responses
    /// `event` and `metric`.
    pub fn new(name: &str, kind: RuleKind, per: Per) -> Self {
        let (window, threshold) = match kind {
            RuleKind::FailedLogins => (60, 20),
            RuleKind::AclDenials => (60, 10),
            RuleKind::ProtocolViolations => (300, 5),
            RuleKind::MessageRate => (60, 600),
            RuleKind::MessageSize => (60, 65_536),
            RuleKind::SharedCredential => (60, 3),
            RuleKind::ClientIdFlapping => (60, 10),
            RuleKind::RootWildcard => (3600, 1),
        };
        Self {
            name: name.to_owned(),
            kind,
            per,
            window: Duration::from_secs(window),
            threshold,
            factor: 10,
            warmup: 3,
            max_depth: 1,
            responses: vec![Response::Event, Response::Metric],
            duration: Duration::from_secs(600),
            throttle_messages_per_second: 1,
            quarantine_group: None,
        }
    }
}

/// The rules and their bounds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DetectSettings {
    /// The rules, each with its own table.
    pub rules: Vec<Rule>,
    /// Subjects one rule keeps track of at most; past it, the idle ones go first, and then
    /// new subjects are not tracked (and counted) until there is room.
    pub max_tracked: usize,
}

/// [`DetectSettings::max_tracked`] by default.
pub const MAX_TRACKED: usize = 10_000;

impl Default for DetectSettings {
    /// The built-in rules ([`DetectSettings::builtin`]), record and metric only.
    fn default() -> Self {
        Self {
            rules: Self::builtin(),
            max_tracked: MAX_TRACKED,
        }
    }
}

impl DetectSettings {
    /// No rules.
    pub fn none() -> Self {
        Self {
            rules: Vec::new(),
            max_tracked: MAX_TRACKED,
        }
    }

    /// The built-in rules: conservative thresholds, and only an event and a metric each.
    pub fn builtin() -> Vec<Rule> {
        vec![
            Rule::new("failed-logins", RuleKind::FailedLogins, Per::Network),
            Rule::new("topic-scan", RuleKind::AclDenials, Per::User),
            Rule::new(
                "protocol-violations",
                RuleKind::ProtocolViolations,
                Per::Network,
            ),
            Rule::new("message-rate", RuleKind::MessageRate, Per::ClientId),
            Rule::new("message-size", RuleKind::MessageSize, Per::ClientId),
            Rule::new("shared-credential", RuleKind::SharedCredential, Per::User),
            Rule::new(
                "client-id-flapping",
                RuleKind::ClientIdFlapping,
                Per::ClientId,
            ),
            Rule::new("root-wildcard", RuleKind::RootWildcard, Per::User),
        ]
    }

    /// Every problem with the rules, each naming the rule.
    pub fn validate(&self) -> Result<(), Vec<String>> {
        let mut problems = Vec::new();
        let mut names = std::collections::HashSet::new();
        if self.max_tracked == 0 {
            problems.push("max_tracked: at least 1".to_owned());
        }
        for rule in &self.rules {
            let n = &rule.name;
            if n.is_empty()
                || !n
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            {
                problems.push(format!(
                    "rule \"{n}\": a name is letters, digits, '-' and '_'"
                ));
            }
            if !names.insert(n.clone()) {
                problems.push(format!("rule \"{n}\": two rules have this name"));
            }
            if rule.window.is_zero() {
                problems.push(format!("rule \"{n}\": the window must be at least 1 s"));
            }
            if rule.threshold == 0 {
                problems.push(format!("rule \"{n}\": the threshold must be at least 1"));
            }
            if matches!(rule.kind, RuleKind::MessageRate | RuleKind::MessageSize)
                && rule.factor == 0
            {
                problems.push(format!("rule \"{n}\": factor must be at least 1"));
            }
            if matches!(rule.kind, RuleKind::SharedCredential)
                && !matches!(rule.per, Per::User | Per::Certificate)
            {
                problems.push(format!(
                    "rule \"{n}\": shared_credential counts per user or per certificate"
                ));
            }
            if matches!(rule.kind, RuleKind::ClientIdFlapping) && rule.per == Per::Network {
                problems.push(format!(
                    "rule \"{n}\": client_id_flapping counts per client_id, user or certificate"
                ));
            }
            for response in &rule.responses {
                if response.acts() && rule.kind.claimed(rule.per) {
                    problems.push(format!(
                        "rule \"{n}\": a failed login's {} is only claimed, so \"{}\" would let anyone lock that {} out; count failed logins per network to act on them",
                        rule.per.as_str(),
                        response.as_str(),
                        rule.per.as_str()
                    ));
                }
            }
            if rule.responses.contains(&Response::Quarantine) && rule.quarantine_group.is_none() {
                problems.push(format!(
                    "rule \"{n}\": quarantine needs quarantine_group (the ACL group the client is restricted to)"
                ));
            }
            if rule.responses.contains(&Response::Throttle)
                && rule.throttle_messages_per_second == 0
            {
                problems.push(format!(
                    "rule \"{n}\": throttle_messages_per_second must be at least 1"
                ));
            }
            if rule.responses.iter().any(|r| r.acts()) && rule.duration.is_zero() {
                problems.push(format!("rule \"{n}\": duration must be at least 1 s"));
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems)
        }
    }
}

/// A rule that fired.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Detection {
    /// The rule's name.
    pub rule: String,
    /// Its kind.
    pub kind: RuleKind,
    /// Who.
    pub subject: Subject,
    /// What was measured (a count, distinct topics, networks, messages or mean bytes).
    pub value: u64,
    /// The limit it reached (for rate and size: `factor` times the baseline, or the threshold
    /// when that is higher).
    pub limit: u64,
    /// The window it was measured over.
    pub window: Duration,
    /// What the server is to do.
    pub responses: Vec<Response>,
    /// How long a ban, throttle or quarantine lasts.
    pub duration: Duration,
    /// See [`Rule::throttle_messages_per_second`].
    pub throttle_messages_per_second: u32,
    /// See [`Rule::quarantine_group`].
    pub quarantine_group: Option<String>,
}

impl Detection {
    /// What happened, in words: `12 failed logins in 60 s (limit 10)`.
    pub fn describe(&self) -> String {
        let w = self.window.as_secs();
        let (v, l) = (self.value, self.limit);
        match self.kind {
            RuleKind::FailedLogins => format!("{v} failed logins in {w} s (limit {l})"),
            RuleKind::AclDenials => {
                format!("{v} distinct topics or filters denied in {w} s (limit {l})")
            }
            RuleKind::ProtocolViolations => {
                format!("{v} connections closed for protocol violations in {w} s (limit {l})")
            }
            RuleKind::MessageRate => format!(
                "{v} messages published in {w} s, over {l} (its own baseline times the rule's factor)"
            ),
            RuleKind::MessageSize => format!(
                "a mean of {v} bytes read per message over {w} s, over {l} (its own baseline times the rule's factor)"
            ),
            RuleKind::SharedCredential => {
                format!("logged in from {v} networks at once (limit {l})")
            }
            RuleKind::ClientIdFlapping => format!("{v} logins ended in {w} s (limit {l})"),
            RuleKind::RootWildcard => {
                format!("{v} subscriptions to wildcards near the root in {w} s (limit {l})")
            }
        }
    }
}

/// What a rule keeps per subject.
#[derive(Debug)]
struct Track {
    last_seen: Instant,
    /// Until when the rule stays quiet for this subject after firing.
    quiet_until: Option<Instant>,
    state: State,
}

#[derive(Debug)]
enum State {
    /// When each counted event happened (the newest `threshold`).
    Times(VecDeque<Instant>),
    /// Distinct topics (by hash) and when each was last seen.
    Distinct(HashMap<u64, Instant>),
    /// The current period and the baseline of the complete ones.
    Baseline(Baseline),
    /// Live logins per network.
    Networks(HashMap<IpAddr, u32>),
}

#[derive(Debug)]
struct Baseline {
    started: Instant,
    messages: u64,
    bytes: u64,
    /// The average value per complete period (exponentially weighted).
    average: f64,
    periods: u32,
    fired: bool,
}

/// How much each complete period moves the baseline.
const BASELINE_WEIGHT: f64 = 0.25;
/// Empty periods folded into a baseline at most when a subject comes back after a pause.
const MAX_CATCH_UP: u32 = 64;

/// The rules' state.
#[derive(Debug)]
pub struct Detector {
    settings: DetectSettings,
    tables: Vec<Table>,
}

#[derive(Debug, Default)]
struct Table {
    tracks: HashMap<Subject, Track>,
    untracked: u64,
    last_prune: Option<Instant>,
}

impl Detector {
    /// A detector with `settings` (see [`DetectSettings::validate`]).
    pub fn new(settings: DetectSettings) -> Self {
        let tables = settings.rules.iter().map(|_| Table::default()).collect();
        Self { settings, tables }
    }

    /// The settings in force.
    pub fn settings(&self) -> &DetectSettings {
        &self.settings
    }

    /// Subjects tracked, and observations not tracked for want of room, per rule.
    pub fn tracked(&self) -> Vec<(&str, usize, u64)> {
        self.settings
            .rules
            .iter()
            .zip(&self.tables)
            .map(|(r, t)| (r.name.as_str(), t.tracks.len(), t.untracked))
            .collect()
    }

    /// Feeds one observation; returns the rules that fired.
    pub fn observe(&mut self, obs: &Observation<'_>, now: Instant) -> Vec<Detection> {
        let mut fired = Vec::new();
        let max = self.settings.max_tracked;
        for (rule, table) in self.settings.rules.iter().zip(self.tables.iter_mut()) {
            if !relevant(rule.kind, &obs.signal) {
                continue;
            }
            let Some(subject) = subject_of(rule.per, obs) else {
                continue;
            };
            if let Some(d) = table.observe(rule, subject, obs, now, max) {
                fired.push(d);
            }
        }
        fired
    }
}

fn relevant(kind: RuleKind, signal: &Signal<'_>) -> bool {
    match kind {
        RuleKind::FailedLogins => matches!(signal, Signal::LoginFailed),
        RuleKind::AclDenials => matches!(signal, Signal::AclDenied { .. }),
        RuleKind::ProtocolViolations => matches!(signal, Signal::ProtocolViolation),
        RuleKind::MessageRate | RuleKind::MessageSize => {
            matches!(signal, Signal::Published { .. })
        }
        RuleKind::SharedCredential => {
            matches!(signal, Signal::Connected | Signal::Disconnected)
        }
        // Counted as they end: a client that keeps coming back ends as often as it logs in,
        // and a fleet that stays connected costs the table nothing.
        RuleKind::ClientIdFlapping => matches!(signal, Signal::Disconnected),
        RuleKind::RootWildcard => matches!(signal, Signal::Subscribed { .. }),
    }
}

fn subject_of(per: Per, obs: &Observation<'_>) -> Option<Subject> {
    match per {
        Per::User => obs
            .username
            .filter(|u| !u.is_empty())
            .map(|u| Subject::User(u.to_owned())),
        Per::ClientId => obs
            .client_id
            .filter(|c| !c.is_empty())
            .map(|c| Subject::ClientId(c.to_owned())),
        Per::Certificate => obs
            .certificate
            .filter(|c| !c.is_empty())
            .map(|c| Subject::Certificate(c.to_owned())),
        Per::Network => obs
            .address
            .map(|ip| Subject::Network(crate::admission::prefix_of(unmapped(ip)))),
    }
}

fn unmapped(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        IpAddr::V4(_) => ip,
    }
}

/// The level (1 for the first) of a filter's first wildcard, `$share/{group}/` left out; `None`
/// without one.
pub fn wildcard_depth(filter: &str) -> Option<usize> {
    let filter = match filter.strip_prefix("$share/") {
        Some(rest) => rest.split_once('/').map_or("", |(_, f)| f),
        None => filter,
    };
    filter
        .split('/')
        .position(|level| level == "#" || level == "+")
        .map(|i| i + 1)
}

fn topic_hash(topic: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    topic.hash(&mut h);
    h.finish()
}

impl Table {
    fn observe(
        &mut self,
        rule: &Rule,
        subject: Subject,
        obs: &Observation<'_>,
        now: Instant,
        max: usize,
    ) -> Option<Detection> {
        // For live logins, a disconnect is only news for a subject already tracked.
        if rule.kind == RuleKind::SharedCredential
            && matches!(obs.signal, Signal::Disconnected)
            && !self.tracks.contains_key(&subject)
        {
            return None;
        }
        if matches!(obs.signal, Signal::Subscribed { filter }
            if wildcard_depth(filter).is_none_or(|d| d > rule.max_depth))
        {
            return None;
        }
        if !self.tracks.contains_key(&subject) && !self.room(rule, now, max) {
            self.untracked = self.untracked.saturating_add(1);
            return None;
        }
        let track = self.tracks.entry(subject.clone()).or_insert_with(|| Track {
            last_seen: now,
            quiet_until: None,
            state: match rule.kind {
                RuleKind::AclDenials => State::Distinct(HashMap::new()),
                RuleKind::MessageRate | RuleKind::MessageSize => State::Baseline(Baseline {
                    started: now,
                    messages: 0,
                    bytes: 0,
                    average: 0.0,
                    periods: 0,
                    fired: false,
                }),
                RuleKind::SharedCredential => State::Networks(HashMap::new()),
                // Room for one: most subjects are seen once or twice in a window.
                _ => State::Times(VecDeque::with_capacity(1)),
            },
        });
        track.last_seen = now;
        let quiet = track.quiet_until.is_some_and(|t| now < t);
        let (value, limit) = match &mut track.state {
            State::Times(times) => {
                while times
                    .front()
                    .is_some_and(|t| now.duration_since(*t) >= rule.window)
                {
                    times.pop_front();
                }
                times.push_back(now);
                let cap = usize::try_from(rule.threshold).unwrap_or(usize::MAX);
                while times.len() > cap {
                    times.pop_front();
                }
                let n = u64::try_from(times.len()).unwrap_or(u64::MAX);
                if n < rule.threshold || quiet {
                    return None;
                }
                times.clear();
                (n, rule.threshold)
            }
            State::Distinct(seen) => {
                let Signal::AclDenied { topic } = obs.signal else {
                    return None;
                };
                seen.retain(|_, t| now.duration_since(*t) < rule.window);
                if seen.len() < usize::try_from(rule.threshold).unwrap_or(usize::MAX) {
                    seen.insert(topic_hash(topic), now);
                }
                let n = u64::try_from(seen.len()).unwrap_or(u64::MAX);
                if n < rule.threshold || quiet {
                    return None;
                }
                seen.clear();
                (n, rule.threshold)
            }
            State::Networks(live) => {
                let ip = obs.address?;
                let net = crate::admission::prefix_of(unmapped(ip));
                match obs.signal {
                    Signal::Connected => *live.entry(net).or_insert(0) += 1,
                    Signal::Disconnected => {
                        if let Some(n) = live.get_mut(&net) {
                            *n = n.saturating_sub(1);
                            if *n == 0 {
                                live.remove(&net);
                            }
                        }
                        return None;
                    }
                    _ => return None,
                }
                let n = u64::try_from(live.len()).unwrap_or(u64::MAX);
                if n < rule.threshold || quiet {
                    return None;
                }
                (n, rule.threshold)
            }
            State::Baseline(b) => {
                let Signal::Published { messages, bytes } = obs.signal else {
                    return None;
                };
                b.roll(rule, now);
                b.messages = b.messages.saturating_add(messages);
                b.bytes = b.bytes.saturating_add(bytes);
                let value = match rule.kind {
                    RuleKind::MessageSize => b.bytes.checked_div(b.messages).unwrap_or(0),
                    _ => b.messages,
                };
                if b.fired || b.periods < rule.warmup || quiet {
                    return None;
                }
                let limit = (b.average * f64::from(rule.factor)).ceil().max(0.0);
                let limit = if limit >= u64::MAX as f64 {
                    u64::MAX
                } else {
                    limit as u64
                };
                let limit = limit.max(rule.threshold);
                if value < limit {
                    return None;
                }
                b.fired = true;
                (value, limit)
            }
        };
        track.quiet_until = Some(now + rule.window);
        Some(Detection {
            rule: rule.name.clone(),
            kind: rule.kind,
            subject,
            value,
            limit,
            window: rule.window,
            responses: rule.responses.clone(),
            duration: rule.duration,
            throttle_messages_per_second: rule.throttle_messages_per_second,
            quarantine_group: rule.quarantine_group.clone(),
        })
    }

    /// Whether a new subject fits: idle subjects (nothing for a window, no live logins) are
    /// forgotten first, at most once a second.
    fn room(&mut self, rule: &Rule, now: Instant, max: usize) -> bool {
        if self.tracks.len() < max {
            return true;
        }
        if self
            .last_prune
            .is_some_and(|t| now.duration_since(t) < Duration::from_secs(1))
        {
            return false;
        }
        self.last_prune = Some(now);
        let keep = rule.window.saturating_mul(match rule.kind {
            // A baseline is worth keeping a little longer than one period.
            RuleKind::MessageRate | RuleKind::MessageSize => 4,
            _ => 1,
        });
        self.tracks.retain(|_, t| {
            let live = matches!(&t.state, State::Networks(n) if !n.is_empty());
            live || now.duration_since(t.last_seen) < keep
        });
        self.tracks.len() < max
    }
}

impl Baseline {
    /// Closes the periods that ended before `now`, folding each into the average.
    fn roll(&mut self, rule: &Rule, now: Instant) {
        let mut caught_up = 0;
        while now.duration_since(self.started) >= rule.window {
            let value = match rule.kind {
                RuleKind::MessageSize => self.bytes.checked_div(self.messages),
                _ => Some(self.messages),
            };
            // A period without messages says nothing about their size.
            if let Some(value) = value {
                let value = value as f64;
                self.average = if self.periods == 0 {
                    value
                } else {
                    self.average + BASELINE_WEIGHT * (value - self.average)
                };
                self.periods = self.periods.saturating_add(1);
            }
            self.messages = 0;
            self.bytes = 0;
            self.fired = false;
            self.started += rule.window;
            caught_up += 1;
            if caught_up >= MAX_CATCH_UP {
                self.started = now;
                break;
            }
        }
    }
}

#[cfg(test)]
mod tests;

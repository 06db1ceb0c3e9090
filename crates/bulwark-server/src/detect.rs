//! Detection rules in the broker (`docs/detection.md`): what connections and the audit sink
//! observe goes, without waiting, to one task that runs the rules
//! ([`bulwark_limits::detect::Detector`]) and carries out what a rule that fired asks: a
//! `detection` security event (always), a metric, closing the subject's connections, a ban.
//!
//! Observations come from the security events themselves (failed logins, ACL denials,
//! protocol violations, logins), from the registry when a client goes away, and from drivers:
//! what a client published (a sample at most every [`SAMPLE_EVERY`] while it publishes) and
//! subscriptions to wildcards near the root. The queue to the task is bounded ([`QUEUE`]): an
//! observation that does not fit is dropped and counted, never waited for.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use bulwark_acl::event::{EventKind, SecurityEvent};
use bulwark_limits::ban::{Ban, BanTarget};
use bulwark_limits::detect::{
    DetectSettings, Detection, Detector, Observation, Response, RuleKind, Signal, Subject,
};
use tokio::sync::{mpsc, watch};
use tracing::warn;

/// Observations waiting for the detection task at most.
pub(crate) const QUEUE: usize = 16_384;
/// How often throttles and quarantines that ended are forgotten (a throttle lifts from live
/// connections within this).
const EXPIRY_CHECK: Duration = Duration::from_secs(1);
/// How often a publishing client's driver hands in what it published.
pub(crate) const SAMPLE_EVERY: Duration = Duration::from_secs(5);

/// What the detection task is told.
#[derive(Debug)]
pub(crate) enum Input {
    /// A security event, as recorded.
    Event(Arc<SecurityEvent>),
    /// The engine accepted a client's CONNECT (a client id held by another user is refused
    /// before this, so a refused takeover is no login of the id).
    Connected {
        username: Option<Arc<str>>,
        client_id: Arc<str>,
        peer: SocketAddr,
        /// The verified certificate's identity, for a certificate login.
        certificate: Option<Arc<str>>,
    },
    /// A client the engine had accepted went away.
    Disconnected {
        username: Option<Arc<str>>,
        client_id: Arc<str>,
        peer: SocketAddr,
        certificate: Option<Arc<str>>,
    },
    /// What a client published since its last sample.
    Published {
        username: Option<Arc<str>>,
        client_id: Arc<str>,
        peer: SocketAddr,
        messages: u64,
        bytes: u64,
    },
    /// A client asked for a subscription to a wildcard near the root.
    Subscribed {
        username: Option<Arc<str>>,
        client_id: Arc<str>,
        peer: SocketAddr,
        filter: String,
    },
}

/// Throttles and quarantines the rules imposed, in force until they expire: drivers apply
/// them to connections that log in meanwhile, and a throttle to live connections too (they
/// look at [`Restrictions::generation`] after each read).
#[derive(Debug, Default)]
pub(crate) struct Restrictions {
    list: std::sync::Mutex<Vec<Restriction>>,
    generation: AtomicU64,
}

#[derive(Debug, Clone)]
struct Restriction {
    subject: Subject,
    until: Instant,
    what: Restrict,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Restrict {
    Throttle(u32),
    Quarantine(Arc<str>),
}

/// Restrictions kept at most; past it, the one that ends soonest goes.
pub(crate) const MAX_RESTRICTIONS: usize = 10_000;

impl Restrictions {
    /// Puts `what` on `subject` until `until`. The same restriction of the same subject again
    /// (a rule that fires again) lasts until the later of both ends. A different one (another
    /// rule's rate or group) is kept beside it, so that no rule's restriction ends before its
    /// own duration: the lowest rate in force applies, and the group added last.
    fn add(&self, subject: &Subject, what: Restrict, until: Instant) {
        let mut list = crate::sync::lock(&self.list);
        let now = Instant::now();
        list.retain(|r| r.until > now);
        let mut until = until;
        if let Some(i) = list
            .iter()
            .position(|r| r.subject == *subject && r.what == what)
        {
            until = until.max(list.remove(i).until);
        }
        if list.len() >= MAX_RESTRICTIONS
            && let Some(i) = list
                .iter()
                .enumerate()
                .min_by_key(|(_, r)| r.until)
                .map(|(i, _)| i)
        {
            // `remove`, not `swap_remove`: the list stays in the order restrictions were added.
            list.remove(i);
        }
        list.push(Restriction {
            subject: subject.clone(),
            until,
            what,
        });
        self.generation.fetch_add(1, Ordering::Relaxed);
    }

    /// Forgets the restrictions that ended (and tells drivers, so that throttles lift).
    fn expire(&self, now: Instant) {
        let mut list = crate::sync::lock(&self.list);
        let before = list.len();
        list.retain(|r| r.until > now);
        if list.len() != before {
            self.generation.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Changes with every restriction added or ended.
    pub(crate) fn generation(&self) -> u64 {
        self.generation.load(Ordering::Relaxed)
    }

    /// The lowest message rate a throttle in force gives this client, if any.
    pub(crate) fn throttle(&self, ip: IpAddr, user: Option<&str>, client_id: &str) -> Option<u32> {
        let now = Instant::now();
        crate::sync::lock(&self.list)
            .iter()
            .filter(|r| r.until > now && covers(&r.subject, ip, user, client_id))
            .filter_map(|r| match r.what {
                Restrict::Throttle(rate) => Some(rate),
                Restrict::Quarantine(_) => None,
            })
            .min()
    }

    /// The ACL group a quarantine in force restricts this client to, if any: of several, the
    /// one added last (the group live connections were last moved to).
    pub(crate) fn quarantine(
        &self,
        ip: IpAddr,
        user: Option<&str>,
        client_id: &str,
    ) -> Option<Arc<str>> {
        let now = Instant::now();
        crate::sync::lock(&self.list)
            .iter()
            .rev()
            .filter(|r| r.until > now && covers(&r.subject, ip, user, client_id))
            .find_map(|r| match &r.what {
                Restrict::Quarantine(group) => Some(group.clone()),
                Restrict::Throttle(_) => None,
            })
    }
}

/// `limit` with a throttle's message rate (and as large a burst) where that is lower.
pub(crate) fn throttled(
    mut limit: bulwark_limits::rate::RateLimit,
    rate: Option<u32>,
) -> bulwark_limits::rate::RateLimit {
    if let Some(rate) = rate
        && (limit.messages_per_second == 0 || rate < limit.messages_per_second)
    {
        limit.messages_per_second = rate;
        limit.messages_burst = rate;
    }
    limit
}

/// Who logged in, for the rules that count logins.
#[derive(Debug)]
pub(crate) struct Login {
    pub(crate) username: Option<Arc<str>>,
    pub(crate) client_id: Arc<str>,
    /// The verified certificate's identity, for a certificate login.
    pub(crate) certificate: Option<Arc<str>>,
}

impl Login {
    /// The login (`connected`) or its end.
    pub(crate) fn into_input(self, peer: SocketAddr, connected: bool) -> Input {
        let Self {
            username,
            client_id,
            certificate,
        } = self;
        if connected {
            Input::Connected {
                username,
                client_id,
                peer,
                certificate,
            }
        } else {
            Input::Disconnected {
                username,
                client_id,
                peer,
                certificate,
            }
        }
    }
}

/// The way to the detection task. Cheap to clone.
#[derive(Debug, Clone)]
pub(crate) struct DetectTx {
    tx: mpsc::Sender<Input>,
    counts: Arc<DetectCounts>,
    /// Throttles and quarantines in force.
    pub(crate) restrictions: Arc<Restrictions>,
    /// Whether any rule looks at what clients publish (drivers sample only then).
    pub(crate) samples: bool,
    /// Whether any rule counts logins (drivers report accepted connections only then).
    pub(crate) logins: bool,
    /// The deepest wildcard a root-wildcard rule counts (drivers report only those).
    pub(crate) root_depth: Option<usize>,
}

/// Detections and dropped observations since start, for metrics.
#[derive(Debug, Default)]
pub(crate) struct DetectCounts {
    table: std::sync::Mutex<BTreeMap<(String, &'static str), u64>>,
    dropped: AtomicU64,
    tracked: std::sync::Mutex<Vec<(String, usize, u64)>>,
}

impl DetectCounts {
    /// `((rule, response), count)` for every response carried out.
    pub(crate) fn snapshot(&self) -> Vec<((String, &'static str), u64)> {
        crate::sync::lock(&self.table)
            .iter()
            .map(|(k, v)| (k.clone(), *v))
            .collect()
    }

    /// Observations the queue had no room for.
    pub(crate) fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// `(rule, subjects tracked, observations not tracked for want of room)`.
    pub(crate) fn tracked(&self) -> Vec<(String, usize, u64)> {
        crate::sync::lock(&self.tracked).clone()
    }
}

impl DetectTx {
    /// Hands `input` to the detection task, or drops and counts it.
    pub(crate) fn send(&self, input: Input) {
        if self.tx.try_send(input).is_err() {
            self.counts.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The counts for metrics.
    pub(crate) fn counts(&self) -> &Arc<DetectCounts> {
        &self.counts
    }
}

/// The detection task's half, kept until the server runs.
#[derive(Debug)]
pub(crate) struct DetectRx {
    rx: mpsc::Receiver<Input>,
    detector: Detector,
    counts: Arc<DetectCounts>,
    restrictions: Arc<Restrictions>,
}

/// Both halves, or none when there is no rule.
pub(crate) fn channel(settings: &DetectSettings) -> Option<(DetectTx, DetectRx)> {
    if settings.rules.is_empty() {
        return None;
    }
    let (tx, rx) = mpsc::channel(QUEUE);
    let counts = Arc::new(DetectCounts::default());
    let restrictions = Arc::new(Restrictions::default());
    let samples = settings
        .rules
        .iter()
        .any(|r| matches!(r.kind, RuleKind::MessageRate | RuleKind::MessageSize));
    let logins = settings.rules.iter().any(|r| {
        matches!(
            r.kind,
            RuleKind::SharedCredential | RuleKind::ClientIdFlapping
        )
    });
    let root_depth = settings
        .rules
        .iter()
        .filter(|r| r.kind == RuleKind::RootWildcard)
        .map(|r| r.max_depth)
        .max();
    Some((
        DetectTx {
            tx,
            counts: counts.clone(),
            restrictions: restrictions.clone(),
            samples,
            logins,
            root_depth,
        },
        DetectRx {
            rx,
            detector: Detector::new(settings.clone()),
            counts,
            restrictions,
        },
    ))
}

/// What the task acts through.
pub(crate) struct Acting {
    pub(crate) auth: Arc<crate::auth::AuthService>,
    pub(crate) router: mpsc::Sender<crate::router::ToRouter>,
    pub(crate) bans: Arc<crate::bans::Bans>,
}

/// Runs the rules until `stop`.
pub(crate) async fn run(mut rx: DetectRx, acting: Acting, mut stop: watch::Receiver<bool>) {
    let mut expiry = tokio::time::interval(EXPIRY_CHECK);
    loop {
        let input = tokio::select! {
            input = rx.rx.recv() => match input {
                Some(input) => input,
                None => return,
            },
            _ = expiry.tick() => {
                rx.restrictions.expire(Instant::now());
                continue;
            }
            _ = stop.changed() => return,
        };
        let now = Instant::now();
        let fired = observe(&mut rx.detector, &input, now);
        for detection in fired {
            act(&acting, &rx.counts, &rx.restrictions, &detection).await;
        }
        *crate::sync::lock(&rx.counts.tracked) = rx
            .detector
            .tracked()
            .into_iter()
            .map(|(name, n, untracked)| (name.to_owned(), n, untracked))
            .collect();
    }
}

fn ip_of(remote: Option<&str>) -> Option<IpAddr> {
    remote.and_then(|r| r.parse::<SocketAddr>().ok().map(|a| a.ip()))
}

fn observe(detector: &mut Detector, input: &Input, now: Instant) -> Vec<Detection> {
    match input {
        Input::Event(event) => {
            let signal = match event.kind {
                EventKind::AuthFailure | EventKind::ReauthFailure => Signal::LoginFailed,
                // Only what the client asked for: a retained message it may not read was
                // published by someone else, and another tenant's topics must not add up to
                // this client's "scan".
                EventKind::AclDenied if event.action.as_deref() == Some("retained") => {
                    return Vec::new();
                }
                EventKind::AclDenied => Signal::AclDenied {
                    topic: event.topic.as_deref().unwrap_or(""),
                },
                EventKind::ProtocolViolation => Signal::ProtocolViolation,
                _ => return Vec::new(),
            };
            let obs = Observation {
                signal,
                username: event.username.as_deref(),
                client_id: event.client_id.as_deref(),
                certificate: None,
                address: ip_of(event.remote.as_deref()),
            };
            detector.observe(&obs, now)
        }
        Input::Connected {
            username,
            client_id,
            peer,
            certificate,
        }
        | Input::Disconnected {
            username,
            client_id,
            peer,
            certificate,
        } => {
            let signal = if matches!(input, Input::Connected { .. }) {
                Signal::Connected
            } else {
                Signal::Disconnected
            };
            let mut obs = Observation::new(signal);
            obs.username = username.as_deref();
            obs.certificate = certificate.as_deref();
            obs.client_id = Some(client_id);
            obs.address = Some(peer.ip());
            detector.observe(&obs, now)
        }
        Input::Published {
            username,
            client_id,
            peer,
            messages,
            bytes,
        } => {
            let mut obs = Observation::new(Signal::Published {
                messages: *messages,
                bytes: *bytes,
            });
            obs.username = username.as_deref();
            obs.client_id = Some(client_id);
            obs.address = Some(peer.ip());
            detector.observe(&obs, now)
        }
        Input::Subscribed {
            username,
            client_id,
            peer,
            filter,
        } => {
            let mut obs = Observation::new(Signal::Subscribed { filter });
            obs.username = username.as_deref();
            obs.client_id = Some(client_id);
            obs.address = Some(peer.ip());
            detector.observe(&obs, now)
        }
    }
}

/// Whether a live connection (address, username, client id) belongs to `subject`.
fn covers(subject: &Subject, ip: IpAddr, user: Option<&str>, id: &str) -> bool {
    match subject {
        Subject::User(name) => user == Some(name.as_str()),
        Subject::ClientId(cid) => id == cid,
        // The registry knows usernames, which certificate logins take from the certificate.
        Subject::Certificate(cert) => user == Some(cert.as_str()),
        Subject::Network(net) => network(subject, *net).is_some_and(|c| c.contains(ip)),
    }
}

fn network(subject: &Subject, net: IpAddr) -> Option<bulwark_acl::Cidr> {
    let len = subject.prefix_len()?;
    bulwark_acl::Cidr::parse(&format!("{net}/{len}")).ok()
}

/// Carries out `d`'s responses and records what was done.
async fn act(acting: &Acting, counts: &DetectCounts, restrictions: &Restrictions, d: &Detection) {
    let mut done: Vec<String> = Vec::new();
    let count = |response: Response| {
        *crate::sync::lock(&counts.table)
            .entry((d.rule.clone(), response.as_str()))
            .or_default() += 1;
    };
    for &response in &d.responses {
        match response {
            Response::Event => {}
            Response::Metric => {
                count(response);
                done.push("metric".into());
            }
            Response::Disconnect => {
                let conns = acting
                    .auth
                    .live_matching(|ip, user, id| covers(&d.subject, ip, user, id));
                done.push(format!("disconnect ({} connection(s))", conns.len()));
                crate::bans::enforce(&acting.auth, &acting.router, conns, "detection rule").await;
                count(response);
            }
            Response::Ban => {
                let (what, banned) = ban(acting, d).await;
                done.push(what);
                // A ban skipped (an exempt network, a certificate) is no ban carried out.
                if banned {
                    count(response);
                }
            }
            Response::Throttle => {
                let rate = d.throttle_messages_per_second;
                restrictions.add(
                    &d.subject,
                    Restrict::Throttle(rate),
                    Instant::now() + d.duration,
                );
                done.push(format!(
                    "throttle to {rate} message(s)/s for {} s",
                    d.duration.as_secs()
                ));
                count(response);
            }
            Response::Quarantine => {
                let Some(group) = d.quarantine_group.as_deref() else {
                    continue;
                };
                let group: Arc<str> = Arc::from(group);
                restrictions.add(
                    &d.subject,
                    Restrict::Quarantine(group.clone()),
                    Instant::now() + d.duration,
                );
                let conns = acting
                    .auth
                    .live_matching(|ip, user, id| covers(&d.subject, ip, user, id));
                let n = conns.len();
                let look = move |broker: &mut bulwark_core::Broker, now: Instant| {
                    for conn in conns {
                        broker.quarantine(conn, &group, now);
                    }
                };
                let _ = acting
                    .router
                    .send(crate::router::ToRouter::Inspect(crate::router::Inspection(
                        Box::new(look),
                    )))
                    .await;
                done.push(format!(
                    "quarantine in ACL group {} for {} s ({n} live connection(s))",
                    d.quarantine_group.as_deref().unwrap_or(""),
                    d.duration.as_secs()
                ));
                count(response);
            }
        }
    }
    let mut event = SecurityEvent::new(EventKind::Detection, SystemTime::now());
    event.action = Some(d.rule.clone());
    event.target = Some(d.subject.to_string());
    match &d.subject {
        Subject::User(name) | Subject::Certificate(name) => event.username = Some(name.clone()),
        Subject::ClientId(id) => event.client_id = Some(id.clone()),
        Subject::Network(_) => {}
    }
    let responses = if done.is_empty() {
        "event".to_owned()
    } else {
        format!("event, {}", done.join(", "))
    };
    event.reason = Some(format!(
        "{} ({}): {}; responses: {responses}",
        d.rule,
        d.kind.as_str(),
        d.describe()
    ));
    acting.auth.audit.record(event);
}

/// Bans the subject for the rule's duration and closes its live connections; what was done,
/// and whether a ban was made.
async fn ban(acting: &Acting, d: &Detection) -> (String, bool) {
    let skipped = |what: &str| (what.to_owned(), false);
    let targets = match &d.subject {
        Subject::User(name) => vec![BanTarget::Username(name.clone())],
        // A client id alone is anyone's to use once its holder is gone: the ban names the
        // users that hold it now with it, as automatic flapping bans do, so that nobody else
        // who later uses the id is locked out.
        Subject::ClientId(id) => {
            let users: std::collections::BTreeSet<Option<String>> = acting
                .auth
                .live_matching(|_, _, cid| cid == id)
                .into_iter()
                .filter_map(|conn| acting.auth.who(conn))
                .map(|(_, user)| user.as_deref().map(str::to_owned))
                .collect();
            if users.is_empty() {
                return skipped("ban skipped (no live connection names the user of the client id)");
            }
            users
                .into_iter()
                .map(|username| BanTarget::UserClientId {
                    username,
                    client_id: id.clone(),
                })
                .collect()
        }
        Subject::Certificate(_) => return skipped("ban (not by certificate)"),
        Subject::Network(net) => match network(&d.subject, *net) {
            Some(cidr) => {
                if acting.bans.exempt_within(&cidr) {
                    return skipped("ban skipped (the network holds an address exempt from bans)");
                }
                vec![BanTarget::Address(cidr)]
            }
            None => return skipped("ban (no network)"),
        },
    };
    let now = crate::bans::unix_now();
    for target in targets {
        let ban = Ban {
            target,
            expires: Some(now.saturating_add(d.duration.as_secs())),
            reason: format!("detection rule {}: {}", d.rule, d.describe()),
            created: now,
            by: "detect".to_owned(),
        };
        if let Err(err) = acting.bans.add(ban) {
            warn!(rule = %d.rule, %err, "detection ban not written to the ban file (in force in memory)");
        }
    }
    let conns = acting
        .auth
        .live_matching(|ip, user, id| covers(&d.subject, ip, user, id));
    let n = conns.len();
    crate::bans::enforce(
        &acting.auth,
        &acting.router,
        conns,
        "banned by a detection rule",
    )
    .await;
    let secs = d.duration.as_secs();
    (format!("ban for {secs} s ({n} connection(s) closed)"), true)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing, reason = "test code")]

    use super::*;
    use bulwark_limits::detect::{Per, Rule};

    fn denial(action: &str, topic: &str) -> Input {
        let mut event = SecurityEvent::new(EventKind::AclDenied, SystemTime::now());
        event.username = Some("bob".into());
        event.remote = Some("192.0.2.7:40000".into());
        event.action = Some(action.into());
        event.topic = Some(topic.into());
        Input::Event(Arc::new(event))
    }

    #[test]
    fn only_denials_the_client_asked_for_count_as_a_scan() {
        let mut rule = Rule::new("scan", RuleKind::AclDenials, Per::User);
        rule.threshold = 3;
        let mut detector = Detector::new(DetectSettings {
            rules: vec![rule],
            max_tracked: 10,
        });
        let now = Instant::now();
        // Retained messages of other tenants it may not read: never a scan, however many.
        for i in 0..10 {
            let input = denial("retained", &format!("tenant-a/{i}"));
            assert!(observe(&mut detector, &input, now).is_empty());
        }
        assert!(observe(&mut detector, &denial("subscribe", "x/1"), now).is_empty());
        assert!(observe(&mut detector, &denial("publish", "x/2"), now).is_empty());
        let fired = observe(&mut detector, &denial("will", "x/3"), now);
        assert_eq!(fired.len(), 1);
        assert_eq!(fired[0].subject, Subject::User("bob".into()));
    }
}

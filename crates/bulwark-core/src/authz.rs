//! Authorization inside the engine: each connection's resolved ACL and the record of what
//! it refused, for the audit trail.
//!
//! The rules themselves are `bulwark_acl`; the engine holds the compiled set in
//! force, resolves it once per connection (and again after a reload), and asks it on
//! PUBLISH, SUBSCRIBE, wills and retained delivery. What the engine reports of it (and of
//! offences and slow consumers) waits in [`Reports`] until the caller takes it.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bulwark_acl::event::EventKind;
use bulwark_acl::{AclRules, ClientAcl, Principal};
use bulwark_proto::{ReasonCode, TopicName};

use crate::{ConnectionId, SessionKey};

/// One authorization event, for the caller to stamp with the wall-clock time and record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthzEvent {
    /// `AclDenied`, `SubscriptionRevoked` or `ClientIdRefused`.
    pub kind: EventKind,
    /// The client identifier.
    pub client_id: Arc<str>,
    /// Who the client is.
    pub principal: Arc<Principal>,
    /// `publish`, `subscribe`, `will`, `retained` or `connect`.
    pub action: &'static str,
    /// The topic or filter concerned (empty for `connect`).
    pub topic: Box<str>,
    /// Why, with the deciding rule.
    pub reason: String,
}

/// Events of one connection: at most [`EVENTS_PER_WINDOW`] each [`EVENT_WINDOW`]; the rest are
/// counted and the count told in the next event, so a client hammering a forbidden topic
/// cannot flood the audit trail.
pub(crate) const EVENTS_PER_WINDOW: u32 = 20;
pub(crate) const EVENT_WINDOW: Duration = Duration::from_secs(10);

/// A connection's view of authorization. Small while idle (three pointers): the resolved
/// rules and the mutable state are boxed, the state created at first use.
#[derive(Debug)]
pub(crate) struct ConnAuthz {
    pub(crate) principal: Arc<Principal>,
    /// `None`: no ACL in force, everything is allowed.
    /// Inline: the resolved rules are one pointer to their entries.
    acl: Option<ClientAcl>,
    state: Option<Box<State>>,
}

#[derive(Debug, Default)]
struct State {
    /// The last PUBLISH (topic, QoS, retain) the rules allowed: a client publishing to one
    /// topic again and again is answered by one comparison. Cleared with the rules.
    last_topic: String,
    last_qos: u8,
    last_retain: bool,
    has_last: bool,
    window_start: Option<Instant>,
    in_window: u32,
    suppressed: u64,
}

/// Topics longer than this are not remembered as the last allowed one (the memory kept per
/// connection stays small).
const MAX_REMEMBERED_TOPIC: usize = 256;

impl ConnAuthz {
    pub(crate) fn new(
        rules: Option<&AclRules>,
        principal: Arc<Principal>,
        client_id: &str,
    ) -> Self {
        Self {
            acl: rules.map(|r| r.resolve(&principal, client_id)),
            principal,
            state: None,
        }
    }

    /// The resolved rules, if an ACL is in force.
    pub(crate) fn acl(&self) -> Option<&ClientAcl> {
        self.acl.as_ref()
    }

    /// Takes the rules (and principal) of `fresh`, keeping the event budget.
    pub(crate) fn replace(&mut self, fresh: Self) {
        self.acl = fresh.acl;
        self.principal = fresh.principal;
        if let Some(state) = self.state.as_mut() {
            state.has_last = false;
        }
    }

    /// Whether the client may publish to `topic` at `qos` with `retain`.
    pub(crate) fn may_publish(&mut self, topic: &str, qos: u8, retain: bool) -> bool {
        let Some(acl) = self.acl.as_ref() else {
            return true;
        };
        if let Some(s) = self.state.as_deref()
            && s.has_last
            && s.last_qos == qos
            && s.last_retain == retain
            && s.last_topic == topic
        {
            return true;
        }
        let allowed = acl.may_publish(topic, qos, retain);
        if allowed && topic.len() <= MAX_REMEMBERED_TOPIC {
            let s = self.state.get_or_insert_with(Box::default);
            s.last_topic.clear();
            s.last_topic.push_str(topic);
            s.last_qos = qos;
            s.last_retain = retain;
            s.has_last = true;
        }
        allowed
    }

    /// Whether to record one more event now; `Some(n)`: yes, with `n` suppressed before it.
    pub(crate) fn admit_event(&mut self, now: Instant) -> Option<u64> {
        let s = self.state.get_or_insert_with(Box::default);
        let fresh = s
            .window_start
            .is_none_or(|start| now.saturating_duration_since(start) >= EVENT_WINDOW);
        if fresh {
            s.window_start = Some(now);
            s.in_window = 0;
        }
        if s.in_window >= EVENTS_PER_WINDOW {
            s.suppressed += 1;
            return None;
        }
        s.in_window += 1;
        Some(std::mem::take(&mut s.suppressed))
    }
}

/// Authorization events held for the caller at most; more are dropped (counted in
/// [`crate::Stats::events_dropped`]). The caller drains them after every call.
const MAX_PENDING_EVENTS: usize = 4096;

/// One session's slow-consumer reports: one event at most every
/// [`EVENT_WINDOW`]; drops in between are counted, and reported together when
/// the window ends (by [`crate::Broker::handle_timeout`]) or with the next drop after it, so that
/// the events add up to every message dropped.
#[derive(Debug, Clone)]
struct Overflow {
    /// When the last event was.
    at: Instant,
    /// Messages dropped since, not reported yet.
    unreported: u64,
    /// The topic of the last of them.
    topic: TopicName,
}

/// What the engine reports besides its outputs, held until the caller takes it: authorization
/// events, offences (connections closed for breaking the protocol or a limit), and each
/// overflowing session's slow-consumer reports.
#[derive(Debug, Default)]
pub(crate) struct Reports {
    /// Events not yet taken by [`crate::Broker::poll_event`] (bounded: see
    /// [`MAX_PENDING_EVENTS`]).
    events: VecDeque<AuthzEvent>,
    /// Not yet taken by [`crate::Broker::poll_offence`] (bounded like `events`).
    offences: VecDeque<(ConnectionId, ReasonCode)>,
    /// Each overflowing session's slow-consumer reports (bounded).
    overflows: HashMap<SessionKey, Overflow>,
    /// When the first drops not reported yet are due to be (see [`Overflow`]).
    next_overflow_report: Option<Instant>,
}

impl Reports {
    /// Holds `event` for the caller; false if too many are waiting (it is dropped).
    pub(crate) fn push_event(&mut self, event: AuthzEvent) -> bool {
        if self.events.len() >= MAX_PENDING_EVENTS {
            return false;
        }
        self.events.push_back(event);
        true
    }

    /// Holds an offence for the caller; false if too many are waiting (it is dropped).
    pub(crate) fn push_offence(&mut self, conn: ConnectionId, code: ReasonCode) -> bool {
        if self.offences.len() >= MAX_PENDING_EVENTS {
            return false;
        }
        self.offences.push_back((conn, code));
        true
    }

    /// The oldest event waiting.
    pub(crate) fn poll_event(&mut self) -> Option<AuthzEvent> {
        self.events.pop_front()
    }

    /// The oldest offence waiting.
    pub(crate) fn poll_offence(&mut self) -> Option<(ConnectionId, ReasonCode)> {
        self.offences.pop_front()
    }

    /// `dropped` messages of `session` (the last on `topic`) were lost to its full queue:
    /// `Some(n)` when an event reporting `n` drops is to be recorded now; `None` when they
    /// wait for the end of the session's window.
    pub(crate) fn overflow(
        &mut self,
        session: SessionKey,
        topic: &TopicName,
        dropped: u64,
        now: Instant,
    ) -> Option<u64> {
        let unreported = match self.overflows.get_mut(&session) {
            Some(o) if now.saturating_duration_since(o.at) < EVENT_WINDOW => {
                o.unreported = o.unreported.saturating_add(dropped);
                o.topic = topic.clone();
                let due = o.at.checked_add(EVENT_WINDOW).unwrap_or(now);
                self.next_overflow_report =
                    Some(self.next_overflow_report.map_or(due, |at| at.min(due)));
                return None;
            }
            Some(o) => o.unreported,
            None => 0,
        };
        if self.overflows.len() >= MAX_PENDING_EVENTS {
            self.overflows
                .retain(|_, o| now.saturating_duration_since(o.at) < EVENT_WINDOW);
        }
        self.overflows.insert(
            session,
            Overflow {
                at: now,
                unreported: 0,
                topic: topic.clone(),
            },
        );
        Some(dropped.saturating_add(unreported))
    }

    /// The drops to report at `now`: of every session whose window has ended since its last
    /// event, with the topic of the last one.
    pub(crate) fn due_overflows(&mut self, now: Instant) -> Vec<(SessionKey, TopicName, u64)> {
        if self.next_overflow_report.is_none_or(|at| at > now) {
            return Vec::new();
        }
        self.next_overflow_report = None;
        let mut due = Vec::new();
        for (session, o) in &mut self.overflows {
            if o.unreported == 0 {
                continue;
            }
            let end = o.at.checked_add(EVENT_WINDOW).unwrap_or(now);
            if end <= now {
                due.push((*session, o.topic.clone(), o.unreported));
                o.at = now;
                o.unreported = 0;
            } else {
                self.next_overflow_report =
                    Some(self.next_overflow_report.map_or(end, |at| at.min(end)));
            }
        }
        due
    }

    /// `session` ended: the drops not reported yet, to report now.
    pub(crate) fn session_ended(&mut self, session: SessionKey) -> Option<(TopicName, u64)> {
        self.overflows
            .remove(&session)
            .filter(|o| o.unreported > 0)
            .map(|o| (o.topic, o.unreported))
    }

    /// When [`Reports::due_overflows`] has something to report.
    pub(crate) fn next_report(&self) -> Option<Instant> {
        self.next_overflow_report
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests")]
mod tests {
    use super::*;

    #[test]
    fn overflow_reports_are_one_per_window_and_add_up() {
        let now = Instant::now();
        let topic = TopicName::new("t").unwrap();
        let mut reports = Reports::default();
        let s = SessionKey(1);
        assert_eq!(reports.overflow(s, &topic, 2, now), Some(2));
        assert_eq!(
            reports.overflow(s, &topic, 3, now + Duration::from_secs(1)),
            None
        );
        assert_eq!(reports.next_report(), Some(now + EVENT_WINDOW));
        assert!(
            reports
                .due_overflows(now + Duration::from_secs(9))
                .is_empty()
        );
        let due = reports.due_overflows(now + EVENT_WINDOW);
        assert_eq!(due, vec![(s, topic.clone(), 3)]);
        assert_eq!(reports.next_report(), None);
        // A later drop within the new window waits; the session's end reports it.
        let later = now + EVENT_WINDOW + Duration::from_secs(1);
        assert_eq!(reports.overflow(s, &topic, 4, later), None);
        assert_eq!(reports.session_ended(s), Some((topic.clone(), 4)));
        assert_eq!(reports.session_ended(s), None);
    }

    #[test]
    fn events_and_offences_are_bounded() {
        let mut reports = Reports::default();
        for _ in 0..MAX_PENDING_EVENTS {
            assert!(reports.push_offence(ConnectionId(1), ReasonCode::ProtocolError));
        }
        assert!(!reports.push_offence(ConnectionId(2), ReasonCode::ProtocolError));
        assert_eq!(
            reports.poll_offence(),
            Some((ConnectionId(1), ReasonCode::ProtocolError))
        );
    }
}

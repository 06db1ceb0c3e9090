//! Authorization inside the engine: each connection's resolved ACL and the record of what
//! it refused, for the audit trail.
//!
//! The rules themselves are `bulwark_acl`; the engine holds the compiled set in
//! force, resolves it once per connection (and again after a reload), and asks it on
//! PUBLISH, SUBSCRIBE, wills and retained delivery.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bulwark_acl::event::EventKind;
use bulwark_acl::{AclRules, ClientAcl, Principal};

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
    acl: Option<Box<ClientAcl>>,
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
            acl: rules.map(|r| Box::new(r.resolve(&principal, client_id))),
            principal,
            state: None,
        }
    }

    /// The resolved rules, if an ACL is in force.
    pub(crate) fn acl(&self) -> Option<&ClientAcl> {
        self.acl.as_deref()
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
        let Some(acl) = self.acl.as_deref() else {
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

//! Authorization inside the engine: each connection's resolved ACL and the record of what
//! it refused, for the audit trail.
//!
//! The rules themselves are `bulwark_security::acl`; the engine holds the compiled set in
//! force, resolves it once per connection (and again after a reload), and asks it on
//! PUBLISH, SUBSCRIBE, wills and retained delivery.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bulwark_security::acl::{AclRules, ClientAcl, Principal};
use bulwark_security::event::EventKind;

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

/// A connection's view of authorization.
#[derive(Debug)]
pub(crate) struct ConnAuthz {
    pub(crate) principal: Arc<Principal>,
    /// `None`: no ACL in force, everything is allowed.
    pub(crate) acl: Option<ClientAcl>,
    window_start: Option<Instant>,
    in_window: u32,
    suppressed: u64,
}

impl ConnAuthz {
    pub(crate) fn new(
        rules: Option<&AclRules>,
        principal: Arc<Principal>,
        client_id: &str,
    ) -> Self {
        Self {
            acl: rules.map(|r| r.resolve(&principal, client_id)),
            principal,
            window_start: None,
            in_window: 0,
            suppressed: 0,
        }
    }

    /// Whether to record one more event now; `Some(n)`: yes, with `n` suppressed before it.
    pub(crate) fn admit_event(&mut self, now: Instant) -> Option<u64> {
        let fresh = self
            .window_start
            .is_none_or(|start| now.saturating_duration_since(start) >= EVENT_WINDOW);
        if fresh {
            self.window_start = Some(now);
            self.in_window = 0;
        }
        if self.in_window >= EVENTS_PER_WINDOW {
            self.suppressed += 1;
            return None;
        }
        self.in_window += 1;
        Some(std::mem::take(&mut self.suppressed))
    }
}

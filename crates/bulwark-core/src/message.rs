//! Application messages as the engine keeps them: shared by every subscriber, never copied.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bulwark_proto::{PacketId, PublishProperties, QoS, SubscriptionId, TopicName};
use bytes::Bytes;

use crate::SessionKey;

/// A message accepted from a publisher (or a will), shared by all its deliveries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// The topic, never empty (aliases are resolved before a message is built).
    pub topic: TopicName,
    /// The payload, shared with the receive buffer it arrived in.
    pub payload: Bytes,
    /// QoS as published.
    pub qos: QoS,
    /// RETAIN as published.
    pub retain: bool,
    /// Properties passed through to subscribers (no Topic Alias, no Subscription Identifier).
    pub properties: PublishProperties,
    /// When the Message Expiry Interval runs out.
    pub expires_at: Option<Instant>,
    /// The session that published it, for No Local; `None` for the broker's own messages.
    pub publisher: Option<SessionKey>,
}

impl Message {
    /// Bytes this message costs in a queue: payload and topic.
    pub fn cost(&self) -> usize {
        self.payload.len() + self.topic.as_str().len()
    }

    /// Whether the Message Expiry Interval has run out.
    pub fn is_expired(&self, now: Instant) -> bool {
        self.expires_at.is_some_and(|at| at <= now)
    }

    /// Seconds left of the Message Expiry Interval, rounded up; `None` if it has none.
    pub fn remaining_expiry(&self, now: Instant) -> Option<u32> {
        self.expires_at.map(|at| {
            let left = at.saturating_duration_since(now);
            let secs = left.as_secs() + u64::from(left.subsec_nanos() > 0);
            u32::try_from(secs).unwrap_or(u32::MAX)
        })
    }

    /// The expiry instant for an interval given in a PUBLISH or will.
    pub fn expiry_from(now: Instant, interval: Option<u32>) -> Option<Instant> {
        interval.and_then(|secs| now.checked_add(Duration::from_secs(u64::from(secs))))
    }
}

/// Which shared subscription group a delivery came through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct GroupKey(pub(crate) u64);

/// One message on its way to one session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// The shared message.
    pub message: Arc<Message>,
    /// QoS of this delivery: the lower of the published QoS and the subscription's.
    pub qos: QoS,
    /// RETAIN as the subscriber sees it.
    pub retain: bool,
    /// Subscription Identifiers of every matching subscription.
    pub subscription_ids: Vec<SubscriptionId>,
    /// Set when the message came through a shared subscription, so that it can go to another
    /// member if this one leaves before acknowledging it.
    pub group: Option<GroupKey>,
    /// Its number in the session that holds it (for the durable store), given when it is
    /// queued or sent there; 0 until then.
    pub seq: u64,
}

/// Where a QoS 1 or 2 message sent to the client stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutState {
    /// QoS 1 sent, waiting for PUBACK.
    AwaitPubAck,
    /// QoS 2 sent, waiting for PUBREC.
    AwaitPubRec,
    /// PUBREL sent, waiting for PUBCOMP.
    AwaitPubComp,
}

/// A QoS 1 or 2 message sent to the client and not yet completed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inflight {
    /// The identifier it was sent with.
    pub packet_id: PacketId,
    /// The message.
    pub delivery: Delivery,
    /// Progress of the exchange.
    pub state: OutState,
}

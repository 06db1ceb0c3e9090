//! What the engine tells a durable store: every change to the state that must survive a
//! restart ([`StoreOp`]), in the order the engine made it, collected in a [`Journal`].
//!
//! Only persistent sessions (a Session Expiry Interval above 0) are journaled, and of their
//! messages only QoS 1 and 2 ones: a QoS 0 message may be lost by definition. A store applies
//! the operations of one round of the engine as one atomic commit; the server holds the
//! round's outputs (PUBACK, PUBREC, ...) until that commit is durable, so nothing is
//! acknowledged that a crash could lose. Instants are the engine's clock: the store turns them
//! into wall-clock times when it writes and back when it reads, so time spent down counts.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Instant;

use bulwark_acl::Principal;
use bulwark_proto::{PacketId, TopicName, Will};

use crate::message::{Delivery, Message, OutState};
use crate::subscription::SubscriptionRecord;

/// A message's exchange, if it was sent: the packet identifier and where it stands.
pub type Sent = Option<(PacketId, OutState)>;

/// A retained message and the user whose quota it counts against.
pub type RetainedEntry = (Arc<Message>, Option<Arc<str>>);

/// One change to durable state.
#[derive(Debug, Clone, PartialEq)]
pub enum StoreOp {
    /// A persistent session's own state, written whole when it changes (created, resumed,
    /// subscribed, unsubscribed, parked, its will sent): small, and rewritten rarely.
    Session(Box<SessionRecord>),
    /// The session is gone (expired, ended by a clean start, or its expiry became 0), with
    /// everything of it.
    SessionEnded {
        /// Its client identifier.
        client_id: Arc<str>,
    },
    /// A QoS 1 or 2 message for a session, queued (`sent: None`) or in flight; replaces the
    /// one with the same `seq`.
    Message {
        /// The session's client identifier.
        client_id: Arc<str>,
        /// Its number in the session, unique while the session lives.
        seq: u64,
        /// The message and how it is delivered.
        delivery: Delivery,
        /// The packet identifier it was sent with, and where its exchange stands.
        sent: Option<(PacketId, OutState)>,
    },
    /// The message `seq` left the session: acknowledged, dropped or expired.
    MessageDone {
        /// The session's client identifier.
        client_id: Arc<str>,
        /// The message's number in the session.
        seq: u64,
    },
    /// A QoS 2 PUBLISH from the session's client was answered with PUBREC; until PUBREL, a
    /// PUBLISH with this identifier is a resend (exactly once across a restart).
    Qos2Received {
        /// The session's client identifier.
        client_id: Arc<str>,
        /// The identifier.
        packet_id: PacketId,
    },
    /// PUBREL came for `packet_id`.
    Qos2Released {
        /// The session's client identifier.
        client_id: Arc<str>,
        /// The identifier.
        packet_id: PacketId,
    },
    /// A retained message was stored (replacing the one on its topic).
    Retained {
        /// The message.
        message: Arc<Message>,
        /// The user whose quota it counts against, if any.
        owner: Option<Arc<str>>,
    },
    /// The retained message on this topic was cleared (or expired).
    RetainedCleared(TopicName),
}

/// A persistent session's state other than its messages.
#[derive(Debug, Clone, PartialEq)]
pub struct SessionRecord {
    /// The client identifier.
    pub client_id: Arc<str>,
    /// The user that owns it (client identifiers are bound to their user), if any.
    pub owner: Option<Arc<str>>,
    /// Session Expiry Interval, seconds (`u32::MAX`: never).
    pub expiry_interval: u32,
    /// Its subscriptions.
    pub subscriptions: Vec<SubscriptionRecord>,
    /// When its client left; `None` while connected (a restart then counts from the restart).
    pub disconnected_at: Option<Instant>,
    /// A will waiting for its delay to run out.
    pub will: Option<WillRecord>,
}

/// A will waiting to be published.
#[derive(Debug, Clone, PartialEq)]
pub struct WillRecord {
    /// When it is due; `None` while its client is connected (a restart counts as the loss of
    /// the connection: the will is due its delay after the restart).
    pub at: Option<Instant>,
    /// Will Delay Interval, seconds.
    pub delay: u32,
    /// The will message.
    pub will: Will,
    /// Who it is published as (checked against the ACL when it is sent).
    pub principal: Arc<Principal>,
}

/// Where the engine writes [`StoreOp`]s: owned by the engine, which lends it (`&mut`) to
/// the session that records a change, wherever that session is (connected or parked); the
/// engine takes the operations out after each round ([`crate::Broker::take_store_ops`]). A
/// journal that is off records nothing and costs one branch.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Journal {
    on: bool,
    ops: Vec<StoreOp>,
}

impl Journal {
    /// A journal that records.
    pub fn on() -> Self {
        Self {
            on: true,
            ops: Vec::new(),
        }
    }

    /// A journal that records nothing (the default: no durable store).
    pub fn off() -> Self {
        Self::default()
    }

    /// Whether it records.
    #[inline]
    pub fn is_on(&self) -> bool {
        self.on
    }

    /// Records `op` (nothing while off).
    #[inline]
    pub fn push(&mut self, op: StoreOp) {
        if self.on {
            self.ops.push(op);
        }
    }

    /// Takes every operation recorded so far, oldest first.
    pub fn take(&mut self) -> Vec<StoreOp> {
        std::mem::take(&mut self.ops)
    }
}

/// What a durable store read back, for [`crate::Broker::restore`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Restored {
    /// Persistent sessions.
    pub sessions: Vec<RestoredSession>,
    /// Retained messages, with the user each counts against.
    pub retained: Vec<RetainedEntry>,
}

/// A session as a durable store read it back, for [`crate::Broker::restore`].
#[derive(Debug, Clone, PartialEq)]
pub struct RestoredSession {
    /// Its own state.
    pub record: SessionRecord,
    /// Its QoS 1/2 messages by `seq`, oldest first, with their exchange if they were sent.
    pub messages: Vec<(u64, Delivery, Sent)>,
    /// QoS 2 identifiers received from its client and not yet released.
    pub qos2_received: Vec<PacketId>,
}

/// The durable state that a sequence of [`StoreOp`]s describes, kept in memory: what a
/// durable store holds after applying them, and the reference its tests compare with.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Image {
    sessions: BTreeMap<Arc<str>, ImageSession>,
    retained: BTreeMap<Box<str>, RetainedEntry>,
}

#[derive(Debug, Clone, Default, PartialEq)]
struct ImageSession {
    /// `None` until the session's record comes (its messages may come first, in one batch).
    record: Option<SessionRecord>,
    messages: BTreeMap<u64, (Delivery, Sent)>,
    qos2_received: BTreeSet<u16>,
}

impl Image {
    /// An empty image.
    pub fn new() -> Self {
        Self::default()
    }

    /// Applies one operation.
    pub fn apply(&mut self, op: StoreOp) {
        match op {
            StoreOp::Session(record) => {
                let client_id = record.client_id.clone();
                self.sessions.entry(client_id).or_default().record = Some(*record);
            }
            StoreOp::SessionEnded { client_id } => {
                self.sessions.remove(&client_id);
            }
            StoreOp::Message {
                client_id,
                seq,
                delivery,
                sent,
            } => {
                self.sessions
                    .entry(client_id)
                    .or_default()
                    .messages
                    .insert(seq, (delivery, sent));
            }
            StoreOp::MessageDone { client_id, seq } => {
                if let Some(s) = self.sessions.get_mut(&client_id) {
                    s.messages.remove(&seq);
                }
            }
            StoreOp::Qos2Received {
                client_id,
                packet_id,
            } => {
                self.sessions
                    .entry(client_id)
                    .or_default()
                    .qos2_received
                    .insert(packet_id.get());
            }
            StoreOp::Qos2Released {
                client_id,
                packet_id,
            } => {
                if let Some(s) = self.sessions.get_mut(&client_id) {
                    s.qos2_received.remove(&packet_id.get());
                }
            }
            StoreOp::Retained { message, owner } => {
                self.retained
                    .insert(message.topic.as_str().into(), (message, owner));
            }
            StoreOp::RetainedCleared(topic) => {
                self.retained.remove(topic.as_str());
            }
        }
    }

    /// Applies every operation, in order.
    pub fn apply_all(&mut self, ops: impl IntoIterator<Item = StoreOp>) {
        for op in ops {
            self.apply(op);
        }
    }

    /// Sessions with a record.
    pub fn sessions(&self) -> usize {
        self.sessions
            .values()
            .filter(|s| s.record.is_some())
            .count()
    }

    /// Messages held for sessions.
    pub fn messages(&self) -> usize {
        self.sessions.values().map(|s| s.messages.len()).sum()
    }

    /// Retained messages.
    pub fn retained(&self) -> usize {
        self.retained.len()
    }

    /// What [`crate::Broker::restore`] takes; sessions without a record are left out.
    pub fn restored(&self) -> Restored {
        Restored {
            sessions: self
                .sessions
                .values()
                .filter_map(|s| {
                    let record = s.record.clone()?;
                    Some(RestoredSession {
                        record,
                        messages: s
                            .messages
                            .iter()
                            .map(|(seq, (d, sent))| (*seq, d.clone(), *sent))
                            .collect(),
                        qos2_received: s
                            .qos2_received
                            .iter()
                            .filter_map(|&id| PacketId::new(id))
                            .collect(),
                    })
                })
                .collect(),
            retained: self.retained.values().cloned().collect(),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests")]
mod tests {
    use super::*;

    fn op(n: u64) -> StoreOp {
        StoreOp::MessageDone {
            client_id: Arc::from("c"),
            seq: n,
        }
    }

    #[test]
    fn a_journal_that_is_off_records_nothing_and_take_drains_in_order() {
        let mut off = Journal::off();
        off.push(op(1));
        assert!(!off.is_on());
        assert!(off.take().is_empty());
        let mut on = Journal::on();
        on.push(op(1));
        on.push(op(2));
        assert_eq!(on.take(), vec![op(1), op(2)]);
        assert!(on.take().is_empty());
        assert!(on.is_on());
    }
}

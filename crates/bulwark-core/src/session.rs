//! The state of one MQTT session, kept while its client is connected and while it is parked.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;

use bulwark_proto::PacketId;

use crate::SessionKey;
use crate::message::{Delivery, Inflight, OutState};
use crate::persist::{Journal, StoreOp};
use crate::subscription::SubscriptionRecord;

/// Bounds of a session's queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueLimits {
    /// Messages at most.
    pub max_messages: usize,
    /// Bytes (payload and topic) at most.
    pub max_bytes: usize,
    /// What a full queue does with one more message, once queued QoS 0 messages are gone.
    pub when_full: QueuePolicy,
}

/// What a full session queue does with a QoS 1/2 message that does not fit, after dropping
/// its queued QoS 0 messages (oldest first) did not make room.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum QueuePolicy {
    /// The new message is dropped.
    #[default]
    DropNewest,
    /// The oldest queued messages are dropped until the new one fits.
    DropOldest,
    /// The new message is dropped and a connected client is disconnected (5.0: DISCONNECT
    /// 0x97); for a stored session, as `DropNewest`.
    Disconnect,
}

/// Why a message was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueFull {
    /// The session has `max_messages` waiting.
    Messages,
    /// The message would take the session over `max_bytes`.
    Bytes,
}

/// An MQTT session: subscriptions, messages waiting, QoS exchanges in progress.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    /// The engine's handle for it, stable while the session lives.
    pub key: SessionKey,
    /// The client identifier that owns it.
    pub client_id: Arc<str>,
    /// Subscriptions by the filter's full text.
    pub subscriptions: HashMap<Box<str>, SubscriptionRecord>,
    /// Session Expiry Interval in seconds, as granted; `u32::MAX` never expires.
    pub expiry_interval: u32,
    /// Messages not yet sent, oldest first.
    pub queue: VecDeque<Delivery>,
    queue_bytes: usize,
    /// QoS 1 and 2 messages sent and not completed, in the order they were first sent.
    pub inflight: VecDeque<Inflight>,
    next_id: u16,
    /// Packet identifiers in use both ways; created at the first QoS 1/2 exchange and dropped
    /// when none is left, so a session at rest carries no sets.
    ids: Option<Box<PacketIds>>,
    /// Whether this session (a persistent one) records its QoS 1/2 messages and QoS 2
    /// identifiers in the engine's journal, lent to every method that changes them.
    journaled: bool,
    /// The last [`Delivery::seq`] given.
    last_seq: u64,
    /// When its client left, while it is parked.
    pub parked_at: Option<std::time::Instant>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct PacketIds {
    /// Identifiers of messages in flight to the client.
    outgoing: HashSet<u16>,
    /// Identifiers of QoS 2 messages received from the client (and answered with PUBREC)
    /// whose PUBREL has not come yet: a PUBLISH reusing one is a resend, not a new message.
    incoming_qos2: HashSet<u16>,
}

impl Session {
    /// A new, empty session.
    pub fn new(key: SessionKey, client_id: Arc<str>, expiry_interval: u32) -> Self {
        Self {
            key,
            client_id,
            subscriptions: HashMap::new(),
            expiry_interval,
            queue: VecDeque::new(),
            queue_bytes: 0,
            inflight: VecDeque::new(),
            next_id: 0,
            ids: None,
            journaled: false,
            last_seq: 0,
            parked_at: None,
        }
    }

    /// Starts recording this session's changes in `journal` (when it is on), beginning with
    /// everything the session already holds, so that the store has all of it.
    pub fn start_journal(&mut self, journal: &mut Journal) {
        if !journal.is_on() {
            return;
        }
        self.journaled = true;
        let mut queue = std::mem::take(&mut self.queue);
        for delivery in &mut queue {
            self.record_message(journal, delivery, None);
        }
        self.queue = queue;
        let mut inflight = std::mem::take(&mut self.inflight);
        for i in &mut inflight {
            self.record_message(journal, &mut i.delivery, Some((i.packet_id, i.state)));
        }
        self.inflight = inflight;
        if let Some(ids) = &self.ids {
            for &id in &ids.incoming_qos2 {
                if let Some(packet_id) = PacketId::new(id) {
                    journal.push(StoreOp::Qos2Received {
                        client_id: self.client_id.clone(),
                        packet_id,
                    });
                }
            }
        }
    }

    /// Stops recording this session's changes (it is no longer persistent).
    pub fn stop_journal(&mut self) {
        self.journaled = false;
    }

    /// Whether this session is recorded for the durable store.
    #[inline]
    pub fn is_journaled(&self) -> bool {
        self.journaled
    }

    /// Gives `delivery` this session's next number unless it has one, and records it.
    fn record_message(
        &mut self,
        journal: &mut Journal,
        delivery: &mut Delivery,
        sent: Option<(PacketId, OutState)>,
    ) {
        if delivery.qos == bulwark_proto::QoS::AtMostOnce || !self.journaled {
            return;
        }
        if delivery.seq == 0 {
            self.last_seq += 1;
            delivery.seq = self.last_seq;
        }
        journal.push(StoreOp::Message {
            client_id: self.client_id.clone(),
            seq: delivery.seq,
            delivery: delivery.clone(),
            sent,
        });
    }

    /// Records that `delivery` left this session.
    fn record_done(&self, journal: &mut Journal, delivery: &Delivery) {
        if self.journaled && delivery.qos != bulwark_proto::QoS::AtMostOnce && delivery.seq != 0 {
            journal.push(StoreOp::MessageDone {
                client_id: self.client_id.clone(),
                seq: delivery.seq,
            });
        }
    }

    /// Puts back a message read from the durable store, with its number (and its exchange,
    /// if it had been sent): nothing is recorded, the store has it.
    pub fn restore_message(&mut self, delivery: Delivery, sent: Option<(PacketId, OutState)>) {
        self.last_seq = self.last_seq.max(delivery.seq);
        match sent {
            Some((packet_id, state)) => {
                let ids = self.ids.get_or_insert_with(Box::default);
                ids.outgoing.insert(packet_id.get());
                self.next_id = self.next_id.max(packet_id.get());
                self.inflight.push_back(Inflight {
                    packet_id,
                    delivery,
                    state,
                });
            }
            None => {
                self.queue_bytes += delivery.message.cost();
                self.queue.push_back(delivery);
            }
        }
    }

    /// Puts back a QoS 2 identifier read from the durable store.
    pub fn restore_qos2(&mut self, id: PacketId) {
        self.ids
            .get_or_insert_with(Box::default)
            .incoming_qos2
            .insert(id.get());
    }

    /// Appends a message to the queue. A message that does not fit first makes room by
    /// dropping queued QoS 0 messages, oldest first (a QoS 0 message itself never does), then
    /// as `limits.when_full` says. Returns how many queued messages were dropped, or why this
    /// one was not queued.
    pub fn enqueue(
        &mut self,
        journal: &mut Journal,
        mut delivery: Delivery,
        limits: QueueLimits,
    ) -> Result<usize, QueueFull> {
        let cost = delivery.message.cost();
        let fits = |s: &Self| {
            if s.queue.len() >= limits.max_messages {
                Err(QueueFull::Messages)
            } else if s.queue_bytes.saturating_add(cost) > limits.max_bytes {
                Err(QueueFull::Bytes)
            } else {
                Ok(())
            }
        };
        let mut dropped = 0;
        if let Err(full) = fits(self) {
            if delivery.qos == bulwark_proto::QoS::AtMostOnce
                || limits.max_messages == 0
                || cost > limits.max_bytes
            {
                return Err(full);
            }
            dropped += self.drop_oldest(journal, true, |s, _| fits(s).is_ok()).0;
            if let Err(full) = fits(self) {
                if limits.when_full != QueuePolicy::DropOldest {
                    return Err(full);
                }
                dropped += self.drop_oldest(journal, false, |s, _| fits(s).is_ok()).0;
            }
        }
        self.record_message(journal, &mut delivery, None);
        self.queue_bytes += cost;
        self.queue.push_back(delivery);
        Ok(dropped)
    }

    /// Drops queued messages, oldest first (only QoS 0 ones if `only_qos0`), until `done`
    /// (given the bytes freed so far) holds; returns the messages and bytes dropped.
    fn drop_oldest(
        &mut self,
        journal: &mut Journal,
        only_qos0: bool,
        done: impl Fn(&Self, usize) -> bool,
    ) -> (usize, usize) {
        let (mut messages, mut bytes) = (0, 0);
        let mut i = 0;
        while !done(self, bytes) {
            let Some(d) = self.queue.get(i) else {
                break;
            };
            if only_qos0 && d.qos != bulwark_proto::QoS::AtMostOnce {
                i += 1;
                continue;
            }
            if let Some(gone) = self.queue.remove(i) {
                self.record_done(journal, &gone);
                let cost = gone.message.cost();
                self.queue_bytes = self.queue_bytes.saturating_sub(cost);
                messages += 1;
                bytes += cost;
            }
        }
        (messages, bytes)
    }

    /// Drops queued messages, oldest first (only QoS 0 ones if `qos0_only`), until `want`
    /// bytes are freed; returns the messages and bytes dropped.
    pub fn shed(&mut self, journal: &mut Journal, want: usize, qos0_only: bool) -> (usize, usize) {
        self.drop_oldest(journal, qos0_only, |_, freed| freed >= want)
    }

    /// Takes the oldest queued message. For the durable store it has left the session: sent
    /// at QoS 1 or 2, it is recorded again in flight ([`Session::push_inflight`]).
    pub fn dequeue(&mut self, journal: &mut Journal) -> Option<Delivery> {
        let delivery = self.queue.pop_front()?;
        self.record_done(journal, &delivery);
        self.queue_bytes = self.queue_bytes.saturating_sub(delivery.message.cost());
        Some(delivery)
    }

    /// Puts a message back at the head of the queue (it could not be sent yet).
    pub fn requeue_front(&mut self, journal: &mut Journal, mut delivery: Delivery) {
        self.record_message(journal, &mut delivery, None);
        self.queue_bytes += delivery.message.cost();
        self.queue.push_front(delivery);
    }

    /// Keeps only the queued messages `keep` accepts; returns how many were removed.
    pub fn retain_queued(
        &mut self,
        journal: &mut Journal,
        mut keep: impl FnMut(&Delivery) -> bool,
    ) -> usize {
        let before = self.queue.len();
        let mut bytes = 0;
        let mut gone = Vec::new();
        self.queue.retain(|d| {
            let kept = keep(d);
            if kept {
                bytes += d.message.cost();
            } else if d.seq != 0 {
                gone.push(d.seq);
            }
            kept
        });
        if self.journaled {
            for seq in gone {
                journal.push(StoreOp::MessageDone {
                    client_id: self.client_id.clone(),
                    seq,
                });
            }
        }
        self.queue_bytes = bytes;
        before - self.queue.len()
    }

    /// Removes and returns the queued messages `take` picks (those of shared subscriptions
    /// that move to another member), leaving the others in place. The taken ones leave this
    /// session: their number is cleared for the session they go to.
    pub fn take_queued(
        &mut self,
        journal: &mut Journal,
        mut take: impl FnMut(&Delivery) -> bool,
    ) -> Vec<Delivery> {
        let mut taken = Vec::new();
        let mut i = 0;
        while let Some(d) = self.queue.get(i) {
            if !take(d) {
                i += 1;
                continue;
            }
            if let Some(mut gone) = self.queue.remove(i) {
                self.record_done(journal, &gone);
                self.queue_bytes = self.queue_bytes.saturating_sub(gone.message.cost());
                gone.seq = 0;
                taken.push(gone);
            }
        }
        taken
    }

    /// Bytes waiting in the queue.
    pub fn queued_bytes(&self) -> usize {
        self.queue_bytes
    }

    /// A packet identifier not used by any message in flight, or `None` if all 65,535 are.
    pub fn allocate_id(&mut self) -> Option<PacketId> {
        let ids = self.ids.get_or_insert_with(Box::default);
        if ids.outgoing.len() >= usize::from(u16::MAX) {
            return None;
        }
        loop {
            self.next_id = self.next_id.wrapping_add(1);
            if let Some(id) = PacketId::new(self.next_id)
                && ids.outgoing.insert(id.get())
            {
                return Some(id);
            }
        }
    }

    fn drop_empty_ids(&mut self) {
        if self
            .ids
            .as_ref()
            .is_some_and(|ids| ids.outgoing.is_empty() && ids.incoming_qos2.is_empty())
        {
            self.ids = None;
        }
    }

    /// Whether a QoS 2 PUBLISH with `id` was received and not yet released by PUBREL.
    pub fn qos2_received(&self, id: PacketId) -> bool {
        self.ids
            .as_ref()
            .is_some_and(|ids| ids.incoming_qos2.contains(&id.get()))
    }

    /// QoS 2 messages received and awaiting PUBREL.
    pub fn qos2_pending(&self) -> usize {
        self.ids.as_ref().map_or(0, |ids| ids.incoming_qos2.len())
    }

    /// Records a QoS 2 PUBLISH answered with PUBREC.
    pub fn qos2_record(&mut self, journal: &mut Journal, id: PacketId) {
        let new = self
            .ids
            .get_or_insert_with(Box::default)
            .incoming_qos2
            .insert(id.get());
        if new && self.journaled {
            journal.push(StoreOp::Qos2Received {
                client_id: self.client_id.clone(),
                packet_id: id,
            });
        }
    }

    /// PUBREL for `id`: forgets it; false if it was not known.
    pub fn qos2_release(&mut self, journal: &mut Journal, id: PacketId) -> bool {
        let known = self
            .ids
            .as_mut()
            .is_some_and(|ids| ids.incoming_qos2.remove(&id.get()));
        self.drop_empty_ids();
        if known && self.journaled {
            journal.push(StoreOp::Qos2Released {
                client_id: self.client_id.clone(),
                packet_id: id,
            });
        }
        known
    }

    /// Records a message as sent with `packet_id` (from [`Session::allocate_id`]).
    pub fn push_inflight(&mut self, journal: &mut Journal, mut inflight: Inflight) {
        self.ids
            .get_or_insert_with(Box::default)
            .outgoing
            .insert(inflight.packet_id.get());
        let sent = Some((inflight.packet_id, inflight.state));
        self.record_message(journal, &mut inflight.delivery, sent);
        self.inflight.push_back(inflight);
    }

    /// A QoS 2 message in flight at `position` got its PUBREC: PUBREL is sent, PUBCOMP awaited.
    pub fn mark_released(&mut self, journal: &mut Journal, position: usize) {
        let journal_on = self.journaled;
        let Some(inflight) = self.inflight.get_mut(position) else {
            return;
        };
        inflight.state = OutState::AwaitPubComp;
        if journal_on && inflight.delivery.seq != 0 {
            let op = StoreOp::Message {
                client_id: self.client_id.clone(),
                seq: inflight.delivery.seq,
                delivery: inflight.delivery.clone(),
                sent: Some((inflight.packet_id, OutState::AwaitPubComp)),
            };
            journal.push(op);
        }
    }

    /// The position of the message in flight with `packet_id`.
    pub fn inflight_position(&self, packet_id: PacketId) -> Option<usize> {
        // Acknowledgements mostly come in order, so the front is the usual hit.
        self.inflight.iter().position(|i| i.packet_id == packet_id)
    }

    /// Removes the message in flight at `position` and frees its identifier.
    pub fn remove_inflight(&mut self, journal: &mut Journal, position: usize) -> Option<Inflight> {
        let inflight = self.inflight.remove(position)?;
        self.record_done(journal, &inflight.delivery);
        if let Some(ids) = self.ids.as_mut() {
            ids.outgoing.remove(&inflight.packet_id.get());
        }
        self.drop_empty_ids();
        Some(inflight)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests")]
mod tests {
    use super::*;
    use crate::message::{Message, OutState};
    use bulwark_proto::{PublishProperties, QoS, TopicName};
    use bytes::Bytes;

    fn delivery(len: usize) -> Delivery {
        Delivery {
            message: Arc::new(Message {
                topic: TopicName::new("t").unwrap(),
                payload: Bytes::from(vec![0; len]),
                qos: QoS::AtLeastOnce,
                retain: false,
                properties: PublishProperties::default(),
                expires_at: None,
                publisher: None,
            }),
            qos: QoS::AtLeastOnce,
            retain: false,
            subscription_ids: Vec::new(),
            group: None,
            seq: 0,
        }
    }

    #[test]
    fn queue_bounds_count_and_bytes() {
        let mut s = Session::new(SessionKey(1), "c".into(), 0);
        let mut j = Journal::off();
        let limits = QueueLimits {
            max_messages: 2,
            max_bytes: 20,
            when_full: QueuePolicy::DropNewest,
        };
        assert_eq!(s.enqueue(&mut j, delivery(9), limits), Ok(0));
        assert_eq!(
            s.enqueue(&mut j, delivery(10), limits),
            Err(QueueFull::Bytes)
        );
        assert_eq!(s.enqueue(&mut j, delivery(5), limits), Ok(0));
        assert_eq!(
            s.enqueue(&mut j, delivery(0), limits),
            Err(QueueFull::Messages)
        );
        assert_eq!(s.queued_bytes(), 16);
        assert_eq!(s.dequeue(&mut j).unwrap().message.payload.len(), 9);
        assert_eq!(s.queued_bytes(), 6);
    }

    #[test]
    fn a_full_queue_drops_qos0_first_then_as_its_policy_says() {
        let qos0 = |len| Delivery {
            qos: QoS::AtMostOnce,
            ..delivery(len)
        };
        for policy in [QueuePolicy::DropNewest, QueuePolicy::DropOldest] {
            let limits = QueueLimits {
                max_messages: 3,
                max_bytes: 100,
                when_full: policy,
            };
            let mut s = Session::new(SessionKey(1), "c".into(), 0);
            let mut j = Journal::off();
            assert_eq!(s.enqueue(&mut j, delivery(10), limits), Ok(0));
            assert_eq!(s.enqueue(&mut j, qos0(10), limits), Ok(0));
            assert_eq!(s.enqueue(&mut j, delivery(10), limits), Ok(0));
            // Full by count: the QoS 0 message goes, whatever the policy.
            assert_eq!(s.enqueue(&mut j, delivery(20), limits), Ok(1));
            assert!(s.queue.iter().all(|d| d.qos == QoS::AtLeastOnce));
            // A QoS 0 message never pushes others out.
            assert_eq!(s.enqueue(&mut j, qos0(1), limits), Err(QueueFull::Messages));
            let next = s.enqueue(&mut j, delivery(30), limits);
            match policy {
                QueuePolicy::DropOldest => {
                    assert_eq!(next, Ok(1));
                    assert_eq!(s.queue.front().unwrap().message.payload.len(), 10);
                    assert_eq!(s.queue.back().unwrap().message.payload.len(), 30);
                }
                _ => assert_eq!(next, Err(QueueFull::Messages)),
            }
            assert_eq!(
                s.queued_bytes(),
                s.queue.iter().map(|d| d.message.cost()).sum::<usize>()
            );
            // Larger than the whole queue: refused, nothing dropped for it.
            assert!(s.enqueue(&mut j, delivery(200), limits).is_err());
            assert_eq!(s.queue.len(), 3);
        }
    }

    #[test]
    fn packet_ids_skip_those_in_flight_and_wrap() {
        let mut s = Session::new(SessionKey(1), "c".into(), 0);
        let mut j = Journal::off();
        let first = s.allocate_id().unwrap();
        assert_eq!(first.get(), 1);
        s.push_inflight(
            &mut j,
            Inflight {
                packet_id: first,
                delivery: delivery(1),
                state: OutState::AwaitPubAck,
            },
        );
        s.next_id = u16::MAX - 1;
        assert_eq!(s.allocate_id().unwrap().get(), u16::MAX);
        // Wraps past 0 and skips 1, which is still in flight.
        assert_eq!(s.allocate_id().unwrap().get(), 2);
        let pos = s.inflight_position(first).unwrap();
        s.remove_inflight(&mut j, pos);
        s.next_id = 0;
        assert_eq!(s.allocate_id().unwrap().get(), 1);
    }
}

//! Wills waiting for their delay to run out ([`Wills`]), and what a will becomes when it is
//! published.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bulwark_acl::Principal;
use bulwark_proto::{ProtocolVersion, PublishProperties, Will};

use crate::SessionKey;
use crate::message::Message;
use crate::persist::WillRecord;

/// A will waiting to be published.
#[derive(Debug)]
pub(crate) struct PendingWill {
    /// When it is due.
    pub(crate) at: Instant,
    pub(crate) will: Box<Will>,
    /// Who the will is published as: checked against the ACL in force when it is sent.
    pub(crate) principal: Arc<Principal>,
    pub(crate) client_id: Arc<str>,
}

impl PendingWill {
    /// The will of a connection lost at `now`, due after its delay.
    pub(crate) fn after_loss(
        version: ProtocolVersion,
        will: Box<Will>,
        principal: Arc<Principal>,
        client_id: Arc<str>,
        now: Instant,
    ) -> Self {
        let delay = will_delay(version, &will);
        let at = now
            .checked_add(Duration::from_secs(u64::from(delay)))
            .unwrap_or(now);
        Self {
            at,
            will,
            principal,
            client_id,
        }
    }

    /// What the durable store keeps of it.
    pub(crate) fn record(&self, version: ProtocolVersion) -> WillRecord {
        WillRecord {
            at: Some(self.at),
            delay: will_delay(version, &self.will),
            will: (*self.will).clone(),
            principal: self.principal.clone(),
        }
    }
}

/// Pending wills by session, and in the order they are due.
#[derive(Debug, Default)]
pub(crate) struct Wills {
    pending: HashMap<SessionKey, PendingWill>,
    due: BTreeSet<(Instant, SessionKey)>,
}

impl Wills {
    /// Schedules the will of `session` (replacing one it had).
    pub(crate) fn schedule(&mut self, session: SessionKey, will: PendingWill) {
        if let Some(old) = self.pending.remove(&session) {
            self.due.remove(&(old.at, session));
        }
        self.due.insert((will.at, session));
        self.pending.insert(session, will);
    }

    /// The will `session` has waiting.
    pub(crate) fn get(&self, session: SessionKey) -> Option<&PendingWill> {
        self.pending.get(&session)
    }

    /// Takes the will of `session` out (its client is back, or it is sent now).
    pub(crate) fn cancel(&mut self, session: SessionKey) -> Option<PendingWill> {
        let will = self.pending.remove(&session)?;
        self.due.remove(&(will.at, session));
        Some(will)
    }

    /// The next will due at or before `now`, taken out.
    pub(crate) fn take_due(&mut self, now: Instant) -> Option<(SessionKey, PendingWill)> {
        while let Some(&(at, session)) = self.due.first() {
            if at > now {
                return None;
            }
            self.due.pop_first();
            if let Some(will) = self.pending.remove(&session) {
                return Some((session, will));
            }
        }
        None
    }

    /// When the next will is due.
    pub(crate) fn next_due(&self) -> Option<Instant> {
        self.due.first().map(|&(at, _)| at)
    }
}

/// A will's delay: its Will Delay Interval in 5.0, none before.
pub(crate) fn will_delay(version: ProtocolVersion, will: &Will) -> u32 {
    if version.is_v5() {
        will.properties.will_delay_interval.unwrap_or(0)
    } else {
        0
    }
}

/// The message a will becomes, published at `now` as `publisher`.
pub(crate) fn will_message(will: Will, publisher: SessionKey, now: Instant) -> Message {
    let p = will.properties;
    let properties = PublishProperties {
        payload_format_indicator: p.payload_format_indicator,
        message_expiry_interval: None,
        topic_alias: None,
        response_topic: p.response_topic,
        correlation_data: p.correlation_data,
        user_properties: p.user_properties,
        subscription_identifiers: Vec::new(),
        content_type: p.content_type,
    };
    Message {
        topic: will.topic,
        payload: will.payload,
        qos: will.qos,
        retain: will.retain,
        properties,
        expires_at: Message::expiry_from(now, p.message_expiry_interval),
        publisher: Some(publisher),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests")]
mod tests {
    use super::*;
    use bulwark_proto::{QoS, TopicName};
    use bytes::Bytes;

    fn will(delay: Option<u32>) -> Box<Will> {
        let mut will = Will {
            topic: TopicName::new("w").unwrap(),
            payload: Bytes::from_static(b"gone"),
            qos: QoS::AtLeastOnce,
            retain: false,
            properties: bulwark_proto::WillProperties::default(),
        };
        will.properties.will_delay_interval = delay;
        will.properties.message_expiry_interval = Some(60);
        Box::new(will)
    }

    fn pending(version: ProtocolVersion, delay: Option<u32>, now: Instant) -> PendingWill {
        PendingWill::after_loss(version, will(delay), Arc::default(), "c".into(), now)
    }

    #[test]
    fn wills_are_due_in_order_of_their_delay_and_cancel_removes_them() {
        let now = Instant::now();
        let mut wills = Wills::default();
        wills.schedule(SessionKey(1), pending(ProtocolVersion::V5, Some(10), now));
        wills.schedule(SessionKey(2), pending(ProtocolVersion::V5, Some(5), now));
        // Before 5.0 there is no delay.
        wills.schedule(
            SessionKey(3),
            pending(ProtocolVersion::V3_1_1, Some(7), now),
        );
        wills.schedule(SessionKey(4), pending(ProtocolVersion::V5, Some(7), now));
        assert_eq!(wills.next_due(), Some(now));
        assert!(wills.cancel(SessionKey(4)).is_some());
        assert!(wills.cancel(SessionKey(4)).is_none());
        let at = |secs| now + Duration::from_secs(secs);
        assert_eq!(wills.take_due(now).map(|(k, _)| k), Some(SessionKey(3)));
        assert!(wills.take_due(at(4)).is_none());
        assert_eq!(wills.next_due(), Some(at(5)));
        assert_eq!(wills.take_due(at(20)).map(|(k, _)| k), Some(SessionKey(2)));
        assert_eq!(wills.get(SessionKey(1)).unwrap().at, at(10));
        assert_eq!(wills.take_due(at(20)).map(|(k, _)| k), Some(SessionKey(1)));
        assert!(wills.take_due(at(20)).is_none());
        assert_eq!(wills.next_due(), None);
    }

    #[test]
    fn a_will_becomes_a_message_with_its_expiry() {
        let now = Instant::now();
        let message = will_message(*will(Some(3)), SessionKey(9), now);
        assert_eq!(message.topic.as_str(), "w");
        assert_eq!(message.qos, QoS::AtLeastOnce);
        assert_eq!(message.publisher, Some(SessionKey(9)));
        assert_eq!(message.expires_at, Some(now + Duration::from_secs(60)));
        assert_eq!(message.properties.message_expiry_interval, None);
    }
}

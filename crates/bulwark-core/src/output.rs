//! What the engine hands the connection drivers ([`Output`]), and how the PUBLISH packets
//! among it are built: bodies shared by the subscribers that get a message in the same shape
//! ([`Bodies`]), and each connection's topic aliases ([`Aliases`]).

use std::collections::HashMap;
use std::num::NonZeroU16;
use std::sync::Arc;
use std::time::Instant;

use bulwark_proto::{Encoder, Packet, PacketId, Publish, PublishWithId, QoS, TopicName};

use crate::message::{Delivery, Message};

/// What the engine asks the connection driver to do. Small (24 bytes): outputs are moved
/// several times on their way to the socket, once per delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// Send this packet.
    Packet(Box<Packet>),
    /// Send this PUBLISH: a body shared with the message's other subscribers, with this
    /// connection's packet identifier and DUP flag.
    Publish(OutgoingPublish),
    /// The engine accepted the connection: the accepting CONNACK follows at once. The driver
    /// treats its client as authenticated from here on and holds it to this keep alive.
    /// Boxed: it comes once per connection, and every other output would be sized for it.
    Accepted(Box<Accepted>),
    /// Close the connection once everything before this has been sent.
    Close,
}

/// What the driver of a connection the engine accepted must know (see [`Output::Accepted`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accepted {
    /// The keep alive the client must honour, seconds (0: none): the Server Keep Alive when
    /// the engine sets one in the CONNACK, the client's own otherwise.
    pub keep_alive: u16,
    /// The client identifier the engine gave a client that sent none (`None`: it sent one).
    pub assigned_client_id: Option<Arc<str>>,
}

impl Output {
    /// The packet this output sends, as an owned value (a shared PUBLISH is copied); `None`
    /// for [`Output::Accepted`] and [`Output::Close`]. For tests and tools: drivers encode [`OutgoingPublish::encodable`].
    pub fn into_packet(self) -> Option<Packet> {
        match self {
            Self::Packet(packet) => Some(*packet),
            Self::Publish(publish) => Some(Packet::Publish(publish.to_publish())),
            Self::Accepted(_) | Self::Close => None,
        }
    }
}

/// A PUBLISH on its way to one subscriber.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutgoingPublish {
    /// Everything but the packet identifier and DUP flag (whose values there are unset).
    pub publish: Arc<Publish>,
    /// Present exactly when the QoS is 1 or 2.
    pub packet_id: Option<PacketId>,
    /// Set on a re-delivery.
    pub dup: bool,
}

impl OutgoingPublish {
    /// What to hand the encoder.
    pub fn encodable(&self) -> PublishWithId<'_> {
        PublishWithId {
            publish: &self.publish,
            packet_id: self.packet_id,
            dup: self.dup,
        }
    }

    /// An owned copy with this subscriber's packet identifier and DUP flag.
    pub fn to_publish(&self) -> Publish {
        let mut publish = (*self.publish).clone();
        publish.packet_id = self.packet_id;
        publish.dup = self.dup;
        publish
    }
}

/// A PUBLISH body built during one [`crate::Broker::publish_message`], shared by every subscriber
/// that gets it in the same shape.
#[derive(Debug)]
struct SharedBody {
    message: Arc<Message>,
    qos: QoS,
    retain: bool,
    publish: Arc<Publish>,
    /// Encoded size with a packet identifier where the QoS needs one, by version: index 0 for
    /// 3.1/3.1.1, 1 for 5.0; computed when first needed.
    sizes: [Option<u64>; 2],
}

/// The bodies built during one [`crate::Broker::publish_message`]; empty outside it.
#[derive(Debug, Default)]
pub(crate) struct Bodies {
    bodies: Vec<SharedBody>,
}

impl Bodies {
    /// The body for `delivery` and its encoded size for `encoder`'s version: one shared with an
    /// earlier subscriber of the same message in the same shape where there is one. A delivery
    /// with Subscription Identifiers gets a body of its own.
    #[inline]
    pub(crate) fn body_for(
        &mut self,
        delivery: &Delivery,
        encoder: &Encoder,
        now: Instant,
    ) -> (Arc<Publish>, u64) {
        let version = usize::from(encoder.version().is_v5());
        let size_of = |publish: &Publish| {
            let placeholder = (delivery.qos != QoS::AtMostOnce)
                .then(|| PacketId::new(1))
                .flatten();
            let with = PublishWithId {
                publish,
                packet_id: placeholder,
                dup: false,
            };
            encoder.encoded_len(&with).unwrap_or(u64::MAX)
        };
        if !delivery.subscription_ids.is_empty() {
            let publish = build_publish(delivery, now);
            let size = size_of(&publish);
            return (Arc::new(publish), size);
        }
        let cache = &mut self.bodies;
        let found = cache.iter().position(|b| {
            Arc::ptr_eq(&b.message, &delivery.message)
                && b.qos == delivery.qos
                && b.retain == delivery.retain
        });
        let at = found.unwrap_or_else(|| {
            cache.push(SharedBody {
                message: delivery.message.clone(),
                qos: delivery.qos,
                retain: delivery.retain,
                publish: Arc::new(build_publish(delivery, now)),
                sizes: [None; 2],
            });
            cache.len() - 1
        });
        let Some(body) = cache.get_mut(at) else {
            let publish = build_publish(delivery, now);
            let size = size_of(&publish);
            return (Arc::new(publish), size);
        };
        let size = match body.sizes.get(version).copied().flatten() {
            Some(size) => size,
            None => {
                let size = size_of(&body.publish);
                if let Some(slot) = body.sizes.get_mut(version) {
                    *slot = Some(size);
                }
                size
            }
        };
        (body.publish.clone(), size)
    }

    /// Forgets the bodies of the message just published: the outputs alone hold them now.
    #[inline]
    pub(crate) fn clear(&mut self) {
        self.bodies.clear();
    }
}

/// The PUBLISH for a delivery, without packet identifier or alias.
pub(crate) fn build_publish(delivery: &Delivery, now: Instant) -> Publish {
    let message = &delivery.message;
    let mut properties = message.properties.clone();
    properties.message_expiry_interval = message.remaining_expiry(now);
    properties.subscription_identifiers = delivery.subscription_ids.clone();
    Publish {
        dup: false,
        qos: delivery.qos,
        retain: delivery.retain,
        topic: message.topic.clone(),
        packet_id: None,
        properties,
        payload: message.payload.clone(),
    }
}

/// Topic alias mappings of one connection, both ways.
#[derive(Debug, Default)]
pub(crate) struct Aliases {
    /// Client to broker: alias to topic.
    inbound: HashMap<u16, TopicName>,
    /// Broker to client: topic to alias and when it was last used.
    outbound: HashMap<Box<str>, (NonZeroU16, u64)>,
    clock: u64,
}

impl Aliases {
    /// The topic a client's alias stands for.
    #[inline]
    pub(crate) fn inbound(&self, alias: u16) -> Option<&TopicName> {
        self.inbound.get(&alias)
    }

    /// The client set `alias` to stand for `topic`.
    pub(crate) fn set_inbound(&mut self, alias: u16, topic: TopicName) {
        self.inbound.insert(alias, topic);
    }

    /// Broker-to-client topic aliases: a topic seen before is sent as its alias alone; a new
    /// topic takes a free alias, or the least recently used one once all are taken.
    pub(crate) fn apply_outbound(&mut self, max: u16, publish: &mut Publish) {
        let max = usize::from(max);
        let aliases = self;
        aliases.clock += 1;
        let clock = aliases.clock;
        let out = &mut aliases.outbound;
        if let Some((alias, used)) = out.get_mut(publish.topic.as_str()) {
            *used = clock;
            publish.properties.topic_alias = Some(*alias);
            publish.topic = TopicName::empty_for_alias();
            return;
        }
        let alias = if out.len() < max {
            u16::try_from(out.len() + 1).ok().and_then(NonZeroU16::new)
        } else {
            let oldest = out
                .iter()
                .min_by_key(|(_, (_, used))| *used)
                .map(|(topic, (alias, _))| (topic.clone(), *alias));
            oldest.map(|(topic, alias)| {
                out.remove(&topic);
                alias
            })
        };
        if let Some(alias) = alias {
            out.insert(publish.topic.as_str().into(), (alias, clock));
            publish.properties.topic_alias = Some(alias);
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests")]
mod tests {
    use super::*;
    use bulwark_proto::PublishProperties;
    use bytes::Bytes;

    fn publish(topic: &str) -> Publish {
        Publish::new(TopicName::new(topic).unwrap(), Bytes::from_static(b"x"))
    }

    fn delivery(
        message: &Arc<Message>,
        qos: QoS,
        ids: Vec<bulwark_proto::SubscriptionId>,
    ) -> Delivery {
        Delivery {
            message: message.clone(),
            qos,
            retain: false,
            subscription_ids: ids,
            group: None,
            seq: 0,
        }
    }

    #[test]
    fn outbound_aliases_reuse_known_topics_and_replace_the_least_recently_used() {
        let mut aliases = Aliases::default();
        let mut send = |topic: &str| {
            let mut p = publish(topic);
            aliases.apply_outbound(2, &mut p);
            (
                p.topic.as_str().to_owned(),
                p.properties.topic_alias.map(NonZeroU16::get),
            )
        };
        assert_eq!(send("a"), ("a".to_owned(), Some(1)));
        assert_eq!(send("b"), ("b".to_owned(), Some(2)));
        // Known: the alias alone.
        assert_eq!(send("a"), (String::new(), Some(1)));
        // All taken: `b` was used least recently.
        assert_eq!(send("c"), ("c".to_owned(), Some(2)));
        assert_eq!(send("b"), ("b".to_owned(), Some(1)));
    }

    #[test]
    fn subscribers_of_one_shape_share_a_body() {
        let message = Arc::new(Message {
            topic: TopicName::new("t").unwrap(),
            payload: Bytes::from_static(b"x"),
            qos: QoS::AtLeastOnce,
            retain: false,
            properties: PublishProperties::default(),
            expires_at: None,
            publisher: None,
        });
        let now = Instant::now();
        let encoder = Encoder::new(bulwark_proto::ProtocolVersion::V5);
        let mut bodies = Bodies::default();
        let (a, size_a) =
            bodies.body_for(&delivery(&message, QoS::AtLeastOnce, vec![]), &encoder, now);
        let (b, size_b) =
            bodies.body_for(&delivery(&message, QoS::AtLeastOnce, vec![]), &encoder, now);
        let (c, _) = bodies.body_for(&delivery(&message, QoS::AtMostOnce, vec![]), &encoder, now);
        let id = bulwark_proto::SubscriptionId::new(3).into_iter().collect();
        let (d, _) = bodies.body_for(&delivery(&message, QoS::AtLeastOnce, id), &encoder, now);
        assert!(Arc::ptr_eq(&a, &b));
        assert_eq!(size_a, size_b);
        assert!(!Arc::ptr_eq(&a, &c));
        assert!(!Arc::ptr_eq(&a, &d));
        bodies.clear();
        let (e, _) = bodies.body_for(&delivery(&message, QoS::AtLeastOnce, vec![]), &encoder, now);
        assert!(!Arc::ptr_eq(&a, &e));
    }
}

//! The in-memory harness: the engine driven packet by packet with a controlled clock
//! (DESIGN.md rule 9). Session, QoS, expiry and will timing are checked here, where time can be
//! moved by hand.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "tests"
)]

use std::collections::HashMap;
use std::num::{NonZeroU16, NonZeroU32};
use std::time::{Duration, Instant};

use bulwark_core::{
    Broker, BrokerConfig, ConnectionId, PacketLimits, RetainedLimits, SessionLimits,
};
use bulwark_proto::{
    ClientId, Connect, Disconnect, Packet, PacketId, ProtocolVersion, PubAck, PubComp, PubRec,
    PubRel, Publish, QoS, ReasonCode, RetainHandling, Subscribe, SubscriptionId,
    SubscriptionOptions, TopicFilter, TopicName, Unsubscribe, Will,
};
use bytes::Bytes;

/// The engine's outputs with every packet owned, so that tests can match on them.
#[derive(Debug, Clone, PartialEq, Eq)]
#[allow(clippy::large_enum_variant, reason = "test code")]
enum Output {
    Packet(Packet),
    Close,
}

impl From<bulwark_core::Output> for Output {
    fn from(out: bulwark_core::Output) -> Self {
        match out.into_packet() {
            Some(packet) => Self::Packet(packet),
            None => Self::Close,
        }
    }
}

struct Harness {
    broker: Broker,
    now: Instant,
    inbox: HashMap<u64, Vec<Output>>,
    /// What a durable store holds: every round's operations, committed as the server does.
    image: bulwark_core::Image,
}

fn pid(n: u16) -> PacketId {
    PacketId::new(n).unwrap()
}

fn connect(version: ProtocolVersion, id: &str) -> Connect {
    let mut c = Connect::new(version, ClientId::new(id).unwrap());
    c.keep_alive = 60;
    c
}

fn publish(topic: &str, payload: &str, qos: QoS, id: Option<u16>) -> Publish {
    let mut p = Publish::new(
        TopicName::new(topic).unwrap(),
        Bytes::from(payload.to_owned()),
    );
    p.qos = qos;
    p.packet_id = id.map(pid);
    p
}

fn subscribe(id: u16, filter: &str, options: SubscriptionOptions) -> Subscribe {
    Subscribe {
        packet_id: pid(id),
        properties: Default::default(),
        subscriptions: vec![bulwark_proto::Subscription {
            filter: TopicFilter::new(filter).unwrap(),
            options,
        }],
    }
}

impl Harness {
    fn new(config: BrokerConfig) -> Self {
        let now = Instant::now();
        Self {
            broker: Broker::new(config, now),
            now,
            inbox: HashMap::new(),
            image: bulwark_core::Image::new(),
        }
    }

    /// A broker that journals for a durable store.
    fn durable() -> Self {
        let mut h = Self::default();
        h.broker.enable_journal();
        h
    }

    /// The broker stops at once (what was committed is all that is left), the machine is
    /// down for `secs`, and a new broker starts from the store.
    fn crash_and_restart(&mut self, secs: u64) {
        self.image.apply_all(self.broker.take_store_ops());
        self.now += Duration::from_secs(secs);
        let config = self.broker.config().clone();
        let mut broker = Broker::new(config, self.now);
        broker.restore(self.image.restored(), self.now);
        self.broker = broker;
        self.inbox.clear();
        self.collect();
    }

    fn default() -> Self {
        Self::new(BrokerConfig {
            sys_interval: None,
            ..BrokerConfig::default()
        })
    }

    fn collect(&mut self) {
        self.image.apply_all(self.broker.take_store_ops());
        while let Some((conn, out)) = self.broker.poll_output() {
            // The typed acceptance is for the driver: the tests read the CONNACK after it.
            if matches!(out, bulwark_core::Output::Accepted(_)) {
                continue;
            }
            self.inbox.entry(conn.0).or_default().push(out.into());
        }
    }

    fn connect(&mut self, conn: u64, c: Connect) -> bulwark_proto::ConnAck {
        self.broker.handle_connect(ConnectionId(conn), c, self.now);
        self.collect();
        let out = self.take(conn);
        match out.first() {
            Some(Output::Packet(Packet::ConnAck(ack))) => {
                let ack = (**ack).clone();
                // Keep whatever followed the CONNACK (resent or queued messages).
                self.inbox.insert(conn, out.into_iter().skip(1).collect());
                ack
            }
            other => panic!("expected CONNACK, got {other:?}"),
        }
    }

    fn send(&mut self, conn: u64, packet: Packet) {
        self.broker
            .handle_packet(ConnectionId(conn), packet, self.now);
        self.collect();
    }

    fn lose(&mut self, conn: u64) {
        self.broker
            .handle_connection_lost(ConnectionId(conn), self.now);
        self.collect();
    }

    fn advance(&mut self, secs: u64) {
        self.now += Duration::from_secs(secs);
        if self.broker.poll_timeout().is_some_and(|t| t <= self.now) {
            self.broker.handle_timeout(self.now);
        }
        self.collect();
    }

    fn take(&mut self, conn: u64) -> Vec<Output> {
        self.inbox.remove(&conn).unwrap_or_default()
    }

    fn publishes(&mut self, conn: u64) -> Vec<Publish> {
        self.take(conn)
            .into_iter()
            .filter_map(|o| match o {
                Output::Packet(Packet::Publish(p)) => Some(p),
                _ => None,
            })
            .collect()
    }

    fn sub(&mut self, conn: u64, filter: &str, qos: QoS) {
        self.send(
            conn,
            Packet::Subscribe(subscribe(1, filter, SubscriptionOptions::qos(qos))),
        );
        let out = self.take(conn);
        assert!(
            matches!(out.first(), Some(Output::Packet(Packet::SubAck(_)))),
            "{out:?}"
        );
        // Retained messages that followed the SUBACK stay for the test to read.
        self.inbox.insert(conn, out.into_iter().skip(1).collect());
    }
}

fn v5_persistent(id: &str, expiry: u32) -> Connect {
    let mut c = connect(ProtocolVersion::V5, id);
    c.clean_start = false;
    c.properties.session_expiry_interval = Some(expiry);
    c
}

#[test]
fn qos2_resend_before_pubrel_is_not_delivered_twice() {
    let mut h = Harness::default();
    h.connect(1, connect(ProtocolVersion::V5, "sub"));
    h.sub(1, "t", QoS::ExactlyOnce);
    h.connect(2, connect(ProtocolVersion::V5, "pub"));
    h.send(
        2,
        Packet::Publish(publish("t", "once", QoS::ExactlyOnce, Some(7))),
    );
    let mut again = publish("t", "once", QoS::ExactlyOnce, Some(7));
    again.dup = true;
    h.send(2, Packet::Publish(again));
    let acks = h.take(2);
    assert_eq!(
        acks.len(),
        2,
        "each PUBLISH is answered with PUBREC: {acks:?}"
    );
    assert!(
        acks.iter()
            .all(|o| matches!(o, Output::Packet(Packet::PubRec(r)) if r.packet_id == pid(7)))
    );
    assert_eq!(h.publishes(1).len(), 1, "delivered exactly once");
    h.send(2, Packet::PubRel(PubRel::new(pid(7))));
    assert!(matches!(
        h.take(2).as_slice(),
        [Output::Packet(Packet::PubComp(c))] if c.reason_code == ReasonCode::Success
    ));
    // After PUBREL the identifier is free: a new message with it is a new message.
    h.send(
        2,
        Packet::Publish(publish("t", "twice", QoS::ExactlyOnce, Some(7))),
    );
    assert_eq!(h.publishes(1).len(), 1);
    // PUBREL for an unknown identifier: PUBCOMP 0x92.
    h.send(2, Packet::PubRel(PubRel::new(pid(99))));
    assert!(h.take(2).iter().any(|o| matches!(o,
        Output::Packet(Packet::PubComp(c)) if c.reason_code == ReasonCode::PacketIdentifierNotFound)));
}

#[test]
fn qos2_outbound_flow_and_pubrec_error_ends_the_exchange() {
    let mut h = Harness::default();
    h.connect(1, connect(ProtocolVersion::V5, "sub"));
    h.sub(1, "t", QoS::ExactlyOnce);
    h.connect(2, connect(ProtocolVersion::V5, "pub"));
    h.send(
        2,
        Packet::Publish(publish("t", "a", QoS::ExactlyOnce, Some(1))),
    );
    let p = h.publishes(1).remove(0);
    let id = p.packet_id.unwrap();
    h.send(1, Packet::PubRec(PubRec::new(id)));
    assert!(
        matches!(h.take(1).as_slice(), [Output::Packet(Packet::PubRel(r))] if r.packet_id == id)
    );
    h.send(1, Packet::PubComp(PubComp::new(id)));
    assert!(h.take(1).is_empty());
    // A PUBREC with an error code: no PUBREL follows.
    h.send(
        2,
        Packet::Publish(publish("t", "b", QoS::ExactlyOnce, Some(2))),
    );
    let id = h.publishes(1).remove(0).packet_id.unwrap();
    let mut rec = PubRec::new(id);
    rec.reason_code = ReasonCode::UnspecifiedError;
    h.send(1, Packet::PubRec(rec));
    assert!(h.take(1).is_empty());
}

#[test]
fn inflight_window_follows_the_clients_receive_maximum() {
    let mut h = Harness::default();
    let mut c = connect(ProtocolVersion::V5, "slow");
    c.properties.receive_maximum = NonZeroU16::new(2);
    h.connect(1, c);
    h.sub(1, "t", QoS::AtLeastOnce);
    h.connect(2, connect(ProtocolVersion::V5, "pub"));
    for i in 1..=5u16 {
        h.send(
            2,
            Packet::Publish(publish("t", &i.to_string(), QoS::AtLeastOnce, Some(i))),
        );
    }
    let first = h.publishes(1);
    assert_eq!(first.len(), 2, "only Receive Maximum messages in flight");
    h.send(1, Packet::PubAck(PubAck::new(first[0].packet_id.unwrap())));
    let next = h.publishes(1);
    assert_eq!(next.len(), 1);
    assert_eq!(
        &next[0].payload[..],
        b"3",
        "queued messages keep their order"
    );
}

#[test]
fn receive_maximum_exceeded_disconnects_with_0x93() {
    let mut h = Harness::new(BrokerConfig {
        sessions: SessionLimits {
            receive_maximum: 2,
            ..SessionLimits::default()
        },
        sys_interval: None,
        ..BrokerConfig::default()
    });
    h.connect(1, connect(ProtocolVersion::V5, "p"));
    for i in 1..=2 {
        h.send(
            1,
            Packet::Publish(publish("t", "x", QoS::ExactlyOnce, Some(i))),
        );
    }
    assert!(
        h.take(1)
            .iter()
            .all(|o| matches!(o, Output::Packet(Packet::PubRec(_))))
    );
    h.send(
        1,
        Packet::Publish(publish("t", "x", QoS::ExactlyOnce, Some(3))),
    );
    let out = h.take(1);
    assert!(
        matches!(out.as_slice(),
        [Output::Packet(Packet::Disconnect(d)), Output::Close] if d.reason_code == ReasonCode::ReceiveMaximumExceeded),
        "{out:?}"
    );
    // A flood past a limit is abuse the server counts against the client's address.
    assert_eq!(
        h.broker.poll_offence(),
        Some((ConnectionId(1), ReasonCode::ReceiveMaximumExceeded))
    );
    assert_eq!(h.broker.poll_offence(), None);
}

#[test]
fn session_resume_resends_inflight_with_dup_then_the_queue() {
    let mut h = Harness::default();
    h.connect(1, v5_persistent("s", 3600));
    h.sub(1, "t", QoS::AtLeastOnce);
    h.connect(2, connect(ProtocolVersion::V5, "pub"));
    h.send(
        2,
        Packet::Publish(publish("t", "first", QoS::AtLeastOnce, Some(1))),
    );
    let sent = h.publishes(1);
    assert_eq!(sent.len(), 1);
    assert!(!sent[0].dup);
    h.lose(1);
    h.send(
        2,
        Packet::Publish(publish("t", "second", QoS::AtLeastOnce, Some(2))),
    );
    h.advance(10);
    let ack = h.connect(3, v5_persistent("s", 3600));
    assert!(ack.session_present);
    let resent = h.publishes(3);
    assert_eq!(resent.len(), 2, "{resent:?}");
    assert!(
        resent[0].dup,
        "the unacknowledged message is resent with DUP"
    );
    assert_eq!(resent[0].packet_id, sent[0].packet_id);
    assert_eq!(&resent[0].payload[..], b"first");
    assert!(!resent[1].dup);
    assert_eq!(&resent[1].payload[..], b"second");
}

#[test]
fn qos2_awaiting_pubcomp_resumes_with_pubrel() {
    let mut h = Harness::default();
    h.connect(1, v5_persistent("s", 3600));
    h.sub(1, "t", QoS::ExactlyOnce);
    h.connect(2, connect(ProtocolVersion::V5, "pub"));
    h.send(
        2,
        Packet::Publish(publish("t", "x", QoS::ExactlyOnce, Some(1))),
    );
    let id = h.publishes(1)[0].packet_id.unwrap();
    h.send(1, Packet::PubRec(PubRec::new(id)));
    h.take(1);
    h.lose(1);
    h.connect(3, v5_persistent("s", 3600));
    let out = h.take(3);
    assert!(
        matches!(out.as_slice(), [Output::Packet(Packet::PubRel(r))] if r.packet_id == id),
        "{out:?}"
    );
}

#[test]
fn parked_session_expires_on_time() {
    let mut h = Harness::default();
    h.connect(1, v5_persistent("s", 30));
    h.sub(1, "t", QoS::AtLeastOnce);
    h.lose(1);
    assert_eq!(h.broker.sessions(), 1);
    h.advance(29);
    assert_eq!(h.broker.sessions(), 1);
    h.advance(1);
    assert_eq!(h.broker.sessions(), 0);
    assert_eq!(h.broker.subscription_count(), 0);
    assert!(!h.connect(2, v5_persistent("s", 30)).session_present);
}

#[test]
fn clean_start_discards_the_old_session() {
    let mut h = Harness::default();
    h.connect(1, v5_persistent("s", 300));
    h.sub(1, "t", QoS::AtLeastOnce);
    h.lose(1);
    let ack = h.connect(2, connect(ProtocolVersion::V5, "s"));
    assert!(!ack.session_present);
    assert!(h.broker.session_subscriptions("s").is_empty());
}

#[test]
fn session_expiry_is_capped_and_announced() {
    let mut h = Harness::new(BrokerConfig {
        sessions: SessionLimits {
            max_session_expiry_interval: 100,
            ..SessionLimits::default()
        },
        sys_interval: None,
        ..BrokerConfig::default()
    });
    let ack = h.connect(1, v5_persistent("s", 5000));
    assert_eq!(ack.properties.session_expiry_interval, Some(100));
    // 3.1.1 Clean Session 0 never expires in the protocol; the cap applies.
    let mut c = connect(ProtocolVersion::V3_1_1, "old");
    c.clean_start = false;
    h.connect(2, c);
    h.lose(2);
    h.advance(99);
    assert!(h.broker.sessions() >= 1);
    h.advance(1);
    assert!(h.broker.session_subscriptions("old").is_empty());
}

#[test]
fn takeover_closes_the_old_connection_with_0x8e() {
    let mut h = Harness::default();
    h.connect(1, v5_persistent("same", 300));
    h.sub(1, "t", QoS::AtLeastOnce);
    let ack = h.connect(2, v5_persistent("same", 300));
    assert!(ack.session_present);
    let old = h.take(1);
    assert!(
        matches!(old.as_slice(),
        [Output::Packet(Packet::Disconnect(d)), Output::Close] if d.reason_code == ReasonCode::SessionTakenOver),
        "{old:?}"
    );
    assert_eq!(h.broker.connected(), 1);
    assert_eq!(h.broker.session_subscriptions("same").len(), 1);
    // Being taken over is not the old client's fault.
    assert_eq!(h.broker.poll_offence(), None);
}

#[test]
fn a_client_id_belongs_to_its_user_live_or_stored() {
    let as_user = |user: Option<&str>| {
        let mut c = v5_persistent("owned", 300);
        c.username = user.map(|u| bulwark_proto::MqttString::new(u).unwrap());
        c
    };
    let mut h = Harness::default();
    assert_eq!(
        h.connect(1, as_user(Some("alice"))).reason_code,
        ReasonCode::Success
    );
    h.sub(1, "t", QoS::AtLeastOnce);
    // Another user, and an anonymous client, cannot take the live connection over.
    for (conn, other) in [(2, Some("bob")), (3, None)] {
        let ack = h.connect(conn, as_user(other));
        assert_eq!(ack.reason_code, ReasonCode::NotAuthorized, "{other:?}");
        assert!(!ack.session_present);
    }
    assert!(h.take(1).is_empty(), "alice's connection was left alone");
    assert_eq!(h.broker.connected(), 1);
    // Nor resume the stored session once alice is gone.
    h.lose(1);
    let ack = h.connect(4, as_user(Some("bob")));
    assert_eq!(ack.reason_code, ReasonCode::NotAuthorized);
    assert_eq!(h.broker.session_subscriptions("owned").len(), 1);
    // Alice herself resumes it.
    let ack = h.connect(5, as_user(Some("alice")));
    assert_eq!(ack.reason_code, ReasonCode::Success);
    assert!(ack.session_present);
    // Once the session is gone for good, the identifier is free for anyone.
    let mut clean = as_user(Some("alice"));
    clean.properties.session_expiry_interval = None;
    h.connect(6, clean);
    h.send(6, Packet::Disconnect(Disconnect::new(ReasonCode::Success)));
    let ack = h.connect(7, as_user(Some("bob")));
    assert_eq!(ack.reason_code, ReasonCode::Success);
    assert!(!ack.session_present);
}

#[test]
fn will_is_sent_on_loss_not_on_normal_disconnect_and_on_0x04() {
    fn with_will(id: &str) -> Connect {
        let mut c = connect(ProtocolVersion::V5, id);
        c.will = Some(Will {
            topic: TopicName::new("wills").unwrap(),
            payload: Bytes::from_static(b"gone"),
            qos: QoS::AtLeastOnce,
            retain: false,
            properties: Default::default(),
        });
        c
    }
    let mut h = Harness::default();
    h.connect(9, connect(ProtocolVersion::V5, "watcher"));
    h.sub(9, "wills", QoS::AtLeastOnce);
    h.connect(1, with_will("a"));
    h.lose(1);
    assert_eq!(h.publishes(9).len(), 1, "abnormal loss sends the will");
    h.connect(2, with_will("b"));
    h.send(2, Packet::Disconnect(Disconnect::new(ReasonCode::Success)));
    assert!(
        h.publishes(9).is_empty(),
        "normal disconnection discards the will"
    );
    h.connect(3, with_will("c"));
    h.send(
        3,
        Packet::Disconnect(Disconnect::new(ReasonCode::DisconnectWithWillMessage)),
    );
    assert_eq!(h.publishes(9).len(), 1, "0x04 sends the will");
}

#[test]
fn will_delay_waits_and_a_resumed_session_cancels_it() {
    let mut h = Harness::default();
    h.connect(9, connect(ProtocolVersion::V5, "watcher"));
    h.sub(9, "wills", QoS::AtMostOnce);
    let will = Will {
        topic: TopicName::new("wills").unwrap(),
        payload: Bytes::from_static(b"late"),
        qos: QoS::AtMostOnce,
        retain: false,
        properties: bulwark_proto::WillProperties {
            will_delay_interval: Some(10),
            content_type: bulwark_proto::MqttString::new("text/plain").ok(),
            ..Default::default()
        },
    };
    let mut c = v5_persistent("d", 3600);
    c.will = Some(will.clone());
    h.connect(1, c.clone());
    h.lose(1);
    h.advance(9);
    assert!(h.publishes(9).is_empty());
    h.advance(1);
    let got = h.publishes(9);
    assert_eq!(got.len(), 1, "sent after the Will Delay Interval");
    assert_eq!(
        got[0].properties.content_type.as_ref().unwrap().as_str(),
        "text/plain"
    );

    // Reconnecting before the delay ends cancels it.
    h.connect(2, c);
    h.lose(2);
    h.advance(5);
    h.connect(3, v5_persistent("d", 3600));
    h.advance(20);
    assert!(h.publishes(9).is_empty());
}

#[test]
fn will_goes_when_the_session_ends_before_the_delay() {
    let mut h = Harness::default();
    h.connect(9, connect(ProtocolVersion::V5, "watcher"));
    h.sub(9, "wills", QoS::AtMostOnce);
    let mut c = v5_persistent("d", 5);
    c.will = Some(Will {
        topic: TopicName::new("wills").unwrap(),
        payload: Bytes::from_static(b"x"),
        qos: QoS::AtMostOnce,
        retain: false,
        properties: bulwark_proto::WillProperties {
            will_delay_interval: Some(60),
            ..Default::default()
        },
    });
    h.connect(1, c);
    h.lose(1);
    h.advance(5);
    assert_eq!(
        h.publishes(9).len(),
        1,
        "session expiry (5 s) comes before the delay (60 s)"
    );
}

#[test]
fn message_expiry_counts_down_while_queued_and_expired_messages_are_dropped() {
    let mut h = Harness::default();
    h.connect(1, v5_persistent("s", 3600));
    h.sub(1, "t", QoS::AtLeastOnce);
    h.lose(1);
    h.connect(2, connect(ProtocolVersion::V5, "pub"));
    let mut short = publish("t", "short", QoS::AtLeastOnce, Some(1));
    short.properties.message_expiry_interval = Some(5);
    let mut long = publish("t", "long", QoS::AtLeastOnce, Some(2));
    long.properties.message_expiry_interval = Some(100);
    h.send(2, Packet::Publish(short));
    h.send(2, Packet::Publish(long));
    h.advance(30);
    h.connect(3, v5_persistent("s", 3600));
    let got = h.publishes(3);
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(&got[0].payload[..], b"long");
    assert_eq!(got[0].properties.message_expiry_interval, Some(70));
    assert_eq!(h.broker.stats().messages.expired, 1);
}

#[test]
fn overlapping_subscriptions_give_one_copy_with_every_identifier() {
    let mut h = Harness::default();
    h.connect(1, connect(ProtocolVersion::V5, "s"));
    let mut s1 = subscribe(1, "a/+", SubscriptionOptions::qos(QoS::AtMostOnce));
    s1.properties.subscription_identifier = SubscriptionId::new(11);
    let mut s2 = subscribe(2, "a/#", SubscriptionOptions::qos(QoS::AtLeastOnce));
    s2.properties.subscription_identifier = SubscriptionId::new(22);
    h.send(1, Packet::Subscribe(s1));
    h.send(1, Packet::Subscribe(s2));
    h.take(1);
    h.connect(2, connect(ProtocolVersion::V5, "p"));
    h.send(
        2,
        Packet::Publish(publish("a/b", "x", QoS::ExactlyOnce, Some(1))),
    );
    let got = h.publishes(1);
    assert_eq!(got.len(), 1);
    assert_eq!(
        got[0].qos,
        QoS::AtLeastOnce,
        "highest granted QoS, at most the published"
    );
    let mut ids: Vec<u32> = got[0]
        .properties
        .subscription_identifiers
        .iter()
        .map(|i| i.get())
        .collect();
    ids.sort_unstable();
    assert_eq!(ids, vec![11, 22]);
}

#[test]
fn no_local_and_retain_as_published() {
    let mut h = Harness::default();
    h.connect(1, connect(ProtocolVersion::V5, "me"));
    let mut opts = SubscriptionOptions::qos(QoS::AtMostOnce);
    opts.no_local = true;
    h.send(1, Packet::Subscribe(subscribe(1, "own", opts)));
    let mut rap = SubscriptionOptions::qos(QoS::AtMostOnce);
    rap.retain_as_published = true;
    h.send(1, Packet::Subscribe(subscribe(2, "rap", rap)));
    h.send(
        1,
        Packet::Subscribe(subscribe(
            3,
            "plain",
            SubscriptionOptions::qos(QoS::AtMostOnce),
        )),
    );
    h.take(1);
    h.send(
        1,
        Packet::Publish(publish("own", "x", QoS::AtMostOnce, None)),
    );
    assert!(h.publishes(1).is_empty(), "No Local");
    h.connect(2, connect(ProtocolVersion::V5, "other"));
    let mut p = publish("rap", "r", QoS::AtMostOnce, None);
    p.retain = true;
    h.send(2, Packet::Publish(p));
    let mut p = publish("plain", "r", QoS::AtMostOnce, None);
    p.retain = true;
    h.send(2, Packet::Publish(p));
    let got = h.publishes(1);
    assert_eq!(got.len(), 2);
    assert!(got[0].retain, "Retain As Published keeps the flag");
    assert!(
        !got[1].retain,
        "live delivery clears it otherwise [MQTT-3.3.1-12]"
    );
}

#[test]
fn retained_messages_set_replace_delete_and_retain_handling() {
    let mut h = Harness::default();
    h.connect(1, connect(ProtocolVersion::V5, "p"));
    let mut p = publish("r/1", "v1", QoS::AtMostOnce, None);
    p.retain = true;
    h.send(1, Packet::Publish(p.clone()));
    p.payload = Bytes::from_static(b"v2");
    h.send(1, Packet::Publish(p.clone()));
    let mut q = publish("r/2", "other", QoS::AtMostOnce, None);
    q.retain = true;
    h.send(1, Packet::Publish(q));
    assert_eq!(h.broker.retained_count(), 2);

    h.connect(2, connect(ProtocolVersion::V5, "s"));
    h.sub(2, "r/+", QoS::AtLeastOnce);
    let got = h.publishes(2);
    assert_eq!(got.len(), 2);
    assert!(got.iter().all(|m| m.retain));
    assert_eq!(&got[0].payload[..], b"v2", "replaced");

    // Retain Handling 1: only for a new subscription.
    let mut opts = SubscriptionOptions::qos(QoS::AtMostOnce);
    opts.retain_handling = RetainHandling::SendIfNew;
    h.send(2, Packet::Subscribe(subscribe(5, "r/1", opts)));
    assert_eq!(h.publishes(2).len(), 1);
    h.send(2, Packet::Subscribe(subscribe(6, "r/1", opts)));
    assert!(h.publishes(2).is_empty(), "existing subscription: none");
    opts.retain_handling = RetainHandling::DoNotSend;
    h.send(2, Packet::Subscribe(subscribe(7, "r/2", opts)));
    assert!(h.publishes(2).is_empty(), "Retain Handling 2: none");

    p.payload = Bytes::new();
    h.send(1, Packet::Publish(p));
    assert_eq!(h.broker.retained_count(), 1, "empty payload deletes");
}

#[test]
fn retained_limit_refuses_new_topics_with_quota_exceeded() {
    let mut h = Harness::new(BrokerConfig {
        retained: RetainedLimits {
            max_retained_messages: 1,
            ..RetainedLimits::default()
        },
        sys_interval: None,
        ..BrokerConfig::default()
    });
    h.connect(1, connect(ProtocolVersion::V5, "p"));
    let mut a = publish("a", "1", QoS::AtLeastOnce, Some(1));
    a.retain = true;
    h.send(1, Packet::Publish(a.clone()));
    let mut b = publish("b", "1", QoS::AtLeastOnce, Some(2));
    b.retain = true;
    h.send(1, Packet::Publish(b));
    a.packet_id = Some(pid(3));
    h.send(1, Packet::Publish(a));
    let codes: Vec<ReasonCode> = h
        .take(1)
        .into_iter()
        .filter_map(|o| match o {
            Output::Packet(Packet::PubAck(ack)) => Some(ack.reason_code),
            _ => None,
        })
        .collect();
    assert_eq!(
        codes,
        vec![
            ReasonCode::NoMatchingSubscribers,
            ReasonCode::QuotaExceeded,
            ReasonCode::NoMatchingSubscribers
        ],
        "replacing an existing retained topic is still allowed"
    );
    assert_eq!(h.broker.stats().retained_refused, 1);
}

#[test]
fn dollar_topics_are_not_matched_by_leading_wildcards() {
    let mut h = Harness::default();
    h.connect(1, connect(ProtocolVersion::V5, "s"));
    h.sub(1, "#", QoS::AtMostOnce);
    h.sub(1, "+/x", QoS::AtMostOnce);
    h.connect(2, connect(ProtocolVersion::V5, "p"));
    h.send(
        2,
        Packet::Publish(publish("$app/x", "x", QoS::AtMostOnce, None)),
    );
    assert!(h.publishes(1).is_empty());
    h.sub(1, "$app/#", QoS::AtMostOnce);
    h.send(
        2,
        Packet::Publish(publish("$app/x", "x", QoS::AtMostOnce, None)),
    );
    assert_eq!(h.publishes(1).len(), 1);
}

#[test]
fn clients_may_not_publish_to_sys() {
    let mut h = Harness::default();
    h.connect(1, connect(ProtocolVersion::V5, "p"));
    h.send(
        1,
        Packet::Publish(publish(
            "$SYS/broker/uptime",
            "0",
            QoS::AtLeastOnce,
            Some(1),
        )),
    );
    assert!(h.take(1).iter().any(|o| matches!(o,
        Output::Packet(Packet::PubAck(a)) if a.reason_code == ReasonCode::NotAuthorized)));
    // Only the `$SYS` level itself is reserved, not every topic whose name starts alike.
    h.send(
        1,
        Packet::Publish(publish("$SYSTEM/x", "0", QoS::AtLeastOnce, Some(2))),
    );
    assert!(h.take(1).iter().any(|o| matches!(o,
        Output::Packet(Packet::PubAck(a)) if a.reason_code == ReasonCode::NoMatchingSubscribers)));
}

#[test]
fn sys_topics_are_published_on_the_interval() {
    let mut h = Harness::new(BrokerConfig {
        sys_interval: Some(Duration::from_secs(10)),
        ..BrokerConfig::default()
    });
    h.advance(0);
    h.connect(1, connect(ProtocolVersion::V5, "s"));
    h.sub(1, "$SYS/broker/clients/connected", QoS::AtMostOnce);
    // Retained from the first round (before this client connected): 0.
    assert_eq!(&h.publishes(1)[0].payload[..], b"0");
    h.advance(10);
    let got = h.publishes(1);
    assert_eq!(got.len(), 1);
    assert_eq!(&got[0].payload[..], b"1");
}

#[test]
fn shared_subscription_round_robin_and_handover_when_a_member_leaves() {
    let mut h = Harness::default();
    h.connect(1, connect(ProtocolVersion::V5, "m1"));
    h.sub(1, "$share/g/jobs", QoS::AtLeastOnce);
    h.connect(2, connect(ProtocolVersion::V5, "m2"));
    h.sub(2, "$share/g/jobs", QoS::AtLeastOnce);
    h.connect(3, connect(ProtocolVersion::V5, "p"));
    for i in 1..=4 {
        h.send(
            3,
            Packet::Publish(publish("jobs", &i.to_string(), QoS::AtLeastOnce, Some(i))),
        );
    }
    let a = h.publishes(1);
    let b = h.publishes(2);
    assert_eq!((a.len(), b.len()), (2, 2), "round robin");
    // m1 leaves without acknowledging: its two messages go to m2.
    h.lose(1);
    let moved = h.publishes(2);
    let mut payloads: Vec<_> = moved.iter().map(|p| p.payload.clone()).collect();
    payloads.sort();
    let mut expected: Vec<_> = a.iter().map(|p| p.payload.clone()).collect();
    expected.sort();
    assert_eq!(payloads, expected);
    assert_eq!(
        h.broker.shared_groups(),
        vec![("g".into(), "jobs".into(), 1)]
    );
}

#[test]
fn topic_aliases_from_the_client_are_resolved_and_checked() {
    let mut h = Harness::default();
    h.connect(1, connect(ProtocolVersion::V5, "s"));
    h.sub(1, "long/topic/name", QoS::AtMostOnce);
    h.connect(2, connect(ProtocolVersion::V5, "p"));
    let mut first = publish("long/topic/name", "1", QoS::AtMostOnce, None);
    first.properties.topic_alias = NonZeroU16::new(3);
    h.send(2, Packet::Publish(first));
    let mut second = Publish::new(TopicName::empty_for_alias(), Bytes::from_static(b"2"));
    second.properties.topic_alias = NonZeroU16::new(3);
    h.send(2, Packet::Publish(second));
    let got = h.publishes(1);
    assert_eq!(got.len(), 2);
    assert!(
        got.iter()
            .all(|p| p.topic.as_str() == "long/topic/name" && p.properties.topic_alias.is_none())
    );
    let mut bad = publish("x", "1", QoS::AtMostOnce, None);
    bad.properties.topic_alias = NonZeroU16::new(65);
    h.send(2, Packet::Publish(bad));
    assert!(matches!(h.take(2).as_slice(),
        [Output::Packet(Packet::Disconnect(d)), Output::Close] if d.reason_code == ReasonCode::TopicAliasInvalid));
}

#[test]
fn outbound_topic_aliases_are_assigned_and_reused() {
    let mut h = Harness::default();
    let mut c = connect(ProtocolVersion::V5, "s");
    c.properties.topic_alias_maximum = Some(1);
    h.connect(1, c);
    h.sub(1, "#", QoS::AtMostOnce);
    h.connect(2, connect(ProtocolVersion::V5, "p"));
    for topic in ["a/b", "a/b", "c", "c"] {
        h.send(
            2,
            Packet::Publish(publish(topic, "x", QoS::AtMostOnce, None)),
        );
    }
    let got = h.publishes(1);
    let seen: Vec<(&str, Option<u16>)> = got
        .iter()
        .map(|p| {
            (
                p.topic.as_str(),
                p.properties.topic_alias.map(NonZeroU16::get),
            )
        })
        .collect();
    assert_eq!(
        seen,
        vec![
            ("a/b", Some(1)),
            ("", Some(1)),
            ("c", Some(1)),
            ("", Some(1))
        ],
        "the only alias is reused for the newest topic"
    );
}

#[test]
fn messages_too_large_for_the_subscriber_are_not_sent() {
    let mut h = Harness::default();
    let mut c = connect(ProtocolVersion::V5, "small");
    c.properties.maximum_packet_size = NonZeroU32::new(64);
    h.connect(1, c);
    h.sub(1, "t", QoS::AtLeastOnce);
    h.connect(2, connect(ProtocolVersion::V5, "p"));
    h.send(
        2,
        Packet::Publish(publish("t", &"x".repeat(100), QoS::AtLeastOnce, Some(1))),
    );
    h.send(
        2,
        Packet::Publish(publish("t", "ok", QoS::AtLeastOnce, Some(2))),
    );
    let got = h.publishes(1);
    assert_eq!(got.len(), 1);
    assert_eq!(&got[0].payload[..], b"ok");
    assert_eq!(
        got[0].packet_id,
        Some(pid(1)),
        "the dropped message took no identifier"
    );
    assert_eq!(h.broker.stats().dropped.too_large, 1);
}

#[test]
fn offline_queue_is_bounded_and_qos0_is_not_queued_by_default() {
    let mut h = Harness::new(BrokerConfig {
        sessions: SessionLimits {
            max_queued_messages: 2,
            ..SessionLimits::default()
        },
        sys_interval: None,
        ..BrokerConfig::default()
    });
    h.connect(1, v5_persistent("s", 3600));
    h.sub(1, "t", QoS::AtLeastOnce);
    h.lose(1);
    h.connect(2, connect(ProtocolVersion::V5, "p"));
    h.send(
        2,
        Packet::Publish(publish("t", "q0", QoS::AtMostOnce, None)),
    );
    for i in 1..=3 {
        h.send(
            2,
            Packet::Publish(publish("t", &i.to_string(), QoS::AtLeastOnce, Some(i))),
        );
    }
    assert_eq!(h.broker.stats().dropped.queue_full, 1);
    assert_eq!(h.broker.stats().dropped.offline_qos0, 1);
    h.connect(3, v5_persistent("s", 3600));
    let got: Vec<_> = h.publishes(3).iter().map(|p| p.payload.clone()).collect();
    assert_eq!(
        got,
        vec![Bytes::from_static(b"1"), Bytes::from_static(b"2")],
        "newest dropped"
    );
}

#[test]
fn zero_length_client_ids() {
    let mut h = Harness::default();
    let ack = h.connect(1, connect(ProtocolVersion::V5, ""));
    assert_eq!(ack.reason_code, ReasonCode::Success);
    assert!(ack.properties.assigned_client_identifier.is_some());
    let mut c = connect(ProtocolVersion::V3_1_1, "");
    c.clean_start = false;
    let ack = h.connect(2, c);
    assert_eq!(ack.reason_code, ReasonCode::ClientIdentifierNotValid);
    let ack = h.connect(3, connect(ProtocolVersion::V3_1_1, ""));
    assert_eq!(ack.reason_code, ReasonCode::Success);
}

#[test]
fn keep_alive_above_the_maximum() {
    let mut h = Harness::new(BrokerConfig {
        sessions: SessionLimits {
            max_keep_alive: 30,
            ..SessionLimits::default()
        },
        sys_interval: None,
        ..BrokerConfig::default()
    });
    let ack = h.connect(1, connect(ProtocolVersion::V5, "a"));
    assert_eq!(ack.properties.server_keep_alive, Some(30));
    let ack = h.connect(2, connect(ProtocolVersion::V3_1_1, "b"));
    assert_eq!(ack.reason_code, ReasonCode::ClientIdentifierNotValid);
    let mut c = connect(ProtocolVersion::V3_1_1, "c");
    c.keep_alive = 30;
    assert_eq!(h.connect(3, c).reason_code, ReasonCode::Success);
}

#[test]
fn limits_on_topics_subscriptions_and_client_ids() {
    let mut h = Harness::new(BrokerConfig {
        packets: PacketLimits {
            max_topic_levels: 3,
            max_client_id_length: 23,
            ..PacketLimits::default()
        },
        sessions: SessionLimits {
            max_subscriptions_per_session: 1,
            ..SessionLimits::default()
        },
        sys_interval: None,
        ..BrokerConfig::default()
    });
    let ack = h.connect(9, connect(ProtocolVersion::V5, &"x".repeat(24)));
    assert_eq!(ack.reason_code, ReasonCode::ClientIdentifierNotValid);
    h.connect(1, connect(ProtocolVersion::V5, "s"));
    let mut sub = subscribe(1, "a/b/c/d", SubscriptionOptions::qos(QoS::AtMostOnce));
    sub.subscriptions.push(bulwark_proto::Subscription {
        filter: TopicFilter::new("ok").unwrap(),
        options: SubscriptionOptions::qos(QoS::AtMostOnce),
    });
    sub.subscriptions.push(bulwark_proto::Subscription {
        filter: TopicFilter::new("second").unwrap(),
        options: SubscriptionOptions::qos(QoS::AtMostOnce),
    });
    h.send(1, Packet::Subscribe(sub));
    match h.take(1).as_slice() {
        [Output::Packet(Packet::SubAck(ack))] => assert_eq!(
            ack.reason_codes,
            vec![
                ReasonCode::TopicFilterInvalid,
                ReasonCode::Success,
                ReasonCode::QuotaExceeded
            ]
        ),
        other => panic!("{other:?}"),
    }
    h.send(
        1,
        Packet::Publish(publish("a/b/c/d", "x", QoS::AtMostOnce, None)),
    );
    assert!(matches!(h.take(1).as_slice(),
        [Output::Packet(Packet::Disconnect(d)), Output::Close] if d.reason_code == ReasonCode::TopicNameInvalid));
}

#[test]
fn unsubscribe_reports_each_filter() {
    let mut h = Harness::default();
    h.connect(1, connect(ProtocolVersion::V5, "s"));
    h.sub(1, "a", QoS::AtMostOnce);
    h.send(
        1,
        Packet::Unsubscribe(Unsubscribe {
            packet_id: pid(4),
            properties: Default::default(),
            filters: vec![
                TopicFilter::new("a").unwrap(),
                TopicFilter::new("b").unwrap(),
            ],
        }),
    );
    match h.take(1).as_slice() {
        [Output::Packet(Packet::UnsubAck(ack))] => {
            assert_eq!(ack.packet_id, pid(4));
            assert_eq!(
                ack.reason_codes,
                vec![ReasonCode::Success, ReasonCode::NoSubscriptionExisted]
            );
        }
        other => panic!("{other:?}"),
    }
    h.connect(2, connect(ProtocolVersion::V5, "p"));
    h.send(2, Packet::Publish(publish("a", "x", QoS::AtMostOnce, None)));
    assert!(h.publishes(1).is_empty());
}

#[test]
fn disconnect_may_not_set_expiry_after_zero() {
    let mut h = Harness::default();
    h.connect(1, connect(ProtocolVersion::V5, "z"));
    let mut d = Disconnect::new(ReasonCode::Success);
    d.properties.session_expiry_interval = Some(10);
    h.send(1, Packet::Disconnect(d));
    assert!(matches!(h.take(1).as_slice(),
        [Output::Packet(Packet::Disconnect(d)), Output::Close] if d.reason_code == ReasonCode::ProtocolError));
}

#[test]
fn v311_publisher_reaches_v5_subscriber_and_back() {
    let mut h = Harness::default();
    h.connect(1, connect(ProtocolVersion::V5, "five"));
    h.sub(1, "x", QoS::ExactlyOnce);
    h.connect(2, connect(ProtocolVersion::V3_1_1, "three"));
    h.sub(2, "y", QoS::AtLeastOnce);
    h.send(
        2,
        Packet::Publish(publish("x", "from 3.1.1", QoS::AtLeastOnce, Some(1))),
    );
    let mut p = publish("y", "from 5", QoS::ExactlyOnce, Some(1));
    p.properties.content_type = bulwark_proto::MqttString::new("t").ok();
    h.send(1, Packet::Publish(p));
    let five = h.publishes(1);
    assert_eq!(five.len(), 1);
    assert_eq!(
        (&five[0].payload[..], five[0].qos),
        (&b"from 3.1.1"[..], QoS::AtLeastOnce)
    );
    let three = h.publishes(2);
    assert_eq!(three.len(), 1);
    assert_eq!(
        (&three[0].payload[..], three[0].qos),
        (&b"from 5"[..], QoS::AtLeastOnce)
    );
}

#[test]
fn shutdown_sends_0x8b_to_v5_and_closes_everyone() {
    let mut h = Harness::default();
    h.connect(1, connect(ProtocolVersion::V5, "a"));
    h.connect(2, connect(ProtocolVersion::V3_1_1, "b"));
    h.broker.begin_shutdown(h.now);
    h.collect();
    assert!(matches!(h.take(1).as_slice(),
        [Output::Packet(Packet::Disconnect(d)), Output::Close] if d.reason_code == ReasonCode::ServerShuttingDown));
    assert_eq!(h.take(2), vec![Output::Close]);
    let ack = h.connect(3, connect(ProtocolVersion::V5, "c"));
    assert_eq!(ack.reason_code, ReasonCode::ServerUnavailable);
}

#[test]
fn request_problem_information_0_removes_reason_strings_from_acks() {
    let mut h = Harness::default();
    h.connect(1, connect(ProtocolVersion::V5, "talkative"));
    let mut c = connect(ProtocolVersion::V5, "quiet");
    c.properties.request_problem_information = Some(false);
    h.connect(2, c);
    for conn in [1, 2] {
        h.send(
            conn,
            Packet::Publish(publish("$SYS/x", "0", QoS::AtLeastOnce, Some(1))),
        );
    }
    let reason = |outs: Vec<Output>| match outs.as_slice() {
        [Output::Packet(Packet::PubAck(a))] => {
            assert_eq!(a.reason_code, ReasonCode::NotAuthorized);
            a.properties.reason_string.clone()
        }
        other => panic!("{other:?}"),
    };
    assert!(reason(h.take(1)).is_some());
    assert!(reason(h.take(2)).is_none(), "[MQTT-3.1.2-29]");
}

#[test]
fn response_information_when_configured_and_requested() {
    let mut h = Harness::new(BrokerConfig {
        response_information_prefix: Some("reply/".into()),
        sys_interval: None,
        ..BrokerConfig::default()
    });
    let mut c = connect(ProtocolVersion::V5, "asker");
    c.properties.request_response_information = Some(true);
    let ack = h.connect(1, c);
    assert_eq!(
        ack.properties.response_information.unwrap().as_str(),
        "reply/asker"
    );
    let ack = h.connect(2, connect(ProtocolVersion::V5, "quiet"));
    assert!(
        ack.properties.response_information.is_none(),
        "only when requested"
    );
}

/// One message to many subscribers: those that get it in the same shape share one PUBLISH
/// body; a different QoS or a Subscription Identifier gets its own; each QoS 1 copy has the
/// packet identifier of its own session; and the encoded packets are what a copy would give.
#[test]
fn subscribers_of_one_message_share_its_body() {
    let mut h = Harness::default();
    h.connect(1, connect(ProtocolVersion::V3_1_1, "a"));
    h.connect(2, connect(ProtocolVersion::V5, "b"));
    h.connect(3, connect(ProtocolVersion::V5, "c"));
    h.connect(4, connect(ProtocolVersion::V5, "d"));
    h.connect(5, connect(ProtocolVersion::V5, "e"));
    h.sub(1, "t", QoS::AtMostOnce);
    h.sub(2, "t", QoS::AtMostOnce);
    h.sub(3, "t", QoS::AtLeastOnce);
    h.sub(4, "t", QoS::AtLeastOnce);
    let mut s = subscribe(1, "t", SubscriptionOptions::qos(QoS::AtMostOnce));
    s.properties.subscription_identifier = SubscriptionId::new(9);
    h.send(5, Packet::Subscribe(s));
    h.take(5);
    h.broker.handle_packet(
        ConnectionId(1),
        Packet::Publish(publish("t", "x", QoS::AtLeastOnce, Some(1))),
        h.now,
    );
    let mut bodies = HashMap::new();
    while let Some((conn, out)) = h.broker.poll_output() {
        if let bulwark_core::Output::Publish(p) = out {
            bodies.insert(conn.0, p);
        }
    }
    assert_eq!(bodies.len(), 5, "{bodies:?}");
    assert!(std::sync::Arc::ptr_eq(
        &bodies[&1].publish,
        &bodies[&2].publish
    ));
    assert!(std::sync::Arc::ptr_eq(
        &bodies[&3].publish,
        &bodies[&4].publish
    ));
    assert!(!std::sync::Arc::ptr_eq(
        &bodies[&1].publish,
        &bodies[&3].publish
    ));
    assert!(!std::sync::Arc::ptr_eq(
        &bodies[&2].publish,
        &bodies[&5].publish
    ));
    assert_eq!(bodies[&1].packet_id, None);
    assert_eq!(bodies[&3].packet_id, Some(pid(1)));
    assert_eq!(bodies[&4].packet_id, Some(pid(1)));
    assert_eq!(
        bodies[&5].publish.properties.subscription_identifiers,
        vec![SubscriptionId::new(9).unwrap()]
    );
    assert!(
        bodies[&2]
            .publish
            .properties
            .subscription_identifiers
            .is_empty()
    );
    let encoder = bulwark_proto::Encoder::new(ProtocolVersion::V5);
    let (mut shared, mut copied) = (bytes::BytesMut::new(), bytes::BytesMut::new());
    encoder
        .encode(&bodies[&3].encodable(), &mut shared)
        .unwrap();
    encoder
        .encode(&bodies[&3].to_publish(), &mut copied)
        .unwrap();
    assert_eq!(shared, copied);
}

// ----- durability: what a restart keeps -----------------------------------------------------

#[test]
fn without_a_journal_nothing_is_recorded() {
    let mut h = Harness::default();
    h.connect(1, v5_persistent("sub", 300));
    h.sub(1, "t", QoS::AtLeastOnce);
    assert!(h.broker.take_store_ops().is_empty());
    assert_eq!(h.image.sessions(), 0);
}

#[test]
fn queued_messages_sessions_and_retained_survive_a_restart() {
    let mut h = Harness::durable();
    h.connect(1, v5_persistent("sub", 300));
    h.sub(1, "t/#", QoS::ExactlyOnce);
    h.lose(1);
    h.connect(2, connect(ProtocolVersion::V5, "pub"));
    h.send(
        2,
        Packet::Publish(publish("t/1", "one", QoS::AtLeastOnce, Some(1))),
    );
    h.send(
        2,
        Packet::Publish(publish("t/2", "two", QoS::ExactlyOnce, Some(2))),
    );
    h.send(2, Packet::PubRel(PubRel::new(pid(2))));
    h.send(
        2,
        Packet::Publish(publish("t/0", "zero", QoS::AtMostOnce, None)),
    );
    let mut kept = publish("r/x", "kept", QoS::AtLeastOnce, Some(3));
    kept.retain = true;
    h.send(2, Packet::Publish(kept));
    assert_eq!(
        h.image.sessions(),
        1,
        "the publisher's session is not persistent"
    );
    assert_eq!(h.image.messages(), 2, "QoS 1 and 2 are kept, QoS 0 is not");

    h.crash_and_restart(5);
    let ack = h.connect(1, v5_persistent("sub", 300));
    assert!(ack.session_present);
    let got = h.publishes(1);
    let payloads: Vec<&[u8]> = got.iter().map(|p| p.payload.as_ref()).collect();
    assert_eq!(payloads, [b"one".as_slice(), b"two".as_slice()], "{got:?}");
    assert_eq!(got[0].qos, QoS::AtLeastOnce);
    assert_eq!(got[1].qos, QoS::ExactlyOnce);
    // The subscription came back too: a new message reaches the restored session.
    h.connect(3, connect(ProtocolVersion::V5, "pub-2"));
    h.send(
        3,
        Packet::Publish(publish("t/3", "three", QoS::AtMostOnce, None)),
    );
    assert_eq!(h.publishes(1).len(), 1);
    // So did the retained message.
    h.connect(4, connect(ProtocolVersion::V5, "reader"));
    h.sub(4, "r/#", QoS::AtLeastOnce);
    let retained = h.publishes(4);
    assert_eq!(retained.len(), 1, "{retained:?}");
    assert_eq!(retained[0].payload.as_ref(), b"kept");
    // Acknowledged messages leave the store.
    for p in got {
        match p.qos {
            QoS::AtLeastOnce => h.send(1, Packet::PubAck(PubAck::new(p.packet_id.unwrap()))),
            _ => {
                h.send(1, Packet::PubRec(PubRec::new(p.packet_id.unwrap())));
                h.send(1, Packet::PubComp(PubComp::new(p.packet_id.unwrap())));
            }
        }
    }
    assert_eq!(h.image.messages(), 0);
}

#[test]
fn exactly_once_holds_across_a_restart() {
    let mut h = Harness::durable();
    h.connect(1, v5_persistent("sub", 300));
    h.sub(1, "t", QoS::ExactlyOnce);
    h.connect(2, v5_persistent("pub", 300));
    h.send(
        2,
        Packet::Publish(publish("t", "once", QoS::ExactlyOnce, Some(9))),
    );
    assert!(matches!(
        h.take(2).as_slice(),
        [Output::Packet(Packet::PubRec(_))]
    ));
    let delivered = h.publishes(1);
    assert_eq!(delivered.len(), 1);
    let out_id = delivered[0].packet_id.unwrap();
    h.send(1, Packet::PubRec(PubRec::new(out_id)));
    assert!(matches!(
        h.take(1).as_slice(),
        [Output::Packet(Packet::PubRel(_))]
    ));

    // Down before the publisher's PUBREL and the subscriber's PUBCOMP.
    h.crash_and_restart(1);
    assert!(h.connect(2, v5_persistent("pub", 300)).session_present);
    let mut again = publish("t", "once", QoS::ExactlyOnce, Some(9));
    again.dup = true;
    h.send(2, Packet::Publish(again));
    assert!(matches!(
        h.take(2).as_slice(),
        [Output::Packet(Packet::PubRec(_))]
    ));
    h.send(2, Packet::PubRel(PubRel::new(pid(9))));
    assert!(matches!(h.take(2).as_slice(),
        [Output::Packet(Packet::PubComp(c))] if c.reason_code == ReasonCode::Success));
    // The subscriber is owed the PUBREL, not the message again.
    assert!(h.connect(1, v5_persistent("sub", 300)).session_present);
    let out = h.take(1);
    assert!(
        matches!(out.as_slice(),
        [Output::Packet(Packet::PubRel(r))] if r.packet_id == out_id),
        "{out:?}"
    );
    h.send(1, Packet::PubComp(PubComp::new(out_id)));
    assert_eq!(h.image.messages(), 0);
}

#[test]
fn session_expiry_counts_the_time_spent_down() {
    let mut h = Harness::durable();
    h.connect(1, v5_persistent("s", 10));
    h.sub(1, "t", QoS::AtLeastOnce);
    h.lose(1);
    h.advance(4);
    // Down for 7 s: 11 s after the client left, its 10 s have run out.
    h.crash_and_restart(7);
    h.advance(0);
    assert!(!h.connect(1, v5_persistent("s", 10)).session_present);
    assert!(h.image.sessions() <= 1, "only the new session is stored");
}

#[test]
fn a_session_that_stops_being_persistent_leaves_the_store() {
    let mut h = Harness::durable();
    h.connect(1, v5_persistent("s", 300));
    h.sub(1, "t", QoS::AtLeastOnce);
    h.lose(1);
    assert_eq!(h.image.sessions(), 1);
    let mut c = v5_persistent("s", 0);
    c.clean_start = false;
    h.connect(1, c);
    assert_eq!(
        h.image.sessions(),
        0,
        "expiry 0: nothing to bring back after a restart"
    );
    h.lose(1);
    h.crash_and_restart(0);
    assert!(!h.connect(1, v5_persistent("s", 300)).session_present);
}

#[test]
fn a_connected_clients_will_is_sent_after_a_restart() {
    let mut h = Harness::durable();
    h.connect(1, connect(ProtocolVersion::V5, "watcher"));
    h.sub(1, "wills/#", QoS::AtLeastOnce);
    let mut c = v5_persistent("dev", 300);
    c.will = Some(Will {
        topic: TopicName::new("wills/dev").unwrap(),
        payload: Bytes::from_static(b"gone"),
        qos: QoS::AtLeastOnce,
        retain: true,
        properties: Default::default(),
    });
    h.connect(2, c);
    // The broker stops while "dev" is connected: its connection is lost, so its will is due.
    h.crash_and_restart(3);
    h.advance(0);
    h.connect(3, connect(ProtocolVersion::V5, "watcher-2"));
    h.sub(3, "wills/#", QoS::AtLeastOnce);
    let got = h.publishes(3);
    assert_eq!(got.len(), 1, "the retained will: {got:?}");
    assert_eq!(got[0].payload.as_ref(), b"gone");
}

/// The size of `ack` on the wire.
fn connack_len(ack: &bulwark_proto::ConnAck, version: ProtocolVersion) -> usize {
    let mut buf = bytes::BytesMut::new();
    bulwark_proto::Encoder::new(version)
        .encode(&Packet::ConnAck(Box::new(ack.clone())), &mut buf)
        .unwrap()
}

#[test]
fn connack_fits_the_clients_maximum_packet_size() {
    // [MQTT-3.1.2-25]: the server sends no packet larger than the client's Maximum Packet
    // Size. Properties whose value is what their absence means are left out (§3.2.2.3).
    let mut h = Harness::new(BrokerConfig {
        sys_interval: None,
        response_information_prefix: Some("replies/".to_owned()),
        ..BrokerConfig::default()
    });
    let mut c = connect(ProtocolVersion::V5, "plain");
    let ack = h.connect(1, c.clone());
    let p = &ack.properties;
    assert_eq!(ack.reason_code, ReasonCode::Success);
    assert_eq!(p.retain_available, None, "absent means available");
    assert_eq!(p.wildcard_subscription_available, None);
    assert_eq!(p.subscription_identifiers_available, None);
    assert_eq!(p.shared_subscription_available, None);
    assert_eq!(p.receive_maximum, NonZeroU16::new(128));
    assert_eq!(p.topic_alias_maximum, Some(64));
    assert_eq!(p.maximum_packet_size, NonZeroU32::new(1024 * 1024));
    assert_eq!(connack_len(&ack, ProtocolVersion::V5), 16);

    // A Maximum Packet Size of 20: the CONNACK fits.
    c = connect(ProtocolVersion::V5, "small");
    c.properties.maximum_packet_size = NonZeroU32::new(20);
    let ack = h.connect(2, c.clone());
    assert_eq!(ack.reason_code, ReasonCode::Success);
    assert!(connack_len(&ack, ProtocolVersion::V5) <= 20);

    // Response Information asked for, but no room for it: left out, the rest stays.
    c.client_id = ClientId::new("small-info").unwrap();
    c.properties.request_response_information = Some(true);
    let ack = h.connect(3, c.clone());
    assert_eq!(ack.reason_code, ReasonCode::Success);
    assert_eq!(ack.properties.response_information, None);
    assert!(connack_len(&ack, ProtocolVersion::V5) <= 20);
    // With room, it is sent.
    c.client_id = ClientId::new("roomy-info").unwrap();
    c.properties.maximum_packet_size = NonZeroU32::new(200);
    let ack = h.connect(4, c);
    assert_eq!(
        ack.properties.response_information.unwrap().as_str(),
        "replies/roomy-info"
    );

    // No room for the accepting CONNACK (16 bytes) at all: refused with 0x95, which fits in
    // 5 bytes, and closed; nothing changes (no session, no takeover).
    h.connect(5, v5_persistent("tight", 300));
    let mut tight = v5_persistent("tight", 300);
    tight.properties.maximum_packet_size = NonZeroU32::new(8);
    h.broker.handle_connect(ConnectionId(6), tight, h.now);
    h.collect();
    let out = h.take(6);
    match out.as_slice() {
        [Output::Packet(Packet::ConnAck(ack)), Output::Close] => {
            assert_eq!(ack.reason_code, ReasonCode::PacketTooLarge);
            assert!(
                connack_len(ack, ProtocolVersion::V5) > 8,
                "the driver strips the reason string"
            );
        }
        other => panic!("expected CONNACK 0x95 and close, got {other:?}"),
    }
    assert!(
        h.take(5).is_empty(),
        "the live connection was not taken over"
    );
    assert_eq!(h.broker.connected(), 5);
}

/// A subscriber `sub` (on connection 1, `version`) that has one message of `qos` in flight;
/// returns its packet identifier.
fn one_in_flight(h: &mut Harness, version: ProtocolVersion, qos: QoS) -> PacketId {
    h.connect(1, connect(version, "sub"));
    h.sub(1, "t", qos);
    h.connect(2, connect(ProtocolVersion::V5, "pub"));
    h.send(2, Packet::Publish(publish("t", "m", qos, Some(1))));
    h.take(2);
    h.publishes(1).remove(0).packet_id.unwrap()
}

/// The connection was closed as a protocol error: DISCONNECT 0x82 first in 5.0.
fn assert_protocol_error(h: &mut Harness, conn: u64, version: ProtocolVersion) {
    let out = h.take(conn);
    match (version, out.as_slice()) {
        (ProtocolVersion::V5, [Output::Packet(Packet::Disconnect(d)), Output::Close]) => {
            assert_eq!(d.reason_code, ReasonCode::ProtocolError);
        }
        (ProtocolVersion::V5, other) => panic!("expected DISCONNECT 0x82, got {other:?}"),
        (_, [Output::Close]) => {}
        (_, other) => panic!("expected the connection closed, got {other:?}"),
    }
    assert_eq!(
        h.broker.poll_offence(),
        Some((ConnectionId(conn), ReasonCode::ProtocolError))
    );
}

#[test]
fn acknowledgements_of_the_wrong_type_are_protocol_errors() {
    for version in [
        ProtocolVersion::V5,
        ProtocolVersion::V3_1_1,
        ProtocolVersion::V3_1,
    ] {
        // PUBREC for a QoS 1 message: not answered with PUBREL, the connection is closed.
        let mut h = Harness::default();
        let id = one_in_flight(&mut h, version, QoS::AtLeastOnce);
        h.send(1, Packet::PubRec(PubRec::new(id)));
        assert_protocol_error(&mut h, 1, version);

        // PUBCOMP for a QoS 1 message.
        let mut h = Harness::default();
        let id = one_in_flight(&mut h, version, QoS::AtLeastOnce);
        h.send(1, Packet::PubComp(PubComp::new(id)));
        assert_protocol_error(&mut h, 1, version);

        // PUBACK for a QoS 2 message.
        let mut h = Harness::default();
        let id = one_in_flight(&mut h, version, QoS::ExactlyOnce);
        h.send(1, Packet::PubAck(PubAck::new(id)));
        assert_protocol_error(&mut h, 1, version);

        // PUBCOMP for a QoS 2 message before PUBREC and PUBREL.
        let mut h = Harness::default();
        let id = one_in_flight(&mut h, version, QoS::ExactlyOnce);
        h.send(1, Packet::PubComp(PubComp::new(id)));
        assert_protocol_error(&mut h, 1, version);
    }
}

#[test]
fn acknowledgements_of_nothing_in_flight() {
    let mut h = Harness::default();
    let id = one_in_flight(&mut h, ProtocolVersion::V5, QoS::ExactlyOnce);
    // A PUBREC sent again after the PUBREL: the PUBREL again (§4.3.3).
    h.send(1, Packet::PubRec(PubRec::new(id)));
    assert!(
        matches!(h.take(1).as_slice(), [Output::Packet(Packet::PubRel(r))] if r.packet_id == id)
    );
    h.send(1, Packet::PubRec(PubRec::new(id)));
    assert!(
        matches!(h.take(1).as_slice(), [Output::Packet(Packet::PubRel(r))] if r.packet_id == id)
    );
    h.send(1, Packet::PubComp(PubComp::new(id)));
    assert!(h.take(1).is_empty());
    // Late duplicates of acknowledgements already received end nothing.
    h.send(1, Packet::PubComp(PubComp::new(id)));
    h.send(1, Packet::PubAck(PubAck::new(pid(77))));
    assert!(h.take(1).is_empty());
    // A PUBREC 0x80 for an identifier not in flight: no PUBREL follows a refusal
    // [MQTT-4.3.3-4].
    let mut rec = PubRec::new(pid(78));
    rec.reason_code = ReasonCode::UnspecifiedError;
    h.send(1, Packet::PubRec(rec));
    assert!(h.take(1).is_empty());
    // A PUBREC 0x00 for an identifier not in flight: PUBREL 0x92 (5.0).
    h.send(1, Packet::PubRec(PubRec::new(pid(79))));
    assert!(matches!(h.take(1).as_slice(),
        [Output::Packet(Packet::PubRel(r))] if r.reason_code == ReasonCode::PacketIdentifierNotFound));
    assert_eq!(h.broker.poll_offence(), None);
    assert_eq!(h.broker.connected(), 2);
}

#[test]
fn qos0_dropped_for_a_backlog_count_in_sys_messages_dropped() {
    let mut h = Harness::new(BrokerConfig {
        sys_interval: Some(Duration::from_secs(10)),
        ..BrokerConfig::default()
    });
    h.advance(0);
    h.connect(1, connect(ProtocolVersion::V5, "s"));
    h.sub(1, "$SYS/broker/messages/dropped", QoS::AtMostOnce);
    assert_eq!(&h.publishes(1)[0].payload[..], b"0");
    // The server drops QoS 0 messages for a connection whose unsent bytes are over
    // max_queued_bytes, and reports them.
    h.broker.add_dropped_backlog(3);
    h.advance(10);
    assert_eq!(&h.publishes(1)[0].payload[..], b"3");
}

#[test]
fn an_accepting_connack_is_announced_with_the_keep_alive_to_honour() {
    let now = Instant::now();
    let mut broker = Broker::new(
        BrokerConfig {
            sessions: SessionLimits {
                max_keep_alive: 30,
                ..SessionLimits::default()
            },
            sys_interval: None,
            ..BrokerConfig::default()
        },
        now,
    );
    let outputs = |broker: &mut Broker, conn: u64, c: Connect| {
        broker.handle_connect(ConnectionId(conn), c, now);
        let mut all = Vec::new();
        while let Some((id, out)) = broker.poll_output() {
            assert_eq!(id, ConnectionId(conn));
            all.push(out);
        }
        all
    };
    // Over the maximum (5.0): the server's keep alive, also told in the CONNACK.
    let mut c = connect(ProtocolVersion::V5, "a");
    c.keep_alive = 60;
    let out = outputs(&mut broker, 1, c);
    assert_eq!(
        out[0],
        bulwark_core::Output::Accepted(Box::new(bulwark_core::Accepted {
            keep_alive: 30,
            assigned_client_id: None
        }))
    );
    assert!(matches!(out[1].clone().into_packet(),
        Some(Packet::ConnAck(ack)) if ack.properties.server_keep_alive == Some(30)));
    // Within it: the client's own.
    let mut c = connect(ProtocolVersion::V5, "b");
    c.keep_alive = 20;
    let out = outputs(&mut broker, 2, c);
    assert_eq!(
        out[0],
        bulwark_core::Output::Accepted(Box::new(bulwark_core::Accepted {
            keep_alive: 20,
            assigned_client_id: None
        }))
    );
    // A refusal is not announced: the CONNACK comes alone, then the close.
    let mut c = connect(ProtocolVersion::V3_1_1, "c");
    c.keep_alive = 60;
    let out = outputs(&mut broker, 3, c);
    assert!(matches!(out[0].clone().into_packet(),
        Some(Packet::ConnAck(ack)) if ack.reason_code.is_error()));
    assert_eq!(out[1], bulwark_core::Output::Close);
}

#[test]
fn a_session_belongs_to_the_authenticated_user_not_to_the_connect_username() {
    let mut h = Harness::default();
    let as_user = |name: &str| bulwark_core::ConnectAuth {
        principal: Some(std::sync::Arc::new(bulwark_acl::Principal {
            username: Some(name.into()),
            ..bulwark_acl::Principal::default()
        })),
        ..bulwark_core::ConnectAuth::default()
    };
    let named = |username: &str| {
        let mut c = connect(ProtocolVersion::V5, "c");
        c.username = bulwark_proto::MqttString::new(username).ok();
        c
    };
    let connack = |h: &mut Harness, conn: u64, c: Connect, auth| {
        h.broker
            .handle_authenticated_connect(ConnectionId(conn), c, auth, h.now);
        h.collect();
        match h.take(conn).first() {
            Some(Output::Packet(Packet::ConnAck(ack))) => ack.reason_code,
            other => panic!("expected CONNACK, got {other:?}"),
        }
    };
    assert_eq!(
        connack(&mut h, 1, named("mallory"), as_user("alice")),
        ReasonCode::Success
    );
    // Another user naming alice in the CONNECT does not take alice's session over.
    assert_eq!(
        connack(&mut h, 2, named("alice"), as_user("bob")),
        ReasonCode::NotAuthorized
    );
    // Alice does, whatever her CONNECT says.
    assert_eq!(
        connack(&mut h, 3, named("someone"), as_user("alice")),
        ReasonCode::Success
    );
}

//! Authorization in the engine: the ACL's decisions on SUBSCRIBE, PUBLISH, wills, retained
//! delivery, `$share`, resumed sessions and reloads, driven packet by packet with a controlled
//! clock. The server's socket tests (crates/bulwark-server/tests/acl.rs) keep what needs the
//! server: the password store, the ACL file watcher, token claims and the audit file.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "tests"
)]

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use bulwark_acl::event::EventKind;
use bulwark_acl::{AclRules, Principal};
use bulwark_core::{AuthzEvent, Broker, BrokerConfig, ConnectAuth, ConnectionId, DeniedPublish};
use bulwark_proto::{
    ClientId, Connect, Disconnect, MqttString, Packet, PacketId, ProtocolVersion, Publish, QoS,
    ReasonCode, Subscribe, SubscriptionOptions, TopicFilter, TopicName, Will, WillProperties,
};
use bytes::Bytes;

/// The seed patterns of the ACL, and a deny that beats every allow.
const RULES: &str = include_str!("data/seed-acl.toml");
/// "Everything under sensor/ except sensor/secret/": subscriptions that overlap a deny rule.
const CARVE_OUT_RULES: &str = r##"
[[rule]]
permission = "allow"
action = "subscribe"
group = "readers"
topics = ["sensor/#", "sensor/+/+"]

[[rule]]
permission = "allow"
action = "publish"
group = "controllers"
topic = "sensor/#"

[[rule]]
permission = "deny"
action = "subscribe"
topic = "sensor/secret/#"
"##;

fn rules(text: &str) -> Option<Arc<AclRules>> {
    Some(Arc::new(AclRules::parse(text, "acl.toml").unwrap()))
}

/// The groups of the test users: alice (readers), bob (controllers), root (admins), dave and
/// east1 (none).
fn groups_of(user: &str) -> Vec<Arc<str>> {
    let group = match user {
        "alice" => "readers",
        "bob" => "controllers",
        "root" => "admins",
        _ => return Vec::new(),
    };
    vec![Arc::from(group)]
}

/// `user`'s CONNECT as the server hands it over: the username authenticated, the principal
/// with the user's groups.
fn login(version: ProtocolVersion, user: &str, client_id: &str) -> (Connect, ConnectAuth) {
    let mut connect = Connect::new(version, ClientId::new(client_id).unwrap());
    connect.keep_alive = 60;
    connect.username = Some(MqttString::new(user).unwrap());
    let principal = Principal {
        username: Some(Arc::from(user)),
        groups: groups_of(user),
        authenticated: true,
        ..Principal::default()
    };
    let auth = ConnectAuth {
        principal: Some(Arc::new(principal)),
        ..ConnectAuth::default()
    };
    (connect, auth)
}

/// `login` with a 5.0 session that outlives the connection.
fn persistent(user: &str, client_id: &str) -> (Connect, ConnectAuth) {
    let (mut connect, auth) = login(ProtocolVersion::V5, user, client_id);
    connect.clean_start = false;
    connect.properties.session_expiry_interval = Some(300);
    (connect, auth)
}

fn pid(n: u16) -> PacketId {
    PacketId::new(n).unwrap()
}

fn will(topic: &str) -> Will {
    Will {
        topic: TopicName::new(topic).unwrap(),
        payload: Bytes::from_static(b"gone"),
        qos: QoS::AtLeastOnce,
        retain: false,
        properties: WillProperties::default(),
    }
}

/// The engine, its outputs per connection and its authorization events.
struct Engine {
    broker: Broker,
    now: Instant,
    inbox: HashMap<u64, Vec<Packet>>,
    closed: Vec<u64>,
    events: Vec<AuthzEvent>,
}

impl Engine {
    fn new(text: &str) -> Self {
        Self::with(text, BrokerConfig::default())
    }

    fn with(text: &str, config: BrokerConfig) -> Self {
        let now = Instant::now();
        let mut broker = Broker::new(
            BrokerConfig {
                sys_interval: None,
                ..config
            },
            now,
        );
        broker.set_acl(rules(text), now);
        Self {
            broker,
            now,
            inbox: HashMap::new(),
            closed: Vec::new(),
            events: Vec::new(),
        }
    }

    fn collect(&mut self) {
        while let Some((conn, out)) = self.broker.poll_output() {
            if matches!(out, bulwark_core::Output::Close) {
                self.closed.push(conn.0);
            } else if let Some(packet) = out.into_packet() {
                self.inbox.entry(conn.0).or_default().push(packet);
            }
        }
        while let Some(event) = self.broker.poll_event() {
            self.events.push(event);
        }
    }

    /// Connects `conn` and returns the CONNACK's reason code and Session Present flag.
    fn connect(
        &mut self,
        conn: u64,
        (connect, auth): (Connect, ConnectAuth),
    ) -> (ReasonCode, bool) {
        self.broker
            .handle_authenticated_connect(ConnectionId(conn), connect, auth, self.now);
        self.collect();
        let out = self.inbox.remove(&conn).unwrap_or_default();
        let mut out = out.into_iter();
        match out.next() {
            Some(Packet::ConnAck(ack)) => {
                self.inbox.insert(conn, out.collect());
                (ack.reason_code, ack.session_present)
            }
            other => panic!("expected CONNACK, got {other:?}"),
        }
    }

    /// Connects `user` as `client_id` (5.0 unless said), which must be accepted.
    fn login(&mut self, conn: u64, version: ProtocolVersion, user: &str, client_id: &str) {
        let (code, _) = self.connect(conn, login(version, user, client_id));
        assert_eq!(code, ReasonCode::Success, "{user} as {client_id}");
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

    fn disconnect(&mut self, conn: u64) {
        self.send(
            conn,
            Packet::Disconnect(Disconnect::new(ReasonCode::Success)),
        );
    }

    fn reload(&mut self, text: &str) {
        self.broker.set_acl(rules(text), self.now);
        self.collect();
    }

    fn take(&mut self, conn: u64) -> Vec<Packet> {
        self.inbox.remove(&conn).unwrap_or_default()
    }

    /// The topics of the PUBLISHes waiting for `conn`.
    fn topics(&mut self, conn: u64) -> Vec<String> {
        self.take(conn)
            .into_iter()
            .filter_map(|p| match p {
                Packet::Publish(p) => Some(p.topic.as_str().to_owned()),
                _ => None,
            })
            .collect()
    }

    /// Subscribes `conn` to `filter` at QoS 1 and returns the SUBACK's code. PUBLISHes that
    /// came with it (retained messages) stay for the test.
    fn sub_code(&mut self, conn: u64, id: u16, filter: &str) -> ReasonCode {
        let subscribe = Subscribe {
            packet_id: pid(id),
            properties: Default::default(),
            subscriptions: vec![bulwark_proto::Subscription {
                filter: TopicFilter::new(filter).unwrap(),
                options: SubscriptionOptions::qos(QoS::AtLeastOnce),
            }],
        };
        self.send(conn, Packet::Subscribe(subscribe));
        let mut code = None;
        let rest = self
            .take(conn)
            .into_iter()
            .filter(|p| match p {
                Packet::SubAck(ack) if ack.packet_id == pid(id) && code.is_none() => {
                    code = Some(ack.reason_codes[0]);
                    false
                }
                _ => true,
            })
            .collect();
        self.inbox.insert(conn, rest);
        code.unwrap_or_else(|| panic!("no SUBACK for {filter}"))
    }

    /// Publishes to `topic` at QoS 1 (retained or not) and returns the PUBACK's code.
    fn pub_code_retained(&mut self, conn: u64, id: u16, topic: &str, retain: bool) -> ReasonCode {
        let mut publish = Publish::new(TopicName::new(topic).unwrap(), Bytes::from_static(b"x"));
        publish.qos = QoS::AtLeastOnce;
        publish.packet_id = Some(pid(id));
        publish.retain = retain;
        self.send(conn, Packet::Publish(publish));
        let mut code = None;
        let rest = self
            .take(conn)
            .into_iter()
            .filter(|p| match p {
                Packet::PubAck(ack) if ack.packet_id == pid(id) && code.is_none() => {
                    code = Some(ack.reason_code);
                    false
                }
                _ => true,
            })
            .collect();
        self.inbox.insert(conn, rest);
        code.unwrap_or_else(|| panic!("no PUBACK for {topic}"))
    }

    fn pub_code(&mut self, conn: u64, id: u16, topic: &str) -> ReasonCode {
        self.pub_code_retained(conn, id, topic, false)
    }

    /// The events of `kind` about `topic` so far.
    fn events_about(&self, kind: EventKind, topic: &str) -> Vec<&AuthzEvent> {
        self.events
            .iter()
            .filter(|e| e.kind == kind && &*e.topic == topic)
            .collect()
    }
}

fn allowed(code: ReasonCode) -> bool {
    matches!(
        code,
        ReasonCode::Success | ReasonCode::NoMatchingSubscribers
    )
}

const V5: ProtocolVersion = ProtocolVersion::V5;

#[test]
fn the_seed_patterns_decide_as_written() {
    let mut e = Engine::new(RULES);
    e.login(1, V5, "dave", "dev-1");
    assert!(allowed(e.pub_code(1, 1, "devices/dev-1/temp")));
    assert_eq!(
        e.pub_code(1, 2, "devices/dev-2/temp"),
        ReasonCode::NotAuthorized
    );
    assert_eq!(e.sub_code(1, 3, "devices/dev-1/#"), ReasonCode::GrantedQoS1);
    assert_eq!(e.sub_code(1, 4, "devices/#"), ReasonCode::NotAuthorized);
    assert_eq!(e.sub_code(1, 5, "sensor/#"), ReasonCode::NotAuthorized);

    e.login(2, V5, "alice", "alice-1");
    assert_eq!(e.sub_code(2, 1, "sensor/open/#"), ReasonCode::GrantedQoS1);
    // sensor/# also reaches sensor/secret/#, which a deny rule keeps from everybody: granted,
    // with that subtree carved out; sensor/secret/# itself is refused.
    assert_eq!(e.sub_code(2, 2, "sensor/#"), ReasonCode::GrantedQoS1);
    assert_eq!(
        e.sub_code(2, 5, "sensor/secret/#"),
        ReasonCode::NotAuthorized
    );
    assert_eq!(e.pub_code(2, 3, "sensor/open/t"), ReasonCode::NotAuthorized);

    e.login(3, V5, "bob", "bob-1");
    assert!(allowed(e.pub_code(3, 1, "actuator/valve")));
    assert_eq!(e.sub_code(3, 2, "actuator/#"), ReasonCode::NotAuthorized);
    assert_eq!(e.pub_code(3, 3, "sensor/open/t"), ReasonCode::Success);
    // Two of alice's subscriptions match: one copy.
    assert_eq!(e.topics(2), ["sensor/open/t"]);
    assert_eq!(
        e.pub_code(3, 4, "sensor/secret/key"),
        ReasonCode::NotAuthorized,
        "a deny beats an allow"
    );

    e.login(4, V5, "root", "root-1");
    assert_eq!(e.sub_code(4, 1, "admin/#"), ReasonCode::GrantedQoS1);
    assert_eq!(e.sub_code(4, 2, "$SYS/#"), ReasonCode::GrantedQoS1);
    assert_eq!(e.sub_code(4, 3, "#"), ReasonCode::GrantedQoS1);
    assert!(allowed(e.pub_code(4, 4, "admin/cmd")));

    e.login(5, V5, "east1", "east-1");
    assert_eq!(
        e.sub_code(5, 1, "region/us-east/#"),
        ReasonCode::GrantedQoS1
    );
    assert_eq!(e.sub_code(5, 2, "region/#"), ReasonCode::NotAuthorized);
    assert_eq!(
        e.sub_code(1, 6, "region/us-east/#"),
        ReasonCode::NotAuthorized
    );

    let denied = e.events_about(EventKind::AclDenied, "devices/dev-2/temp");
    assert_eq!(denied.len(), 1);
    assert_eq!(denied[0].action, "publish");
    assert_eq!(denied[0].principal.username.as_deref(), Some("dave"));
    assert_eq!(&*denied[0].client_id, "dev-1");
    assert!(
        denied[0].reason.contains("no rule allows it"),
        "{:?}",
        denied[0]
    );
    let denied = e.events_about(EventKind::AclDenied, "sensor/secret/#");
    assert_eq!(denied[0].action, "subscribe");
    assert!(denied[0].reason.contains("acl.toml:"), "{:?}", denied[0]);
}

#[test]
fn client_ids_cannot_widen_template_rules() {
    let mut e = Engine::new(RULES);
    for (conn, id) in (1..).zip(["+", "#", "a/b", "V/evil", ".*"]) {
        e.login(conn, V5, "dave", id);
        for (i, filter) in (1..).zip([
            "devices/+/#",
            "devices/#",
            "devices/a/b/#",
            "devices/V/evil/#",
        ]) {
            let code = e.sub_code(conn, i, filter);
            assert_eq!(code, ReasonCode::NotAuthorized, "id {id:?} filter {filter}");
        }
        for (i, name) in (10..).zip(["devices/a/b/x", "devices/V/evil/x", "devices/x/y"]) {
            let code = e.pub_code(conn, i, name);
            assert_eq!(code, ReasonCode::NotAuthorized, "id {id:?} topic {name}");
        }
        if id == ".*" {
            // Substituted literally, never as a pattern.
            assert!(allowed(e.pub_code(conn, 20, "devices/.*/x")));
        }
        e.disconnect(conn);
    }
}

#[test]
fn retained_messages_and_wills_do_not_leak_across_users() {
    let mut e = Engine::new(RULES);
    e.login(1, V5, "dave", "victim");
    assert_eq!(
        e.pub_code_retained(1, 1, "devices/victim/state", true),
        ReasonCode::NoMatchingSubscribers
    );
    e.login(2, V5, "dave", "attacker");
    for (i, filter) in (1..).zip([
        "devices/victim/state",
        "devices/+/state",
        "devices/victim/#",
    ]) {
        assert_eq!(
            e.sub_code(2, i, filter),
            ReasonCode::NotAuthorized,
            "{filter}"
        );
    }
    assert!(e.topics(2).is_empty());

    // A will aimed at another client's topic is refused at CONNECT, in both versions.
    for (conn, version) in [(3, V5), (4, ProtocolVersion::V3_1_1)] {
        let (mut connect, auth) = login(version, "bob", "attacker-2");
        connect.will = Some(will("devices/victim/cmd"));
        let (code, present) = e.connect(conn, (connect, auth));
        assert_eq!(code, ReasonCode::NotAuthorized, "{version:?}");
        assert!(!present);
        assert!(e.closed.contains(&conn));
    }
    let denied = e.events_about(EventKind::AclDenied, "devices/victim/cmd");
    assert_eq!(denied.len(), 2);
    assert!(denied.iter().all(|d| d.action == "will"));

    // The victim's own retained message still reaches the victim.
    e.login(5, V5, "dave", "victim-2");
    assert_eq!(
        e.sub_code(5, 1, "devices/victim/#"),
        ReasonCode::NotAuthorized
    );
    assert_eq!(
        e.sub_code(1, 2, "devices/victim/#"),
        ReasonCode::GrantedQoS1
    );
    assert_eq!(e.topics(1), ["devices/victim/state"]);
    assert!(e.topics(5).is_empty());
}

#[test]
fn share_sys_and_hash_need_rules_that_allow_them() {
    let mut e = Engine::new(RULES);
    e.login(1, V5, "dave", "d-share");
    for (i, filter) in (1..).zip([
        "$share/g/sensor/#",
        "$share/g/devices/#",
        "$share/g/devices/other/#",
        "$SYS/#",
        "$SYS/broker/uptime",
        "#",
        "+/#",
        "$share/g/$SYS/#",
    ]) {
        assert_eq!(
            e.sub_code(1, i, filter),
            ReasonCode::NotAuthorized,
            "{filter}"
        );
    }
    assert_eq!(
        e.sub_code(1, 20, "$share/g/devices/d-share/#"),
        ReasonCode::GrantedQoS1
    );
    e.login(2, V5, "root", "r-share");
    assert_eq!(
        e.sub_code(2, 1, "$share/ops/$SYS/#"),
        ReasonCode::GrantedQoS1
    );
}

#[test]
fn another_user_neither_takes_over_nor_resumes_a_client_id() {
    let mut e = Engine::new(RULES);
    let (code, _) = e.connect(1, persistent("alice", "shared-id"));
    assert_eq!(code, ReasonCode::Success);
    assert_eq!(e.sub_code(1, 1, "sensor/open/#"), ReasonCode::GrantedQoS1);

    let (code, present) = e.connect(2, persistent("bob", "shared-id"));
    assert_eq!(code, ReasonCode::NotAuthorized);
    assert!(!present);
    assert!(e.closed.contains(&2));
    // Alice's connection is untouched.
    assert!(!e.closed.contains(&1));
    e.send(1, Packet::PingReq);
    assert_eq!(e.take(1), [Packet::PingResp]);

    e.disconnect(1);
    assert!(e.closed.contains(&1));
    let (code, _) = e.connect(3, persistent("bob", "shared-id"));
    assert_eq!(code, ReasonCode::NotAuthorized, "resume refused");
    let (code, present) = e.connect(4, persistent("alice", "shared-id"));
    assert_eq!(code, ReasonCode::Success);
    assert!(present, "alice's session survived");

    let refused = e.events_about(EventKind::ClientIdRefused, "");
    assert_eq!(refused.len(), 2, "{:#?}", e.events);
    assert!(
        refused
            .iter()
            .all(|r| r.principal.username.as_deref() == Some("bob"))
    );
    assert!(refused.iter().all(|r| &*r.client_id == "shared-id"));
}

#[test]
fn a_reload_removes_live_subscriptions_and_changes_publish_rights_at_once() {
    let mut e = Engine::new(RULES);
    e.login(1, V5, "alice", "alice-r");
    assert_eq!(e.sub_code(1, 1, "sensor/open/#"), ReasonCode::GrantedQoS1);
    e.login(2, V5, "bob", "bob-r");
    assert_eq!(e.pub_code(2, 1, "sensor/open/a"), ReasonCode::Success);
    assert_eq!(e.topics(1), ["sensor/open/a"]);

    // Readers lose sensor/#, controllers may publish only to actuator/#.
    let reloaded = RULES
        .replace(
            "action = \"subscribe\"\ngroup = \"readers\"\ntopic = \"sensor/#\"",
            "action = \"subscribe\"\ngroup = \"readers\"\ntopic = \"elsewhere/#\"",
        )
        .replace(
            "topics = [\"actuator/#\", \"sensor/#\"]",
            "topics = [\"actuator/#\"]",
        );
    assert_ne!(reloaded, RULES);
    e.reload(&reloaded);
    let revoked = e.events_about(EventKind::SubscriptionRevoked, "sensor/open/#");
    assert_eq!(revoked.len(), 1);
    assert_eq!(revoked[0].principal.username.as_deref(), Some("alice"));

    // The same topic as before the reload: nothing remembered outlives the rules.
    assert_eq!(e.pub_code(2, 2, "sensor/open/a"), ReasonCode::NotAuthorized);
    assert!(allowed(e.pub_code(2, 3, "actuator/x")));
    assert!(e.topics(1).is_empty());
    assert_eq!(e.sub_code(1, 2, "sensor/open/#"), ReasonCode::NotAuthorized);
}

#[test]
fn a_will_is_checked_again_when_it_is_published() {
    let mut e = Engine::new(RULES);
    e.login(1, V5, "root", "root-w");
    assert_eq!(
        e.sub_code(1, 1, "devices/+/status"),
        ReasonCode::GrantedQoS1
    );
    let (mut connect, auth) = login(V5, "dave", "dev-w");
    connect.will = Some(will("devices/dev-w/status"));
    assert_eq!(e.connect(2, (connect, auth)).0, ReasonCode::Success);

    e.reload(&RULES.replace(
        "topic = \"devices/{client_id}/#\"",
        "topic = \"nothing/{client_id}/#\"",
    ));
    e.lose(2);
    let denied = e.events_about(EventKind::AclDenied, "devices/dev-w/status");
    assert_eq!(denied.len(), 1, "{:#?}", e.events);
    assert_eq!(denied[0].action, "will");
    assert!(e.topics(1).is_empty());

    // Under rules that allow it, the same will is published.
    e.reload(RULES);
    let (mut connect, auth) = login(V5, "dave", "dev-w");
    connect.will = Some(will("devices/dev-w/status"));
    assert_eq!(e.connect(3, (connect, auth)).0, ReasonCode::Success);
    e.lose(3);
    assert_eq!(e.topics(1), ["devices/dev-w/status"]);
}

#[test]
fn mqtt_3_1_1_denials_are_dropped_or_disconnect() {
    let v3 = ProtocolVersion::V3_1_1;
    let mut e = Engine::new(RULES);
    e.login(1, v3, "alice", "alice-3");
    // (The codec writes a 3.1.1 SUBACK's refusal as 0x80.)
    assert_eq!(
        e.sub_code(1, 1, "sensor/secret/#"),
        ReasonCode::NotAuthorized
    );
    assert_eq!(e.sub_code(1, 2, "sensor/open/#"), ReasonCode::GrantedQoS1);
    // A denied QoS 1 publish is acknowledged (3.1.1 has no way to refuse) and dropped.
    e.login(2, v3, "dave", "dave-3");
    assert_eq!(e.pub_code(2, 1, "sensor/open/x"), ReasonCode::Success);
    assert!(e.topics(1).is_empty());
    assert!(!e.closed.contains(&2));

    let mut e = Engine::with(
        RULES,
        BrokerConfig {
            denied_publish: DeniedPublish::Disconnect,
            ..BrokerConfig::default()
        },
    );
    let qos0 = || {
        Packet::Publish(Publish::new(
            TopicName::new("sensor/open/x").unwrap(),
            Bytes::new(),
        ))
    };
    e.login(1, v3, "dave", "dave-3d");
    e.send(1, qos0());
    assert!(e.closed.contains(&1));
    e.login(2, V5, "dave", "dave-5d");
    e.send(2, qos0());
    let out = e.take(2);
    assert!(
        matches!(out.as_slice(), [Packet::Disconnect(d)] if d.reason_code == ReasonCode::NotAuthorized),
        "{out:?}"
    );
    assert!(e.closed.contains(&2));
}

#[test]
fn a_resumed_session_keeps_only_what_the_rules_now_allow() {
    let mut e = Engine::new(RULES);
    e.connect(1, persistent("alice", "alice-p"));
    assert_eq!(e.sub_code(1, 1, "sensor/open/#"), ReasonCode::GrantedQoS1);
    e.disconnect(1);
    e.login(2, V5, "bob", "bob-p");
    assert_eq!(e.pub_code(2, 1, "sensor/open/queued"), ReasonCode::Success);

    e.reload(&RULES.replace("topic = \"sensor/#\"", "topic = \"elsewhere/#\""));
    let (code, present) = e.connect(3, persistent("alice", "alice-p"));
    assert_eq!(code, ReasonCode::Success);
    assert!(present);
    // The queued message and the subscription went with the rule that allowed them.
    assert!(e.topics(3).is_empty());
    assert_eq!(
        e.pub_code(2, 2, "sensor/open/later"),
        ReasonCode::NoMatchingSubscribers
    );
    let revoked: Vec<_> = e
        .events
        .iter()
        .filter(|ev| ev.kind == EventKind::SubscriptionRevoked && &*ev.client_id == "alice-p")
        .collect();
    assert_eq!(revoked.len(), 1, "{revoked:#?}");
}

#[test]
fn a_subscription_that_overlaps_a_deny_rule_is_granted_with_the_carve_out() {
    let mut e = Engine::new(CARVE_OUT_RULES);
    e.login(1, V5, "bob", "bob-carve");
    // Retained messages on both sides of the carve-out, before anyone subscribes.
    assert!(allowed(e.pub_code_retained(1, 1, "sensor/open/r", true)));
    assert!(allowed(e.pub_code_retained(1, 2, "sensor/secret/r", true)));

    e.login(2, V5, "alice", "alice-carve");
    assert_eq!(e.sub_code(2, 1, "sensor/#"), ReasonCode::GrantedQoS1);
    // Retained delivery goes through the carve-out too.
    assert_eq!(e.topics(2), ["sensor/open/r"]);
    e.login(3, V5, "alice", "alice-shared");
    assert_eq!(
        e.sub_code(3, 1, "$share/g/sensor/#"),
        ReasonCode::GrantedQoS1
    );
    // Overlapping subscriptions, both with the carve-out: still kept out.
    e.login(4, V5, "alice", "alice-both");
    assert_eq!(e.sub_code(4, 1, "sensor/#"), ReasonCode::GrantedQoS1);
    assert_eq!(e.sub_code(4, 2, "sensor/+/+"), ReasonCode::GrantedQoS1);
    assert_eq!(e.topics(4), ["sensor/open/r", "sensor/open/r"]);
    // A filter inside the carve-out is refused.
    assert_eq!(
        e.sub_code(2, 2, "sensor/secret/+"),
        ReasonCode::NotAuthorized
    );

    for (i, t) in (10..).zip([
        "sensor/open/t",
        "sensor/secret/key",
        "sensor/a/b/c",
        "sensor/secret",
    ]) {
        assert!(allowed(e.pub_code(1, i, t)), "{t}");
    }
    // `sensor/secret/#` covers `sensor/secret` itself too.
    let expected = ["sensor/open/t", "sensor/a/b/c"];
    assert_eq!(e.topics(2), expected);
    assert_eq!(e.topics(3), expected);
    assert_eq!(e.topics(4), expected);
}

#[test]
fn carve_outs_hold_for_queued_messages_and_follow_a_reload() {
    // No deny at first: `sensor/#` is granted whole.
    let open_rules = CARVE_OUT_RULES.replace("permission = \"deny\"", "permission = \"allow\"");
    let mut e = Engine::new(&open_rules);
    e.login(1, V5, "bob", "bob-carve-p");
    e.login(2, V5, "alice", "alice-carve-live");
    assert_eq!(e.sub_code(2, 1, "sensor/#"), ReasonCode::GrantedQoS1);
    e.connect(3, persistent("alice", "alice-carve-p"));
    assert_eq!(e.sub_code(3, 1, "sensor/#"), ReasonCode::GrantedQoS1);
    e.disconnect(3);
    assert!(allowed(e.pub_code(1, 1, "sensor/secret/before")));
    assert_eq!(e.topics(2), ["sensor/secret/before"], "no carve-out yet");

    // The deny comes with a reload: the live subscription stays, its secret topics stop.
    e.reload(CARVE_OUT_RULES);
    assert!(
        e.events_about(EventKind::SubscriptionRevoked, "sensor/#")
            .is_empty()
    );
    assert!(allowed(e.pub_code(1, 2, "sensor/secret/after")));
    assert!(allowed(e.pub_code(1, 3, "sensor/open/after")));
    assert_eq!(
        e.topics(2),
        ["sensor/open/after"],
        "the subscription stays, the carve-out applies"
    );

    // The parked session queued everything while away; on resume what the rules in force
    // carve out is dropped from its queue, even a message queued before the deny came.
    let (_, present) = e.connect(4, persistent("alice", "alice-carve-p"));
    assert!(present);
    assert_eq!(e.topics(4), ["sensor/open/after"]);
}

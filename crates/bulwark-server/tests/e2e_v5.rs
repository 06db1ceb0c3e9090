//! End-to-end tests with rumqttc's MQTT 5.0 client (and its 3.1.1 client, for interoperation)
//! against a broker on `127.0.0.1:0`.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "tests"
)]

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use bytes::Bytes;
use common::{QUIET, WAIT, m5, start, unique, v3_connect, v5_connect, v5_connect_with, v5_options};
use rumqttc::v5::mqttbytes::QoS;

fn session_options(
    addr: std::net::SocketAddr,
    id: &str,
    clean_start: bool,
    expiry: u32,
) -> rumqttc::v5::MqttOptions {
    let mut options = v5_options(addr, id);
    options.set_clean_start(clean_start);
    let mut props = m5::ConnectProperties::new();
    props.session_expiry_interval = Some(expiry);
    options.set_connect_properties(props);
    options
}

#[tokio::test]
async fn qos_0_1_2_reach_a_subscriber_at_their_own_qos() {
    let server = start().await;
    let topic = unique("v5/qos");
    let mut sub = v5_connect(server.addr, &unique("sub")).await;
    let ack = sub.subscribe(&topic, QoS::ExactlyOnce).await;
    assert_eq!(
        ack.return_codes,
        vec![m5::SubscribeReasonCode::Success(QoS::ExactlyOnce)]
    );
    let mut publisher = v5_connect(server.addr, &unique("pub")).await;
    for (qos, payload) in [
        (QoS::AtMostOnce, &b"zero"[..]),
        (QoS::AtLeastOnce, b"one"),
        (QoS::ExactlyOnce, b"two"),
    ] {
        publisher.publish(&topic, qos, false, payload).await;
        let got = sub.recv_publish().await;
        assert_eq!(&got.topic[..], topic.as_bytes());
        assert_eq!(&got.payload[..], payload);
        assert_eq!(got.qos, qos);
    }
    sub.expect_no_publish(QUIET).await;
    publisher.disconnect().await;
    sub.disconnect().await;
    server.stop().await;
}

#[tokio::test]
async fn delivery_qos_is_downgraded_to_the_subscription_qos() {
    // [MQTT-3.8.4-8]: the QoS of delivered messages is the minimum of published and granted.
    let server = start().await;
    let topic = unique("v5/downgrade");
    let mut sub0 = v5_connect(server.addr, &unique("sub0")).await;
    sub0.subscribe(&topic, QoS::AtMostOnce).await;
    let mut sub1 = v5_connect(server.addr, &unique("sub1")).await;
    sub1.subscribe(&topic, QoS::AtLeastOnce).await;
    let mut publisher = v5_connect(server.addr, &unique("pub")).await;
    publisher
        .publish(&topic, QoS::ExactlyOnce, false, b"down")
        .await;
    assert_eq!(sub0.recv_publish().await.qos, QoS::AtMostOnce);
    assert_eq!(sub1.recv_publish().await.qos, QoS::AtLeastOnce);
    server.stop().await;
}

#[tokio::test]
async fn a_311_publisher_reaches_a_v5_subscriber() {
    let server = start().await;
    let topic = unique("interop/3to5");
    let mut sub = v5_connect(server.addr, &unique("sub5")).await;
    sub.subscribe(&topic, QoS::ExactlyOnce).await;
    let mut publisher = v3_connect(server.addr, &unique("pub3")).await;
    for qos in [
        rumqttc::QoS::AtMostOnce,
        rumqttc::QoS::AtLeastOnce,
        rumqttc::QoS::ExactlyOnce,
    ] {
        publisher.publish(&topic, qos, false, b"from 3.1.1").await;
        let got = sub.recv_publish().await;
        assert_eq!(&got.topic[..], topic.as_bytes());
        assert_eq!(&got.payload[..], b"from 3.1.1");
        assert_eq!(got.qos as u8, qos as u8);
    }
    server.stop().await;
}

#[tokio::test]
async fn a_v5_publisher_reaches_a_311_subscriber() {
    let server = start().await;
    let topic = unique("interop/5to3");
    let mut sub = v3_connect(server.addr, &unique("sub3")).await;
    sub.subscribe(&topic, rumqttc::QoS::ExactlyOnce).await;
    let mut publisher = v5_connect(server.addr, &unique("pub5")).await;
    let props = m5::PublishProperties {
        user_properties: vec![("k".into(), "v".into())],
        content_type: Some("text/plain".into()),
        message_expiry_interval: Some(60),
        ..Default::default()
    };
    for qos in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce] {
        publisher
            .publish_with(&topic, qos, false, b"from 5.0", Some(props.clone()))
            .await;
        // The 5.0 properties are simply not carried to a 3.1.1 client.
        let got = sub.recv_publish().await;
        assert_eq!(got.topic, topic);
        assert_eq!(&got.payload[..], b"from 5.0");
        assert_eq!(got.qos as u8, qos as u8);
    }
    server.stop().await;
}

#[tokio::test]
async fn retained_message_set_replace_delete() {
    let server = start().await;
    let topic = unique("v5/retained");
    let mut publisher = v5_connect(server.addr, &unique("pub")).await;
    publisher
        .publish(&topic, QoS::AtLeastOnce, true, b"first")
        .await;
    publisher
        .publish(&topic, QoS::AtLeastOnce, true, b"second")
        .await;
    let mut late = v5_connect(server.addr, &unique("late")).await;
    late.subscribe(&topic, QoS::AtLeastOnce).await;
    let got = late.recv_publish().await;
    assert_eq!(&got.payload[..], b"second");
    assert!(
        got.retain,
        "§3.3.1.3: retained delivery on subscribe has RETAIN=1"
    );
    late.expect_no_publish(QUIET).await;

    // [MQTT-3.3.1-6], [MQTT-3.3.1-7]: an empty retained payload removes the retained message.
    publisher.publish(&topic, QoS::AtLeastOnce, true, b"").await;
    // Subscribers still get the empty message itself, live.
    let live = late.recv_publish().await;
    assert!(live.payload.is_empty());
    let mut after = v5_connect(server.addr, &unique("after")).await;
    after.subscribe(&topic, QoS::AtLeastOnce).await;
    after.expect_no_publish(QUIET).await;
    server.stop().await;
}

#[tokio::test]
async fn retain_handling_1_sends_retained_only_for_a_new_subscription() {
    // §3.8.3.1, [MQTT-3.3.1-10]: Retain Handling 1 sends retained messages only if the
    // subscription did not exist.
    let server = start().await;
    let topic = unique("v5/rh1");
    let mut publisher = v5_connect(server.addr, &unique("pub")).await;
    publisher
        .publish(&topic, QoS::AtLeastOnce, true, b"kept")
        .await;
    let mut sub = v5_connect(server.addr, &unique("sub")).await;
    let mut filter = m5::Filter::new(&topic, QoS::AtLeastOnce);
    filter.retain_forward_rule = m5::RetainForwardRule::OnNewSubscribe;
    sub.subscribe_filter(filter.clone(), None).await;
    let got = sub.recv_publish().await;
    assert_eq!(&got.payload[..], b"kept");
    assert!(got.retain);
    // The same subscription again: it exists, so no retained message.
    sub.subscribe_filter(filter, None).await;
    sub.expect_no_publish(QUIET).await;
    // Retain Handling 0 sends it again on every subscribe [MQTT-3.3.1-9].
    sub.subscribe(&topic, QoS::AtLeastOnce).await;
    assert_eq!(&sub.recv_publish().await.payload[..], b"kept");
    server.stop().await;
}

#[tokio::test]
async fn retain_handling_2_never_sends_retained() {
    // [MQTT-3.3.1-11]: Retain Handling 2: retained messages are not sent on subscribe.
    let server = start().await;
    let topic = unique("v5/rh2");
    let mut publisher = v5_connect(server.addr, &unique("pub")).await;
    publisher
        .publish(&topic, QoS::AtLeastOnce, true, b"kept")
        .await;
    let mut sub = v5_connect(server.addr, &unique("sub")).await;
    let mut filter = m5::Filter::new(&topic, QoS::AtLeastOnce);
    filter.retain_forward_rule = m5::RetainForwardRule::Never;
    sub.subscribe_filter(filter, None).await;
    sub.expect_no_publish(QUIET).await;
    // Live messages still flow.
    publisher
        .publish(&topic, QoS::AtLeastOnce, false, b"live")
        .await;
    assert_eq!(&sub.recv_publish().await.payload[..], b"live");
    server.stop().await;
}

#[tokio::test]
async fn retain_as_published_keeps_the_retain_flag_on_live_messages() {
    // [MQTT-3.3.1-12]: RAP 0 → RETAIN 0 on forwarded messages; [MQTT-3.3.1-13]: RAP 1 →
    // RETAIN as published.
    let server = start().await;
    let topic = unique("v5/rap");
    let mut plain = v5_connect(server.addr, &unique("plain")).await;
    plain.subscribe(&topic, QoS::AtLeastOnce).await;
    let mut rap = v5_connect(server.addr, &unique("rap")).await;
    let mut filter = m5::Filter::new(&topic, QoS::AtLeastOnce);
    filter.preserve_retain = true;
    rap.subscribe_filter(filter, None).await;

    let mut publisher = v5_connect(server.addr, &unique("pub")).await;
    publisher
        .publish(&topic, QoS::AtLeastOnce, true, b"r")
        .await;
    let got = plain.recv_publish().await;
    assert!(!got.retain, "RAP 0 clears RETAIN on live delivery");
    let got = rap.recv_publish().await;
    assert!(got.retain, "RAP 1 keeps RETAIN");
    publisher
        .publish(&topic, QoS::AtLeastOnce, false, b"n")
        .await;
    assert!(!rap.recv_publish().await.retain);
    assert!(!plain.recv_publish().await.retain);
    server.stop().await;
}

#[tokio::test]
async fn no_local_subscription_does_not_echo_own_messages() {
    // [MQTT-3.8.3-3]: with No Local, the server does not forward a client's own messages.
    let server = start().await;
    let topic = unique("v5/nolocal");
    let mut client = v5_connect(server.addr, &unique("self")).await;
    let mut filter = m5::Filter::new(&topic, QoS::AtLeastOnce);
    filter.nolocal = true;
    client.subscribe_filter(filter, None).await;
    client
        .publish(&topic, QoS::AtLeastOnce, false, b"mine")
        .await;
    client.expect_no_publish(QUIET).await;
    let mut other = v5_connect(server.addr, &unique("other")).await;
    other
        .publish(&topic, QoS::AtLeastOnce, false, b"theirs")
        .await;
    assert_eq!(&client.recv_publish().await.payload[..], b"theirs");
    server.stop().await;
}

#[tokio::test]
async fn persistent_session_delivers_queued_messages_on_resume() {
    // [MQTT-3.1.2-5]: Clean Start 0 with a session resumes it; [MQTT-3.2.2-3]: Session
    // Present 1.
    let server = start().await;
    let topic = unique("v5/persist");
    let id = unique("persistent");
    let (mut sub, ack) = v5_connect_with(session_options(server.addr, &id, false, 60)).await;
    assert!(!ack.session_present);
    sub.subscribe(&topic, QoS::AtLeastOnce).await;
    sub.disconnect().await;

    let mut publisher = v5_connect(server.addr, &unique("pub")).await;
    for payload in [&b"m1"[..], b"m2", b"m3"] {
        publisher
            .publish(&topic, QoS::AtLeastOnce, false, payload)
            .await;
    }
    let (mut sub, ack) = v5_connect_with(session_options(server.addr, &id, false, 60)).await;
    assert!(ack.session_present, "the session is resumed");
    let mut got = Vec::new();
    for _ in 0..3 {
        got.push(sub.recv_publish().await.payload.to_vec());
    }
    assert_eq!(got, vec![b"m1".to_vec(), b"m2".to_vec(), b"m3".to_vec()]);
    server.stop().await;
}

#[tokio::test]
async fn clean_start_discards_the_session() {
    // [MQTT-3.1.2-4]: Clean Start 1 discards an existing session; [MQTT-3.2.2-2]: Session
    // Present 0.
    let server = start().await;
    let topic = unique("v5/clean");
    let id = unique("cleaned");
    let (mut sub, _) = v5_connect_with(session_options(server.addr, &id, false, 60)).await;
    sub.subscribe(&topic, QoS::AtLeastOnce).await;
    sub.disconnect().await;
    let mut publisher = v5_connect(server.addr, &unique("pub")).await;
    publisher
        .publish(&topic, QoS::AtLeastOnce, false, b"queued")
        .await;

    let (mut sub, ack) = v5_connect_with(session_options(server.addr, &id, true, 60)).await;
    assert!(!ack.session_present);
    sub.expect_no_publish(QUIET).await;
    publisher
        .publish(&topic, QoS::AtLeastOnce, false, b"after")
        .await;
    sub.expect_no_publish(QUIET).await;
    server.stop().await;
}

#[tokio::test]
async fn session_expiry_zero_ends_the_session_with_the_connection() {
    // §3.1.2.11.2: Session Expiry Interval absent or 0 → the session ends when the network
    // connection closes; a later Clean Start 0 finds no session (Session Present 0).
    let server = start().await;
    let id = unique("short-lived");
    let (mut sub, _) = v5_connect_with(session_options(server.addr, &id, false, 0)).await;
    sub.subscribe(&unique("v5/short"), QoS::AtLeastOnce).await;
    sub.disconnect().await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (_sub, ack) = v5_connect_with(session_options(server.addr, &id, false, 0)).await;
    assert!(!ack.session_present);
    server.stop().await;
}

#[tokio::test]
async fn message_expiry_applies_to_queued_messages() {
    // [MQTT-3.3.2-5]: an expired message is not delivered; [MQTT-3.3.2-6]: the interval sent
    // is the received value minus the time the message waited in the server.
    let server = start().await;
    let topic = unique("v5/expiry");
    let id = unique("offline");
    let (mut sub, _) = v5_connect_with(session_options(server.addr, &id, false, 60)).await;
    sub.subscribe(&topic, QoS::AtLeastOnce).await;
    sub.disconnect().await;

    let mut publisher = v5_connect(server.addr, &unique("pub")).await;
    let short = m5::PublishProperties {
        message_expiry_interval: Some(1),
        ..Default::default()
    };
    let long = m5::PublishProperties {
        message_expiry_interval: Some(60),
        ..Default::default()
    };
    publisher
        .publish_with(&topic, QoS::AtLeastOnce, false, b"short", Some(short))
        .await;
    publisher
        .publish_with(&topic, QoS::AtLeastOnce, false, b"long", Some(long))
        .await;
    tokio::time::sleep(Duration::from_millis(2100)).await;

    let (mut sub, ack) = v5_connect_with(session_options(server.addr, &id, false, 60)).await;
    assert!(ack.session_present);
    let got = sub.recv_publish().await;
    assert_eq!(&got.payload[..], b"long", "the expired message was dropped");
    let left = got
        .properties
        .as_ref()
        .and_then(|p| p.message_expiry_interval)
        .expect("the Message Expiry Interval is forwarded");
    assert!(
        (1..=58).contains(&left),
        "the interval decreased by the ~2 s waited: {left}"
    );
    sub.expect_no_publish(QUIET).await;
    server.stop().await;
}

#[tokio::test]
async fn publish_properties_pass_through_unchanged() {
    // [MQTT-3.3.2-4] payload format, [MQTT-3.3.2-15] response topic, [MQTT-3.3.2-16]
    // correlation data, [MQTT-3.3.2-17]/[MQTT-3.3.2-18] user properties unchanged and in
    // order, [MQTT-3.3.2-20] content type.
    let server = start().await;
    let topic = unique("v5/props");
    let mut sub = v5_connect(server.addr, &unique("sub")).await;
    sub.subscribe(&topic, QoS::AtLeastOnce).await;
    let mut publisher = v5_connect(server.addr, &unique("pub")).await;
    let users = vec![
        ("b".to_owned(), "1".to_owned()),
        ("a".to_owned(), "2".to_owned()),
        ("b".to_owned(), "3".to_owned()),
        ("b".to_owned(), "1".to_owned()),
        ("z".to_owned(), String::new()),
    ];
    let props = m5::PublishProperties {
        payload_format_indicator: Some(1),
        content_type: Some("application/json; charset=utf-8".into()),
        response_topic: Some(format!("{topic}/reply")),
        correlation_data: Some(Bytes::from_static(b"\x00\x01corr\xff")),
        user_properties: users.clone(),
        ..Default::default()
    };
    publisher
        .publish_with(&topic, QoS::AtLeastOnce, false, b"{}", Some(props))
        .await;
    let got = sub.recv_publish().await;
    let p = got.properties.expect("properties forwarded");
    assert_eq!(p.payload_format_indicator, Some(1));
    assert_eq!(
        p.content_type.as_deref(),
        Some("application/json; charset=utf-8")
    );
    assert_eq!(
        p.response_topic.as_deref(),
        Some(format!("{topic}/reply").as_str())
    );
    assert_eq!(
        p.correlation_data.as_deref(),
        Some(&b"\x00\x01corr\xff"[..])
    );
    assert_eq!(p.user_properties, users, "order and duplicates kept");
    server.stop().await;
}

#[tokio::test]
async fn subscription_identifier_is_delivered() {
    // [MQTT-3.3.4-3]: the Subscription Identifier of the matching subscription is sent.
    let server = start().await;
    let base = unique("v5/subid");
    let mut sub = v5_connect(server.addr, &unique("sub")).await;
    let props = m5::SubscribeProperties {
        id: Some(42),
        user_properties: Vec::new(),
    };
    sub.subscribe_filter(
        m5::Filter::new(format!("{base}/+"), QoS::AtLeastOnce),
        Some(props),
    )
    .await;
    sub.subscribe(&format!("{base}/plain"), QoS::AtLeastOnce)
        .await;
    let mut publisher = v5_connect(server.addr, &unique("pub")).await;
    publisher
        .publish(&format!("{base}/x"), QoS::AtLeastOnce, false, b"x")
        .await;
    let got = sub.recv_publish().await;
    let ids = got
        .properties
        .map(|p| p.subscription_identifiers)
        .unwrap_or_default();
    assert_eq!(ids, vec![42]);

    // A subscription without an identifier: none is sent.
    let mut other = v5_connect(server.addr, &unique("sub2")).await;
    other
        .subscribe(&format!("{base}/plain"), QoS::AtLeastOnce)
        .await;
    publisher
        .publish(&format!("{base}/plain"), QoS::AtLeastOnce, false, b"p")
        .await;
    let got = other.recv_publish().await;
    let ids = got
        .properties
        .map(|p| p.subscription_identifiers)
        .unwrap_or_default();
    assert!(ids.is_empty(), "no identifier: {ids:?}");
    server.stop().await;
}

#[tokio::test]
async fn shared_subscription_splits_messages_between_members() {
    // §4.8.2: each message to a shared subscription goes to exactly one member.
    let server = start().await;
    let topic = unique("v5/shared");
    let share = format!("$share/grp/{topic}");
    let mut a = v5_connect(server.addr, &unique("member-a")).await;
    a.subscribe(&share, QoS::AtLeastOnce).await;
    let mut b = v5_connect(server.addr, &unique("member-b")).await;
    b.subscribe(&share, QoS::AtLeastOnce).await;
    let mut publisher = v5_connect(server.addr, &unique("pub")).await;
    let total = 20;
    for i in 0..total {
        publisher
            .publish(&topic, QoS::AtLeastOnce, false, format!("{i}").as_bytes())
            .await;
    }
    let mut got_a = BTreeSet::new();
    let mut got_b = BTreeSet::new();
    let deadline = tokio::time::Instant::now() + WAIT;
    while got_a.len() + got_b.len() < total {
        let (from_a, event) = tokio::select! {
            event = a.events.recv() => (true, event),
            event = b.events.recv() => (false, event),
            () = tokio::time::sleep_until(deadline) => {
                panic!("only {} + {} of {total} messages arrived", got_a.len(), got_b.len())
            }
        };
        match event {
            Some(Ok(rumqttc::v5::Event::Incoming(m5::Packet::Publish(p)))) => {
                let payload = String::from_utf8(p.payload.to_vec()).unwrap();
                let set = if from_a { &mut got_a } else { &mut got_b };
                assert!(set.insert(payload), "a member got a message twice");
            }
            Some(Ok(_)) => {}
            Some(Err(err)) => panic!("member connection failed: {err}"),
            None => panic!("member event loop ended"),
        }
    }
    a.expect_no_publish(QUIET).await;
    b.expect_no_publish(Duration::from_millis(50)).await;
    assert!(got_a.is_disjoint(&got_b), "a message went to both members");
    let all: BTreeSet<String> = got_a.union(&got_b).cloned().collect();
    let expected: BTreeSet<String> = (0..total).map(|i| format!("{i}")).collect();
    assert_eq!(all, expected);
    server.stop().await;
}

#[tokio::test]
async fn shared_subscription_gets_no_retained_messages_on_subscribe() {
    // §4.8.2 (and §3.3.1.3): retained messages are not sent when a session subscribes to a
    // Shared Subscription.
    let server = start().await;
    let topic = unique("v5/shared-retained");
    let mut publisher = v5_connect(server.addr, &unique("pub")).await;
    publisher
        .publish(&topic, QoS::AtLeastOnce, true, b"kept")
        .await;
    let mut member = v5_connect(server.addr, &unique("member")).await;
    member
        .subscribe(&format!("$share/g2/{topic}"), QoS::AtLeastOnce)
        .await;
    member.expect_no_publish(QUIET).await;
    publisher
        .publish(&topic, QoS::AtLeastOnce, false, b"live")
        .await;
    assert_eq!(&member.recv_publish().await.payload[..], b"live");
    server.stop().await;
}

#[tokio::test]
async fn shared_and_normal_subscription_both_receive() {
    // §4.8.2: a shared subscription and a non-shared one of the same filter are independent.
    let server = start().await;
    let topic = unique("v5/shared-mixed");
    let mut shared = v5_connect(server.addr, &unique("shared")).await;
    shared
        .subscribe(&format!("$share/g1/{topic}"), QoS::AtLeastOnce)
        .await;
    let mut normal = v5_connect(server.addr, &unique("normal")).await;
    normal.subscribe(&topic, QoS::AtLeastOnce).await;
    let mut publisher = v5_connect(server.addr, &unique("pub")).await;
    publisher
        .publish(&topic, QoS::AtLeastOnce, false, b"both")
        .await;
    assert_eq!(&shared.recv_publish().await.payload[..], b"both");
    assert_eq!(&normal.recv_publish().await.payload[..], b"both");
    server.stop().await;
}

#[tokio::test]
async fn empty_client_id_gets_an_assigned_client_identifier() {
    // [MQTT-3.2.2-16]: with a zero-length client id the server returns an Assigned Client
    // Identifier.
    let server = start().await;
    let (_client, ack) = v5_connect_with(v5_options(server.addr, "")).await;
    let assigned = ack
        .properties
        .and_then(|p| p.assigned_client_identifier)
        .expect("Assigned Client Identifier in CONNACK");
    assert!(!assigned.is_empty());
    let (_other, ack) = v5_connect_with(v5_options(server.addr, "")).await;
    let other = ack
        .properties
        .and_then(|p| p.assigned_client_identifier)
        .expect("Assigned Client Identifier in CONNACK");
    assert_ne!(assigned, other, "each client gets its own identifier");
    server.stop().await;
}

#[tokio::test]
async fn will_delay_is_cancelled_when_the_session_resumes() {
    // [MQTT-3.1.3-9]: if a new connection to the session is made before the Will Delay
    // Interval has passed, the will is not sent.
    let server = start().await;
    let will_topic = unique("v5/will-delay");
    let mut watcher = v5_connect(server.addr, &unique("watch")).await;
    watcher.subscribe(&will_topic, QoS::AtLeastOnce).await;

    let id = unique("flaky");
    let mut options = session_options(server.addr, &id, false, 60);
    let will_props = m5::LastWillProperties {
        delay_interval: Some(1),
        payload_format_indicator: None,
        message_expiry_interval: None,
        content_type: None,
        response_topic: None,
        correlation_data: None,
        user_properties: Vec::new(),
    };
    options.set_last_will(m5::LastWill::new(
        &will_topic,
        "gone",
        QoS::AtLeastOnce,
        false,
        Some(will_props.clone()),
    ));
    let (client, _) = v5_connect_with(options.clone()).await;
    client.kill().await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (_client, ack) = v5_connect_with(options).await;
    assert!(ack.session_present);
    watcher.expect_no_publish(Duration::from_millis(1500)).await;

    // Control: without the reconnect the will comes, but only after the delay.
    let mut options = session_options(server.addr, &unique("gone-for-good"), false, 60);
    options.set_last_will(m5::LastWill::new(
        &will_topic,
        "late will",
        QoS::AtLeastOnce,
        false,
        Some(will_props),
    ));
    let (client, _) = v5_connect_with(options).await;
    let dropped_at = tokio::time::Instant::now();
    client.kill().await;
    let got = watcher.recv_publish().await;
    assert_eq!(&got.payload[..], b"late will");
    let waited = dropped_at.elapsed();
    assert!(
        waited >= Duration::from_millis(900),
        "the will waited for its delay: {waited:?}"
    );
    server.stop().await;
}

#[tokio::test]
async fn shutdown_sends_server_shutting_down_to_v5_clients() {
    // §3.14.2.1: 0x8B Server shutting down.
    let server = start().await;
    let mut client = v5_connect(server.addr, &unique("victim")).await;
    server.stop().await;
    let err = tokio::time::timeout(WAIT, async {
        loop {
            match client.events.recv().await {
                Some(Err(err)) => break err,
                Some(Ok(_)) => {}
                None => panic!("event loop ended without an error"),
            }
        }
    })
    .await
    .expect("the client sees the server go");
    assert!(
        err.contains("ServerShuttingDown"),
        "rumqttc reports the DISCONNECT reason: {err}"
    );
}

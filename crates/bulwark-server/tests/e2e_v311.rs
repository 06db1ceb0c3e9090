//! End-to-end tests with rumqttc's MQTT 3.1.1 client against a broker on `127.0.0.1:0`.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "tests"
)]

mod common;

use std::time::Duration;

use common::{QUIET, WAIT, start, start_with, unique, v3_connect, v3_connect_with, v3_options};
use rumqttc::{LastWill, QoS, SubscribeReasonCode};

#[tokio::test]
async fn qos_0_1_2_reach_a_subscriber_at_their_own_qos() {
    let server = start().await;
    let topic = unique("v311/qos");
    let mut sub = v3_connect(server.addr, &unique("sub")).await;
    assert_eq!(
        sub.subscribe(&topic, QoS::ExactlyOnce).await,
        vec![SubscribeReasonCode::Success(QoS::ExactlyOnce)]
    );
    let mut publisher = v3_connect(server.addr, &unique("pub")).await;
    for (qos, payload) in [
        (QoS::AtMostOnce, &b"zero"[..]),
        (QoS::AtLeastOnce, b"one"),
        (QoS::ExactlyOnce, b"two"),
    ] {
        publisher.publish(&topic, qos, false, payload).await;
        let got = sub.recv_publish().await;
        assert_eq!(got.topic, topic);
        assert_eq!(&got.payload[..], payload);
        assert_eq!(got.qos, qos, "delivered at min(published, granted) QoS");
        assert!(!got.retain);
    }
    sub.expect_no_publish(QUIET).await;
    publisher.disconnect().await;
    sub.disconnect().await;
    server.stop().await;
}

#[tokio::test]
async fn delivery_qos_is_downgraded_to_the_subscription_qos() {
    // [MQTT-3.8.4-6]: delivered at the minimum of published and granted QoS.
    let server = start().await;
    let topic = unique("v311/downgrade");
    let mut sub0 = v3_connect(server.addr, &unique("sub0")).await;
    sub0.subscribe(&topic, QoS::AtMostOnce).await;
    let mut sub1 = v3_connect(server.addr, &unique("sub1")).await;
    sub1.subscribe(&topic, QoS::AtLeastOnce).await;
    let mut publisher = v3_connect(server.addr, &unique("pub")).await;
    publisher
        .publish(&topic, QoS::ExactlyOnce, false, b"down")
        .await;
    let got0 = sub0.recv_publish().await;
    assert_eq!(
        (got0.qos, &got0.payload[..]),
        (QoS::AtMostOnce, &b"down"[..])
    );
    let got1 = sub1.recv_publish().await;
    assert_eq!(
        (got1.qos, &got1.payload[..]),
        (QoS::AtLeastOnce, &b"down"[..])
    );
    server.stop().await;
}

#[tokio::test]
async fn wildcards_match_and_unsubscribe_stops_delivery() {
    let server = start().await;
    let base = unique("v311/wild");
    let mut sub = v3_connect(server.addr, &unique("sub")).await;
    sub.subscribe(&format!("{base}/+/temp"), QoS::AtLeastOnce)
        .await;
    let mut publisher = v3_connect(server.addr, &unique("pub")).await;
    publisher
        .publish(
            &format!("{base}/kitchen/temp"),
            QoS::AtLeastOnce,
            false,
            b"21",
        )
        .await;
    let got = sub.recv_publish().await;
    assert_eq!(got.topic, format!("{base}/kitchen/temp"));
    // `+` matches exactly one level.
    publisher
        .publish(&format!("{base}/a/b/temp"), QoS::AtLeastOnce, false, b"x")
        .await;
    sub.expect_no_publish(QUIET).await;

    sub.client
        .unsubscribe(format!("{base}/+/temp"))
        .await
        .unwrap();
    sub.wait_for(|p| matches!(p, rumqttc::Packet::UnsubAck(_)).then_some(()))
        .await;
    publisher
        .publish(
            &format!("{base}/kitchen/temp"),
            QoS::AtLeastOnce,
            false,
            b"22",
        )
        .await;
    sub.expect_no_publish(QUIET).await;

    sub.subscribe(&format!("{base}/#"), QoS::AtMostOnce).await;
    // `#` also matches the parent level (§4.7.1.2).
    publisher
        .publish(&base, QoS::AtMostOnce, false, b"parent")
        .await;
    assert_eq!(&sub.recv_publish().await.payload[..], b"parent");
    server.stop().await;
}

#[tokio::test]
async fn retained_message_set_replace_and_delete() {
    let server = start().await;
    let topic = unique("v311/retained");
    let mut publisher = v3_connect(server.addr, &unique("pub")).await;
    publisher
        .publish(&topic, QoS::AtLeastOnce, true, b"first")
        .await;
    publisher
        .publish(&topic, QoS::AtLeastOnce, true, b"second")
        .await;

    // A new subscriber gets the latest retained message, with RETAIN set [MQTT-3.3.1-8].
    let mut late = v3_connect(server.addr, &unique("late")).await;
    late.subscribe(&topic, QoS::AtLeastOnce).await;
    let got = late.recv_publish().await;
    assert_eq!(
        &got.payload[..],
        b"second",
        "the retained message was replaced"
    );
    assert!(
        got.retain,
        "retained delivery on subscribe carries RETAIN=1"
    );
    late.expect_no_publish(QUIET).await;

    // A live subscriber gets a retained publication with RETAIN=0 [MQTT-3.3.1-9].
    publisher
        .publish(&topic, QoS::AtLeastOnce, true, b"third")
        .await;
    let live = late.recv_publish().await;
    assert_eq!(&live.payload[..], b"third");
    assert!(
        !live.retain,
        "3.1.1 forwards to existing subscriptions with RETAIN=0"
    );

    // An empty retained payload deletes the retained message [MQTT-3.3.1-10, -11].
    publisher.publish(&topic, QoS::AtLeastOnce, true, b"").await;
    let mut after = v3_connect(server.addr, &unique("after")).await;
    after.subscribe(&topic, QoS::AtLeastOnce).await;
    after.expect_no_publish(QUIET).await;
    server.stop().await;
}

#[tokio::test]
async fn will_is_published_when_the_connection_drops() {
    // [MQTT-3.1.2-8]: the will is published when the connection closes without DISCONNECT.
    let server = start().await;
    let will_topic = unique("v311/will");
    let mut watcher = v3_connect(server.addr, &unique("watch")).await;
    watcher.subscribe(&will_topic, QoS::AtLeastOnce).await;

    let mut options = v3_options(server.addr, &unique("dying"));
    options.set_last_will(LastWill::new(&will_topic, "gone", QoS::AtLeastOnce, false));
    let (dying, _) = v3_connect_with(options).await;
    dying.kill().await;

    let got = watcher.recv_publish().await;
    assert_eq!(got.topic, will_topic);
    assert_eq!(&got.payload[..], b"gone");
    assert_eq!(got.qos, QoS::AtLeastOnce);
    server.stop().await;
}

#[tokio::test]
async fn will_is_not_published_after_disconnect() {
    // [MQTT-3.1.2-10], [MQTT-3.14.4-3]: DISCONNECT discards the will.
    let server = start().await;
    let will_topic = unique("v311/will-clean");
    let mut watcher = v3_connect(server.addr, &unique("watch")).await;
    watcher.subscribe(&will_topic, QoS::AtLeastOnce).await;

    let mut options = v3_options(server.addr, &unique("polite"));
    options.set_last_will(LastWill::new(&will_topic, "gone", QoS::AtLeastOnce, false));
    let (polite, _) = v3_connect_with(options).await;
    polite.disconnect().await;
    watcher.expect_no_publish(Duration::from_millis(500)).await;
    server.stop().await;
}

#[tokio::test]
async fn retained_will_is_kept_for_later_subscribers() {
    let server = start().await;
    let will_topic = unique("v311/will-retained");
    let mut options = v3_options(server.addr, &unique("dying"));
    options.set_last_will(LastWill::new(
        &will_topic,
        "offline",
        QoS::AtLeastOnce,
        true,
    ));
    let (dying, _) = v3_connect_with(options).await;
    dying.kill().await;
    tokio::time::sleep(Duration::from_millis(200)).await;

    let mut late = v3_connect(server.addr, &unique("late")).await;
    late.subscribe(&will_topic, QoS::AtLeastOnce).await;
    let got = late.recv_publish().await;
    assert_eq!(&got.payload[..], b"offline");
    assert!(got.retain);
    server.stop().await;
}

#[tokio::test]
async fn persistent_session_queues_qos1_while_offline() {
    // [MQTT-3.1.2-4]: with Clean Session 0 the session (subscriptions, QoS 1/2 messages)
    // outlives the connection; [MQTT-3.2.2-2]: CONNACK then has Session Present 1.
    let server = start().await;
    let topic = unique("v311/persist");
    let id = unique("persistent");
    let mut options = v3_options(server.addr, &id);
    options.set_clean_session(false);
    let (mut sub, ack) = v3_connect_with(options.clone()).await;
    assert!(!ack.session_present, "a new session is not present");
    sub.subscribe(&topic, QoS::AtLeastOnce).await;
    sub.disconnect().await;

    let mut publisher = v3_connect(server.addr, &unique("pub")).await;
    for payload in [&b"m1"[..], b"m2", b"m3"] {
        publisher
            .publish(&topic, QoS::AtLeastOnce, false, payload)
            .await;
    }
    // QoS 0 is not queued for an offline client by default.
    publisher
        .publish(&topic, QoS::AtMostOnce, false, b"q0")
        .await;

    let (mut sub, ack) = v3_connect_with(options).await;
    assert!(ack.session_present, "the stored session is resumed");
    let mut got = Vec::new();
    for _ in 0..3 {
        let p = sub.recv_publish().await;
        assert_eq!(p.qos, QoS::AtLeastOnce);
        got.push(p.payload.to_vec());
    }
    assert_eq!(got, vec![b"m1".to_vec(), b"m2".to_vec(), b"m3".to_vec()]);

    // The subscription survived too: live messages still arrive.
    publisher
        .publish(&topic, QoS::AtLeastOnce, false, b"live")
        .await;
    assert_eq!(&sub.recv_publish().await.payload[..], b"live");
    server.stop().await;
}

#[tokio::test]
async fn clean_session_discards_the_stored_session() {
    // [MQTT-3.1.2-6]: Clean Session 1 discards any previous session; [MQTT-3.2.2-1]: Session
    // Present 0.
    let server = start().await;
    let topic = unique("v311/clean");
    let id = unique("cleaned");
    let mut options = v3_options(server.addr, &id);
    options.set_clean_session(false);
    let (mut sub, _) = v3_connect_with(options).await;
    sub.subscribe(&topic, QoS::AtLeastOnce).await;
    sub.disconnect().await;

    let mut publisher = v3_connect(server.addr, &unique("pub")).await;
    publisher
        .publish(&topic, QoS::AtLeastOnce, false, b"queued")
        .await;

    let (mut sub, ack) = v3_connect_with(v3_options(server.addr, &id)).await;
    assert!(!ack.session_present);
    sub.expect_no_publish(QUIET).await;
    publisher
        .publish(&topic, QoS::AtLeastOnce, false, b"after")
        .await;
    sub.expect_no_publish(QUIET).await;
    server.stop().await;
}

#[tokio::test]
async fn second_connection_with_the_same_client_id_takes_over() {
    // [MQTT-3.1.4-2]: the server disconnects the existing client.
    let server = start().await;
    let id = unique("twin");
    let mut first = v3_connect(server.addr, &id).await;
    let mut second = v3_connect(server.addr, &id).await;
    let ended = tokio::time::timeout(WAIT, async {
        loop {
            match first.events.recv().await {
                Some(Err(_)) | None => break,
                Some(Ok(_)) => {}
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "the first connection is closed");

    // The second connection works.
    let topic = unique("v311/twin");
    second.subscribe(&topic, QoS::AtLeastOnce).await;
    let mut publisher = v3_connect(server.addr, &unique("pub")).await;
    publisher
        .publish(&topic, QoS::AtLeastOnce, false, b"hi")
        .await;
    assert_eq!(&second.recv_publish().await.payload[..], b"hi");
    server.stop().await;
}

#[tokio::test]
async fn hash_does_not_match_sys_topics_and_sys_is_published() {
    // [MQTT-4.7.2-1]: `#` does not match topics starting with `$`.
    let server = start_with(|c| c.broker.sys_interval = Some(Duration::from_secs(1))).await;
    let mut everything = v3_connect(server.addr, &unique("all")).await;
    everything.subscribe("#", QoS::AtMostOnce).await;
    // Nor does a filter starting with `+`.
    let mut plus = v3_connect(server.addr, &unique("plus")).await;
    plus.subscribe("+/broker/version", QoS::AtMostOnce).await;
    let mut sys = v3_connect(server.addr, &unique("sys")).await;
    sys.subscribe("$SYS/#", QoS::AtMostOnce).await;

    let version = tokio::time::timeout(WAIT, async {
        loop {
            let p = sys.recv_publish().await;
            if p.topic == "$SYS/broker/version" {
                break p;
            }
        }
    })
    .await
    .expect("$SYS/broker/version within the wait");
    assert!(!version.payload.is_empty());
    // Over the same time the `#` and `+/...` subscribers have seen nothing: only `$SYS`
    // topics were published.
    everything
        .expect_no_publish(Duration::from_millis(200))
        .await;
    plus.expect_no_publish(Duration::from_millis(50)).await;
    server.stop().await;
}

#[tokio::test]
async fn empty_client_id_with_clean_session_gets_a_session() {
    // [MQTT-3.1.3-6]: a zero-length client id with Clean Session 1 is accepted.
    let server = start().await;
    let topic = unique("v311/anon");
    let mut sub = v3_connect(server.addr, "").await;
    sub.subscribe(&topic, QoS::AtLeastOnce).await;
    let mut publisher = v3_connect(server.addr, "").await;
    publisher
        .publish(&topic, QoS::AtLeastOnce, false, b"hello")
        .await;
    assert_eq!(&sub.recv_publish().await.payload[..], b"hello");
    server.stop().await;
}

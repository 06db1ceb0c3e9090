//! Durability end to end: with a store, a QoS 1/2 PUBLISH is acknowledged only once the
//! store holds it for the persistent sessions it is queued to, and a broker started again on
//! the same store delivers what was acknowledged. The store here is the in-memory image (the
//! embedded disk store has its own tests); sharing it between two servers stands for a
//! restart on the same disk.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "test code"
)]

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bulwark_proto::{Packet, PacketId, ProtocolVersion, PubAck, PubComp, PubRec, PubRel, QoS};
use bulwark_store::{MemoryImageStore, Restored, Store, StoreError, StoreOp};
use common::{Raw, connect_packet};

/// A store whose commits take `delay`, and which notes what it holds after each.
#[derive(Debug)]
struct SlowStore {
    inner: MemoryImageStore,
    delay: Duration,
    commits: Arc<Mutex<Vec<Instant>>>,
}

impl Store for SlowStore {
    fn load(&mut self) -> Result<Restored, StoreError> {
        self.inner.load()
    }

    fn commit(&mut self, ops: &[StoreOp]) -> Result<(), StoreError> {
        std::thread::sleep(self.delay);
        self.inner.commit(ops)?;
        self.commits.lock().unwrap().push(Instant::now());
        Ok(())
    }
}

fn persistent(id: &str) -> bulwark_proto::Connect {
    let mut c = connect_packet(ProtocolVersion::V5, id);
    c.clean_start = false;
    c.properties.session_expiry_interval = Some(300);
    c
}

/// A persistent subscriber of `filter` that then goes away, leaving its session parked.
async fn park_subscriber(addr: std::net::SocketAddr, id: &str, filter: &str, qos: QoS) {
    let (mut sub, _) = Raw::connect(addr, &persistent(id)).await;
    sub.subscribe_qos(1, filter, qos).await;
    sub.send(&bulwark_proto::Disconnect::new(
        bulwark_proto::ReasonCode::Success,
    ))
    .await;
    sub.until_closed(common::WAIT).await;
}

fn pid(n: u16) -> PacketId {
    PacketId::new(n).unwrap()
}

#[tokio::test]
async fn an_acknowledgement_waits_for_the_commit() {
    let image = MemoryImageStore::new();
    let commits = Arc::new(Mutex::new(Vec::new()));
    let store = SlowStore {
        inner: image.clone(),
        delay: Duration::from_millis(300),
        commits: commits.clone(),
    };
    let server = common::start_durable(|_| {}, Box::new(store)).await;
    park_subscriber(server.addr, "sub", "t", QoS::AtLeastOnce).await;
    let (mut publisher, _) = Raw::v5(server.addr, "pub").await;
    let sent = Instant::now();
    publisher
        .send(&common::publish("t", QoS::AtLeastOnce, 1, b"kept"))
        .await;
    match publisher.recv().await {
        Packet::PubAck(ack) => assert_eq!(ack.packet_id, pid(1)),
        other => panic!("expected PUBACK, got {other:?}"),
    }
    let acked = Instant::now();
    // The message is in the store for the parked session, and the commit that put it there
    // finished before the PUBACK came.
    assert_eq!(image.image().messages(), 1);
    let last_commit = *commits.lock().unwrap().last().unwrap();
    assert!(last_commit <= acked && last_commit > sent);
    assert!(
        acked - sent >= Duration::from_millis(250),
        "{:?}",
        acked - sent
    );
    server.stop().await;
}

#[tokio::test]
async fn a_restart_on_the_same_store_delivers_what_was_acknowledged() {
    let store = MemoryImageStore::new();
    let server = common::start_durable(|_| {}, Box::new(store.clone())).await;
    park_subscriber(server.addr, "sub", "t/#", QoS::ExactlyOnce).await;
    let (mut publisher, _) = Raw::v5(server.addr, "pub").await;
    for i in 1..=3u16 {
        publisher
            .send(&common::publish(
                &format!("t/{i}"),
                QoS::AtLeastOnce,
                i,
                b"one",
            ))
            .await;
        assert!(matches!(publisher.recv().await, Packet::PubAck(_)));
    }
    publisher
        .send(&common::publish("t/4", QoS::ExactlyOnce, 4, b"two"))
        .await;
    assert!(matches!(publisher.recv().await, Packet::PubRec(_)));
    publisher.send(&PubRel::new(pid(4))).await;
    assert!(matches!(publisher.recv().await, Packet::PubComp(_)));
    let mut retained = common::publish("r/x", QoS::AtLeastOnce, 5, b"kept");
    retained.retain = true;
    publisher.send(&retained).await;
    assert!(matches!(publisher.recv().await, Packet::PubAck(_)));
    server.stop().await;

    let server = common::start_durable(|_| {}, Box::new(store.clone())).await;
    let (mut sub, ack) = Raw::connect(server.addr, &persistent("sub")).await;
    assert!(ack.session_present, "{ack:?}");
    let mut got = Vec::new();
    for _ in 0..4 {
        let p = sub.recv_publish().await;
        got.push((p.topic.as_str().to_owned(), p.qos));
        let id = p.packet_id.unwrap();
        match p.qos {
            QoS::AtLeastOnce => sub.send(&PubAck::new(id)).await,
            _ => {
                sub.send(&PubRec::new(id)).await;
                assert!(matches!(sub.recv().await, Packet::PubRel(_)));
                sub.send(&PubComp::new(id)).await;
            }
        }
    }
    assert_eq!(
        got,
        [
            ("t/1".to_owned(), QoS::AtLeastOnce),
            ("t/2".to_owned(), QoS::AtLeastOnce),
            ("t/3".to_owned(), QoS::AtLeastOnce),
            ("t/4".to_owned(), QoS::ExactlyOnce),
        ]
    );
    sub.expect_no_publish(Duration::from_millis(200)).await;
    let (mut reader, _) = Raw::v5(server.addr, "reader").await;
    reader.subscribe_qos(1, "r/#", QoS::AtLeastOnce).await;
    assert_eq!(reader.recv_publish().await.payload.as_ref(), b"kept");
    server.stop().await;
    // Acknowledged and completed: nothing left for the session.
    assert_eq!(store.image().messages(), 0);
}

/// A connected persistent subscriber gets a QoS 1 message at once (the publisher's PUBACK
/// still waits for the commit: a stop before it makes the publisher send it again, which QoS 1
/// allows), but a QoS 2 message only once it is stored (exactly once across a crash).
#[tokio::test]
async fn qos1_deliveries_go_before_the_commit_and_qos2_ones_after() {
    let image = MemoryImageStore::new();
    let commits = Arc::new(Mutex::new(Vec::new()));
    let store = SlowStore {
        inner: image.clone(),
        delay: Duration::from_millis(300),
        commits: commits.clone(),
    };
    let server = common::start_durable(|_| {}, Box::new(store)).await;
    for (qos, early) in [(QoS::AtLeastOnce, true), (QoS::ExactlyOnce, false)] {
        let topic = format!("t{}", qos.as_u8());
        let (mut sub, _) =
            Raw::connect(server.addr, &persistent(&format!("sub{}", qos.as_u8()))).await;
        sub.subscribe_qos(1, &topic, qos).await;
        // Nothing in flight on the store's side before the publication.
        tokio::time::sleep(Duration::from_millis(700)).await;
        let (mut publisher, _) = Raw::v5(server.addr, &format!("pub{}", qos.as_u8())).await;
        let p = common::publish(&topic, qos, 1, b"m");
        let sent = Instant::now();
        publisher.send(&p).await;
        let delivered = sub.recv_publish().await;
        let got = Instant::now() - sent;
        assert_eq!(delivered.payload.as_ref(), b"m");
        if early {
            assert!(
                got < Duration::from_millis(250),
                "QoS 1 delivered after {got:?}"
            );
        } else {
            assert!(
                got >= Duration::from_millis(250),
                "QoS 2 delivered after {got:?}"
            );
        }
        // The publisher's acknowledgement waits for the commit either way.
        let acked = loop {
            match publisher.recv().await {
                Packet::PubAck(_) | Packet::PubRec(_) => break Instant::now() - sent,
                _ => {}
            }
        };
        assert!(acked >= Duration::from_millis(250), "{acked:?}");
        server_quiet(&mut sub, &mut publisher).await;
    }
    server.stop().await;
}

/// Drops the two connections cleanly.
async fn server_quiet(sub: &mut Raw, publisher: &mut Raw) {
    for c in [sub, publisher] {
        c.send(&bulwark_proto::Disconnect::new(
            bulwark_proto::ReasonCode::Success,
        ))
        .await;
    }
}

/// A store whose commits fail while `full` is set, as on a full disk.
#[derive(Debug)]
struct FullDisk {
    inner: MemoryImageStore,
    full: Arc<std::sync::atomic::AtomicBool>,
}

impl Store for FullDisk {
    fn load(&mut self) -> Result<Restored, StoreError> {
        self.inner.load()
    }

    fn commit(&mut self, ops: &[StoreOp]) -> Result<(), StoreError> {
        if self.full.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(StoreError::Io {
                context: "writing the test store".to_owned(),
                source: std::io::Error::from_raw_os_error(28), // ENOSPC
            });
        }
        self.inner.commit(ops)
    }
}

/// A durable server on a store whose disk then fills up: a persistent session "sub" of `t`
/// parked, and a publisher whose QoS 1 message for it (`payload`) cannot be stored, so its
/// PUBACK does not come; a resume of "sub" is refused with 0x88.
async fn full_disk(payload: &'static [u8]) -> FullDiskRun {
    let image = MemoryImageStore::new();
    let full = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let store = FullDisk {
        inner: image.clone(),
        full: full.clone(),
    };
    let server = common::start_durable(|_| {}, Box::new(store)).await;
    park_subscriber(server.addr, "sub", "t", QoS::AtLeastOnce).await;
    full.store(true, std::sync::atomic::Ordering::SeqCst);
    let (mut publisher, _) = Raw::v5(server.addr, "pub").await;
    publisher
        .send(&common::publish("t", QoS::AtLeastOnce, 1, payload))
        .await;
    publisher
        .expect_no_publish(Duration::from_millis(500))
        .await;
    // Resuming the session needs the store: refused at once.
    let (_raw, ack) = Raw::connect(server.addr, &persistent("sub")).await;
    assert_eq!(
        ack.reason_code,
        bulwark_proto::ReasonCode::ServerUnavailable
    );
    FullDiskRun {
        server,
        image,
        full,
        publisher,
    }
}

struct FullDiskRun {
    server: common::TestServer,
    image: MemoryImageStore,
    full: Arc<std::sync::atomic::AtomicBool>,
    publisher: Raw,
}

#[tokio::test]
async fn a_failing_store_refuses_resumes_and_does_not_hold_up_shutdown() {
    let FullDiskRun {
        server,
        image,
        mut publisher,
        ..
    } = full_disk(b"unstored").await;
    // 3.1.1 is refused with return code 3 (server unavailable).
    let mut v311 = connect_packet(ProtocolVersion::V3_1_1, "sub");
    v311.clean_start = false;
    let (_raw, ack) = Raw::connect(server.addr, &v311).await;
    assert_eq!(
        ack.reason_code,
        bulwark_proto::ReasonCode::ServerUnavailable
    );
    // Nor may a Clean Start 1 CONNECT end the stored session: the store could not record its
    // end (after a restart it would be back).
    let (_raw, ack) = Raw::connect(server.addr, &connect_packet(ProtocolVersion::V5, "sub")).await;
    assert_eq!(
        ack.reason_code,
        bulwark_proto::ReasonCode::ServerUnavailable
    );
    // A client that needs no store still gets in.
    let (_clean, _) = Raw::v5(server.addr, "clean").await;

    // Shutdown ends within the grace period (2 s here; `stop` allows 5), the publisher told
    // to go without the acknowledgement of what was never stored.
    let stopped = Instant::now();
    server.stop().await;
    assert!(
        stopped.elapsed() < Duration::from_secs(5),
        "{:?}",
        stopped.elapsed()
    );
    let rest = publisher.until_closed(common::WAIT).await;
    assert!(
        !rest.iter().any(|p| matches!(p, Packet::PubAck(_))),
        "{rest:?}"
    );
    assert!(
        rest.iter().any(|p| matches!(p, Packet::Disconnect(d)
            if d.reason_code == bulwark_proto::ReasonCode::ServerShuttingDown)),
        "{rest:?}"
    );
    assert_eq!(image.image().messages(), 0);
}

#[tokio::test]
async fn once_the_store_takes_commits_again_everything_held_goes_out() {
    let FullDiskRun {
        server,
        full,
        mut publisher,
        ..
    } = full_disk(b"late").await;
    // Room on the disk again: the retry stores the message, its PUBACK comes, and the
    // session can be resumed with the message in it.
    full.store(false, std::sync::atomic::Ordering::SeqCst);
    match publisher.recv().await {
        Packet::PubAck(ack) => assert_eq!(ack.packet_id, pid(1)),
        other => panic!("expected PUBACK, got {other:?}"),
    }
    let (mut sub, ack) = Raw::connect(server.addr, &persistent("sub")).await;
    assert!(ack.session_present, "{ack:?}");
    assert_eq!(sub.recv_publish().await.payload.as_ref(), b"late");
    server.stop().await;
}

/// A store whose commits, once `hang` is set, do not return for a minute (a disk that hangs
/// rather than failing).
#[derive(Debug)]
struct HangingDisk {
    inner: MemoryImageStore,
    hang: Arc<std::sync::atomic::AtomicBool>,
}

impl Store for HangingDisk {
    fn load(&mut self) -> Result<Restored, StoreError> {
        self.inner.load()
    }

    fn commit(&mut self, ops: &[StoreOp]) -> Result<(), StoreError> {
        if self.hang.load(std::sync::atomic::Ordering::SeqCst) {
            std::thread::sleep(Duration::from_secs(60));
        }
        self.inner.commit(ops)
    }
}

#[tokio::test]
async fn a_store_that_hangs_does_not_hold_the_exit_past_the_grace_period() {
    let hang = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let store = HangingDisk {
        inner: MemoryImageStore::new(),
        hang: hang.clone(),
    };
    let server = common::start_durable(
        |c| c.shutdown_grace = Duration::from_secs(1),
        Box::new(store),
    )
    .await;
    park_subscriber(server.addr, "hung-sub", "hung/t", QoS::AtLeastOnce).await;
    hang.store(true, std::sync::atomic::Ordering::SeqCst);
    let (mut publisher, _) = Raw::v5(server.addr, "hung-pub").await;
    publisher
        .send(&common::publish(
            "hung/t",
            QoS::AtLeastOnce,
            1,
            b"never stored",
        ))
        .await;
    // The commit of that message hangs: no PUBACK. Shutdown still ends after the grace period
    // (1 s), not after the commit.
    publisher
        .expect_no_publish(Duration::from_millis(300))
        .await;
    let stopped = Instant::now();
    server.stop().await;
    assert!(
        stopped.elapsed() < Duration::from_secs(4),
        "{:?}",
        stopped.elapsed()
    );
    // The process would exit here; in this test the runtime lives on, and the connection with
    // it (its close waits behind the commit): it must not have been told the message is stored.
    loop {
        match publisher.recv_within(common::QUIET).await {
            common::Recv::Packet(Packet::PubAck(ack)) => panic!("acknowledged unstored: {ack:?}"),
            common::Recv::Packet(_) => {}
            _ => break,
        }
    }
}

/// A store whose commits, once `fail` is set, take a while and then fail: a CONNECT can be
/// waiting for the commit when the store starts failing.
#[derive(Debug)]
struct SlowFailure {
    inner: MemoryImageStore,
    fail: Arc<std::sync::atomic::AtomicBool>,
}

impl Store for SlowFailure {
    fn load(&mut self) -> Result<Restored, StoreError> {
        self.inner.load()
    }

    fn commit(&mut self, ops: &[StoreOp]) -> Result<(), StoreError> {
        if self.fail.load(std::sync::atomic::Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(300));
            return Err(StoreError::Io {
                context: "writing the test store".to_owned(),
                source: std::io::Error::from_raw_os_error(28), // ENOSPC
            });
        }
        self.inner.commit(ops)
    }
}

#[tokio::test]
async fn a_connack_waiting_when_the_store_fails_becomes_0x88_and_the_will_stays_unsent() {
    let fail = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let store = SlowFailure {
        inner: MemoryImageStore::new(),
        fail: fail.clone(),
    };
    let server = common::start_durable(|_| {}, Box::new(store)).await;
    let (mut watcher, _) = Raw::v5(server.addr, "will-watcher").await;
    watcher
        .subscribe_qos(1, "wills/caught", QoS::AtMostOnce)
        .await;
    fail.store(true, std::sync::atomic::Ordering::SeqCst);
    // Its CONNACK waits for the commit of its session, which fails after a while.
    let mut caught = persistent("caught");
    caught.will = Some(bulwark_proto::Will {
        topic: common::topic("wills/caught"),
        payload: bytes::Bytes::from_static(b"never"),
        qos: QoS::AtMostOnce,
        retain: false,
        properties: bulwark_proto::WillProperties::default(),
    });
    let (mut raw, ack) = Raw::connect(server.addr, &caught).await;
    assert_eq!(
        ack.reason_code,
        bulwark_proto::ReasonCode::ServerUnavailable
    );
    raw.until_closed(common::WAIT).await;
    // Refused, as far as the client knows: its will is not published.
    watcher.expect_no_publish(common::QUIET).await;
    server.stop().await;
}

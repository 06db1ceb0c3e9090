//! The disk store against the in-memory image: what is committed reads back after a reopen;
//! damage (a flipped byte, a truncated file) is reported by name, and repair removes it.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::unreachable,
    reason = "tests"
)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use bulwark_core::{Delivery, Message, OutState, SessionRecord, SubscriptionRecord};
use bulwark_proto::{
    PacketId, PublishProperties, QoS, SubscriptionOptions, TopicFilter, TopicName,
};
use bulwark_store::{DiskStore, Image, Restored, Store, StoreError, StoreOp, SyncPolicy};
use bytes::Bytes;

fn message(topic: &str, payload: &[u8], qos: QoS, retain: bool) -> Arc<Message> {
    Arc::new(Message {
        topic: TopicName::new(topic).unwrap(),
        payload: Bytes::copy_from_slice(payload),
        qos,
        retain,
        properties: PublishProperties::default(),
        expires_at: None,
        publisher: None,
    })
}

fn session(client_id: &str, filters: &[&str]) -> StoreOp {
    StoreOp::Session(Box::new(SessionRecord {
        client_id: Arc::from(client_id),
        owner: Some(Arc::from("alice")),
        expiry_interval: 3_600,
        subscriptions: filters
            .iter()
            .map(|f| SubscriptionRecord {
                filter: TopicFilter::new(f).unwrap(),
                options: SubscriptionOptions::qos(QoS::ExactlyOnce),
                id: None,
            })
            .collect(),
        disconnected_at: None,
        will: None,
    }))
}

fn queued(client_id: &str, seq: u64, payload: &[u8], sent: Option<(u16, OutState)>) -> StoreOp {
    StoreOp::Message {
        client_id: Arc::from(client_id),
        seq,
        delivery: Delivery {
            message: message("t/1", payload, QoS::ExactlyOnce, false),
            qos: QoS::AtLeastOnce,
            retain: false,
            subscription_ids: Vec::new(),
            group: None,
            seq,
        },
        sent: sent.map(|(id, state)| (PacketId::new(id).unwrap(), state)),
    }
}

/// A mix of every operation: two sessions, messages queued, sent, acknowledged, a QoS 2
/// identifier received and one released, retained messages set and cleared, a session ended.
fn ops() -> Vec<Vec<StoreOp>> {
    vec![
        vec![
            session("c1", &["t/#"]),
            session("c2", &["t/1", "$share/g/t/+"]),
            session("gone", &["x"]),
            queued("gone", 1, b"lost with its session", None),
        ],
        (1..=50)
            .map(|i| queued("c1", i, format!("m{i}").as_bytes(), None))
            .chain([queued("c2", 1, b"only", None)])
            .collect(),
        vec![
            queued("c1", 1, b"m1", Some((1, OutState::AwaitPubAck))),
            StoreOp::MessageDone {
                client_id: Arc::from("c1"),
                seq: 2,
            },
            StoreOp::Qos2Received {
                client_id: Arc::from("c2"),
                packet_id: PacketId::new(7).unwrap(),
            },
            StoreOp::Qos2Received {
                client_id: Arc::from("c2"),
                packet_id: PacketId::new(8).unwrap(),
            },
            StoreOp::Qos2Released {
                client_id: Arc::from("c2"),
                packet_id: PacketId::new(8).unwrap(),
            },
            StoreOp::Retained {
                message: message("r/a", b"kept", QoS::AtLeastOnce, true),
                owner: Some(Arc::from("alice")),
            },
            StoreOp::Retained {
                message: message("r/b", b"cleared", QoS::AtMostOnce, true),
                owner: None,
            },
        ],
        vec![
            StoreOp::RetainedCleared(TopicName::new("r/b").unwrap()),
            StoreOp::SessionEnded {
                client_id: Arc::from("gone"),
            },
        ],
    ]
}

fn dir() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

fn expected() -> Restored {
    let mut image = Image::new();
    for batch in ops() {
        image.apply_all(batch);
    }
    image.restored()
}

#[test]
fn what_is_committed_reads_back_after_a_reopen() {
    for sync in [
        SyncPolicy::Always,
        SyncPolicy::Periodic(Duration::from_secs(3_600)),
    ] {
        let dir = dir();
        let path = dir.path().join("data/store.redb");
        {
            let mut store = DiskStore::open(&path, sync).unwrap();
            assert_eq!(store.load().unwrap(), Restored::default());
            for batch in ops() {
                store.commit(&batch).unwrap();
            }
            // An orderly stop syncs (periodic sync: the idle work).
            store.idle().unwrap();
        }
        let restored = DiskStore::open(&path, sync).unwrap().load().unwrap();
        assert_eq!(restored, expected(), "{sync:?}");
        assert_eq!(restored.sessions.len(), 2);
        assert_eq!(restored.sessions[0].messages.len(), 49);
        assert_eq!(restored.sessions[1].qos2_received.len(), 1);
        let report = DiskStore::check_file(&path).unwrap();
        assert!(report.is_clean(), "{report}");
        assert_eq!(
            (
                report.sessions,
                report.messages,
                report.qos2,
                report.retained
            ),
            (2, 50, 1, 1)
        );
    }
}

#[test]
fn times_read_back_within_a_millisecond() {
    let dir = dir();
    let path = dir.path().join("store.redb");
    let now = Instant::now();
    let left = now - Duration::from_secs(30);
    let expires = now + Duration::from_secs(90);
    {
        let mut store = DiskStore::open(&path, SyncPolicy::Always).unwrap();
        let StoreOp::Session(mut record) = session("c1", &[]) else {
            unreachable!()
        };
        record.disconnected_at = Some(left);
        let mut m = (*message("t", b"x", QoS::AtLeastOnce, true)).clone();
        m.expires_at = Some(expires);
        store
            .commit(&[
                StoreOp::Session(record),
                StoreOp::Retained {
                    message: Arc::new(m),
                    owner: None,
                },
            ])
            .unwrap();
    }
    let restored = DiskStore::open(&path, SyncPolicy::Always)
        .unwrap()
        .load()
        .unwrap();
    let close = |a: Instant, b: Instant| a.max(b) - a.min(b) <= Duration::from_millis(2);
    assert!(close(
        restored.sessions[0].record.disconnected_at.unwrap(),
        left
    ));
    assert!(close(restored.retained[0].0.expires_at.unwrap(), expires));
}

#[test]
fn a_second_broker_on_the_same_file_is_refused() {
    let dir = dir();
    let path = dir.path().join("store.redb");
    let _first = DiskStore::open(&path, SyncPolicy::Always).unwrap();
    let err = DiskStore::open(&path, SyncPolicy::Always).unwrap_err();
    assert!(err.to_string().contains("in use"), "{err}");
    // Checking or repairing it meanwhile is refused too.
    assert!(matches!(
        DiskStore::check_file(&path),
        Err(StoreError::InUse(_))
    ));
    assert!(matches!(
        DiskStore::repair_file(&path),
        Err(StoreError::InUse(_))
    ));
}

#[test]
fn a_truncated_file_is_refused_by_name() {
    let dir = dir();
    let path = dir.path().join("store.redb");
    {
        let mut store = DiskStore::open(&path, SyncPolicy::Always).unwrap();
        for batch in ops() {
            store.commit(&batch).unwrap();
        }
    }
    let len = std::fs::metadata(&path).unwrap().len();
    for keep in [0, 100, len / 2] {
        let copy = dir.path().join(format!("cut-{keep}.redb"));
        std::fs::copy(&path, &copy).unwrap();
        std::fs::OpenOptions::new()
            .write(true)
            .open(&copy)
            .unwrap()
            .set_len(keep)
            .unwrap();
        let result = DiskStore::open(&copy, SyncPolicy::Always).and_then(|mut s| s.load());
        match result {
            Err(StoreError::Corrupt(why)) => {
                assert!(why.contains(&*copy.to_string_lossy()), "{why}");
            }
            Err(other) => panic!("cut at {keep}: not reported as damage: {other}"),
            Ok(restored) => panic!("cut at {keep} of {len}: read back {restored:?}"),
        }
    }
}

#[test]
fn a_damaged_record_is_named_and_repair_removes_only_it() {
    let dir = dir();
    let path = dir.path().join("store.redb");
    {
        let mut store = DiskStore::open(&path, SyncPolicy::Always).unwrap();
        for batch in ops() {
            store.commit(&batch).unwrap();
        }
    }
    // Flip one byte of one message's payload wherever it lies in the file (copy-on-write
    // leaves old pages behind; one of the copies is the live one).
    let mut bytes = std::fs::read(&path).unwrap();
    let copies: Vec<usize> = bytes
        .windows(3)
        .enumerate()
        .filter(|(_, w)| *w == b"m37")
        .map(|(at, _)| at)
        .collect();
    assert!(!copies.is_empty(), "the payload is in the file");
    for at in copies {
        bytes[at + 1] ^= 0x01;
    }
    std::fs::write(&path, &bytes).unwrap();

    let err = DiskStore::open(&path, SyncPolicy::Always)
        .unwrap()
        .load()
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("message 37 of session \"c1\"") && err.contains("checksum"),
        "{err}"
    );
    let report = DiskStore::check_file(&path).unwrap();
    assert!(!report.is_clean());
    assert!(
        report
            .damaged
            .iter()
            .any(|d| d.contains("message 37 of session \"c1\"")),
        "{report}"
    );
    let (repaired, aside) = DiskStore::repair_file(&path).unwrap();
    assert!(!repaired.is_clean());
    assert_eq!(repaired.messages, 49, "{repaired}");
    let aside = aside.expect("the damaged file is kept");
    assert!(aside.is_file(), "{}", aside.display());
    let restored = DiskStore::open(&path, SyncPolicy::Always)
        .unwrap()
        .load()
        .unwrap();
    let mut want = expected();
    want.sessions[0].messages.retain(|(seq, _, _)| *seq != 37);
    assert_eq!(restored, want);
    let report = DiskStore::check_file(&path).unwrap();
    assert!(report.is_clean(), "{report}");
    // Nothing left to repair.
    assert_eq!(DiskStore::repair_file(&path).unwrap().1, None);
}

#[test]
fn a_file_that_cannot_be_opened_is_moved_aside_by_repair() {
    let dir = dir();
    let path = dir.path().join("store.redb");
    std::fs::write(&path, b"not a store at all, just some bytes").unwrap();
    let err = DiskStore::open(&path, SyncPolicy::Always).unwrap_err();
    assert!(matches!(err, StoreError::Corrupt(_)), "{err}");
    let (report, aside) = DiskStore::repair_file(&path).unwrap();
    assert!(report.damaged[0].contains("whole file"), "{report}");
    let kept = std::fs::read(aside.unwrap()).unwrap();
    assert!(kept == b"not a store at all, just some bytes", "{kept:?}");
    let restored = DiskStore::open(&path, SyncPolicy::Always)
        .unwrap()
        .load()
        .unwrap();
    assert_eq!(restored, Restored::default());
}

/// Everything in one commit: operations that later ones make moot are not written, and the
/// result is the same as applying every one in order.
#[test]
fn one_batch_of_everything_reads_back_the_same() {
    let dir = dir();
    let path = dir.path().join("store.redb");
    let mut all: Vec<StoreOp> = ops().into_iter().flatten().collect();
    // A session ended and begun again in the same batch, with a message of each life.
    all.extend([
        queued("again", 1, b"first life", None),
        StoreOp::SessionEnded {
            client_id: Arc::from("again"),
        },
        session("again", &["a"]),
        queued("again", 1, b"second life", Some((4, OutState::AwaitPubRec))),
    ]);
    DiskStore::open(&path, SyncPolicy::Always)
        .unwrap()
        .commit(&all)
        .unwrap();
    let mut image = Image::new();
    image.apply_all(all);
    let restored = DiskStore::open(&path, SyncPolicy::Always)
        .unwrap()
        .load()
        .unwrap();
    assert_eq!(restored, image.restored());
    let again = &restored.sessions[0];
    assert_eq!(&*again.record.client_id, "again");
    assert_eq!(again.messages.len(), 1);
    assert_eq!(&again.messages[0].1.message.payload[..], b"second life");
}

/// A message written and acknowledged within one commit never reaches the disk, and that
/// shortcut never leaves a record behind: not for a message written by an earlier commit, nor
/// over an orphaned record of the same number.
#[test]
fn a_message_written_and_removed_in_one_commit_leaves_nothing() {
    let dir = dir();
    let path = dir.path().join("store.redb");
    let done = |seq| StoreOp::MessageDone {
        client_id: Arc::from("c"),
        seq,
    };
    let mut image = Image::new();
    let batches = vec![
        // An orphan: a message of "c" before "c" has a record (left by a damaged file, say).
        vec![queued("c", 5, b"orphan", None)],
        vec![session("c", &["t"]), queued("c", 2, b"two", None)],
        // After the reopen below: 3 is new and gone at once, 5 is rewritten and removed (over
        // the orphan: numbered above every message of the session's own), 2 was written
        // before and is removed.
        vec![
            queued("c", 3, b"three", Some((1, OutState::AwaitPubAck))),
            done(3),
            queued("c", 5, b"five", None),
            done(5),
            queued("c", 4, b"four", None),
        ],
        vec![done(2)],
    ];
    for (i, batch) in batches.into_iter().enumerate() {
        let mut store = DiskStore::open(&path, SyncPolicy::Always).unwrap();
        if i >= 2 {
            store.load().unwrap();
        }
        store.commit(&batch).unwrap();
        image.apply_all(batch);
    }
    let restored = DiskStore::open(&path, SyncPolicy::Always)
        .unwrap()
        .load()
        .unwrap();
    assert_eq!(restored, image.restored());
    let seqs: Vec<u64> = restored.sessions[0]
        .messages
        .iter()
        .map(|(s, _, _)| *s)
        .collect();
    assert_eq!(seqs, vec![4]);
    let report = DiskStore::check_file(&path).unwrap();
    assert_eq!((report.messages, report.orphans), (1, 0), "{report}");
}

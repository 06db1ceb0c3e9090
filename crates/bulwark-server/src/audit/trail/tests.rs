//! The writer in isolation: a temporary directory, [`Writer::open`], and [`Writer::run`] on a
//! thread fed through a bounded channel, as `Audit::open` does. Every wait is bounded.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "test code"
)]

use std::sync::atomic::AtomicU64;
use std::sync::mpsc::{SyncSender, sync_channel};
use std::thread::JoinHandle;

use bulwark_acl::event::EventKind;
use bulwark_audit::{FindingKind, PublicKey, Segment, Severity, Verifier};

use super::*;

/// How long a test waits for something that should happen.
const WAIT: Duration = Duration::from_secs(5);

/// A directory under the temp dir with a unique name, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(label: &str) -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let path = std::env::temp_dir().join(format!(
            "bulwark-trail-{label}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = fs::remove_dir_all(&path);
        fs::create_dir_all(&path).unwrap();
        Self(path)
    }

    fn trail(&self) -> PathBuf {
        self.0.join("audit.jsonl")
    }

    fn settings(&self) -> AuditSettings {
        AuditSettings {
            file: Some(self.trail()),
            queue: 8,
            ..AuditSettings::default()
        }
    }

    fn public_key(&self) -> PublicKey {
        let text = fs::read_to_string(self.0.join("audit-signing.pub")).unwrap();
        PublicKey::parse(&text).unwrap()
    }

    /// The complete lines of the active segment (a line still being written is left out).
    fn lines(&self) -> Vec<String> {
        let bytes = fs::read(self.trail()).unwrap_or_default();
        let mut pieces: Vec<&[u8]> = bytes.split(|b| *b == b'\n').collect();
        pieces.pop();
        pieces
            .into_iter()
            .map(|l| String::from_utf8(l.to_vec()).unwrap())
            .collect()
    }

    /// The lines that parse as JSON, as values.
    fn records(&self) -> Vec<serde_json::Value> {
        self.lines()
            .iter()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// Waits until `pick` finds something among the records.
    fn wait_for<T>(
        &self,
        what: &str,
        mut pick: impl FnMut(&[serde_json::Value]) -> Option<T>,
    ) -> T {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(found) = pick(&self.records()) {
                return found;
            }
            assert!(
                Instant::now() < deadline,
                "{what} not in the trail within {WAIT:?}: {:#?}",
                self.lines()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn verify(&self) -> bulwark_audit::Report {
        let bytes = fs::read(self.trail()).unwrap();
        Verifier::new().trust(self.public_key()).verify(&[Segment {
            name: "audit.jsonl",
            bytes: &bytes,
        }])
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// A writer running on its own thread, as the server runs it.
struct Running {
    tx: SyncSender<Msg>,
    thread: JoinHandle<()>,
}

impl Running {
    fn start(settings: &AuditSettings, counts: &Arc<TrailCounts>) -> Self {
        let writer = Writer::open(settings, counts.clone()).unwrap();
        let (tx, rx) = sync_channel(settings.queue);
        let thread = std::thread::spawn(move || writer.run(&rx));
        Self { tx, thread }
    }

    fn send(&self, event: SecurityEvent) {
        self.tx.send(Msg::Event(Arc::new(event))).unwrap();
    }

    /// An orderly stop: waits until the stop record and the last checkpoint are on disk.
    fn stop(self) {
        let (done, wait) = tokio::sync::oneshot::channel();
        self.tx.send(Msg::Stop(done)).unwrap();
        wait.blocking_recv().expect("the writer says it is done");
        self.thread.join().expect("the writer does not panic");
    }
}

fn event(kind: EventKind, user: &str) -> SecurityEvent {
    let mut event = SecurityEvent::new(kind, SystemTime::now());
    event.username = Some(user.to_owned());
    event.remote = Some("127.0.0.1:50000".to_owned());
    event
}

fn kind(record: &serde_json::Value) -> &str {
    record["kind"].as_str().unwrap_or_default()
}

fn kinds(records: &[serde_json::Value]) -> Vec<&str> {
    records.iter().map(kind).collect()
}

#[test]
fn dropped_events_are_recorded_after_the_next_event() {
    let dir = TempDir::new("dropped");
    let counts = Arc::new(TrailCounts::default());
    let running = Running::start(&dir.settings(), &counts);
    // As `Audit::record` counts an event the queue had no room for.
    counts.unreported.store(5, Ordering::Relaxed);
    running.send(event(EventKind::AuthFailure, "mallory"));
    // Seen while the writer runs, not only at its stop.
    let dropped = dir.wait_for("events_dropped", |records| {
        records.iter().position(|r| kind(r) == EVENTS_DROPPED)
    });
    running.stop();

    let records = dir.records();
    assert_eq!(kind(&records[0]), TRAIL_START, "{records:#?}");
    let failure = records
        .iter()
        .position(|r| kind(r) == "auth_failure")
        .unwrap();
    assert_eq!(records[failure]["username"], "mallory");
    assert_eq!(
        dropped,
        failure + 1,
        "the count follows the event: {records:#?}"
    );
    let record = &records[dropped];
    assert_eq!(record["count"], 5, "{record}");
    assert!(
        record["reason"]
            .as_str()
            .unwrap()
            .contains("5 security event(s)"),
        "{record}"
    );
    // Reported once: the count was taken.
    assert_eq!(counts.unreported.load(Ordering::Relaxed), 0);
    assert_eq!(
        kinds(&records)
            .iter()
            .filter(|k| **k == EVENTS_DROPPED)
            .count(),
        1,
        "{records:#?}"
    );
    let report = dir.verify();
    assert!(report.findings.is_empty(), "{:#?}", report.findings);
}

#[test]
fn a_checkpoint_is_written_when_its_interval_has_passed_without_more_events() {
    let dir = TempDir::new("interval");
    let settings = AuditSettings {
        checkpoint_interval: Duration::from_millis(100),
        ..dir.settings()
    };
    let counts = Arc::new(TrailCounts::default());
    let running = Running::start(&settings, &counts);
    // The start record alone is due a checkpoint.
    dir.wait_for("a checkpoint after the start record", |records| {
        (kinds(records) == [TRAIL_START, "checkpoint"]).then_some(())
    });
    // One event, then nothing: a second checkpoint covers it.
    running.send(event(EventKind::AuthSuccess, "alice"));
    dir.wait_for("a checkpoint after the event", |records| {
        (kinds(records) == [TRAIL_START, "checkpoint", "auth_success", "checkpoint"]).then_some(())
    });
    assert_eq!(counts.checkpoints.load(Ordering::Relaxed), 2);
    running.stop();

    let records = dir.records();
    // Nothing uncovered, nothing more: no checkpoint follows a checkpoint.
    assert_eq!(
        kinds(&records),
        [
            TRAIL_START,
            "checkpoint",
            "auth_success",
            "checkpoint",
            TRAIL_STOP,
            "checkpoint"
        ],
        "{records:#?}"
    );
    let report = dir.verify();
    assert!(report.findings.is_empty(), "{:#?}", report.findings);
    assert_eq!(report.checkpoints, 3);
    assert_eq!(report.signed_to, report.last_seq);
}

#[test]
fn the_chain_goes_on_from_a_damaged_last_line_which_the_verifier_names() {
    let dir = TempDir::new("damaged");
    let settings = dir.settings();
    let counts = Arc::new(TrailCounts::default());
    let running = Running::start(&settings, &counts);
    running.send(event(EventKind::AuthFailure, "mallory"));
    running.stop();
    let first_run = dir.lines();
    let last_seq =
        serde_json::from_str::<serde_json::Value>(first_run.last().unwrap()).unwrap()["seq"]
            .as_u64()
            .unwrap();

    // A whole line (LF ended) that is not a record.
    let damaged = "this line is not a record";
    let mut file = OpenOptions::new().append(true).open(dir.trail()).unwrap();
    file.write_all(format!("{damaged}\n").as_bytes()).unwrap();
    drop(file);

    let running = Running::start(&settings, &counts);
    running.stop();
    let lines = dir.lines();
    let at = first_run.len();
    assert_eq!(lines[..at], first_run[..], "the first run's lines stay");
    assert_eq!(lines[at], damaged, "the damaged line stays");
    let start: serde_json::Value = serde_json::from_str(&lines[at + 1]).unwrap();
    assert_eq!(kind(&start), TRAIL_START);
    // The next seq after the last record, linked to the damaged line's bytes.
    assert_eq!(start["seq"], last_seq + 1);
    assert_eq!(
        start["prev"],
        bulwark_audit::Hash::of(damaged.as_bytes()).hex()
    );
    let reason = start["reason"].as_str().unwrap();
    assert!(
        reason.contains("the last line of audit.jsonl is not a record"),
        "{reason}"
    );

    let report = dir.verify();
    assert_eq!(report.findings.len(), 1, "{:#?}", report.findings);
    let finding = &report.findings[0];
    assert_eq!(finding.kind, FindingKind::NotARecord, "{finding:?}");
    assert_eq!(finding.severity, Severity::Tampering, "{finding:?}");
    assert_eq!(finding.file, "audit.jsonl");
    assert_eq!(finding.line, at + 1, "{finding:?}");
    assert_eq!(report.signed_to, report.last_seq);
}

#[test]
fn after_a_stop_right_after_rotation_the_chain_goes_on_from_the_rotated_segment() {
    let dir = TempDir::new("rotated");
    // Every event fills the segment: it is rotated at once.
    let settings = AuditSettings {
        segment_size: 1,
        ..dir.settings()
    };
    let counts = Arc::new(TrailCounts::default());
    let mut writer = Writer::open(&settings, counts.clone()).unwrap();
    writer.event(&event(EventKind::AuthFailure, "mallory"));
    // The broker ends here, before anything is written to the new active segment (which is
    // then removed too: a missing active segment is read the same way).
    drop(writer);
    let first = dir.0.join("audit.000000000001.jsonl");
    let rotated = fs::read(&first).unwrap();
    let rotated_lines: Vec<&[u8]> = rotated.split(|b| *b == b'\n').collect();
    // start, event, checkpoint, and the empty piece after the last LF.
    assert_eq!(
        rotated_lines.len(),
        4,
        "{}",
        String::from_utf8_lossy(&rotated)
    );
    let last = rotated_lines[2];
    assert_eq!(file_len(&dir.trail()), 0);
    fs::remove_file(dir.trail()).unwrap();

    let running = Running::start(&settings, &counts);
    running.send(event(EventKind::AuthSuccess, "alice"));
    running.stop();

    // The second run's first segment, rotated at its event, is named by its first seq, which
    // follows the first run's last.
    let second = dir.0.join("audit.000000000004.jsonl");
    let text = fs::read_to_string(&second).unwrap();
    let start: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    assert_eq!(kind(&start), TRAIL_START);
    assert_eq!(start["seq"], 4);
    assert_eq!(start["prev"], bulwark_audit::Hash::of(last).hex());
    assert_eq!(start["reason"], "broker started");
    let active: Vec<serde_json::Value> = dir.records();
    assert_eq!(kinds(&active), [TRAIL_STOP, "checkpoint"], "{active:#?}");

    let files = [
        ("audit.000000000001.jsonl", fs::read(&first).unwrap()),
        ("audit.000000000004.jsonl", fs::read(&second).unwrap()),
        ("audit.jsonl", fs::read(dir.trail()).unwrap()),
    ];
    let segments: Vec<Segment<'_>> = files
        .iter()
        .map(|(name, bytes)| Segment { name, bytes })
        .collect();
    let report = Verifier::new().trust(dir.public_key()).verify(&segments);
    assert!(report.findings.is_empty(), "{:#?}", report.findings);
    assert_eq!(report.first_seq, Some(1));
    assert_eq!(report.last_seq, Some(8));
    assert_eq!(report.signed_to, Some(8));
}

#[test]
fn a_plain_trail_from_before_the_chain_is_moved_aside_and_a_new_chain_starts() {
    let dir = TempDir::new("legacy");
    // What a broker before the chain left in the file.
    let old: Vec<String> = ["mallory", "eve", "alice"]
        .into_iter()
        .map(|user| event(EventKind::AuthFailure, user).to_json_line())
        .collect();
    let legacy = format!("{}\n", old.join("\n"));
    fs::write(dir.trail(), &legacy).unwrap();

    let counts = Arc::new(TrailCounts::default());
    let running = Running::start(&dir.settings(), &counts);
    running.stop();

    // Kept, byte for byte, under a name that is not a segment's.
    let moved = dir.0.join("audit.jsonl.plain");
    assert_eq!(fs::read_to_string(&moved).unwrap(), legacy);
    assert!(rotated_segments(&dir.trail()).unwrap().is_empty());
    let lines = dir.lines();
    let start: serde_json::Value = serde_json::from_str(&lines[0]).unwrap();
    assert_eq!(kind(&start), TRAIL_START);
    assert_eq!(start["seq"], 1);
    assert_eq!(start["prev"], bulwark_audit::Hash::ZERO.hex());
    let reason = start["reason"].as_str().unwrap();
    assert!(
        reason.contains(&format!(
            "held no chained record (a plain trail, written before the chain or with format = \"plain\"): audit.jsonl ({} bytes) to audit.jsonl.plain",
            legacy.len()
        )),
        "{reason}"
    );
    let report = dir.verify();
    assert!(report.findings.is_empty(), "{:#?}", report.findings);

    // A chained trail is never moved.
    let running = Running::start(&dir.settings(), &counts);
    running.stop();
    assert_eq!(dir.lines()[..lines.len()], lines[..]);
    assert!(!dir.0.join("audit.jsonl.plain.2").exists());
    // A plain file moved aside later does not replace the first one.
    fs::write(dir.trail(), &legacy).unwrap();
    let running = Running::start(&dir.settings(), &counts);
    running.stop();
    assert_eq!(fs::read_to_string(&moved).unwrap(), legacy);
    assert_eq!(
        fs::read_to_string(dir.0.join("audit.jsonl.plain.2")).unwrap(),
        legacy
    );
}

#[test]
fn rotated_plain_segments_are_moved_aside_not_replaced_by_the_new_chain() {
    let dir = TempDir::new("plain-rotated");
    // A plain trail that rotated at every event: audit.000000000001.jsonl, ...2.
    let plain = AuditSettings {
        format: AuditFormat::Plain,
        segment_size: 1,
        ..dir.settings()
    };
    let counts = Arc::new(TrailCounts::default());
    let running = Running::start(&plain, &counts);
    running.send(event(EventKind::AuthFailure, "mallory"));
    running.send(event(EventKind::AuthFailure, "eve"));
    running.stop();
    let old: Vec<(u64, PathBuf)> = rotated_segments(&dir.trail()).unwrap();
    assert_eq!(old.iter().map(|(n, _)| *n).collect::<Vec<_>>(), [1, 2]);
    let old_bytes: Vec<Vec<u8>> = old.iter().map(|(_, p)| fs::read(p).unwrap()).collect();
    // The active segment holds the plain stop record; then the broker goes chained, and
    // rotates at every event too.
    let chained = AuditSettings {
        segment_size: 1,
        ..dir.settings()
    };
    let running = Running::start(&chained, &counts);
    running.send(event(EventKind::AuthSuccess, "alice"));
    running.stop();

    for ((_, path), bytes) in old.iter().zip(&old_bytes) {
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let aside = dir.0.join(format!("{name}.plain"));
        assert_eq!(&fs::read(&aside).unwrap(), bytes, "{name} kept as it was");
    }
    assert!(dir.0.join("audit.jsonl.plain").exists());
    // The new chain from seq 1, in segments of its own.
    let segments: Vec<(u64, PathBuf)> = rotated_segments(&dir.trail()).unwrap();
    assert_eq!(segments.iter().map(|(n, _)| *n).collect::<Vec<_>>(), [1]);
    let files: Vec<(String, Vec<u8>)> = segments
        .iter()
        .map(|(_, p)| p.clone())
        .chain([dir.trail()])
        .map(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            (name, fs::read(&p).unwrap())
        })
        .collect();
    let first: serde_json::Value =
        serde_json::from_slice(files[0].1.split(|b| *b == b'\n').next().unwrap()).unwrap();
    assert_eq!(kind(&first), TRAIL_START);
    assert_eq!(first["seq"], 1);
    assert_eq!(first["prev"], bulwark_audit::Hash::ZERO.hex());
    let segs: Vec<Segment<'_>> = files
        .iter()
        .map(|(name, bytes)| Segment { name, bytes })
        .collect();
    let report = Verifier::new().trust(dir.public_key()).verify(&segs);
    assert!(report.findings.is_empty(), "{:#?}", report.findings);
}

//! The tamper-evident audit trail end to end: a broker on 127.0.0.1 writes it while real
//! clients log in, fail, and are refused by the ACL; then the files on disk are read back and
//! checked with `bulwark_audit::Verifier`, trusting the public key the broker wrote beside
//! them. Rotation, export, restarts, a torn last record, retention and the plain format are
//! each driven through the server. What the verifier concludes from each kind of damage is
//! tested in `bulwark-audit`; here, that the broker's files are what it expects, and that
//! damage done to them on disk is found.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "test code"
)]

mod common;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use bulwark_audit::{FindingKind, Hash, PublicKey, Report, Segment, Severity, Verifier};
use bulwark_auth::password::{Argon2Params, PasswordStore, hash_password};
use bulwark_proto::{Packet, ProtocolVersion, QoS, ReasonCode};
use bulwark_server::{AuditFormat, ServerConfig};
use bytes::Bytes;
use common::{Raw, TestServer, connect_packet, string};

const PASSWORD: &str = "violet-Harbour-lantern-93";

/// Alice may use `alice/#`; nobody may use anything else.
const RULES: &str =
    "[[rule]]\npermission = \"allow\"\naction = \"all\"\nuser = \"alice\"\ntopic = \"alice/#\"\n";

/// Everybody (anonymous clients included) may use `open/#`, nothing else.
const OPEN_RULES: &str = "[[rule]]\npermission = \"allow\"\naction = \"all\"\ntopic = \"open/#\"\n";

/// How long a test waits for a record to appear.
const WAIT: Duration = Duration::from_secs(5);

/// A temporary directory: the trail and its key in `trail/`, the export in `archive/`, the
/// ACL and the password store beside them.
struct Fixture {
    dir: PathBuf,
}

impl Fixture {
    fn new() -> Self {
        let dir = std::env::temp_dir().join(common::unique("bulwark-audit"));
        std::fs::create_dir_all(&dir).unwrap();
        let fixture = Self { dir };
        fixture.write_rules(OPEN_RULES);
        fixture
    }

    /// A password store with alice.
    fn with_alice(self) -> Self {
        let mut store = PasswordStore::new();
        let hash = hash_password(PASSWORD, &Argon2Params::default()).unwrap();
        store.add("alice", &hash, vec![]).unwrap();
        bulwark_server::files::save_store(&self.dir.join("passwords.toml"), &store).unwrap();
        self
    }

    fn trail_dir(&self) -> PathBuf {
        self.dir.join("trail")
    }

    fn active(&self) -> PathBuf {
        self.trail_dir().join("audit.jsonl")
    }

    fn export(&self) -> PathBuf {
        self.dir.join("archive").join("checkpoints.jsonl")
    }

    fn acl_path(&self) -> PathBuf {
        self.dir.join("acl.toml")
    }

    /// Replaces the ACL file (a new file, so the watcher sees a new modification time).
    fn write_rules(&self, text: &str) {
        let tmp = self.dir.join("acl.toml.new");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, self.acl_path()).unwrap();
    }

    /// The trail's settings for these tests: `adjust` changes them.
    fn apply(&self, config: &mut ServerConfig) {
        config.audit.file = Some(self.active());
        config.acl.file = Some(self.acl_path());
        config.tls_watch_interval = Duration::from_millis(100);
    }

    /// A broker that lets anonymous clients in (the ACL still applies to them).
    async fn start_open(&self, adjust: impl FnOnce(&mut ServerConfig)) -> TestServer {
        common::start_with(|config| {
            self.apply(config);
            adjust(config);
        })
        .await
    }

    /// A broker that requires a password.
    async fn start_secure(&self) -> TestServer {
        common::start_secure_with(|config| {
            self.apply(config);
            config.auth.password_file = Some(self.dir.join("passwords.toml"));
        })
        .await
    }

    /// The trail's segments (rotated and active) as (file name, bytes), by name: rotated
    /// segments first, oldest first, then the active one.
    fn segments(&self) -> Vec<(String, Vec<u8>)> {
        let mut found: Vec<(String, Vec<u8>)> = std::fs::read_dir(self.trail_dir())
            .map(|entries| {
                entries
                    .flatten()
                    .filter_map(|e| {
                        let name = e.file_name().to_string_lossy().into_owned();
                        if !(name.starts_with("audit.") && name.ends_with(".jsonl")) {
                            return None;
                        }
                        // A segment renamed or removed since the listing: read on the next try.
                        let bytes = std::fs::read(e.path()).ok()?;
                        Some((name, bytes))
                    })
                    .collect()
            })
            .unwrap_or_default();
        found.sort();
        found
    }

    fn rotated(&self) -> Vec<(String, Vec<u8>)> {
        self.segments()
            .into_iter()
            .filter(|(name, _)| name != "audit.jsonl")
            .collect()
    }

    /// Every chained record in the files, by seq (complete lines only: the writer may be in
    /// the middle of one).
    fn records(&self) -> BTreeMap<u64, serde_json::Value> {
        let mut out = BTreeMap::new();
        for (_, bytes) in self.segments() {
            for line in complete_lines(&bytes) {
                if let Ok(record) = serde_json::from_slice::<serde_json::Value>(line)
                    && let Some(seq) = record["seq"].as_u64()
                {
                    out.insert(seq, record);
                }
            }
        }
        out
    }

    /// Waits until a record satisfies `pick`; returns it.
    async fn wait_record(
        &self,
        what: &str,
        pick: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(found) = self.records().into_values().find(|r| pick(r)) {
                return found;
            }
            assert!(
                Instant::now() < deadline,
                "no {what} record within {WAIT:?}: {:#?}",
                self.records()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until at least `n` records satisfy `pick`.
    async fn wait_count(&self, what: &str, n: usize, pick: impl Fn(&serde_json::Value) -> bool) {
        let deadline = Instant::now() + WAIT;
        loop {
            let count = self.records().values().filter(|r| pick(r)).count();
            if count >= n {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{count} {what} record(s) within {WAIT:?}, not {n}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The public key the broker wrote beside the trail.
    fn public_key(&self) -> PublicKey {
        let text = std::fs::read_to_string(self.trail_dir().join("audit-signing.pub")).unwrap();
        PublicKey::parse(&text).unwrap()
    }

    /// Verifies `segments` trusting the broker's public key, with the export as anchor if
    /// `anchored`.
    fn verify(&self, segments: &[(String, Vec<u8>)], anchored: bool) -> Report {
        let mut verifier = Verifier::new().trust(self.public_key());
        if anchored {
            verifier = verifier.anchor("checkpoints.jsonl", std::fs::read(self.export()).unwrap());
        }
        let segments: Vec<Segment<'_>> = segments
            .iter()
            .map(|(name, bytes)| Segment { name, bytes })
            .collect();
        verifier.verify(&segments)
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The lines of a file that end with LF.
fn complete_lines(bytes: &[u8]) -> Vec<&[u8]> {
    let mut pieces: Vec<&[u8]> = bytes.split(|b| *b == b'\n').collect();
    pieces.pop();
    pieces
}

fn kind(record: &serde_json::Value) -> &str {
    record["kind"].as_str().unwrap_or_default()
}

fn kind_of(line: &[u8]) -> String {
    let record: serde_json::Value = serde_json::from_slice(line).unwrap();
    kind(&record).to_owned()
}

fn seq_of(line: &[u8]) -> u64 {
    serde_json::from_slice::<serde_json::Value>(line).unwrap()["seq"]
        .as_u64()
        .unwrap()
}

/// Findings of `severity` or worse.
fn at_least(report: &Report, severity: Severity) -> Vec<&bulwark_audit::Finding> {
    report
        .findings
        .iter()
        .filter(|f| f.severity >= severity)
        .collect()
}

fn has(report: &Report, kind: FindingKind) -> bool {
    report.findings.iter().any(|f| f.kind == kind)
}

fn login(user: &str, password: &str, client_id: &str) -> bulwark_proto::Connect {
    let mut connect = connect_packet(ProtocolVersion::V5, client_id);
    connect.username = Some(string(user));
    connect.password = Some(Bytes::copy_from_slice(password.as_bytes()));
    connect
}

/// Publishes at QoS 1 and returns the PUBACK's code.
async fn pub_code(raw: &mut Raw, packet_id: u16, topic_name: &str) -> ReasonCode {
    raw.send(&common::publish(
        topic_name,
        QoS::AtLeastOnce,
        packet_id,
        b"x",
    ))
    .await;
    loop {
        match raw.recv().await {
            Packet::PubAck(ack) => {
                assert_eq!(ack.packet_id, common::pid(packet_id));
                return ack.reason_code;
            }
            Packet::Publish(_) => {}
            other => panic!("expected PUBACK, got {other:?}"),
        }
    }
}

/// `connections` anonymous clients each publish `per_connection` times where the ACL says
/// no (fewer than the engine's 20 events per connection per 10 s, so each is recorded). The
/// router hands each denial to the audit queue before the PUBACK that answers it, and an
/// orderly stop writes everything queued: once the PUBACKs are in, a stop loses none.
async fn denials(server: &TestServer, connections: usize, per_connection: u16) {
    for c in 0..connections {
        let (mut raw, _) = Raw::v5(server.addr, &common::unique(&format!("denied-{c}"))).await;
        for i in 1..=per_connection {
            assert_eq!(
                pub_code(&mut raw, i, "closed/x").await,
                ReasonCode::NotAuthorized
            );
        }
    }
}

/// [`denials`], then waits until the trail on disk holds every one of them (while the broker
/// runs; with no retention, so nothing is removed).
async fn denials_written(
    fixture: &Fixture,
    server: &TestServer,
    connections: usize,
    per_connection: u16,
) {
    let is_denial = |r: &serde_json::Value| kind(r) == "acl_denied";
    let before = fixture.records().values().filter(|r| is_denial(r)).count();
    denials(server, connections, per_connection).await;
    let expected = before + connections * usize::from(per_connection);
    fixture.wait_count("acl_denied", expected, is_denial).await;
}

#[tokio::test]
async fn logins_denials_and_reloads_are_chained_signed_and_verify() {
    let fixture = Fixture::new().with_alice();
    fixture.write_rules(RULES);
    let server = fixture.start_secure().await;

    let (_, ack) = Raw::connect(server.addr, &login("alice", "wrong-password", "alice-1")).await;
    assert_eq!(ack.reason_code, ReasonCode::BadUserNameOrPassword);
    fixture
        .wait_record("auth_failure", |r| {
            kind(r) == "auth_failure" && r["username"] == "alice"
        })
        .await;

    let (mut alice, ack) = Raw::connect(server.addr, &login("alice", PASSWORD, "alice-2")).await;
    assert_eq!(ack.reason_code, ReasonCode::Success);
    fixture
        .wait_record("auth_success", |r| {
            kind(r) == "auth_success" && r["client_id"] == "alice-2"
        })
        .await;

    assert_eq!(
        pub_code(&mut alice, 1, "bob/secret").await,
        ReasonCode::NotAuthorized
    );
    let denied = fixture
        .wait_record("acl_denied", |r| kind(r) == "acl_denied")
        .await;
    assert_eq!(denied["username"], "alice");
    assert_eq!(denied["topic"], "bob/secret");
    assert_eq!(denied["action"], "publish");

    let more = format!(
        "{RULES}\n[[rule]]\npermission = \"allow\"\naction = \"all\"\ntopic = \"shared/#\"\n"
    );
    fixture.write_rules(&more);
    let reload = fixture
        .wait_record("config_reload", |r| kind(r) == "config_reload")
        .await;
    assert_eq!(reload["action"], "acl");
    assert_eq!(reload["reason"], "reloaded: 2 rules");
    drop(alice);
    server.stop().await;

    // One segment: nothing rotated at the default size.
    let segments = fixture.segments();
    assert_eq!(
        segments.len(),
        1,
        "{:?}",
        segments.iter().map(|s| &s.0).collect::<Vec<_>>()
    );
    let lines = complete_lines(&segments[0].1);
    assert!(segments[0].1.ends_with(b"\n"));
    let kinds: Vec<String> = lines.iter().map(|l| kind_of(l)).collect();
    let expected = [
        "trail_start",
        "auth_failure",
        "auth_success",
        "acl_denied",
        "config_reload",
        "trail_stop",
    ];
    let mut rest = kinds.iter();
    for want in expected {
        assert!(
            rest.any(|k| k == want),
            "{want} missing or out of order in {kinds:?}"
        );
    }
    assert_eq!(kinds.first().map(String::as_str), Some("trail_start"));
    assert_eq!(
        kinds.last().map(String::as_str),
        Some("checkpoint"),
        "{kinds:?}"
    );
    assert_eq!(kinds[kinds.len() - 2], "trail_stop", "{kinds:?}");
    // Seqs from 1, one more per line, each linked to the line before.
    for (i, line) in lines.iter().enumerate() {
        let record: serde_json::Value = serde_json::from_slice(line).unwrap();
        assert_eq!(record["seq"], i as u64 + 1);
        let prev = if i == 0 {
            Hash::ZERO
        } else {
            Hash::of(lines[i - 1])
        };
        assert_eq!(record["prev"], prev.hex(), "line {}", i + 1);
    }
    // The start record and every checkpoint name the key of audit-signing.pub.
    let key = fixture.public_key().base64();
    let start: serde_json::Value = serde_json::from_slice(lines[0]).unwrap();
    assert_eq!(start["key"], key);
    assert_eq!(start["reason"], "broker started");

    let report = fixture.verify(&segments, false);
    assert!(!report.tampered(), "{:#?}", report.findings);
    assert!(report.findings.is_empty(), "{:#?}", report.findings);
    assert_eq!(report.records, lines.len() as u64);
    assert_eq!(report.first_seq, Some(1));
    assert_eq!(report.signed_to, report.last_seq);
    assert_eq!(report.keys, [key]);

    // Another key than the broker's is not trusted: every checkpoint is reported.
    let other = bulwark_audit::AuditKey::generate().unwrap().public();
    let segs: Vec<Segment<'_>> = segments
        .iter()
        .map(|(name, bytes)| Segment { name, bytes })
        .collect();
    let report = Verifier::new().trust(other).verify(&segs);
    assert!(report.tampered());
    assert!(
        has(&report, FindingKind::WrongKey),
        "{:#?}",
        report.findings
    );
}

#[tokio::test]
async fn rotated_segments_end_signed_and_cuts_and_gaps_are_found() {
    let fixture = Fixture::new();
    let server = fixture
        .start_open(|config| {
            config.audit.segment_size = 1024;
            config.audit.checkpoint_records = 3;
            config.audit.export_file = Some(fixture.export());
        })
        .await;
    denials_written(&fixture, &server, 4, 10).await;
    server.stop().await;

    let segments = fixture.segments();
    let rotated = fixture.rotated();
    assert!(
        rotated.len() >= 3,
        "several rotated segments: {:?}",
        segments.iter().map(|s| &s.0).collect::<Vec<_>>()
    );
    for (name, bytes) in &rotated {
        let lines = complete_lines(bytes);
        assert!(bytes.ends_with(b"\n"), "{name}");
        // Named by its first seq, closed with a checkpoint.
        let number = name
            .strip_prefix("audit.")
            .and_then(|n| n.strip_suffix(".jsonl"))
            .unwrap();
        assert_eq!(number.len(), 12, "{name}");
        assert_eq!(number.parse::<u64>().unwrap(), seq_of(lines[0]), "{name}");
        assert_eq!(kind_of(lines[lines.len() - 1]), "checkpoint", "{name}");
    }
    assert_eq!(rotated[0].0, "audit.000000000001.jsonl");

    // The export holds every checkpoint, byte for byte as the trail does.
    let export = std::fs::read(fixture.export()).unwrap();
    let exported = complete_lines(&export);
    let trail: Vec<&[u8]> = segments
        .iter()
        .flat_map(|(_, bytes)| complete_lines(bytes))
        .collect();
    let checkpoints: Vec<&[u8]> = trail
        .iter()
        .copied()
        .filter(|l| kind_of(l) == "checkpoint")
        .collect();
    assert_eq!(exported, checkpoints);

    let report = fixture.verify(&segments, true);
    assert!(report.findings.is_empty(), "{:#?}", report.findings);
    assert_eq!(report.anchored, exported.len() as u64);
    assert_eq!(report.records, trail.len() as u64);
    assert_eq!(report.signed_to, report.last_seq);

    // The active segment's last lines cut off: only the export shows it.
    let active = fixture.active();
    let whole = std::fs::read(&active).unwrap();
    let lines = complete_lines(&whole);
    assert_eq!(kind_of(lines[lines.len() - 1]), "checkpoint");
    let keep: Vec<u8> = lines[..lines.len() - 2]
        .iter()
        .flat_map(|l| l.iter().copied().chain([b'\n']))
        .collect();
    std::fs::write(&active, &keep).unwrap();
    let cut = fixture.segments();
    let report = fixture.verify(&cut, false);
    assert!(!report.tampered(), "{:#?}", report.findings);
    let report = fixture.verify(&cut, true);
    assert!(report.tampered());
    let truncated: Vec<_> = report
        .findings
        .iter()
        .filter(|f| f.kind == FindingKind::Truncated)
        .collect();
    assert_eq!(truncated.len(), 1, "{:#?}", report.findings);
    assert_eq!(truncated[0].severity, Severity::Tampering);
    assert_eq!(truncated[0].file, "checkpoints.jsonl");
    assert_eq!(truncated[0].seq, Some(seq_of(lines[lines.len() - 1])));
    std::fs::write(&active, &whole).unwrap();

    // A rotated segment in the middle deleted.
    let middle = &rotated[rotated.len() / 2];
    std::fs::remove_file(fixture.trail_dir().join(&middle.0)).unwrap();
    let report = fixture.verify(&fixture.segments(), true);
    assert!(report.tampered());
    let missing: Vec<_> = report
        .findings
        .iter()
        .filter(|f| f.kind == FindingKind::MissingSegment)
        .collect();
    assert_eq!(missing.len(), 1, "{:#?}", report.findings);
    let first = seq_of(complete_lines(&middle.1)[0]);
    assert_eq!(missing[0].severity, Severity::Tampering);
    assert!(
        missing[0].message.contains(&format!("seq {first} to ")),
        "{}",
        missing[0].message
    );
}

#[tokio::test]
async fn a_restart_continues_the_chain() {
    let fixture = Fixture::new();
    let server = fixture.start_open(|_| {}).await;
    denials_written(&fixture, &server, 1, 1).await;
    server.stop().await;
    let first = std::fs::read(fixture.active()).unwrap();
    let first_lines = complete_lines(&first);
    let last = *first_lines.last().unwrap();
    assert_eq!(kind_of(last), "checkpoint");
    let key_file = std::fs::read(fixture.trail_dir().join("audit-signing.key")).unwrap();

    let server = fixture.start_open(|_| {}).await;
    denials_written(&fixture, &server, 1, 1).await;
    server.stop().await;

    let both = std::fs::read(fixture.active()).unwrap();
    assert!(
        both.starts_with(&first),
        "the first run's records stay as written"
    );
    let lines = complete_lines(&both);
    let start: serde_json::Value = serde_json::from_slice(lines[first_lines.len()]).unwrap();
    assert_eq!(kind(&start), "trail_start");
    assert_eq!(start["seq"], seq_of(last) + 1);
    assert_eq!(start["prev"], Hash::of(last).hex());
    assert_eq!(start["reason"], "broker started");
    // The same key: read, not made again.
    assert_eq!(
        std::fs::read(fixture.trail_dir().join("audit-signing.key")).unwrap(),
        key_file
    );
    assert_eq!(start["key"], fixture.public_key().base64());
    assert_eq!(kind_of(lines[lines.len() - 1]), "checkpoint");

    let report = fixture.verify(&fixture.segments(), false);
    assert!(report.findings.is_empty(), "{:#?}", report.findings);
    assert_eq!(report.records, lines.len() as u64);
    assert_eq!(report.first_seq, Some(1));
    assert_eq!(report.last_seq, Some(lines.len() as u64));
}

#[tokio::test]
async fn a_torn_last_record_is_cut_at_the_next_start_and_said_so() {
    let fixture = Fixture::new();
    let server = fixture.start_open(|_| {}).await;
    server.stop().await;
    let first = std::fs::read(fixture.active()).unwrap();
    let last = *complete_lines(&first).last().unwrap();

    // The broker stopped while writing a record.
    let torn = br#"{"seq":99,"prev"#;
    let mut damaged = first.clone();
    damaged.extend_from_slice(torn);
    std::fs::write(fixture.active(), &damaged).unwrap();
    // As found, the verifier warns of it.
    let report = fixture.verify(&fixture.segments(), false);
    assert!(!report.tampered(), "{:#?}", report.findings);
    assert!(
        at_least(&report, Severity::Warning)
            .iter()
            .any(|f| f.kind == FindingKind::Truncated),
        "{:#?}",
        report.findings
    );

    let server = fixture.start_open(|_| {}).await;
    server.stop().await;
    let after = std::fs::read(fixture.active()).unwrap();
    assert!(after.starts_with(&first));
    let lines = complete_lines(&after);
    let start: serde_json::Value =
        serde_json::from_slice(lines[complete_lines(&first).len()]).unwrap();
    assert_eq!(kind(&start), "trail_start");
    assert_eq!(start["prev"], Hash::of(last).hex());
    assert_eq!(start["seq"], seq_of(last) + 1);
    let reason = start["reason"].as_str().unwrap();
    assert!(
        reason.contains(&format!("cut {} bytes", torn.len())),
        "{reason}"
    );
    assert!(
        reason.contains(&Hash::of(torn).hex()),
        "the cut bytes' hash: {reason}"
    );
    assert!(
        !after.windows(torn.len()).any(|w| w == torn),
        "the torn bytes are gone"
    );

    let report = fixture.verify(&fixture.segments(), false);
    assert!(report.findings.is_empty(), "{:#?}", report.findings);
}

#[tokio::test]
async fn retention_removes_old_segments_and_records_each_removal() {
    let fixture = Fixture::new();
    let retention_size = 2500;
    let server = fixture
        .start_open(|config| {
            config.audit.segment_size = 1024;
            config.audit.checkpoint_records = 3;
            config.audit.retention_size = retention_size;
            config.audit.export_file = Some(fixture.export());
        })
        .await;
    // Retention removes records while this runs: the PUBACKs are what is waited for.
    denials(&server, 4, 10).await;
    server.stop().await;

    let records = fixture.records();
    let removed: Vec<&serde_json::Value> = records
        .values()
        .filter(|r| kind(r) == "retention")
        .collect();
    assert!(!removed.is_empty(), "no retention record");
    let names: Vec<String> = fixture.segments().into_iter().map(|s| s.0).collect();
    for record in &removed {
        let target = record["target"].as_str().unwrap();
        assert!(
            target.starts_with("audit.") && target.ends_with(".jsonl") && target != "audit.jsonl",
            "{record}"
        );
        assert!(
            !names.iter().any(|n| n == target),
            "{target} still there: {names:?}"
        );
        assert!(
            record["reason"]
                .as_str()
                .unwrap()
                .contains("over retention_size (2500)"),
            "{record}"
        );
    }
    // Oldest first: each removal names a later segment than the one before, and every one
    // lies before what is left (records naming the first removals went with later ones).
    let numbers: Vec<u64> = removed
        .iter()
        .map(|r| {
            let target = r["target"].as_str().unwrap();
            target[6..18].parse::<u64>().unwrap()
        })
        .collect();
    assert!(numbers.windows(2).all(|w| w[0] < w[1]), "{numbers:?}");
    let first_left = *records.keys().next().unwrap();
    assert!(first_left > 1);
    assert!(
        numbers.iter().all(|n| *n < first_left),
        "{numbers:?} before seq {first_left}"
    );
    // What is left of the rotated segments fits the limit.
    let rotated = fixture.rotated();
    let total: usize = rotated.iter().map(|(_, b)| b.len()).sum();
    assert!(total as u64 <= retention_size, "{total} bytes kept");

    let report = fixture.verify(&fixture.segments(), false);
    assert!(!report.tampered(), "{:#?}", report.findings);
    assert!(
        at_least(&report, Severity::Warning).is_empty(),
        "{:#?}",
        report.findings
    );
    let mid = report
        .findings
        .iter()
        .find(|f| f.kind == FindingKind::StartsMidTrail)
        .unwrap_or_else(|| panic!("no starts_mid_trail note: {:#?}", report.findings));
    assert_eq!(mid.severity, Severity::Note);
    assert_eq!(mid.seq, Some(first_left));
    assert_eq!(report.first_seq, Some(first_left));
    assert_eq!(report.signed_to, report.last_seq);
    // The export still holds the checkpoints of the removed segments: they are before the
    // files given, not missing from them.
    let anchored = fixture.verify(&fixture.segments(), true);
    assert_eq!(anchored.findings, report.findings);
    let kept = complete_lines(&std::fs::read(fixture.export()).unwrap())
        .into_iter()
        .filter(|l| seq_of(l) >= first_left)
        .count();
    assert!(kept > 0);
    assert_eq!(anchored.anchored, kept as u64);
}

#[tokio::test]
async fn the_plain_format_writes_bare_events_and_no_key() {
    let fixture = Fixture::new();
    let server = fixture
        .start_open(|config| config.audit.format = AuditFormat::Plain)
        .await;
    let (mut raw, _) = Raw::v5(server.addr, "plain-1").await;
    assert_eq!(
        pub_code(&mut raw, 1, "closed/x").await,
        ReasonCode::NotAuthorized
    );
    let deadline = Instant::now() + WAIT;
    while !String::from_utf8_lossy(&std::fs::read(fixture.active()).unwrap_or_default())
        .contains("\"acl_denied\"")
    {
        assert!(
            Instant::now() < deadline,
            "no acl_denied in the plain trail"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(raw);
    server.stop().await;

    let bytes = std::fs::read(fixture.active()).unwrap();
    assert!(bytes.ends_with(b"\n"));
    let records: Vec<serde_json::Map<String, serde_json::Value>> = complete_lines(&bytes)
        .into_iter()
        .map(|l| match serde_json::from_slice(l).unwrap() {
            serde_json::Value::Object(map) => map,
            other => panic!("not an object: {other}"),
        })
        .collect();
    for record in &records {
        assert!(
            !record.contains_key("seq") && !record.contains_key("prev"),
            "{record:?}"
        );
        assert!(record.contains_key("time"), "{record:?}");
    }
    let kinds: Vec<&str> = records
        .iter()
        .map(|r| r["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds.first(), Some(&"trail_start"), "{kinds:?}");
    assert_eq!(kinds.last(), Some(&"trail_stop"), "{kinds:?}");
    assert!(kinds.contains(&"acl_denied"), "{kinds:?}");
    assert!(!kinds.contains(&"checkpoint"), "{kinds:?}");
    assert!(records[0].get("key").is_none(), "{:?}", records[0]);
    let denied = records.iter().find(|r| r["kind"] == "acl_denied").unwrap();
    assert_eq!(denied["client_id"], "plain-1");
    assert_eq!(denied["topic"], "closed/x");
    assert!(!fixture.trail_dir().join("audit-signing.key").exists());
    assert!(!fixture.trail_dir().join("audit-signing.pub").exists());
}

//! Tampering tests: real trails written with [`Chain`] and signed with an [`AuditKey`],
//! rotated into segments, changed the ways an intruder would, and the finding each change
//! must give, down to the file, line and seq.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "test code"
)]

use proptest::prelude::*;

use super::*;
use crate::key::AuditKey;
use crate::record::Chain;

/// The standard trail: seq 1 to 20, a checkpoint at every multiple of 5, rotated into three
/// segments (seq 1-7, 8-14, 15-20), the last record a checkpoint.
const RECORDS: u64 = 20;
const CHECKPOINT_EVERY: u64 = 5;
const SEGMENTS: [(&str, u64, u64); 3] = [
    ("audit-000000000001.log", 1, 7),
    ("audit-000000000008.log", 8, 14),
    ("audit-000000000015.log", 15, 20),
];
const A: &str = SEGMENTS[0].0;
const B: &str = SEGMENTS[1].0;
const C: &str = SEGMENTS[2].0;

fn time(seq: u64) -> String {
    format!("2026-12-08T00:{:02}:{:02}.000Z", seq / 60, seq % 60)
}

/// What the broker would record at `seq`: seq 3 is alice failing to log in.
fn body(seq: u64) -> String {
    let t = time(seq);
    match seq % 4 {
        _ if seq == 1 => format!(r#"{{"time":"{t}","kind":"trail_start","version":"0.1.0"}}"#),
        0 => format!(
            r#"{{"time":"{t}","kind":"auth_success","username":"bob","client_id":"sensor-{seq}"}}"#
        ),
        1 => format!(
            r#"{{"time":"{t}","kind":"acl_denied","username":"carol","topic":"plant/line-{seq}/valve"}}"#
        ),
        2 => format!(
            r#"{{"time":"{t}","kind":"client_banned","address":"198.51.100.{seq}","reason":"too many failures"}}"#
        ),
        _ => format!(r#"{{"time":"{t}","kind":"auth_failure","username":"alice"}}"#),
    }
}

/// The lines of a trail of `records` records, `bodies` giving each event record.
fn write_trail(key: &AuditKey, records: u64, bodies: impl Fn(u64) -> String) -> Vec<String> {
    let mut chain = Chain::new();
    (1..=records)
        .map(|seq| {
            assert_eq!(chain.next_seq(), seq);
            if seq % CHECKPOINT_EVERY == 0 {
                chain.checkpoint(&time(seq), key)
            } else {
                chain.append(&bodies(seq))
            }
        })
        .collect()
}

/// A trail as its files: (name, lines), every line ending with LF when written out.
#[derive(Clone)]
struct Files(Vec<(String, Vec<String>)>);

impl Files {
    fn standard(key: &AuditKey) -> Self {
        Self::split(write_trail(key, RECORDS, body))
    }

    fn split(lines: Vec<String>) -> Self {
        Self(
            SEGMENTS
                .iter()
                .map(|(name, from, to)| {
                    let from = usize::try_from(*from - 1).unwrap();
                    let to = usize::try_from(*to).unwrap();
                    ((*name).to_owned(), lines[from..to].to_vec())
                })
                .collect(),
        )
    }

    fn file(&mut self, name: &str) -> &mut Vec<String> {
        &mut self.0.iter_mut().find(|(n, _)| n == name).unwrap().1
    }

    /// The line of `seq` in the untouched trail: (file, 1-based line).
    fn place(seq: u64) -> (&'static str, usize) {
        let (name, from, _) = SEGMENTS
            .iter()
            .find(|(_, from, to)| (*from..=*to).contains(&seq))
            .unwrap();
        (name, usize::try_from(seq - from + 1).unwrap())
    }

    fn line(&mut self, seq: u64) -> &mut String {
        let (name, no) = Self::place(seq);
        &mut self.file(name)[no - 1]
    }

    fn bytes(&self) -> Vec<(String, Vec<u8>)> {
        self.0
            .iter()
            .map(|(name, lines)| {
                let mut bytes = Vec::new();
                for line in lines {
                    bytes.extend_from_slice(line.as_bytes());
                    bytes.push(b'\n');
                }
                (name.clone(), bytes)
            })
            .collect()
    }
}

fn verify(verifier: &Verifier, files: &[(String, Vec<u8>)]) -> Report {
    let segments: Vec<Segment<'_>> = files
        .iter()
        .map(|(name, bytes)| Segment { name, bytes })
        .collect();
    verifier.verify(&segments)
}

fn check(key: &AuditKey, files: &Files) -> Report {
    verify(&Verifier::new().trust(key.public()), &files.bytes())
}

type Summary = (Severity, FindingKind, String, usize, Option<u64>);

/// The warnings and tampering findings, as (severity, kind, file, line, seq): what a test
/// pins down exactly, so that an extra finding for the same change fails it.
fn serious(report: &Report) -> Vec<Summary> {
    report
        .findings
        .iter()
        .filter(|f| f.severity >= Severity::Warning)
        .map(|f| (f.severity, f.kind, f.file.clone(), f.line, f.seq))
        .collect()
}

fn tampering(kind: FindingKind, file: &str, line: usize, seq: Option<u64>) -> Summary {
    (Severity::Tampering, kind, file.to_owned(), line, seq)
}

fn finding(report: &Report, kind: FindingKind) -> &Finding {
    report
        .findings
        .iter()
        .find(|f| f.kind == kind)
        .unwrap_or_else(|| panic!("no {kind:?} in {:#?}", report.findings))
}

/// Replaces `from` (which must occur once) in the line of `seq`.
fn edit(files: &mut Files, seq: u64, from: &str, to: &str) {
    let line = files.line(seq);
    assert_eq!(line.matches(from).count(), 1, "{from} in {line}");
    *line = line.replace(from, to);
}

#[test]
fn the_untouched_trail_verifies_clean() {
    let key = AuditKey::generate().unwrap();
    let files = Files::standard(&key);
    let report = check(&key, &files);
    assert!(!report.tampered());
    assert_eq!(serious(&report), []);
    assert_eq!(report.findings, []);
    assert_eq!(report.records, RECORDS);
    assert_eq!(
        (report.first_seq, report.last_seq),
        (Some(1), Some(RECORDS))
    );
    assert_eq!(report.checkpoints, RECORDS / CHECKPOINT_EVERY);
    assert_eq!(report.signed_to, Some(RECORDS));
    assert_eq!(report.keys, [key.public().base64()]);

    // Without a trusted key, only the reminder that the trail names its own key.
    let report = verify(&Verifier::new(), &files.bytes());
    assert!(!report.tampered());
    assert_eq!(serious(&report), []);
    assert_eq!(finding(&report, FindingKind::Keys).severity, Severity::Note);
}

#[test]
fn a_changed_string_value_is_modified_at_that_record() {
    let key = AuditKey::generate().unwrap();
    let mut files = Files::standard(&key);
    // Same length, still JSON: only the hash shows it.
    edit(&mut files, 3, "\"alice\"", "\"alicf\"");
    let report = check(&key, &files);
    assert!(report.tampered());
    assert_eq!(
        serious(&report),
        [tampering(FindingKind::Modified, A, 3, Some(3))]
    );
    assert!(
        finding(&report, FindingKind::Modified)
            .message
            .contains("seq 3 was changed")
    );

    // The last record of a segment: the link that shows it crosses into the next file.
    let mut files = Files::standard(&key);
    edit(&mut files, 14, "many failures", "many failurez");
    let report = check(&key, &files);
    assert_eq!(
        serious(&report),
        [tampering(FindingKind::Modified, B, 7, Some(14))]
    );
}

#[test]
fn a_changed_prev_is_blamed_on_its_own_record() {
    let key = AuditKey::generate().unwrap();
    let mut files = Files::standard(&key);
    let line = files.line(12);
    let at = line.find("\"prev\":\"").unwrap() + 8;
    let digit = if line.as_bytes()[at] == b'0' {
        "1"
    } else {
        "0"
    };
    line.replace_range(at..=at, digit);
    let report = check(&key, &files);
    assert_eq!(
        serious(&report),
        [tampering(FindingKind::Modified, B, 5, Some(12))]
    );
    assert!(
        finding(&report, FindingKind::Modified)
            .message
            .contains("its prev included")
    );

    // The first record's zero prev, once.
    let mut files = Files::standard(&key);
    edit(
        &mut files,
        1,
        &format!("\"prev\":\"{}\"", "0".repeat(64)),
        &format!("\"prev\":\"1{}\"", "0".repeat(63)),
    );
    let report = check(&key, &files);
    assert_eq!(
        serious(&report),
        [tampering(FindingKind::Modified, A, 1, Some(1))]
    );
}

#[test]
fn bytes_that_break_the_json_are_not_a_record() {
    let key = AuditKey::generate().unwrap();
    let mut files = Files::standard(&key);
    edit(&mut files, 3, "\"alice\"", "\"alice\u{1}");
    let report = check(&key, &files);
    assert!(report.tampered());
    assert_eq!(
        serious(&report),
        [tampering(FindingKind::NotARecord, A, 3, None)]
    );

    // At the end of a segment: the seq it held is accounted for by the damaged line, not
    // reported as a missing segment as well.
    let mut files = Files::standard(&key);
    files.line(7).replace_range(0..1, "[");
    let report = check(&key, &files);
    assert_eq!(
        serious(&report),
        [tampering(FindingKind::NotARecord, A, 7, None)]
    );

    // A broker that starts after its last line was damaged goes on from that line's bytes
    // (`Chain::resume`): the damaged line is the finding, the records around it are not.
    let mut lines = write_trail(&key, 10, body);
    lines.push("{\"seq\":11,\"prev\":\"damaged".to_owned());
    let mut chain = Chain::resume(lines[10].as_bytes(), 10);
    lines.push(chain.append(&body(11)));
    lines.push(chain.checkpoint(&time(12), &key));
    let report = check(&key, &Files(vec![(A.to_owned(), lines)]));
    assert_eq!(
        serious(&report),
        [tampering(FindingKind::NotARecord, A, 11, None)]
    );
    assert_eq!(report.signed_to, Some(12));
}

#[test]
fn deleted_lines_name_the_missing_range() {
    let key = AuditKey::generate().unwrap();
    let mut files = Files::standard(&key);
    files.file(B).remove(1); // seq 9
    let report = check(&key, &files);
    assert!(report.tampered());
    assert_eq!(
        serious(&report),
        [tampering(FindingKind::Deleted, B, 2, Some(10))]
    );
    let message = &finding(&report, FindingKind::Deleted).message;
    assert!(
        message.starts_with("seq 9 missing between audit-000000000008.log:1 and here"),
        "{message}"
    );

    let mut files = Files::standard(&key);
    files.file(B).drain(1..4); // seq 9 to 11, the checkpoint at 10 included
    let report = check(&key, &files);
    assert_eq!(
        serious(&report),
        [tampering(FindingKind::Deleted, B, 2, Some(12))]
    );
    let message = &finding(&report, FindingKind::Deleted).message;
    assert!(message.starts_with("seq 9 to 11 missing"), "{message}");
    assert!(message.contains("3 record(s) deleted"), "{message}");
}

#[test]
fn swapped_lines_are_reordered() {
    let key = AuditKey::generate().unwrap();
    let mut files = Files::standard(&key);
    files.file(A).swap(2, 3); // seq 3 and 4
    let report = check(&key, &files);
    assert!(report.tampered());
    // One finding for one swap: the chain itself is intact once read in seq order.
    assert_eq!(
        serious(&report),
        [tampering(FindingKind::Reordered, A, 3, Some(4))]
    );
    assert_eq!(
        finding(&report, FindingKind::Reordered).message,
        format!("seq 4 comes before seq 3 ({A}:4): records were moved")
    );

    // Lines far apart, across files: the two moved lines, and none of those in between.
    let mut files = Files::standard(&key);
    let two = files.line(2).clone();
    let twelve = std::mem::replace(files.line(12), two);
    *files.line(2) = twelve;
    let report = check(&key, &files);
    assert_eq!(
        serious(&report),
        [
            tampering(FindingKind::Reordered, A, 2, Some(12)),
            tampering(FindingKind::Reordered, B, 5, Some(2)),
        ]
    );

    // One record moved back over many: it alone is out of place.
    let mut files = Files::standard(&key);
    let eleven = files.file(B).remove(3);
    files.file(A).insert(2, eleven);
    let report = check(&key, &files);
    assert_eq!(
        serious(&report),
        [tampering(FindingKind::Reordered, A, 3, Some(11))]
    );
}

#[test]
fn lines_cut_off_the_end_show_only_against_an_exported_checkpoint() {
    let key = AuditKey::generate().unwrap();
    let files = Files::standard(&key);
    let exported = format!("{}\n{}\n", files.0[1].1[2], files.0[2].1[5]); // seq 10 and 20
    let mut cut = files.clone();
    cut.file(C).truncate(3); // seq 18 to 20 gone

    // Documented limitation: the cut trail is a valid, shorter trail.
    let report = check(&key, &cut);
    assert!(!report.tampered());
    assert_eq!(serious(&report), []);
    assert_eq!(
        finding(&report, FindingKind::Unsigned).severity,
        Severity::Note
    );

    let verifier = Verifier::new()
        .trust(key.public())
        .anchor("exported.log", exported.into_bytes());
    let report = verify(&verifier, &cut.bytes());
    assert!(report.tampered());
    assert_eq!(
        serious(&report),
        [tampering(
            FindingKind::Truncated,
            "exported.log",
            2,
            Some(20)
        )]
    );
    assert_eq!(
        finding(&report, FindingKind::Truncated).message,
        "seq 20 was exported, but the trail ends at seq 17: seq 18 to 20 at least were cut off the end"
    );
    assert_eq!(report.anchored, 1);
}

#[test]
fn a_file_cut_inside_its_last_line_is_a_warning() {
    let key = AuditKey::generate().unwrap();
    let files = Files::standard(&key);
    let mut bytes = files.bytes();
    let last = &mut bytes[2].1;
    last.truncate(last.len() - 40);
    let report = verify(&Verifier::new().trust(key.public()), &bytes);
    // A broker that stopped while writing leaves the same: not tampering by itself.
    assert!(!report.tampered());
    assert_eq!(
        serious(&report),
        [(
            Severity::Warning,
            FindingKind::Truncated,
            C.to_owned(),
            6,
            Some(20)
        )]
    );

    // The same inside the trail: the writer cuts a record it did not finish before it writes
    // on, so a cut record with records after it was cut by someone else. The seq it held is
    // accounted for: no missing segment besides.
    let mut bytes = files.bytes();
    let first = &mut bytes[0].1;
    first.truncate(first.len() - 40);
    let report = verify(&Verifier::new().trust(key.public()), &bytes);
    assert!(report.tampered());
    assert_eq!(
        serious(&report),
        [tampering(FindingKind::Truncated, A, 7, Some(7))]
    );
    assert!(
        finding(&report, FindingKind::Truncated)
            .message
            .contains("yet the trail goes on after it")
    );
}

#[test]
fn a_segment_not_given_is_a_missing_segment() {
    let key = AuditKey::generate().unwrap();
    let mut files = Files::standard(&key);
    files.0.remove(1);
    let report = check(&key, &files);
    assert!(report.tampered());
    assert_eq!(
        serious(&report),
        [tampering(FindingKind::MissingSegment, C, 1, Some(15))]
    );
    let message = &finding(&report, FindingKind::MissingSegment).message;
    assert!(message.starts_with("seq 8 to 14 missing: a segment between audit-000000000001.log (ends at seq 7) and audit-000000000015.log (starts at seq 15)"), "{message}");
}

#[test]
fn a_changed_seq_is_seq_changed() {
    let key = AuditKey::generate().unwrap();
    let mut files = Files::standard(&key);
    edit(&mut files, 12, "{\"seq\":12,", "{\"seq\":19,");
    let report = check(&key, &files);
    assert!(report.tampered());
    assert_eq!(
        serious(&report),
        [tampering(FindingKind::SeqChanged, B, 5, Some(19))]
    );
    assert!(
        finding(&report, FindingKind::SeqChanged)
            .message
            .contains("written as seq 12, and now says 19")
    );

    // The first record of a segment, which places the segment among the others: the file
    // stays in place, and the change is the only finding.
    let mut files = Files::standard(&key);
    edit(&mut files, 8, "{\"seq\":8,", "{\"seq\":98,");
    let report = check(&key, &files);
    assert_eq!(
        serious(&report),
        [tampering(FindingKind::SeqChanged, B, 1, Some(98))]
    );
}

#[test]
fn inserted_lines_are_inserted_or_not_a_record() {
    let key = AuditKey::generate().unwrap();
    let mut files = Files::standard(&key);
    files.file(B).insert(3, "everything is fine".to_owned());
    let report = check(&key, &files);
    assert!(report.tampered());
    assert_eq!(
        serious(&report),
        [tampering(FindingKind::NotARecord, B, 4, None)]
    );

    // A well-made record with the next seq and the right prev, before the real one: the
    // chain goes on from the real one, so the fabrication is the one called inserted.
    let mut files = Files::standard(&key);
    let mut chain = Chain::resume(files.line(10).as_bytes(), 10);
    let fake = chain.append(
        r#"{"time":"2026-12-08T00:00:10.500Z","kind":"auth_success","username":"mallory"}"#,
    );
    files.file(B).insert(3, fake);
    let report = check(&key, &files);
    assert_eq!(
        serious(&report),
        [tampering(FindingKind::Inserted, B, 4, Some(11))]
    );
    assert!(
        finding(&report, FindingKind::Inserted)
            .message
            .contains(&format!("the chain goes through the copy at {B}:5"))
    );

    // A copy of a record, after it.
    let mut files = Files::standard(&key);
    let copy = files.line(4).clone();
    files.file(A).insert(4, copy);
    let report = check(&key, &files);
    assert_eq!(
        serious(&report),
        [tampering(FindingKind::Inserted, A, 5, Some(4))]
    );

    // A record from nowhere, with a seq the trail never reached.
    let mut files = Files::standard(&key);
    let fake = format!(
        r#"{{"seq":1000,"prev":"{}","time":"2026-12-08T00:00:04.500Z","kind":"auth_success","username":"mallory"}}"#,
        "ab".repeat(32)
    );
    files.file(A).insert(4, fake);
    let report = check(&key, &files);
    assert_eq!(
        serious(&report),
        [tampering(FindingKind::Inserted, A, 5, Some(1000))]
    );
}

#[test]
fn a_trail_signed_again_with_another_key_shows_only_against_the_trusted_key() {
    let key = AuditKey::generate().unwrap();
    let intruder = AuditKey::generate().unwrap();
    // Seq 3 rewritten, the whole chain recomputed and every checkpoint signed again.
    let forged = Files::split(write_trail(&intruder, RECORDS, |seq| {
        body(seq).replace("\"alice\"", "\"mallory\"")
    }));
    assert_ne!(forged.bytes(), Files::standard(&key).bytes());

    let report = check(&key, &forged);
    assert!(report.tampered());
    let checkpoints: Vec<Summary> = (1..=RECORDS / CHECKPOINT_EVERY)
        .map(|k| {
            let seq = k * CHECKPOINT_EVERY;
            let (file, line) = Files::place(seq);
            tampering(FindingKind::WrongKey, file, line, Some(seq))
        })
        .collect();
    let wrong: Vec<Summary> = serious(&report)
        .into_iter()
        .filter(|f| f.0 == Severity::Tampering)
        .collect();
    assert_eq!(wrong, checkpoints);
    assert!(
        finding(&report, FindingKind::WrongKey)
            .message
            .contains(&intruder.public().base64())
    );
    assert_eq!(report.checkpoints, 0);

    // Documented limitation: without the trusted key, a consistent forgery verifies; only
    // the note that the trail vouches for itself remains.
    let report = verify(&Verifier::new(), &forged.bytes());
    assert!(!report.tampered());
    assert_eq!(serious(&report), []);
    let keys = finding(&report, FindingKind::Keys);
    assert_eq!(keys.severity, Severity::Note);
    assert!(keys.message.contains(&intruder.public().base64()));

    // Signed again only from where the intruder started: two keys, a warning.
    let original = write_trail(&key, RECORDS, body);
    let mut partly = write_trail(&intruder, RECORDS, |seq| {
        body(seq).replace("\"alice\"", "\"mallory\"")
    });
    partly[..6].clone_from_slice(&original[..6]); // up to the checkpoint at 5, and seq 6
    let mut chain = Chain::resume(partly[5].as_bytes(), 6);
    for seq in 7..=RECORDS {
        partly[usize::try_from(seq - 1).unwrap()] = if seq % CHECKPOINT_EVERY == 0 {
            chain.checkpoint(&time(seq), &intruder)
        } else {
            chain.append(&body(seq).replace("\"alice\"", "\"mallory\""))
        };
    }
    let report = verify(&Verifier::new(), &Files::split(partly).bytes());
    assert!(!report.tampered());
    assert_eq!(
        serious(&report),
        [(Severity::Warning, FindingKind::Keys, String::new(), 0, None)]
    );
}

#[test]
fn a_changed_checkpoint_has_a_bad_signature() {
    let key = AuditKey::generate().unwrap();

    // Its signature: one base64 digit (not the last, whose low bits are padding).
    let mut files = Files::standard(&key);
    let line = files.line(10);
    let at = line.find("\"sig\":\"").unwrap() + 7 + 10;
    let digit = if line.as_bytes()[at] == b'A' {
        "B"
    } else {
        "A"
    };
    line.replace_range(at..=at, digit);
    let report = check(&key, &files);
    assert!(report.tampered());
    // The broken link to seq 11 says the same: one finding.
    assert_eq!(
        serious(&report),
        [tampering(FindingKind::BadSignature, B, 3, Some(10))]
    );

    // Its time, in the middle of the trail and on the last line (which nothing links to).
    for seq in [5, 20] {
        let mut files = Files::standard(&key);
        edit(
            &mut files,
            seq,
            &format!("\"time\":\"{}\"", time(seq)),
            &format!("\"time\":\"{}\"", time(seq + 1)),
        );
        let report = check(&key, &files);
        let (file, line) = Files::place(seq);
        assert_eq!(
            serious(&report),
            [tampering(FindingKind::BadSignature, file, line, Some(seq))]
        );
        assert!(
            finding(&report, FindingKind::BadSignature)
                .message
                .contains("the checkpoint was changed")
        );
    }

    // The last checkpoint's prev: its own signature shows it, not the record before it.
    let mut files = Files::standard(&key);
    let line = files.line(20);
    let at = line.find("\"prev\":\"").unwrap() + 8;
    let digit = if line.as_bytes()[at] == b'0' {
        "1"
    } else {
        "0"
    };
    line.replace_range(at..=at, digit);
    let report = check(&key, &files);
    assert_eq!(
        serious(&report),
        [tampering(FindingKind::BadSignature, C, 6, Some(20))]
    );

    // The key it names, on the last line: the trusted key still verifies the signature,
    // but the writer never names a key it did not sign with.
    let mut files = Files::standard(&key);
    let other = AuditKey::generate().unwrap().public().base64();
    edit(&mut files, 20, &key.public().base64(), &other);
    let report = check(&key, &files);
    assert_eq!(
        serious(&report),
        [tampering(FindingKind::BadSignature, C, 6, Some(20))]
    );
    assert!(
        finding(&report, FindingKind::BadSignature)
            .message
            .contains("its key was changed")
    );
    let report = verify(&Verifier::new(), &files.bytes());
    assert!(report.tampered());
    assert_eq!(finding(&report, FindingKind::BadSignature).line, 6);
}

#[test]
fn an_exported_copy_says_what_changed() {
    let key = AuditKey::generate().unwrap();
    let mut files = Files::standard(&key);
    let exported = format!("{}\n{}\n", files.line(3).clone(), files.line(20).clone());
    edit(&mut files, 3, "\"alice\"", "\"mallory\"");
    let verifier = Verifier::new()
        .trust(key.public())
        .anchor("exported.log", exported.into_bytes());
    let report = verify(&verifier, &files.bytes());
    assert!(report.tampered());
    assert_eq!(
        serious(&report),
        [
            tampering(FindingKind::Modified, A, 3, Some(3)),
            tampering(FindingKind::AnchorMismatch, A, 3, Some(3)),
        ]
    );
    assert_eq!(
        finding(&report, FindingKind::AnchorMismatch).message,
        "seq 3 differs from its exported copy (exported.log:1) (username: was \"alice\", now \"mallory\")"
    );
    assert_eq!(report.anchored, 1);

    // The last record, which nothing links to: only its copy shows the change.
    let key = AuditKey::generate().unwrap();
    let mut lines = write_trail(&key, 17, body);
    let exported = format!("{}\n", lines[16]);
    lines[16] = lines[16].replace("plant/", "plank/");
    let files = Files(vec![(A.to_owned(), lines)]);
    assert!(!check(&key, &files).tampered());
    let verifier = Verifier::new()
        .trust(key.public())
        .anchor("exported.log", exported.into_bytes());
    let report = verify(&verifier, &files.bytes());
    assert_eq!(
        serious(&report),
        [tampering(FindingKind::AnchorMismatch, A, 17, Some(17))]
    );
    assert!(
        finding(&report, FindingKind::AnchorMismatch)
            .message
            .contains("topic: was \"plant/line-17/valve\", now \"plank/line-17/valve\"")
    );
}

#[test]
fn segments_in_any_order_and_given_twice_verify_clean() {
    let key = AuditKey::generate().unwrap();
    let files = Files::standard(&key).bytes();
    let shuffled = vec![
        files[2].clone(),
        files[0].clone(),
        files[1].clone(),
        files[0].clone(),
    ];
    let report = verify(&Verifier::new().trust(key.public()), &shuffled);
    assert!(!report.tampered());
    assert_eq!(serious(&report), []);
    assert_eq!(report.records, RECORDS);
    assert_eq!(report.signed_to, Some(RECORDS));
    let twice = finding(&report, FindingKind::Files);
    assert_eq!((twice.severity, twice.file.as_str()), (Severity::Note, A));
}

/// One change to a trail's lines.
#[derive(Debug, Clone)]
enum Change {
    /// Line `line`'s byte at `at` (its LF when `at` is its length) replaced: XOR with a
    /// non-zero `with`, so that the byte differs.
    Byte {
        line: prop::sample::Index,
        at: prop::sample::Index,
        with: u8,
    },
    Delete(prop::sample::Index),
    /// The line and the one after it.
    Swap(prop::sample::Index),
    /// A copy of the line right after it.
    Duplicate(prop::sample::Index),
}

fn change() -> impl Strategy<Value = Change> {
    prop_oneof![
        3 => (any::<prop::sample::Index>(), any::<prop::sample::Index>(), 1..=255u8)
            .prop_map(|(line, at, with)| Change::Byte { line, at, with }),
        1 => any::<prop::sample::Index>().prop_map(Change::Delete),
        1 => any::<prop::sample::Index>().prop_map(Change::Swap),
        1 => any::<prop::sample::Index>().prop_map(Change::Duplicate),
    ]
}

fn username() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("alice".to_owned()),
        "[a-z]{1,8}",
        // Escapes and multi-byte characters: a byte changed inside them.
        Just("ma\"ll\\ory".to_owned()),
        Just("Zoë \u{1F512}".to_owned()),
    ]
}

/// A random trail: each record an event or a checkpoint, in 1 to 3 segments.
#[derive(Debug, Clone)]
struct Plan {
    checkpoints: Vec<bool>,
    users: Vec<String>,
    cuts: Vec<prop::sample::Index>,
}

fn plan() -> impl Strategy<Value = Plan> {
    (2..60usize)
        .prop_flat_map(|n| {
            (
                prop::collection::vec(prop::bool::weighted(0.3), n),
                prop::collection::vec(username(), n),
                prop::collection::vec(any::<prop::sample::Index>(), 0..=2),
            )
        })
        .prop_map(|(checkpoints, users, cuts)| Plan {
            checkpoints,
            users,
            cuts,
        })
}

/// The trail's lines, each with the segment it goes to.
fn lay_out(plan: &Plan, key: &AuditKey) -> Vec<(usize, String)> {
    let mut chain = Chain::new();
    let n = plan.checkpoints.len();
    let mut cuts: Vec<usize> = plan.cuts.iter().map(|c| 1 + c.index(n - 1)).collect();
    cuts.sort_unstable();
    plan.checkpoints
        .iter()
        .zip(&plan.users)
        .enumerate()
        .map(|(i, (&checkpoint, user))| {
            let seq = u64::try_from(i + 1).unwrap();
            let line = if checkpoint {
                chain.checkpoint(&time(seq), key)
            } else {
                let body = serde_json::json!({
                    "time": time(seq),
                    "kind": "auth_failure",
                    "username": user,
                    "client_id": format!("c{seq}"),
                });
                chain.append(&body.to_string())
            };
            (cuts.iter().filter(|c| **c <= i).count(), line)
        })
        .collect()
}

/// The trail's files, from lines that may no longer be UTF-8 or may hold LFs.
fn render(lines: &[(usize, Vec<u8>)]) -> Vec<(String, Vec<u8>)> {
    let mut files: Vec<(String, Vec<u8>)> = (0..3)
        .map(|s| (format!("segment-{s}.log"), Vec::new()))
        .collect();
    for (segment, line) in lines {
        files[*segment].1.extend_from_slice(line);
    }
    files.retain(|(_, bytes)| !bytes.is_empty());
    files
}

/// Applies `change`: the changed lines (each with its LF, so that a byte change can hit it),
/// and whether it is one of the changes the verifier cannot see without an exported copy of
/// the trail's last record:
/// - the last line changed so that it is still a record, but not a checkpoint: nothing links
///   to it and nothing signs it (the same as cutting it and appending another record);
/// - the final LF replaced: the file then ends inside a record, which is what a broker that
///   stopped while writing leaves (a Truncated warning);
/// - the last line deleted: a shorter trail is a valid trail.
///
/// Deleting the first line is not detectable at all (it is left out before `apply` is
/// called): the files then begin at seq 2, which is what retention leaves, and an exported
/// copy of seq 1 is older than the files and says nothing about them.
fn apply(lines: &[(usize, String)], change: &Change) -> (Vec<(usize, Vec<u8>)>, bool) {
    let mut out: Vec<(usize, Vec<u8>)> = lines
        .iter()
        .map(|(s, l)| {
            let mut bytes = l.clone().into_bytes();
            bytes.push(b'\n');
            (*s, bytes)
        })
        .collect();
    let last = out.len() - 1;
    match change {
        Change::Byte { line, at, with } => {
            let i = line.index(out.len());
            let bytes = &mut out[i].1;
            let at = at.index(bytes.len());
            bytes[at] ^= with;
            let body = &bytes[..bytes.len() - 1];
            let excluded = i == last
                && (at == bytes.len() - 1
                    || (!body.contains(&b'\n')
                        && Head::parse(body).is_ok_and(|h| !h.is_checkpoint())));
            (out, excluded)
        }
        Change::Delete(line) => {
            let i = 1 + line.index(out.len() - 1);
            out.remove(i);
            (out, i == last)
        }
        Change::Swap(line) => {
            let i = line.index(out.len() - 1);
            let (a, b) = (out[i].1.clone(), out[i + 1].1.clone());
            out[i].1 = b;
            out[i + 1].1 = a;
            // Two segments of one record each, their lines swapped: that is two files
            // renamed, and segments are ordered by what they hold, not by their names. No
            // byte of the trail changed.
            let alone = |k: usize| out.iter().filter(|(s, _)| *s == out[k].0).count() == 1;
            let renamed = out[i].0 != out[i + 1].0 && alone(i) && alone(i + 1);
            (out, renamed)
        }
        Change::Duplicate(line) => {
            let i = line.index(out.len());
            let copy = out[i].clone();
            out.insert(i + 1, copy);
            (out, false)
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn any_single_change_is_detected(plan in plan(), change in change()) {
        let key = AuditKey::generate().unwrap();
        let lines = lay_out(&plan, &key);
        let trusted = Verifier::new().trust(key.public());

        let untouched: Vec<(usize, Vec<u8>)> = lines
            .iter()
            .map(|(s, l)| (*s, format!("{l}\n").into_bytes()))
            .collect();
        let report = verify(&trusted, &render(&untouched));
        prop_assert!(!report.tampered(), "{:#?}", report.findings);

        let (changed, excluded) = apply(&lines, &change);
        let files = render(&changed);
        if matches!(change, Change::Swap(_)) && excluded {
            let report = verify(&trusted, &files);
            prop_assert!(!report.tampered(), "{:#?}", report.findings);
        } else if excluded {
            // Seen once the last record is exported.
            let exported = format!("{}\n", lines[lines.len() - 1].1).into_bytes();
            let report = verify(&trusted.clone().anchor("exported.log", exported), &files);
            prop_assert!(report.tampered(), "{:?}: {:#?}", change, report.findings);
        } else {
            for verifier in [&trusted, &Verifier::new()] {
                let report = verify(verifier, &files);
                prop_assert!(report.tampered(), "{:?}: {:#?}", change, report.findings);
            }
        }
    }
}

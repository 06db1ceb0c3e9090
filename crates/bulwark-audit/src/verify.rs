//! The verifier: reads a trail's segments (and optionally checkpoints exported elsewhere) and
//! reports, record by record, what does not hold.
//!
//! How each finding is reached (`docs/audit.md` says what each proves):
//! - a record whose hash is not the `prev` of the record after it was changed after it was
//!   written (a record whose own `prev` no longer matches either had that field changed too);
//! - a record that links to the one before it but carries another sequence number had its
//!   `seq` changed;
//! - sequence numbers missing between two records were deleted (in one file) or lie in a
//!   segment that was not given (between two files);
//! - a sequence number that comes after a higher one was moved; one that appears twice was
//!   inserted (or copied);
//! - a checkpoint whose signature does not verify was changed; one signed by a key other than
//!   the trusted one was re-signed;
//! - a record exported elsewhere that the trail lacks was cut off the end, and one the trail
//!   holds differently was changed (with the members that differ).

use std::collections::BTreeMap;
use std::fmt;

use crate::key::PublicKey;
use crate::record::{Hash, Head, NotARecord, checkpoint_message};

/// One file of the trail, as bytes.
#[derive(Debug, Clone, Copy)]
pub struct Segment<'a> {
    /// How findings name the file.
    pub name: &'a str,
    /// Its contents.
    pub bytes: &'a [u8],
}

/// How bad a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    /// Worth knowing; nothing is wrong.
    Note,
    /// Possibly harmless (a broker that stopped while writing, several keys), possibly not.
    Warning,
    /// The trail was changed: the exit status says so.
    Tampering,
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Note => "note",
            Self::Warning => "warning",
            Self::Tampering => "TAMPERING",
        })
    }
}

/// What a finding is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FindingKind {
    /// A record's bytes changed after it was written.
    Modified,
    /// A line that is not a record at all (damaged bytes, or something inserted).
    NotARecord,
    /// A record's sequence number changed.
    SeqChanged,
    /// Records missing inside one file.
    Deleted,
    /// A record with a sequence number already seen.
    Inserted,
    /// A record before one with a higher sequence number.
    Reordered,
    /// Records missing between two files.
    MissingSegment,
    /// Records cut off the end (shown by an exported checkpoint), or a file that ends inside a
    /// record.
    Truncated,
    /// A second trail starting inside the first.
    ChainRestart,
    /// A checkpoint whose signature does not verify.
    BadSignature,
    /// A checkpoint signed by a key other than the trusted one.
    WrongKey,
    /// A record that differs from its exported copy.
    AnchorMismatch,
    /// The files start after the trail's first record.
    StartsMidTrail,
    /// Records after the last checkpoint, or no checkpoint at all.
    Unsigned,
    /// Several keys, or no trusted key given.
    Keys,
    /// Something about the files themselves (empty, given twice, unreadable anchors).
    Files,
}

impl FindingKind {
    /// A short name, for JSON output and scripts.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Modified => "modified",
            Self::NotARecord => "not_a_record",
            Self::SeqChanged => "seq_changed",
            Self::Deleted => "deleted",
            Self::Inserted => "inserted",
            Self::Reordered => "reordered",
            Self::MissingSegment => "missing_segment",
            Self::Truncated => "truncated",
            Self::ChainRestart => "chain_restart",
            Self::BadSignature => "bad_signature",
            Self::WrongKey => "wrong_key",
            Self::AnchorMismatch => "anchor_mismatch",
            Self::StartsMidTrail => "starts_mid_trail",
            Self::Unsigned => "unsigned",
            Self::Keys => "keys",
            Self::Files => "files",
        }
    }
}

/// One thing the verifier found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// How bad.
    pub severity: Severity,
    /// What about.
    pub kind: FindingKind,
    /// The file (as its [`Segment`] named it) and line (1-based; 0: the file as a whole).
    pub file: String,
    /// The line, 1-based; 0 for the file as a whole.
    pub line: usize,
    /// The record's sequence number, where there is one.
    pub seq: Option<u64>,
    /// What, in words.
    pub message: String,
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            write!(f, "{}: {}: {}", self.severity, self.file, self.message)
        } else {
            write!(
                f,
                "{}: {}:{}: {}",
                self.severity, self.file, self.line, self.message
            )
        }
    }
}

/// What the verifier found, and what it checked.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    /// Findings, in the order of the trail.
    pub findings: Vec<Finding>,
    /// Records read (lines that parse as records).
    pub records: u64,
    /// The lowest and highest sequence numbers read.
    pub first_seq: Option<u64>,
    /// See `first_seq`.
    pub last_seq: Option<u64>,
    /// Checkpoints whose signature verified.
    pub checkpoints: u64,
    /// The highest sequence number a verified checkpoint covers (the checkpoint's own).
    pub signed_to: Option<u64>,
    /// Records of the trail found, identical, in the exported copies.
    pub anchored: u64,
    /// The keys that signed the checkpoints (base64).
    pub keys: Vec<String>,
}

impl Report {
    /// Whether anything shows the trail was changed.
    pub fn tampered(&self) -> bool {
        self.findings
            .iter()
            .any(|f| f.severity == Severity::Tampering)
    }
}

/// Checks segments against a trusted key and exported copies.
#[derive(Debug, Clone, Default)]
pub struct Verifier {
    key: Option<PublicKey>,
    anchors: Vec<(String, Vec<u8>)>,
}

/// One line of a file.
struct Line<'a> {
    file: usize,
    no: usize,
    bytes: &'a [u8],
    hash: Hash,
    head: Result<Head, NotARecord>,
    /// The sequence number it was written with, where that is derivable.
    seq: Option<u64>,
}

impl Verifier {
    /// A verifier that trusts the keys the trail names (say so with [`Verifier::trust`]).
    pub fn new() -> Self {
        Self::default()
    }

    /// Checks every checkpoint against `key`.
    pub fn trust(mut self, key: PublicKey) -> Self {
        self.key = Some(key);
        self
    }

    /// Records (usually checkpoints) exported elsewhere, as the lines of a file named `name`.
    pub fn anchor(mut self, name: &str, bytes: Vec<u8>) -> Self {
        self.anchors.push((name.to_owned(), bytes));
        self
    }

    /// Checks `segments`, given in any order.
    pub fn verify(&self, segments: &[Segment<'_>]) -> Report {
        let mut v = Run {
            report: Report::default(),
            names: Vec::new(),
        };
        let lines = v.read(segments);
        v.check(&lines, self);
        v.report
    }
}

struct Run {
    report: Report,
    names: Vec<String>,
}

impl Run {
    fn push(&mut self, severity: Severity, kind: FindingKind, at: Option<&Line<'_>>, seq: Option<u64>, message: String) {
        let (file, line) = at.map_or((String::new(), 0), |l| (self.name(l.file), l.no));
        self.report.findings.push(Finding {
            severity,
            kind,
            file,
            line,
            seq,
            message,
        });
    }

    fn name(&self, file: usize) -> String {
        self.names.get(file).cloned().unwrap_or_default()
    }

    fn whole(&mut self, severity: Severity, kind: FindingKind, file: String, message: String) {
        self.report.findings.push(Finding {
            severity,
            kind,
            file,
            line: 0,
            seq: None,
            message,
        });
    }

    fn at(&self, l: &Line<'_>) -> String {
        format!("{}:{}", self.name(l.file), l.no)
    }

    /// Splits every segment into lines and puts the segments in the order of their first
    /// sequence number.
    fn read<'a>(&mut self, segments: &[Segment<'a>]) -> Vec<Line<'a>> {
        let mut files: Vec<(u64, usize, Vec<Line<'a>>)> = Vec::new();
        let mut seen: Vec<Hash> = Vec::new();
        for (index, segment) in segments.iter().enumerate() {
            self.names.push(segment.name.to_owned());
            let whole = Hash::of(segment.bytes);
            if seen.contains(&whole) && !segment.bytes.is_empty() {
                self.whole(
                    Severity::Note,
                    FindingKind::Files,
                    segment.name.to_owned(),
                    "the same contents as a file given before it: read once".into(),
                );
                continue;
            }
            seen.push(whole);
            if segment.bytes.is_empty() {
                self.whole(Severity::Note, FindingKind::Files, segment.name.to_owned(), "empty".into());
                continue;
            }
            let mut lines = Vec::new();
            let mut pieces: Vec<&[u8]> = segment.bytes.split(|b| *b == b'\n').collect();
            // A file ends with LF: the piece after it is empty. Anything else there is a record
            // the file stops in the middle of.
            let torn = pieces.pop().filter(|last| !last.is_empty());
            for (i, bytes) in pieces.into_iter().enumerate() {
                let head = Head::parse(bytes);
                lines.push(Line {
                    file: index,
                    no: i + 1,
                    bytes,
                    hash: Hash::of(bytes),
                    seq: head.as_ref().ok().map(|h| h.seq),
                    head,
                });
            }
            if let Some(torn) = torn {
                let no = lines.len() + 1;
                self.report.findings.push(Finding {
                    severity: Severity::Warning,
                    kind: FindingKind::Truncated,
                    file: segment.name.to_owned(),
                    line: no,
                    seq: None,
                    message: format!(
                        "the file ends inside a record ({} bytes without a line end): it was cut short, or the broker stopped while writing it",
                        torn.len()
                    ),
                });
            }
            let first = lines.iter().find_map(|l| l.seq).unwrap_or(u64::MAX);
            files.push((first, index, lines));
        }
        files.sort_by_key(|(first, index, _)| (*first, *index));
        files.into_iter().flat_map(|(_, _, lines)| lines).collect()
    }

    fn check(&mut self, lines: &[Line<'_>], verifier: &Verifier) {
        let mut lines: Vec<Line<'_>> = lines
            .iter()
            .map(|l| Line {
                file: l.file,
                no: l.no,
                bytes: l.bytes,
                hash: l.hash,
                head: l.head.clone(),
                seq: l.seq,
            })
            .collect();
        // Lines already explained by a finding: a broken link to them says nothing new.
        let mut changed = vec![false; lines.len()];

        // Lines that are not records.
        for (i, l) in lines.iter().enumerate() {
            if let Err(why) = &l.head {
                let message = if l.bytes.is_empty() {
                    "an empty line: not a record (inserted, or a record's bytes removed)".to_owned()
                } else {
                    format!("{why}: the record written here was changed, or this line was inserted")
                };
                self.push(Severity::Tampering, FindingKind::NotARecord, Some(l), None, message);
                if let Some(slot) = changed.get_mut(i) {
                    *slot = true;
                }
            }
        }

        // A record that links to the line before it was written right after it: a different
        // seq means the seq was changed.
        for i in 1..lines.len() {
            let (Some(before), Some(this)) = (lines.get(i - 1), lines.get(i)) else { continue };
            let (Ok(h), Some(prev_seq)) = (&this.head, before.seq) else { continue };
            if h.prev_hash() == before.hash && h.seq != prev_seq.saturating_add(1) {
                let message = format!(
                    "seq was changed: the record links to seq {prev_seq} before it, so it was written as seq {}, and now says {}",
                    prev_seq.saturating_add(1),
                    h.seq
                );
                self.push(Severity::Tampering, FindingKind::SeqChanged, Some(this), Some(h.seq), message);
                if let Some(l) = lines.get_mut(i) {
                    l.seq = Some(prev_seq.saturating_add(1));
                }
                if let Some(slot) = changed.get_mut(i) {
                    *slot = true;
                }
            }
        }

        // Order and duplicates, in the order the files give them.
        let mut highest: Option<(u64, usize)> = None;
        let mut first_at: BTreeMap<u64, usize> = BTreeMap::new();
        for (i, l) in lines.iter().enumerate() {
            let Some(seq) = l.seq else { continue };
            if let Some(&j) = first_at.get(&seq) {
                let other = lines.get(j).map(|o| self.at(o)).unwrap_or_default();
                self.push(
                    Severity::Tampering,
                    FindingKind::Inserted,
                    Some(l),
                    Some(seq),
                    format!("seq {seq} again (first at {other}): a record was inserted or copied"),
                );
                continue;
            }
            first_at.insert(seq, i);
            if let Some((top, j)) = highest
                && seq < top
            {
                let other = lines.get(j).map(|o| self.at(o)).unwrap_or_default();
                self.push(
                    Severity::Tampering,
                    FindingKind::Reordered,
                    Some(l),
                    Some(seq),
                    format!("seq {seq} comes after seq {top} ({other}): records were moved"),
                );
            }
            if highest.is_none_or(|(top, _)| seq > top) {
                highest = Some((seq, i));
            }
        }

        // The chain, in sequence order (one line per seq: the first seen).
        let order: Vec<usize> = first_at.values().copied().collect();
        self.report.records = u64::try_from(order.len()).unwrap_or(u64::MAX);
        self.report.first_seq = first_at.keys().next().copied();
        self.report.last_seq = first_at.keys().next_back().copied();
        if let Some(&first) = order.first()
            && let Some(l) = lines.get(first)
            && let Ok(h) = &l.head
        {
            let seq = l.seq.unwrap_or(h.seq);
            if seq == 1 && h.prev_hash() != Hash::ZERO {
                self.push(Severity::Tampering, FindingKind::Modified, Some(l), Some(1),
                    "the first record of a trail has a zero prev; this one does not".into());
            } else if seq > 1 {
                self.push(Severity::Note, FindingKind::StartsMidTrail, Some(l), Some(seq),
                    format!("the files begin at seq {seq}: records 1 to {} are not in the files given (older segments, or removed by retention)", seq - 1));
            }
        }
        for pair in order.windows(2) {
            let [a, b] = pair else { continue };
            let (Some(la), Some(lb)) = (lines.get(*a), lines.get(*b)) else { continue };
            let (Some(sa), Some(sb), Ok(hb)) = (la.seq, lb.seq, &lb.head) else { continue };
            if hb.prev_hash() == Hash::ZERO {
                self.push(Severity::Tampering, FindingKind::ChainRestart, Some(lb), Some(sb),
                    format!("a new trail starts here (zero prev) after seq {sa} ({}): the records before are not linked to it", self.at(la)));
                continue;
            }
            if sb > sa.saturating_add(1) {
                let gap = sb - sa - 1;
                // Lines between them that are not records account for missing seqs.
                let damaged = if la.file == lb.file {
                    lines
                        .iter()
                        .filter(|l| l.file == la.file && l.no > la.no && l.no < lb.no && l.head.is_err())
                        .count()
                } else {
                    0
                };
                if u64::try_from(damaged).unwrap_or(0) >= gap {
                    continue;
                }
                let range = if gap == 1 {
                    format!("seq {}", sa + 1)
                } else {
                    format!("seq {} to {}", sa + 1, sb - 1)
                };
                if la.file == lb.file {
                    let at = self.at(la);
                    self.push(Severity::Tampering, FindingKind::Deleted, Some(lb), Some(sb),
                        format!("{range} missing between {at} and here: {gap} record(s) deleted"));
                } else {
                    let (fa, fb) = (self.name(la.file), self.name(lb.file));
                    self.push(Severity::Tampering, FindingKind::MissingSegment, Some(lb), Some(sb),
                        format!("{range} missing: a segment between {fa} (ends at seq {sa}) and {fb} (starts at seq {sb}) was not given, or was deleted"));
                }
                continue;
            }
            if hb.prev_hash() == la.hash {
                continue;
            }
            // The link from a to b is broken. If b's own outgoing link is broken too, b's prev
            // was changed (with or without the rest of b); otherwise a was changed.
            if changed.get(*a).copied().unwrap_or(false) {
                continue;
            }
            let next_ok = order
                .iter()
                .position(|i| i == b)
                .and_then(|p| order.get(p + 1))
                .and_then(|c| lines.get(*c))
                .is_none_or(|lc| match &lc.head {
                    Ok(hc) => lc.seq != sb.checked_add(1) || hc.prev_hash() == lb.hash,
                    Err(_) => true,
                });
            if next_ok || changed.get(*b).copied().unwrap_or(false) {
                let at = self.at(lb);
                self.push(Severity::Tampering, FindingKind::Modified, Some(la), Some(sa),
                    format!("seq {sa} was changed after it was written: its hash is not the prev of seq {sb} ({at})"));
                if let Some(slot) = changed.get_mut(*a) {
                    *slot = true;
                }
            } else {
                self.push(Severity::Tampering, FindingKind::Modified, Some(lb), Some(sb),
                    format!("seq {sb} was changed after it was written, its prev included: it links neither to seq {sa} before it nor to the record after it"));
                if let Some(slot) = changed.get_mut(*b) {
                    *slot = true;
                }
            }
        }

        self.checkpoints(&lines, &order, verifier.key);
        self.anchors(&lines, &first_at, verifier);
    }

    fn checkpoints(&mut self, lines: &[Line<'_>], order: &[usize], trusted: Option<PublicKey>) {
        let mut keys: Vec<String> = Vec::new();
        let mut last_signed: Option<u64> = None;
        for &i in order {
            let Some(l) = lines.get(i) else { continue };
            let Ok(h) = &l.head else { continue };
            if !h.is_checkpoint() {
                continue;
            }
            let seq = l.seq.unwrap_or(h.seq);
            match check_signature(h, trusted) {
                Signed::Good(key) => {
                    self.report.checkpoints += 1;
                    last_signed = Some(seq);
                    if !keys.contains(&key) {
                        keys.push(key);
                    }
                }
                Signed::Bad(why) => self.push(Severity::Tampering, FindingKind::BadSignature, Some(l), Some(seq),
                    format!("checkpoint seq {seq}: {why}")),
                Signed::Other(key) => self.push(Severity::Tampering, FindingKind::WrongKey, Some(l), Some(seq),
                    format!("checkpoint seq {seq} is signed by the key {key}, not by the trusted key: the trail was signed again by someone else (or the broker's key was replaced)")),
            }
        }
        self.report.signed_to = last_signed;
        if trusted.is_none() && !keys.is_empty() {
            self.whole(Severity::Note, FindingKind::Keys, String::new(), format!(
                "no trusted key given (--key): signatures were checked against the key each checkpoint names ({}); whoever can rewrite the trail can sign it again with a key of their own",
                keys.join(", ")));
        }
        if keys.len() > 1 && trusted.is_none() {
            self.whole(Severity::Warning, FindingKind::Keys, String::new(), format!(
                "checkpoints are signed by {} different keys: the broker's key was replaced, or part of the trail was signed again", keys.len()));
        }
        self.report.keys = keys;
        if let Some(last) = self.report.last_seq {
            match last_signed {
                None => self.whole(Severity::Warning, FindingKind::Unsigned, String::new(),
                    "no checkpoint verified: nothing in these files is signed".into()),
                Some(s) if s < last => self.whole(Severity::Note, FindingKind::Unsigned, String::new(), format!(
                    "seq {} to {last} come after the last checkpoint (seq {s}): not signed yet, and a cut there shows only against an exported checkpoint", s + 1)),
                Some(_) => {}
            }
        }
    }

    fn anchors(&mut self, lines: &[Line<'_>], first_at: &BTreeMap<u64, usize>, verifier: &Verifier) {
        let last = self.report.last_seq;
        let first = self.report.first_seq;
        for (name, bytes) in &verifier.anchors {
            for (no, raw) in bytes.split(|b| *b == b'\n').enumerate() {
                if raw.is_empty() {
                    continue;
                }
                let Ok(head) = Head::parse(raw) else {
                    self.whole(Severity::Warning, FindingKind::Files, name.clone(),
                        format!("line {} is not a record: ignored", no + 1));
                    continue;
                };
                let seq = head.seq;
                let anchor = format!("{name}:{}", no + 1);
                if head.is_checkpoint() {
                    match check_signature(&head, verifier.key) {
                        Signed::Good(_) => {}
                        Signed::Bad(why) => self.whole(Severity::Warning, FindingKind::Files, name.clone(),
                            format!("the exported checkpoint seq {seq} at line {}: {why}", no + 1)),
                        Signed::Other(key) => self.whole(Severity::Warning, FindingKind::Files, name.clone(),
                            format!("the exported checkpoint seq {seq} at line {} is signed by {key}, not the trusted key", no + 1)),
                    }
                }
                match first_at.get(&seq).and_then(|&i| lines.get(i)) {
                    Some(l) if l.hash == Hash::of(raw) => self.report.anchored += 1,
                    Some(l) => {
                        let diff = differences(l.bytes, raw);
                        self.push(Severity::Tampering, FindingKind::AnchorMismatch, Some(l), Some(seq),
                            format!("seq {seq} differs from its exported copy ({anchor}){diff}"));
                    }
                    None if last.is_some_and(|last| seq > last) => {
                        let last = last.unwrap_or(0);
                        self.whole(Severity::Tampering, FindingKind::Truncated, anchor, format!(
                            "seq {seq} was exported, but the trail ends at seq {last}: seq {} to {seq} at least were cut off the end", last + 1));
                    }
                    None if last.is_none() => {
                        self.whole(Severity::Tampering, FindingKind::Truncated, anchor, format!(
                            "seq {seq} was exported, but the files hold no record at all"));
                    }
                    None if first.is_some_and(|first| seq < first) => {}
                    // Inside the trail's range but missing: already reported as deleted.
                    None => {}
                }
            }
        }
    }
}

enum Signed {
    Good(String),
    Bad(String),
    Other(String),
}

fn check_signature(h: &Head, trusted: Option<PublicKey>) -> Signed {
    let (Some(key), Some(sig), Some(time)) = (&h.key, &h.sig, &h.time) else {
        return Signed::Bad("a checkpoint without key, sig or time".into());
    };
    let named = match PublicKey::from_base64(key) {
        Ok(k) => k,
        Err(err) => return Signed::Bad(format!("its key is not a key ({err})")),
    };
    let message = checkpoint_message(h.seq, &h.prev_hash(), time);
    if !named.verify(&message, sig) {
        return match trusted {
            Some(t) if t.verify(&message, sig) => Signed::Good(t.base64()),
            _ => Signed::Bad("the signature does not verify: the checkpoint was changed".into()),
        };
    }
    match trusted {
        Some(t) if t != named => Signed::Other(named.base64()),
        _ => Signed::Good(named.base64()),
    }
}

/// What differs between a record and its exported copy, as ` (member: was X, now Y; ...)`
/// where both parse as JSON objects.
fn differences(now: &[u8], was: &[u8]) -> String {
    let (Ok(serde_json::Value::Object(now)), Ok(serde_json::Value::Object(was))) = (
        serde_json::from_slice::<serde_json::Value>(now),
        serde_json::from_slice::<serde_json::Value>(was),
    ) else {
        return String::new();
    };
    let mut out = Vec::new();
    for (k, v) in &was {
        match now.get(k) {
            Some(n) if n == v => {}
            Some(n) => out.push(format!("{k}: was {v}, now {n}")),
            None => out.push(format!("{k}: was {v}, now missing")),
        }
    }
    for (k, n) in &now {
        if !was.contains_key(k) {
            out.push(format!("{k}: added, {n}"));
        }
    }
    if out.is_empty() {
        String::new()
    } else {
        format!(" ({})", out.join("; "))
    }
}

#[cfg(test)]
mod tests;

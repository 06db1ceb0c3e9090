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
//! - of the records out of sequence, those outside the longest run of increasing sequence
//!   numbers were moved (the chain still links to them) or inserted (it does not); of two
//!   records with one sequence number, the one the chain does not go through was inserted
//!   (or copied);
//! - a file that ends inside a record was cut short, or its writer stopped while writing it
//!   (only at the end of the trail: the writer cuts such a record before it goes on);
//! - a checkpoint whose signature does not verify was changed; one signed by a key other than
//!   the trusted one was re-signed;
//! - a record exported elsewhere that the trail lacks was cut off the end, and one the trail
//!   holds differently was changed (with the members that differ).

use std::collections::{BTreeMap, BTreeSet};
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
    /// The bytes after a file's last LF: a record the file stops in the middle of.
    torn: bool,
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
        v.check(lines, self);
        v.report
    }
}

struct Run {
    report: Report,
    names: Vec<String>,
}

impl Run {
    fn push(
        &mut self,
        severity: Severity,
        kind: FindingKind,
        at: Option<&Line<'_>>,
        seq: Option<u64>,
        message: String,
    ) {
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

    /// A finding about line `index` (0-based) of an anchor file: the file is the anchor's,
    /// so that the finding points at the exported copy that shows it.
    fn anchored(
        &mut self,
        severity: Severity,
        kind: FindingKind,
        name: &str,
        index: usize,
        seq: Option<u64>,
        message: String,
    ) {
        self.report.findings.push(Finding {
            severity,
            kind,
            file: name.to_owned(),
            line: index + 1,
            seq,
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
                self.whole(
                    Severity::Note,
                    FindingKind::Files,
                    segment.name.to_owned(),
                    "empty".into(),
                );
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
                    torn: false,
                });
            }
            // Kept as a line (reported in `check`, once the files are in order) so that it
            // accounts for its seq where the sequence has a gap.
            if let Some(torn) = torn {
                lines.push(Line {
                    file: index,
                    no: lines.len() + 1,
                    bytes: torn,
                    hash: Hash::of(torn),
                    head: Err(NotARecord::Json("no line end".into())),
                    seq: None,
                    torn: true,
                });
            }
            files.push((order_key(&lines), index, lines));
        }
        files.sort_by_key(|(first, index, _)| (*first, *index));
        files.into_iter().flat_map(|(_, _, lines)| lines).collect()
    }

    fn check(&mut self, mut lines: Vec<Line<'_>>, verifier: &Verifier) {
        let count = lines.len();
        // Lines already explained by a finding: a broken link to them says nothing new.
        let mut changed = vec![false; count];
        // Lines left out of the chain (copies, fabrications): a gap they leave is no deletion.
        let mut dropped = vec![false; count];

        // Lines that are not records. A file cut inside a record is what a broker that
        // stopped while writing leaves, at the end of the trail only: the writer cuts such a
        // record off before it writes anything after it.
        let mut records_after = vec![false; count];
        let mut any = false;
        for (i, l) in lines.iter().enumerate().rev() {
            set_to(&mut records_after, i, any);
            any |= l.head.is_ok();
        }
        for (i, l) in lines.iter().enumerate() {
            if l.torn {
                let (severity, message) = if records_after.get(i).copied().unwrap_or(false) {
                    (
                        Severity::Tampering,
                        format!(
                            "the file ends inside a record ({} bytes without a line end), yet the trail goes on after it: it was cut short, or its line end replaced",
                            l.bytes.len()
                        ),
                    )
                } else {
                    (
                        Severity::Warning,
                        format!(
                            "the file ends inside a record ({} bytes without a line end): it was cut short, or the broker stopped while writing it",
                            l.bytes.len()
                        ),
                    )
                };
                self.push(
                    severity,
                    FindingKind::Truncated,
                    Some(l),
                    torn_seq(l.bytes),
                    message,
                );
                set(&mut changed, i);
                continue;
            }
            if let Err(why) = &l.head {
                let message = if l.bytes.is_empty() {
                    "an empty line: not a record (inserted, or a record's bytes removed)".to_owned()
                } else {
                    format!("{why}: the record written here was changed, or this line was inserted")
                };
                self.push(
                    Severity::Tampering,
                    FindingKind::NotARecord,
                    Some(l),
                    None,
                    message,
                );
                set(&mut changed, i);
            }
        }
        // damaged_before[i]: how many of lines[..i] are not records, so that a gap in the
        // sequence can be checked against the damaged lines inside it without a rescan.
        let mut damaged_before = Vec::with_capacity(count + 1);
        let mut damaged = 0usize;
        damaged_before.push(0);
        for l in &lines {
            damaged += usize::from(l.head.is_err());
            damaged_before.push(damaged);
        }

        // A record that links to the line before it was written right after it: a different
        // seq means the seq was changed.
        for i in 1..lines.len() {
            let (Some(before), Some(this)) = (lines.get(i - 1), lines.get(i)) else {
                continue;
            };
            let (Ok(h), Some(prev_seq)) = (&this.head, before.seq) else {
                continue;
            };
            if h.prev_hash() == before.hash && h.seq != prev_seq.saturating_add(1) {
                let message = format!(
                    "seq was changed: the record links to seq {prev_seq} before it, so it was written as seq {}, and now says {}",
                    prev_seq.saturating_add(1),
                    h.seq
                );
                self.push(
                    Severity::Tampering,
                    FindingKind::SeqChanged,
                    Some(this),
                    Some(h.seq),
                    message,
                );
                if let Some(l) = lines.get_mut(i) {
                    l.seq = Some(prev_seq.saturating_add(1));
                }
                set(&mut changed, i);
            }
        }

        // Signatures are needed both to say which side of a broken link was changed and for
        // the checkpoint findings: checked once.
        let sigs: Vec<Option<Signed>> = lines
            .iter()
            .map(|l| match &l.head {
                Ok(h) if h.is_checkpoint() => Some(check_signature(h, verifier.key)),
                _ => None,
            })
            .collect();

        // One line per seq goes into the chain: where a seq appears more than once, the copy
        // the next record links to, else the copy that links to the record before it, else
        // the first. Whichever copy comes first in the files says nothing about which one
        // the writer wrote.
        let mut by_seq: BTreeMap<u64, Vec<usize>> = BTreeMap::new();
        for (i, l) in lines.iter().enumerate() {
            if let Some(seq) = l.seq {
                by_seq.entry(seq).or_default().push(i);
            }
        }
        let mut first_at: BTreeMap<u64, usize> = BTreeMap::new();
        let mut linked_copy: BTreeMap<u64, bool> = BTreeMap::new();
        for (&seq, copies) in &by_seq {
            let linked = if copies.len() > 1 {
                // Sets, so that a file of one seq repeated costs n log n, not n squared.
                let hashes_at = |s: Option<u64>| -> BTreeSet<Hash> {
                    s.and_then(|s| by_seq.get(&s))
                        .into_iter()
                        .flatten()
                        .filter_map(|&i| lines.get(i).map(|l| l.hash))
                        .collect()
                };
                let prevs_at = |s: Option<u64>| -> BTreeSet<Hash> {
                    s.and_then(|s| by_seq.get(&s))
                        .into_iter()
                        .flatten()
                        .filter_map(|&i| match lines.get(i).map(|l| &l.head) {
                            Some(Ok(h)) => Some(h.prev_hash()),
                            _ => None,
                        })
                        .collect()
                };
                let linked_from = prevs_at(seq.checked_add(1));
                let before = if seq == 1 {
                    BTreeSet::from([Hash::ZERO])
                } else {
                    hashes_at(seq.checked_sub(1))
                };
                let find = |wanted: &dyn Fn(&Line<'_>) -> bool| {
                    copies
                        .iter()
                        .copied()
                        .find(|&c| lines.get(c).is_some_and(wanted))
                };
                find(&|l| linked_from.contains(&l.hash)).or_else(|| {
                    find(&|l| matches!(&l.head, Ok(h) if before.contains(&h.prev_hash())))
                })
            } else {
                None
            };
            if let Some(kept) = linked.or_else(|| copies.first().copied()) {
                first_at.insert(seq, kept);
                linked_copy.insert(seq, linked.is_some());
            }
        }
        for (i, l) in lines.iter().enumerate() {
            let Some(seq) = l.seq else { continue };
            let Some(&kept) = first_at.get(&seq) else {
                continue;
            };
            if kept == i {
                continue;
            }
            let other = lines.get(kept).map(|o| self.at(o)).unwrap_or_default();
            let message = if linked_copy.get(&seq).copied().unwrap_or(false) {
                format!(
                    "seq {seq} again: the chain goes through the copy at {other}, not through this one: inserted or copied"
                )
            } else {
                format!("seq {seq} again (first at {other}): a record was inserted or copied")
            };
            self.push(
                Severity::Tampering,
                FindingKind::Inserted,
                Some(l),
                Some(seq),
                message,
            );
            set(&mut dropped, i);
            set(&mut changed, i);
        }

        // Order: the longest run of lines whose seqs increase, in the order the files give
        // them, stays in place; every other line was moved (a record that the chain vouches
        // for) or put there (one it does not). Comparing with the highest seq so far instead
        // would call every record after one moved backwards moved too.
        let placed: Vec<(usize, u64)> = lines
            .iter()
            .enumerate()
            .filter(|(i, _)| !dropped.get(*i).copied().unwrap_or(false))
            .filter_map(|(i, l)| l.seq.map(|seq| (i, seq)))
            .collect();
        let in_place = increasing(&placed);
        let mut before_kept: Option<(usize, u64)> = None;
        let mut previous_kept = Vec::with_capacity(placed.len());
        for (&(i, seq), &kept) in placed.iter().zip(&in_place) {
            previous_kept.push(before_kept);
            if kept {
                before_kept = Some((i, seq));
            }
        }
        let mut after_kept: Option<(usize, u64)> = None;
        let mut next_kept = vec![None; placed.len()];
        for (k, (&(i, seq), &kept)) in placed.iter().zip(&in_place).enumerate().rev() {
            if let Some(slot) = next_kept.get_mut(k) {
                *slot = after_kept;
            }
            if kept {
                after_kept = Some((i, seq));
            }
        }
        for (k, (&(i, seq), &kept)) in placed.iter().zip(&in_place).enumerate() {
            if kept {
                continue;
            }
            let Some(l) = lines.get(i) else { continue };
            let vouched = match &l.head {
                Ok(h) => {
                    let after_its_prev = if seq == 1 {
                        h.prev_hash() == Hash::ZERO
                    } else {
                        seq.checked_sub(1)
                            .and_then(|s| first_at.get(&s))
                            .and_then(|&p| lines.get(p))
                            .is_some_and(|p| p.hash == h.prev_hash())
                    };
                    let before_its_next = seq
                        .checked_add(1)
                        .and_then(|s| first_at.get(&s))
                        .and_then(|&n| lines.get(n))
                        .is_some_and(|n| matches!(&n.head, Ok(hn) if hn.prev_hash() == l.hash));
                    after_its_prev || before_its_next
                }
                Err(_) => false,
            };
            if !vouched {
                self.push(Severity::Tampering, FindingKind::Inserted, Some(l), Some(seq), format!(
                    "seq {seq} is out of order here and no record of the chain links to it or from it: it was inserted"));
                if first_at.get(&seq) == Some(&i) {
                    first_at.remove(&seq);
                }
                set(&mut dropped, i);
                set(&mut changed, i);
                continue;
            }
            let previous = previous_kept.get(k).copied().flatten();
            let next = next_kept.get(k).copied().flatten();
            let message = match (previous, next) {
                (Some((j, top)), _) if top > seq => {
                    let other = lines.get(j).map(|o| self.at(o)).unwrap_or_default();
                    format!("seq {seq} comes after seq {top} ({other}): records were moved")
                }
                (_, Some((j, low))) if low < seq => {
                    let other = lines.get(j).map(|o| self.at(o)).unwrap_or_default();
                    format!("seq {seq} comes before seq {low} ({other}): records were moved")
                }
                _ => format!("seq {seq} is out of order: records were moved"),
            };
            self.push(
                Severity::Tampering,
                FindingKind::Reordered,
                Some(l),
                Some(seq),
                message,
            );
        }

        // The chain, in sequence order.
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
                self.push(
                    Severity::Tampering,
                    FindingKind::Modified,
                    Some(l),
                    Some(1),
                    "the first record of a trail has a zero prev; this one does not".into(),
                );
                set(&mut changed, first);
            } else if seq > 1 {
                self.push(Severity::Note, FindingKind::StartsMidTrail, Some(l), Some(seq),
                    format!("the files begin at seq {seq}: records 1 to {} are not in the files given (older segments, or removed by retention)", seq - 1));
            }
        }
        for (p, pair) in order.windows(2).enumerate() {
            let [a, b] = pair else { continue };
            let (a, b) = (*a, *b);
            let (Some(la), Some(lb)) = (lines.get(a), lines.get(b)) else {
                continue;
            };
            let (Some(sa), Some(sb), Ok(hb)) = (la.seq, lb.seq, &lb.head) else {
                continue;
            };
            if hb.prev_hash() == Hash::ZERO {
                self.push(Severity::Tampering, FindingKind::ChainRestart, Some(lb), Some(sb),
                    format!("a new trail starts here (zero prev) after seq {sa} ({}): the records before are not linked to it", self.at(la)));
                continue;
            }
            if sb > sa.saturating_add(1) {
                let gap = sb - sa - 1;
                // Lines between them that are not records account for missing seqs, in one
                // file or at the end of one and the start of the next.
                let (lo, hi) = (a.min(b), a.max(b));
                let damaged = damaged_before
                    .get(hi)
                    .copied()
                    .unwrap_or(0)
                    .saturating_sub(damaged_before.get(lo + 1).copied().unwrap_or(0));
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
                    self.push(
                        Severity::Tampering,
                        FindingKind::Deleted,
                        Some(lb),
                        Some(sb),
                        format!("{range} missing between {at} and here: {gap} record(s) deleted"),
                    );
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
            // After a last line that is not a record, the writer goes on from that line's
            // bytes (`Chain::resume`): the line is reported already, the link holds.
            if let Some(before) = b.checked_sub(1).and_then(|i| lines.get(i))
                && before.head.is_err()
                && before.hash == hb.prev_hash()
            {
                continue;
            }
            // The link from a to b is broken. If b's own outgoing link is broken too, b's prev
            // was changed (with or without the rest of b); otherwise a was changed. A signed
            // checkpoint settles it: a signature that holds vouches for its prev.
            if changed.get(a).copied().unwrap_or(false) {
                continue;
            }
            let after_b = order.get(p + 2).and_then(|c| lines.get(*c));
            let next_ok = after_b.is_none_or(|lc| match &lc.head {
                Ok(hc) => lc.seq != sb.checked_add(1) || hc.prev_hash() == lb.hash,
                Err(_) => true,
            });
            let blame_b = match sigs.get(b) {
                Some(Some(Signed::Bad(_))) => true,
                Some(Some(_)) => false,
                _ => !next_ok && !changed.get(b).copied().unwrap_or(false),
            };
            let (blamed, line) = if blame_b { (b, lb) } else { (a, la) };
            set(&mut changed, blamed);
            // A checkpoint that no longer verifies is reported as such, once.
            if matches!(sigs.get(blamed), Some(Some(Signed::Bad(_)))) {
                continue;
            }
            let message = if blame_b {
                format!(
                    "seq {sb} was changed after it was written, its prev included: it links neither to seq {sa} before it nor to the record after it"
                )
            } else if after_b.is_none() && sigs.get(b).is_none_or(Option::is_none) {
                format!(
                    "seq {sa} was changed after it was written: its hash is not the prev of seq {sb} ({}); or the prev of seq {sb} was, the last record, which nothing links to yet",
                    self.at(lb)
                )
            } else {
                format!(
                    "seq {sa} was changed after it was written: its hash is not the prev of seq {sb} ({})",
                    self.at(lb)
                )
            };
            self.push(
                Severity::Tampering,
                FindingKind::Modified,
                Some(line),
                Some(if blame_b { sb } else { sa }),
                message,
            );
        }

        self.checkpoints(&lines, &order, &sigs, verifier.key);
        self.anchors(&lines, &first_at, verifier);
    }

    fn checkpoints(
        &mut self,
        lines: &[Line<'_>],
        order: &[usize],
        sigs: &[Option<Signed>],
        trusted: Option<PublicKey>,
    ) {
        let mut keys: Vec<String> = Vec::new();
        let mut last_signed: Option<u64> = None;
        for &i in order {
            let Some(l) = lines.get(i) else { continue };
            let Ok(h) = &l.head else { continue };
            let Some(Some(signed)) = sigs.get(i) else {
                continue;
            };
            let seq = l.seq.unwrap_or(h.seq);
            match signed {
                Signed::Good(key) => {
                    self.report.checkpoints += 1;
                    last_signed = Some(seq);
                    if !keys.contains(key) {
                        keys.push(key.clone());
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

    fn anchors(
        &mut self,
        lines: &[Line<'_>],
        first_at: &BTreeMap<u64, usize>,
        verifier: &Verifier,
    ) {
        let last = self.report.last_seq;
        let first = self.report.first_seq;
        for (name, bytes) in &verifier.anchors {
            for (no, raw) in bytes.split(|b| *b == b'\n').enumerate() {
                if raw.is_empty() {
                    continue;
                }
                let Ok(head) = Head::parse(raw) else {
                    self.anchored(
                        Severity::Warning,
                        FindingKind::Files,
                        name,
                        no,
                        None,
                        "not a record: ignored".into(),
                    );
                    continue;
                };
                let seq = head.seq;
                let anchor = format!("{name}:{}", no + 1);
                if head.is_checkpoint() {
                    match check_signature(&head, verifier.key) {
                        Signed::Good(_) => {}
                        Signed::Bad(why) => self.anchored(Severity::Warning, FindingKind::Files, name, no, Some(seq),
                            format!("the exported checkpoint seq {seq}: {why}")),
                        Signed::Other(key) => self.anchored(Severity::Warning, FindingKind::Files, name, no, Some(seq),
                            format!("the exported checkpoint seq {seq} is signed by {key}, not the trusted key")),
                    }
                }
                match first_at.get(&seq).and_then(|&i| lines.get(i)) {
                    Some(l) if l.hash == Hash::of(raw) => self.report.anchored += 1,
                    Some(l) => {
                        let diff = differences(l.bytes, raw);
                        self.push(
                            Severity::Tampering,
                            FindingKind::AnchorMismatch,
                            Some(l),
                            Some(seq),
                            format!("seq {seq} differs from its exported copy ({anchor}){diff}"),
                        );
                    }
                    None if last.is_some_and(|last| seq > last) => {
                        let last = last.unwrap_or(0);
                        let range = if seq == last + 1 {
                            format!("seq {seq}")
                        } else {
                            format!("seq {} to {seq}", last + 1)
                        };
                        self.anchored(Severity::Tampering, FindingKind::Truncated, name, no, Some(seq), format!(
                            "seq {seq} was exported, but the trail ends at seq {last}: {range} at least were cut off the end"));
                    }
                    None if last.is_none() => {
                        self.anchored(
                            Severity::Tampering,
                            FindingKind::Truncated,
                            name,
                            no,
                            Some(seq),
                            format!("seq {seq} was exported, but the files hold no record at all"),
                        );
                    }
                    None if first.is_some_and(|first| seq < first) => {}
                    // Inside the trail's range but missing: already reported as deleted.
                    None => {}
                }
            }
        }
    }
}

/// Where a file goes among the others: the lowest seq that the record after it confirms
/// (links to it and carries the next seq), so that one changed or moved record at the start
/// of a file does not put the whole file out of place; the first seq when none is confirmed.
fn order_key(lines: &[Line<'_>]) -> u64 {
    let confirmed = lines
        .windows(2)
        .filter_map(|pair| {
            let [x, y] = pair else { return None };
            let (Ok(hx), Ok(hy)) = (&x.head, &y.head) else {
                return None;
            };
            (hy.prev_hash() == x.hash && Some(hy.seq) == hx.seq.checked_add(1)).then_some(hx.seq)
        })
        .min();
    confirmed
        .or_else(|| lines.iter().find_map(|l| l.seq))
        .unwrap_or(u64::MAX)
}

/// The seq a record cut short says it has, where the cut left `{"seq":N,` whole.
fn torn_seq(torn: &[u8]) -> Option<u64> {
    let rest = torn.strip_prefix(b"{\"seq\":")?;
    let end = rest.iter().position(|b| *b == b',')?;
    let digits = std::str::from_utf8(rest.get(..end)?).ok()?;
    if digits.starts_with('0') || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok().filter(|seq| *seq > 0)
}

fn set(flags: &mut [bool], i: usize) {
    set_to(flags, i, true);
}

fn set_to(flags: &mut [bool], i: usize, value: bool) {
    if let Some(slot) = flags.get_mut(i) {
        *slot = value;
    }
}

/// Which of `items` (line, seq) form a longest run of strictly increasing seqs, in order
/// (patience sorting, O(n log n)). Among equally long runs it keeps the lower seqs, so a
/// record moved backwards is the one left out, not every record it jumped over.
fn increasing(items: &[(usize, u64)]) -> Vec<bool> {
    // tails[k]: the item ending the best run of length k + 1 found so far.
    let mut tails: Vec<usize> = Vec::new();
    let mut before: Vec<Option<usize>> = Vec::with_capacity(items.len());
    let seq_of = |k: usize| items.get(k).map_or(u64::MAX, |item| item.1);
    for (k, &(_, seq)) in items.iter().enumerate() {
        let at = tails.partition_point(|&t| seq_of(t) < seq);
        before.push(at.checked_sub(1).and_then(|p| tails.get(p)).copied());
        match tails.get_mut(at) {
            Some(slot) => *slot = k,
            None => tails.push(k),
        }
    }
    let mut keep = vec![false; items.len()];
    let mut at = tails.last().copied();
    while let Some(k) = at {
        set(&mut keep, k);
        at = before.get(k).copied().flatten();
    }
    keep
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
        // The writer names the key it signs with, so a trusted signature under another name
        // means the `key` member was changed; the signature does not cover it, and nothing
        // else does on the trail's last line.
        return match trusted {
            Some(t) if t.verify(&message, sig) => Signed::Bad(format!(
                "signed by the trusted key, but it names the key {key}: its key was changed"
            )),
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

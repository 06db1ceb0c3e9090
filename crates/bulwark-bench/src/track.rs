//! Per-publisher sequence tracking on the subscriber side: new, late and duplicate messages,
//! and when the window gets each message's unit back.
//!
//! A subscriber expects one publisher's sequence numbers 0, 1, 2, ... A jump forward leaves a
//! gap. The missing messages may be lost, or only overtaken: some brokers reorder under load
//! (a new message goes straight out while older ones still wait in the queue), so a gap is not
//! given back to the window at once, or the window would count overtaken messages twice and let
//! more into the broker than it holds. A gap's units go back when its messages arrive (late),
//! or when it has been open for the gap timeout (then they are taken as lost). The gap is still
//! remembered after that, so that a message from it that turns up later is counted as received,
//! not as a duplicate. A number seen before and not in a gap is a duplicate.
//!
//! Pure: time comes in as an argument (nanoseconds on any monotonic clock).

use std::collections::VecDeque;

/// Gaps remembered per publisher. Past this the oldest gap is forgotten (its units given back
/// if they were not): a message from it that still arrives would be miscounted as a duplicate,
/// which needs more than this many separate losses and then a very late delivery.
const MAX_GAPS: usize = 1024;

/// What one received sequence number was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// The first time this number arrived, in order or after a gap.
    New,
    /// The first time this number arrived, after a later one had (reordered or very late).
    Late,
    /// This number had already arrived.
    Duplicate,
}

/// The outcome of one [`SeqTracker::observe`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Observation {
    /// What the message was.
    pub kind: Kind,
    /// Window units to give back now.
    pub release: u64,
}

/// Missing numbers `[start, end)`.
#[derive(Debug, Clone, Copy)]
struct Gap {
    start: u64,
    end: u64,
    /// When it opened.
    since_ns: u64,
    /// Whether its units went back already (it timed out).
    released: bool,
}

/// The sequence state of one publisher as seen by one subscriber.
#[derive(Debug, Default, Clone)]
pub struct SeqTracker {
    /// The number expected next: every smaller one has arrived or lies in a gap.
    next: u64,
    /// Missing ranges, ascending and disjoint, all below `next`.
    gaps: VecDeque<Gap>,
}

impl SeqTracker {
    /// A tracker expecting sequence number 0.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records the arrival of `seq` at `now_ns`.
    pub fn observe(&mut self, seq: u64, now_ns: u64) -> Observation {
        if seq >= self.next {
            let mut release = 1;
            if seq > self.next {
                self.gaps.push_back(Gap {
                    start: self.next,
                    end: seq,
                    since_ns: now_ns,
                    released: false,
                });
                release += self.forget_oldest();
            }
            self.next = seq.saturating_add(1);
            return Observation {
                kind: Kind::New,
                release,
            };
        }
        let duplicate = Observation {
            kind: Kind::Duplicate,
            release: 0,
        };
        // Below `next`: either it fills part of a gap, or it has been seen.
        let Some(index) = self.gaps.iter().rposition(|gap| gap.start <= seq) else {
            return duplicate;
        };
        let Some(gap) = self.gaps.get(index).copied() else {
            return duplicate;
        };
        if seq >= gap.end {
            return duplicate;
        }
        let mut release = u64::from(!gap.released);
        // `seq < gap.end`, so `seq + 1` cannot overflow here.
        let after = seq.saturating_add(1);
        match (seq == gap.start, after == gap.end) {
            (true, true) => {
                self.gaps.remove(index);
            }
            (true, false) => {
                if let Some(g) = self.gaps.get_mut(index) {
                    g.start = after;
                }
            }
            (false, true) => {
                if let Some(g) = self.gaps.get_mut(index) {
                    g.end = seq;
                }
            }
            (false, false) => {
                if let Some(g) = self.gaps.get_mut(index) {
                    g.end = seq;
                }
                self.gaps.insert(
                    index + 1,
                    Gap {
                        start: after,
                        ..gap
                    },
                );
                release += self.forget_oldest();
            }
        }
        Observation {
            kind: Kind::Late,
            release,
        }
    }

    /// Gives back the units of gaps open for `timeout_ns` or longer: their messages are taken
    /// as lost for the window (they are still counted as received if they arrive).
    pub fn expire(&mut self, now_ns: u64, timeout_ns: u64) -> u64 {
        let mut release = 0;
        for gap in &mut self.gaps {
            if !gap.released && now_ns.saturating_sub(gap.since_ns) >= timeout_ns {
                gap.released = true;
                release += gap.end - gap.start;
            }
        }
        release
    }

    /// Whether a gap still holds window units (so [`SeqTracker::expire`] has work to do).
    pub fn has_open_gaps(&self) -> bool {
        self.gaps.iter().any(|gap| !gap.released)
    }

    /// Messages still missing below the highest number seen.
    pub fn missing(&self) -> u64 {
        self.gaps.iter().map(|gap| gap.end - gap.start).sum()
    }

    /// Drops the oldest gap past [`MAX_GAPS`]; returns the units it still held.
    fn forget_oldest(&mut self) -> u64 {
        if self.gaps.len() <= MAX_GAPS {
            return 0;
        }
        match self.gaps.pop_front() {
            Some(gap) if !gap.released => gap.end - gap.start,
            _ => 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kinds(t: &mut SeqTracker, seqs: &[u64]) -> Vec<(Kind, u64)> {
        seqs.iter()
            .map(|&s| {
                let o = t.observe(s, 0);
                (o.kind, o.release)
            })
            .collect()
    }

    #[test]
    fn in_order() {
        let mut t = SeqTracker::new();
        assert!(
            kinds(&mut t, &[0, 1, 2, 3])
                .iter()
                .all(|&k| k == (Kind::New, 1))
        );
        assert_eq!(t.missing(), 0);
    }

    #[test]
    fn duplicates() {
        let mut t = SeqTracker::new();
        assert_eq!(
            kinds(&mut t, &[0, 1, 1, 0, 2]),
            [
                (Kind::New, 1),
                (Kind::New, 1),
                (Kind::Duplicate, 0),
                (Kind::Duplicate, 0),
                (Kind::New, 1)
            ]
        );
    }

    #[test]
    fn overtaken_messages_release_on_arrival() {
        let mut t = SeqTracker::new();
        // 1..=4 overtaken by 5: only 5's unit goes back now.
        assert_eq!(kinds(&mut t, &[0, 5]), [(Kind::New, 1), (Kind::New, 1)]);
        assert_eq!(t.missing(), 4);
        assert!(t.has_open_gaps());
        assert_eq!(
            kinds(&mut t, &[3, 3, 1, 4, 2, 2, 5]),
            [
                (Kind::Late, 1),
                (Kind::Duplicate, 0),
                (Kind::Late, 1),
                (Kind::Late, 1),
                (Kind::Late, 1),
                (Kind::Duplicate, 0),
                (Kind::Duplicate, 0)
            ]
        );
        assert_eq!(t.missing(), 0);
        assert!(!t.has_open_gaps());
    }

    #[test]
    fn lost_messages_release_on_timeout() {
        let mut t = SeqTracker::new();
        assert_eq!(t.observe(0, 0).release, 1);
        assert_eq!(t.observe(4, 100).release, 1);
        assert_eq!(t.expire(150, 100), 0);
        assert_eq!(t.expire(200, 100), 3);
        assert_eq!(t.expire(300, 100), 0);
        assert!(!t.has_open_gaps());
        // A very late arrival still counts as received, but gives nothing back twice.
        assert_eq!(
            t.observe(2, 400),
            Observation {
                kind: Kind::Late,
                release: 0
            }
        );
        assert_eq!(t.missing(), 2);
    }

    #[test]
    fn the_largest_number_does_not_overflow() {
        // A broker can send any number; none may make the tracker panic. (A real publisher
        // never gets near 2^64 messages, so what u64::MAX counts as does not matter.)
        let mut t = SeqTracker::new();
        assert_eq!(t.observe(u64::MAX, 0).kind, Kind::New);
        t.observe(u64::MAX, 0);
        assert_eq!(t.observe(u64::MAX - 1, 0).kind, Kind::Late);
        t.expire(u64::MAX, 0);
    }

    #[test]
    fn first_message_overtaken() {
        let mut t = SeqTracker::new();
        assert_eq!(
            kinds(&mut t, &[2, 0, 0]),
            [(Kind::New, 1), (Kind::Late, 1), (Kind::Duplicate, 0)]
        );
        assert_eq!(t.missing(), 1);
    }

    #[test]
    fn gap_memory_is_bounded_and_gives_units_back() {
        let mut t = SeqTracker::new();
        let mut released = 0;
        let gaps = MAX_GAPS as u64 + 10;
        for i in 0..gaps {
            released += t.observe(i * 2 + 1, 0).release;
        }
        assert!(t.gaps.len() <= MAX_GAPS);
        // Every message arrived gave one unit; every forgotten gap gave its one.
        assert_eq!(released, gaps + 10);
        // The oldest gaps are forgotten: their late arrivals read as duplicates.
        assert_eq!(t.observe(0, 0).kind, Kind::Duplicate);
        let recent = (MAX_GAPS as u64 + 5) * 2;
        assert_eq!(t.observe(recent, 0).kind, Kind::Late);
    }
}

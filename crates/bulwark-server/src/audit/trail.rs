//! The audit trail's writer thread: chains each event into a record, signs checkpoints,
//! rotates segments, removes old ones, exports checkpoints, and records what it could not
//! write. Only this thread touches the files; connection tasks hand it events through a
//! bounded queue and never wait (`docs/audit.md`).

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant, SystemTime};

use bulwark_acl::event::{SecurityEvent, rfc3339};
use bulwark_audit::record::{EVENTS_DROPPED, Head, TRAIL_START, TRAIL_STOP};
use bulwark_audit::{AuditKey, Chain};
use serde::Serialize;
use tracing::{info, warn};

use super::settings::{AuditFormat, AuditSettings};

/// What the queue carries.
#[derive(Debug)]
pub(crate) enum Msg {
    Event(Arc<SecurityEvent>),
    /// Write what is queued, the stop record and a last checkpoint, then end; the sender is
    /// told when it is all on disk.
    Stop(tokio::sync::oneshot::Sender<()>),
}

/// Counts shared with the rest of the server.
#[derive(Debug, Default)]
pub(crate) struct TrailCounts {
    /// Events dropped because the queue was full, since start.
    pub(crate) dropped: AtomicU64,
    /// Dropped events not yet recorded in the trail.
    pub(crate) unreported: AtomicU64,
    /// Checkpoints written since start.
    pub(crate) checkpoints: AtomicU64,
    /// Records written since start.
    pub(crate) records: AtomicU64,
    /// Writes to the trail or its export that failed.
    pub(crate) write_errors: AtomicU64,
}

/// The trail's own records (besides events and checkpoints).
#[derive(Serialize)]
struct Own<'a> {
    time: String,
    kind: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    version: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    key: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    count: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    target: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
}

impl<'a> Own<'a> {
    fn new(kind: &'a str) -> Self {
        Self {
            time: rfc3339(SystemTime::now()),
            kind,
            version: None,
            key: None,
            count: None,
            target: None,
            reason: None,
        }
    }
}

/// The kind of the record that names a segment removed by retention.
pub(crate) const RETENTION: &str = "retention";

/// Bytes read back from the end of a segment to find where the chain stands.
const TAIL: u64 = 1 << 20;

pub(crate) struct Writer {
    settings: AuditSettings,
    path: PathBuf,
    out: BufWriter<File>,
    /// Bytes in the active segment.
    size: u64,
    /// The number rotation gives the active segment: its first seq (chained), or one more
    /// than the last rotated segment's (plain).
    number: u64,
    /// When the active segment's first record was written (this run's view).
    started: Option<Instant>,
    chain: Option<Chain>,
    key: Option<AuditKey>,
    /// When the oldest record not covered by a checkpoint was written.
    uncovered: Option<Instant>,
    export: Option<BufWriter<File>>,
    /// The remote exporters' queues (`export_syslog`, `export_http`): handed each exported
    /// line, never waited on.
    remote: Option<super::export::Outbox>,
    counts: Arc<TrailCounts>,
    failed: bool,
}

impl std::fmt::Debug for Writer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Writer")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl Writer {
    /// The writer without remote export, for its own tests.
    #[cfg(test)]
    pub(crate) fn open(settings: &AuditSettings, counts: Arc<TrailCounts>) -> Result<Self, String> {
        Self::open_exporting(settings, counts, None)
    }

    /// Opens the trail (creating the key and files it lacks), finds where the chain stands,
    /// and writes the start record; exported lines also go to `remote` (the start record
    /// included). Errors name the file.
    pub(crate) fn open_exporting(
        settings: &AuditSettings,
        counts: Arc<TrailCounts>,
        remote: Option<super::export::Outbox>,
    ) -> Result<Self, String> {
        let path = settings
            .file
            .clone()
            .ok_or_else(|| "no audit file configured".to_owned())?;
        let dir = parent(&path);
        crate::files::ensure_dir(&dir)?;
        let chained = settings.format == AuditFormat::Chained;
        let key = if chained {
            Some(load_or_create_key(settings)?)
        } else {
            None
        };
        let mut notes = Vec::new();
        let repaired = repair_torn_end(&path)?;
        if let Some(cut) = &repaired {
            notes.push(cut.clone());
        }
        let mut rotated = rotated_segments(&path)?;
        let (chain, number) = if chained {
            if let Some(moved) = move_aside_unchained(&path, &rotated)? {
                notes.push(moved);
                rotated = rotated_segments(&path)?;
            }
            let (chain, from) = resume_chain(&path, &rotated)?;
            if let Some(from) = from {
                notes.push(from);
            }
            let number = if file_len(&path) > 0 {
                first_seq(&path).unwrap_or_else(|| chain.next_seq())
            } else {
                chain.next_seq()
            };
            (Some(chain), number)
        } else {
            let number = rotated.last().map_or(1, |(n, _)| n.saturating_add(1));
            (None, number)
        };
        let out = BufWriter::new(open_append(&path)?);
        let size = file_len(&path);
        let export = match &settings.export_file {
            Some(export) => {
                crate::files::ensure_dir(&parent(export))?;
                Some(BufWriter::new(open_append(export)?))
            }
            None => None,
        };
        let mut writer = Self {
            settings: settings.clone(),
            path,
            out,
            size,
            number,
            started: (size > 0).then(Instant::now),
            chain,
            key,
            uncovered: None,
            export,
            remote,
            counts,
            failed: false,
        };
        let mut start = Own::new(TRAIL_START);
        start.version = Some(env!("CARGO_PKG_VERSION"));
        start.key = writer.key.as_ref().map(|k| k.public().base64());
        start.reason = Some(if notes.is_empty() {
            "broker started".to_owned()
        } else {
            format!("broker started; {}", notes.join("; "))
        });
        writer.own(&start);
        writer.flush();
        if let Some(key) = &writer.key {
            info!(
                file = %writer.path.display(),
                key = %key.public().base64(),
                "audit trail: hash-chained, checkpoints signed with this Ed25519 public key"
            );
        }
        Ok(writer)
    }

    /// Writes events until told to stop (or every sender is gone).
    pub(crate) fn run(mut self, rx: &Receiver<Msg>) {
        loop {
            let wait = self.next_due().map_or(Duration::from_secs(3600), |due| {
                due.saturating_duration_since(Instant::now())
            });
            match rx.recv_timeout(wait) {
                Ok(Msg::Event(event)) => {
                    self.event(&event);
                    // Everything already queued, then one flush.
                    loop {
                        match rx.try_recv() {
                            Ok(Msg::Event(event)) => self.event(&event),
                            Ok(Msg::Stop(done)) => return self.stop(Some(done), rx),
                            Err(_) => break,
                        }
                    }
                    self.report_drops();
                    self.flush();
                }
                Ok(Msg::Stop(done)) => return self.stop(Some(done), rx),
                Err(RecvTimeoutError::Timeout) => {
                    self.report_drops();
                    self.housekeeping();
                    self.flush();
                }
                Err(RecvTimeoutError::Disconnected) => return self.stop(None, rx),
            }
        }
    }

    fn stop(mut self, done: Option<tokio::sync::oneshot::Sender<()>>, rx: &Receiver<Msg>) {
        while let Ok(Msg::Event(event)) = rx.try_recv() {
            self.event(&event);
        }
        self.report_drops();
        let mut stop = Own::new(TRAIL_STOP);
        stop.reason = Some(
            if done.is_some() {
                "broker stopped"
            } else {
                "the trail was closed without an orderly stop (the broker did not start, or ended abruptly)"
            }
            .into(),
        );
        self.own(&stop);
        self.checkpoint();
        self.flush();
        self.sync();
        if let Some(done) = done {
            let _ = done.send(());
        }
    }

    /// When a checkpoint or a rotation by age is due.
    fn next_due(&self) -> Option<Instant> {
        let checkpoint = self
            .uncovered
            .filter(|_| self.chain.is_some())
            .map(|t| t + self.settings.checkpoint_interval);
        let rotation = self
            .started
            .filter(|_| !self.settings.segment_age.is_zero())
            .map(|t| t + self.settings.segment_age);
        match (checkpoint, rotation) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn housekeeping(&mut self) {
        let now = Instant::now();
        if self
            .uncovered
            .is_some_and(|t| now >= t + self.settings.checkpoint_interval)
        {
            self.checkpoint();
        }
        self.rotate_if_due();
    }

    fn event(&mut self, event: &SecurityEvent) {
        let body = event.to_json_line();
        self.write_record(&body);
        self.rotate_if_due();
    }

    fn own(&mut self, record: &Own<'_>) {
        match serde_json::to_string(record) {
            Ok(body) => self.write_record(&body),
            Err(err) => warn!(%err, "cannot encode an audit record"),
        }
    }

    fn write_record(&mut self, body: &str) {
        let line = match &mut self.chain {
            Some(chain) => chain.append(body),
            None => body.to_owned(),
        };
        self.write_line(&line, false);
        self.counts.records.fetch_add(1, Ordering::Relaxed);
        if self.chain.is_some() && self.uncovered.is_none() {
            self.uncovered = Some(Instant::now());
        }
        if self
            .chain
            .as_ref()
            .is_some_and(|c| c.since_checkpoint() >= self.settings.checkpoint_records)
        {
            self.checkpoint();
        }
    }

    fn write_line(&mut self, line: &str, checkpoint: bool) {
        let mut result = self
            .out
            .write_all(line.as_bytes())
            .and_then(|()| self.out.write_all(b"\n"));
        if result.is_ok() {
            self.size = self
                .size
                .saturating_add(u64::try_from(line.len()).unwrap_or(u64::MAX) + 1);
            if self.started.is_none() {
                self.started = Some(Instant::now());
            }
        }
        if let Some(export) = &mut self.export
            && (checkpoint || self.settings.export_records)
        {
            let exported = export
                .write_all(line.as_bytes())
                .and_then(|()| export.write_all(b"\n"));
            if let Err(err) = exported {
                result = result.and(Err(err));
            }
        }
        if let Some(remote) = &self.remote
            && (checkpoint || self.settings.export_records)
        {
            remote.offer(line, checkpoint);
        }
        self.note(result, "write");
    }

    /// A signed checkpoint over everything written so far (nothing if nothing is new).
    fn checkpoint(&mut self) {
        let (Some(chain), Some(key)) = (&mut self.chain, &self.key) else {
            return;
        };
        if chain.since_checkpoint() == 0 {
            return;
        }
        let line = chain.checkpoint(&rfc3339(SystemTime::now()), key);
        self.uncovered = None;
        self.write_line(&line, true);
        self.counts.checkpoints.fetch_add(1, Ordering::Relaxed);
        self.counts.records.fetch_add(1, Ordering::Relaxed);
        // A checkpoint is worth something once it is on disk, here and in the export.
        self.flush();
        self.sync();
    }

    fn report_drops(&mut self) {
        let n = self.counts.unreported.swap(0, Ordering::Relaxed);
        if n == 0 {
            return;
        }
        let mut own = Own::new(EVENTS_DROPPED);
        own.count = Some(n);
        own.reason = Some(format!(
            "the audit queue ({} events) was full: {n} security event(s) were logged but not written here",
            self.settings.queue
        ));
        self.own(&own);
    }

    fn rotate_if_due(&mut self) {
        let by_size = self.size >= self.settings.segment_size;
        let by_age = !self.settings.segment_age.is_zero()
            && self
                .started
                .is_some_and(|t| t.elapsed() >= self.settings.segment_age);
        if (by_size || by_age) && self.size > 0 {
            self.rotate();
        }
    }

    /// Closes the active segment with a checkpoint, renames it by its number and starts a new
    /// one; the chain goes on.
    fn rotate(&mut self) {
        self.checkpoint();
        self.flush();
        self.sync();
        let target = segment_name(&self.path, self.number);
        if let Err(err) = fs::rename(&self.path, &target) {
            self.note(Err(err), "rotate");
            return;
        }
        match open_append(&self.path) {
            Ok(file) => self.out = BufWriter::new(file),
            Err(err) => {
                warn!(%err, "cannot start a new audit segment; writing on in the rotated one");
                if let Ok(file) = OpenOptions::new().append(true).open(&target) {
                    self.out = BufWriter::new(file);
                }
                return;
            }
        }
        sync_dir(&self.path);
        info!(segment = %target.display(), "audit segment rotated");
        self.size = 0;
        self.started = None;
        self.number = match &self.chain {
            Some(chain) => chain.next_seq(),
            None => self.number.saturating_add(1),
        };
        self.retention();
    }

    /// Removes the oldest rotated segments past the retention age or size, each removal
    /// recorded in the trail.
    fn retention(&mut self) {
        let (age, size) = (self.settings.retention_age, self.settings.retention_size);
        if age.is_zero() && size == 0 {
            return;
        }
        let Ok(segments) = rotated_segments(&self.path) else {
            return;
        };
        let mut sized: Vec<(PathBuf, u64, Option<SystemTime>)> = segments
            .into_iter()
            .map(|(_, p)| {
                let meta = fs::metadata(&p).ok();
                let len = meta.as_ref().map_or(0, fs::Metadata::len);
                let modified = meta.and_then(|m| m.modified().ok());
                (p, len, modified)
            })
            .collect();
        let mut total: u64 = sized.iter().map(|(_, len, _)| *len).sum();
        let now = SystemTime::now();
        sized.reverse();
        while let Some((p, len, modified)) = sized.pop() {
            let old = !age.is_zero()
                && modified.is_some_and(|m| now.duration_since(m).is_ok_and(|d| d >= age));
            let over = size > 0 && total > size;
            if !old && !over {
                break;
            }
            let why = if old {
                format!("older than retention_age ({} s)", age.as_secs())
            } else {
                format!("the rotated segments held {total} bytes, over retention_size ({size})")
            };
            match fs::remove_file(&p) {
                Ok(()) => {
                    total = total.saturating_sub(len);
                    let mut own = Own::new(RETENTION);
                    own.target = p.file_name().map(|n| n.to_string_lossy().into_owned());
                    own.reason = Some(format!("segment removed: {why}"));
                    self.own(&own);
                    info!(segment = %p.display(), "audit segment removed by retention");
                }
                Err(err) => {
                    self.note(Err(err), "remove an old segment of");
                    break;
                }
            }
        }
    }

    fn flush(&mut self) {
        let mut result = self.out.flush();
        if let Some(export) = &mut self.export {
            result = result.and(export.flush());
        }
        self.note(result, "write");
    }

    fn sync(&mut self) {
        let mut result = self.out.get_ref().sync_data();
        if let Some(export) = &mut self.export {
            result = result.and(export.get_ref().sync_data());
        }
        self.note(result, "sync");
    }

    /// Counts a failed write and says so once, until writes work again.
    fn note(&mut self, result: io::Result<()>, what: &str) {
        match result {
            Err(err) => {
                self.counts.write_errors.fetch_add(1, Ordering::Relaxed);
                if !self.failed {
                    warn!(file = %self.path.display(), %err, "cannot {what} the audit trail");
                    self.failed = true;
                }
            }
            Ok(()) => self.failed = false,
        }
    }
}

fn parent(path: &Path) -> PathBuf {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

fn file_len(path: &Path) -> u64 {
    fs::metadata(path).map_or(0, |m| m.len())
}

fn open_append(path: &Path) -> Result<File, String> {
    let mut options = OpenOptions::new();
    options.append(true).create(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    options
        .open(path)
        .map_err(|err| format!("cannot open the audit file {}: {err}", path.display()))
}

fn sync_dir(path: &Path) {
    if let Ok(dir) = File::open(parent(path)) {
        let _ = dir.sync_all();
    }
}

/// `audit.jsonl` rotated as number 42: `audit.000000000042.jsonl` (no extension:
/// `audit.000000000042`).
pub(crate) fn segment_name(active: &Path, number: u64) -> PathBuf {
    let stem = active
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let name = match active.extension() {
        Some(ext) => format!("{stem}.{number:012}.{}", ext.to_string_lossy()),
        None => format!("{stem}.{number:012}"),
    };
    parent(active).join(name)
}

/// The rotated segments beside `active`, by number.
pub(crate) fn rotated_segments(active: &Path) -> Result<Vec<(u64, PathBuf)>, String> {
    let dir = parent(active);
    let stem = active
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let ext = active.extension().map(|e| e.to_string_lossy().into_owned());
    let entries = match fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(err) => return Err(format!("cannot list {}: {err}", dir.display())),
    };
    let mut found = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix(&stem).and_then(|r| r.strip_prefix('.')) else {
            continue;
        };
        let digits = match &ext {
            Some(ext) => rest
                .strip_suffix(ext.as_str())
                .and_then(|r| r.strip_suffix('.')),
            None => Some(rest),
        };
        if let Some(digits) = digits
            && digits.len() == 12
            && digits.bytes().all(|b| b.is_ascii_digit())
            && let Ok(number) = digits.parse::<u64>()
        {
            found.push((number, entry.path()));
        }
    }
    found.sort();
    Ok(found)
}

/// Cuts a record the broker was writing when it stopped (bytes after the last line end) and
/// says what was cut, for the start record.
fn repair_torn_end(path: &Path) -> Result<Option<String>, String> {
    let len = file_len(path);
    if len == 0 {
        return Ok(None);
    }
    let (start, tail) = read_tail(path, len)?;
    if tail.last() == Some(&b'\n') {
        return Ok(None);
    }
    let keep = tail
        .iter()
        .rposition(|b| *b == b'\n')
        .map_or(start, |i| start + u64::try_from(i).unwrap_or(0) + 1);
    if keep == 0 && start > 0 {
        return Err(format!(
            "the audit file {} ends with over {TAIL} bytes without a line end: not a trail; move it aside",
            path.display()
        ));
    }
    let cut_from = usize::try_from(keep - start).unwrap_or(0);
    let cut = tail.get(cut_from..).unwrap_or_default();
    let hash = bulwark_audit::Hash::of(cut);
    let file = OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(|err| format!("cannot open the audit file {}: {err}", path.display()))?;
    file.set_len(keep)
        .and_then(|()| file.sync_all())
        .map_err(|err| format!("cannot repair the audit file {}: {err}", path.display()))?;
    warn!(
        file = %path.display(),
        bytes = cut.len(),
        "the audit file ended inside a record (the broker stopped while writing it): cut"
    );
    Ok(Some(format!(
        "cut {} bytes (SHA-256 {hash}) at the end of {}: a record the broker was writing when it stopped",
        cut.len(),
        path.file_name()
            .map(|n| n.to_string_lossy())
            .unwrap_or_default()
    )))
}

/// The last [`TAIL`] bytes of `path` and where they start.
fn read_tail(path: &Path, len: u64) -> Result<(u64, Vec<u8>), String> {
    let mut file = File::open(path)
        .map_err(|err| format!("cannot open the audit file {}: {err}", path.display()))?;
    let start = len.saturating_sub(TAIL);
    let mut tail = Vec::new();
    file.seek(SeekFrom::Start(start))
        .and_then(|_| file.take(TAIL).read_to_end(&mut tail))
        .map_err(|err| format!("cannot read the audit file {}: {err}", path.display()))?;
    Ok((start, tail))
}

/// Moves aside the files of a plain trail (from a broker before the chain, or with
/// `format = "plain"`): newest first, the active segment and then the rotated ones, each that
/// holds no chained record in its last [`TAIL`] bytes, until one does. Chaining onto a plain
/// line would give seq 1 a `prev` other than zero, which no verifier accepts, and the new
/// chain's rotations would reuse the plain segments' numbers and replace them. Each becomes
/// `NAME.plain` (`.plain.2`, ... if taken): not a segment name, so neither retention nor
/// verify's `audit*.jsonl` takes it. What the start record says, if anything was moved.
fn move_aside_unchained(
    active: &Path,
    rotated: &[(u64, PathBuf)],
) -> Result<Option<String>, String> {
    let newest_first =
        std::iter::once(active.to_path_buf()).chain(rotated.iter().rev().map(|(_, p)| p.clone()));
    let mut moved = Vec::new();
    for file in newest_first {
        let len = file_len(&file);
        if len == 0 {
            // The active segment right after a rotation: the rotated ones tell.
            continue;
        }
        let (_, tail) = read_tail(&file, len)?;
        if tail
            .split(|b| *b == b'\n')
            .any(|line| Head::parse(line).is_ok())
        {
            break;
        }
        let name = file
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let mut target = file.with_file_name(format!("{name}.plain"));
        let mut n = 1u32;
        while fs::symlink_metadata(&target).is_ok() {
            n = n.saturating_add(1);
            target = file.with_file_name(format!("{name}.plain.{n}"));
        }
        fs::rename(&file, &target).map_err(|err| {
            format!(
                "the audit file {} holds no chained record (a plain trail?) and cannot be moved aside to {}: {err}",
                file.display(),
                target.display()
            )
        })?;
        warn!(
            file = %file.display(),
            moved_to = %target.display(),
            "the audit file held no chained record (a plain trail): moved aside, the chain does not go on from it"
        );
        let target = target
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        moved.push(format!("{name} ({len} bytes) to {target}"));
    }
    if moved.is_empty() {
        return Ok(None);
    }
    sync_dir(active);
    Ok(Some(format!(
        "moved aside what held no chained record (a plain trail, written before the chain or with format = \"plain\"): {}",
        moved.join(", ")
    )))
}

/// Where the chain stands: after the last line of the active segment, or of the newest
/// rotated one when the active one is empty; a new chain when there is neither. Also what the
/// start record should say about a damaged last line.
fn resume_chain(
    active: &Path,
    rotated: &[(u64, PathBuf)],
) -> Result<(Chain, Option<String>), String> {
    let source = if file_len(active) > 0 {
        Some(active.to_path_buf())
    } else {
        rotated.last().map(|(_, p)| p.clone())
    };
    let Some(source) = source else {
        return Ok((Chain::new(), None));
    };
    let len = file_len(&source);
    if len == 0 {
        return Ok((Chain::new(), None));
    }
    let (start, tail) = read_tail(&source, len)?;
    let mut lines: Vec<&[u8]> = tail.split(|b| *b == b'\n').collect();
    // The piece after the final LF is empty; a piece before the first LF may be partial.
    lines.pop();
    if start > 0 && !lines.is_empty() {
        lines.remove(0);
    }
    let Some(last) = lines.last() else {
        return Ok((Chain::new(), None));
    };
    let last_seq = lines
        .iter()
        .rev()
        .find_map(|l| Head::parse(l).ok().map(|h| h.seq))
        .unwrap_or(0);
    let chain = Chain::resume(last, last_seq);
    let note = match Head::parse(last) {
        Ok(_) => None,
        Err(why) => {
            warn!(file = %source.display(), %why, "the audit trail's last line is not a record: the chain goes on from it, and `bulwark audit verify` will show it");
            Some(format!(
                "the last line of {} is not a record ({why}): the chain goes on from its bytes",
                source
                    .file_name()
                    .map(|n| n.to_string_lossy())
                    .unwrap_or_default()
            ))
        }
    };
    Ok((chain, note))
}

/// The seq of the first record of a segment.
fn first_seq(path: &Path) -> Option<u64> {
    let file = File::open(path).ok()?;
    let mut first = Vec::new();
    io::BufRead::read_until(&mut io::BufReader::new(file.take(TAIL)), b'\n', &mut first).ok()?;
    let line = first.strip_suffix(b"\n").unwrap_or(&first);
    Head::parse(line).ok().map(|h| h.seq)
}

/// The signing key: read, or made (mode 0600, its public half beside it) if missing.
fn load_or_create_key(settings: &AuditSettings) -> Result<AuditKey, String> {
    let path = settings
        .key_path()
        .ok_or_else(|| "no audit file configured".to_owned())?;
    match fs::metadata(&path) {
        Ok(_) => {
            let pem = crate::files::read_text(&path, "audit signing key", 64 << 10)?;
            crate::files::warn_if_open(&path, "audit signing key");
            AuditKey::from_pem(&pem)
                .map_err(|err| format!("the audit signing key {}: {err}", path.display()))
        }
        Err(err) if err.kind() == io::ErrorKind::NotFound => {
            let key = AuditKey::generate().map_err(|err| err.to_string())?;
            let pem = key.to_pem().map_err(|err| err.to_string())?;
            crate::files::ensure_dir(&parent(&path))?;
            crate::files::write_new(&path, pem.as_bytes())?;
            let public = AuditSettings::public_key_file(&path);
            let public_pem = key.public().to_pem().map_err(|err| err.to_string())?;
            crate::files::write_atomic(&public, public_pem.as_bytes())?;
            info!(
                key = %path.display(),
                public = %public.display(),
                "created the audit signing key; keep a copy of its public half elsewhere to verify the trail with (bulwark audit verify --key)"
            );
            Ok(key)
        }
        Err(err) => Err(format!(
            "cannot read the audit signing key {}: {err}",
            path.display()
        )),
    }
}

#[cfg(test)]
mod tests;

//! The disk store: one redb file (copy-on-write B-trees, checksummed pages, two commit slots)
//! in the data directory. See `docs/decisions/0001-embedded-store.md` for why redb, and
//! `docs/persistence.md` for what an operator sees.
//!
//! Tables: `sessions` (client id → session record), `messages` ((client id, seq) → message
//! record), `qos2` ((client id, packet id) → nothing), `retained` (topic → retained record),
//! `meta` (the layout version). Records are checksummed ([`crate::record`]), on top of
//! redb's own page checksums, so that a damaged record is named.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bulwark_core::{RestoredSession, StoreOp};
use bulwark_proto::PacketId;
use redb::{
    Database, DatabaseError, Durability, ReadableDatabase, ReadableTable, ReadableTableMetadata,
    TableDefinition,
};

use crate::record::{self, Clock};
use crate::{Restored, Store, StoreError};

const META: TableDefinition<'static, &str, u64> = TableDefinition::new("meta");
const SESSIONS: TableDefinition<'static, &str, &[u8]> = TableDefinition::new("sessions");
const MESSAGES: TableDefinition<'static, (&str, u64), &[u8]> = TableDefinition::new("messages");
const QOS2: TableDefinition<'static, (&str, u16), ()> = TableDefinition::new("qos2");
const RETAINED: TableDefinition<'static, &str, &[u8]> = TableDefinition::new("retained");

/// By client id, the highest message number in the file.
type TopSeqs = HashMap<Arc<str>, u64>;

/// The key in `meta` holding the layout version.
const LAYOUT_KEY: &str = "layout";
/// The table layout this build writes and reads.
const LAYOUT: u64 = 1;

/// How often an idle store compacts, at most.
const COMPACT_EVERY: Duration = Duration::from_secs(600);
/// Commits since the last compaction before an idle store compacts again.
const COMPACT_AFTER_COMMITS: u64 = 10_000;

/// When commits reach the disk (`[storage] sync`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum SyncPolicy {
    /// Every commit is synced (fsync) before it returns: nothing acknowledged is lost, even
    /// to a power cut. The default.
    #[default]
    Always,
    /// Commits are written without a sync and synced together at most this long after the
    /// first unsynced one: acknowledgements go out sooner, and a crash of the process or
    /// the machine loses at most the last interval's commits.
    Periodic(Duration),
}

/// What [`DiskStore::check`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CheckReport {
    /// The file.
    pub path: PathBuf,
    /// Its size, bytes.
    pub file_bytes: u64,
    /// Persistent sessions.
    pub sessions: u64,
    /// QoS 1/2 messages held for them.
    pub messages: u64,
    /// QoS 2 identifiers awaiting PUBREL.
    pub qos2: u64,
    /// Retained messages.
    pub retained: u64,
    /// Damaged records, each named with what is wrong.
    pub damaged: Vec<String>,
    /// Messages or QoS 2 identifiers of sessions the store does not hold (left by a removed
    /// session record): never delivered, removed at the broker's next start and by repair.
    pub orphans: u64,
    /// The file was not closed cleanly (a crash) and was recovered to its last commit, as
    /// the broker does at start: not damage.
    pub recovered: bool,
}

impl CheckReport {
    /// Whether nothing is damaged.
    pub fn is_clean(&self) -> bool {
        self.damaged.is_empty()
    }
}

impl std::fmt::Display for CheckReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "store {}", self.path.display())?;
        writeln!(f, "  file: {} bytes", self.file_bytes)?;
        writeln!(
            f,
            "  sessions: {}, messages: {}, QoS 2 identifiers: {}, retained: {}",
            self.sessions, self.messages, self.qos2, self.retained
        )?;
        if self.recovered {
            writeln!(
                f,
                "  not closed cleanly (a crash): recovered to its last commit, as the broker does at start"
            )?;
        }
        if self.orphans > 0 {
            writeln!(
                f,
                "  orphaned records (of no stored session): {}",
                self.orphans
            )?;
        }
        if self.damaged.is_empty() {
            write!(f, "  no damage found")
        } else {
            writeln!(f, "  damaged records: {}", self.damaged.len())?;
            for d in &self.damaged {
                writeln!(f, "    {d}")?;
            }
            Ok(())
        }
    }
}

/// Durable state in one redb file.
pub struct DiskStore {
    /// `None` only between a failed commit and the reopen that follows it.
    db: Option<Database>,
    path: PathBuf,
    sync: SyncPolicy,
    clock: Clock,
    /// When the first commit not yet synced was made (periodic sync).
    unsynced_since: Option<Instant>,
    commits_since_compact: u64,
    last_compact: Instant,
    /// By session, the highest message number written to the file, once [`Store::load`] has
    /// read it (`None` before: then every removal is written).
    written: Option<TopSeqs>,
}

impl std::fmt::Debug for DiskStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DiskStore")
            .field("path", &self.path)
            .field("sync", &self.sync)
            .finish_non_exhaustive()
    }
}

fn io(path: &Path, what: &str, source: std::io::Error) -> StoreError {
    StoreError::Io {
        context: format!("{what} {}", path.display()),
        source,
    }
}

/// An error from redb, named with the file; damage says so and points to `bulwark store`.
fn storage(path: &Path, err: impl Into<redb::Error>) -> StoreError {
    match err.into() {
        redb::Error::Io(source)
            if matches!(
                source.kind(),
                std::io::ErrorKind::InvalidData | std::io::ErrorKind::UnexpectedEof
            ) =>
        {
            StoreError::Corrupt(format!(
                "{}: {source} (not a store, or truncated; `bulwark store repair --path {}` moves it aside)",
                path.display(),
                path.display()
            ))
        }
        redb::Error::Io(source) => io(path, "the store", source),
        redb::Error::Corrupted(why) => StoreError::Corrupt(format!(
            "{}: {why} (run `bulwark store check --path {}`)",
            path.display(),
            path.display()
        )),
        redb::Error::DatabaseAlreadyOpen => StoreError::InUse(path.to_path_buf()),
        redb::Error::UpgradeRequired(v) => StoreError::Format(format!(
            "{}: written in storage file format {v}, which this build does not read",
            path.display()
        )),
        other => StoreError::Corrupt(format!("{}: {other}", path.display())),
    }
}

impl DiskStore {
    /// Opens the store at `path`, creating it (and its directory) if it does not exist. A
    /// store that was not closed cleanly (a crash) is repaired to its last commit on open.
    pub fn open(path: impl AsRef<Path>, sync: SyncPolicy) -> Result<Self, StoreError> {
        let path = path.as_ref().to_path_buf();
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| io(dir, "cannot create", e))?;
        }
        if let Ok(meta) = std::fs::metadata(&path)
            && meta.is_file()
            && meta.len() == 0
        {
            return Err(StoreError::Corrupt(format!(
                "{}: the file is empty (truncated?); `bulwark store repair --path {}` moves it aside",
                path.display(),
                path.display()
            )));
        }
        let db = open_db(&path, &mut Database::builder())?;
        let store = Self::with_db(db, path, sync);
        store.check_layout()?;
        Ok(store)
    }

    fn db(&self) -> Result<&Database, StoreError> {
        self.db.as_ref().ok_or_else(|| closed(&self.path))
    }

    fn db_mut(&mut self) -> Result<&mut Database, StoreError> {
        match self.db.as_mut() {
            Some(db) => Ok(db),
            None => Err(closed(&self.path)),
        }
    }

    /// Closes and opens the file again: after a failed commit, redb refuses every later
    /// one on the same handle (its state in memory may no longer match the file).
    fn reopen(&mut self) -> Result<(), StoreError> {
        drop(self.db.take());
        self.db = Some(open_db(&self.path, &mut Database::builder())?);
        self.unsynced_since = None;
        Ok(())
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Creates the tables of a new store, or checks an existing store's layout version.
    fn check_layout(&self) -> Result<(), StoreError> {
        let p = &self.path;
        let txn = self.db()?.begin_write().map_err(|e| storage(p, e))?;
        {
            let mut meta = txn.open_table(META).map_err(|e| storage(p, e))?;
            let found = meta
                .get(LAYOUT_KEY)
                .map_err(|e| storage(p, e))?
                .map(|v| v.value());
            match found {
                Some(LAYOUT) => {}
                Some(other) => {
                    return Err(StoreError::Format(format!(
                        "{}: store layout {other}, this build reads layout {LAYOUT} (written by another version of Bulwark)",
                        p.display()
                    )));
                }
                None => {
                    let empty = meta.is_empty().map_err(|e| storage(p, e))?;
                    if !empty {
                        return Err(StoreError::Corrupt(format!(
                            "{}: the layout version is missing",
                            p.display()
                        )));
                    }
                    meta.insert(LAYOUT_KEY, LAYOUT).map_err(|e| storage(p, e))?;
                }
            }
            txn.open_table(SESSIONS).map_err(|e| storage(p, e))?;
            txn.open_table(MESSAGES).map_err(|e| storage(p, e))?;
            txn.open_table(QOS2).map_err(|e| storage(p, e))?;
            txn.open_table(RETAINED).map_err(|e| storage(p, e))?;
        }
        txn.commit().map_err(|e| storage(p, e))
    }

    /// Reads everything, collecting damaged records instead of stopping at the first.
    /// Also returns, by client id, the highest message number in the file (orphans too).
    fn read_all(&self) -> Result<(Restored, CheckReport, TopSeqs), StoreError> {
        let p = &self.path;
        let clock = self.clock;
        let mut report = CheckReport {
            path: p.clone(),
            file_bytes: std::fs::metadata(p).map(|m| m.len()).unwrap_or(0),
            ..CheckReport::default()
        };
        let txn = self.db()?.begin_read().map_err(|e| storage(p, e))?;
        let mut sessions: BTreeMap<Arc<str>, RestoredSession> = BTreeMap::new();
        let mut top: HashMap<Arc<str>, u64> = HashMap::new();
        let table = txn.open_table(SESSIONS).map_err(|e| storage(p, e))?;
        for entry in table.iter().map_err(|e| storage(p, e))? {
            let (k, v) = entry.map_err(|e| storage(p, e))?;
            let client_id = k.value();
            match record::decode_session(v.value(), clock) {
                Ok(decoded) if *decoded.record.client_id == *client_id => {
                    if decoded.will_dropped {
                        tracing::warn!(
                            client_id,
                            "the stored will of a client authorized by a token's ACL claim is not restored (the claim's rules are not stored)"
                        );
                    }
                    report.sessions += 1;
                    sessions.insert(
                        decoded.record.client_id.clone(),
                        RestoredSession {
                            record: decoded.record,
                            messages: Vec::new(),
                            qos2_received: Vec::new(),
                        },
                    );
                }
                Ok(decoded) => report.damaged.push(format!(
                    "session {client_id:?}: the record names client {:?}",
                    decoded.record.client_id
                )),
                Err(why) => report.damaged.push(format!("session {client_id:?}: {why}")),
            }
        }
        let table = txn.open_table(MESSAGES).map_err(|e| storage(p, e))?;
        for entry in table.iter().map_err(|e| storage(p, e))? {
            let (k, v) = entry.map_err(|e| storage(p, e))?;
            let (client_id, seq) = k.value();
            match top.get_mut(client_id) {
                Some(t) => *t = (*t).max(seq),
                None => {
                    top.insert(Arc::from(client_id), seq);
                }
            }
            match record::decode_message(v.value(), seq, clock) {
                Ok((delivery, sent)) => match sessions.get_mut(client_id) {
                    Some(s) => {
                        report.messages += 1;
                        s.messages.push((seq, delivery, sent));
                    }
                    None => report.orphans += 1,
                },
                Err(why) => report
                    .damaged
                    .push(format!("message {seq} of session {client_id:?}: {why}")),
            }
        }
        let table = txn.open_table(QOS2).map_err(|e| storage(p, e))?;
        for entry in table.iter().map_err(|e| storage(p, e))? {
            let (k, _) = entry.map_err(|e| storage(p, e))?;
            let (client_id, id) = k.value();
            match (sessions.get_mut(client_id), PacketId::new(id)) {
                (Some(s), Some(id)) => {
                    report.qos2 += 1;
                    s.qos2_received.push(id);
                }
                (None, _) => report.orphans += 1,
                (_, None) => report.damaged.push(format!(
                    "QoS 2 identifier of session {client_id:?}: packet identifier 0"
                )),
            }
        }
        let mut retained = Vec::new();
        let table = txn.open_table(RETAINED).map_err(|e| storage(p, e))?;
        for entry in table.iter().map_err(|e| storage(p, e))? {
            let (k, v) = entry.map_err(|e| storage(p, e))?;
            let topic = k.value();
            match record::decode_retained(v.value(), clock) {
                Ok((message, owner)) if message.topic.as_str() == topic => {
                    report.retained += 1;
                    retained.push((message, owner));
                }
                Ok((message, _)) => report.damaged.push(format!(
                    "retained message on {topic:?}: the record names the topic {:?}",
                    message.topic.as_str()
                )),
                Err(why) => report
                    .damaged
                    .push(format!("retained message on {topic:?}: {why}")),
            }
        }
        Ok((
            Restored {
                sessions: sessions.into_values().collect(),
                retained,
            },
            report,
            top,
        ))
    }

    /// A store on an open handle.
    fn with_db(db: Database, path: PathBuf, sync: SyncPolicy) -> Self {
        Self {
            db: Some(db),
            path,
            sync,
            clock: Clock::now(),
            unsynced_since: None,
            commits_since_compact: 0,
            last_compact: Instant::now(),
            written: None,
        }
    }

    /// Checks the store at `path` without changing it: the file is copied beside itself
    /// (`NAME.checking`, removed afterwards), and on the copy every record is read back and
    /// decoded and redb verifies every page's checksum. Refused while a broker uses the file.
    pub fn check_file(path: impl AsRef<Path>) -> Result<CheckReport, StoreError> {
        let path = path.as_ref();
        if !path.is_file() {
            return Err(io(
                path,
                "no store at",
                std::io::Error::from(std::io::ErrorKind::NotFound),
            ));
        }
        // A broker holds the file's lock: a read-only open is refused then.
        if let Err(StoreError::InUse(p)) = guarded(path, || {
            redb::ReadOnlyDatabase::open(path)
                .map(drop)
                .map_err(|e| storage(path, e))
        }) {
            return Err(StoreError::InUse(p));
        }
        let name = path
            .file_name()
            .map_or_else(|| "store".into(), |n| n.to_string_lossy().into_owned());
        let copy = path.with_file_name(format!("{name}.checking"));
        std::fs::copy(path, &copy).map_err(|e| io(&copy, "cannot copy the store to", e))?;
        let result = Self::check_copy(path, &copy);
        let _ = std::fs::remove_file(&copy);
        let (from, to) = (copy.to_string_lossy(), path.to_string_lossy());
        match result {
            Ok(mut report) => {
                for d in &mut report.damaged {
                    *d = d.replace(&*from, &to);
                }
                Ok(report)
            }
            Err(StoreError::Corrupt(why)) => Err(StoreError::Corrupt(why.replace(&*from, &to))),
            Err(StoreError::Format(why)) => Err(StoreError::Format(why.replace(&*from, &to))),
            Err(other) => Err(other),
        }
    }

    fn check_copy(path: &Path, copy: &Path) -> Result<CheckReport, StoreError> {
        let recovered = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = recovered.clone();
        let mut builder = Database::builder();
        builder.set_repair_callback(move |_| {
            flag.store(true, std::sync::atomic::Ordering::Relaxed);
        });
        let db = open_db(copy, &mut builder)?;
        let mut store = Self::with_db(db, copy.to_path_buf(), SyncPolicy::Always);
        store.check_layout()?;
        let mut report = match guarded(copy, || store.read_all()) {
            Ok((_, report, _)) => report,
            Err(StoreError::Corrupt(why)) => CheckReport {
                damaged: vec![why],
                ..CheckReport::default()
            },
            Err(other) => return Err(other),
        };
        report.path = path.to_path_buf();
        report.file_bytes = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
        report.recovered = recovered.load(std::sync::atomic::Ordering::Relaxed);
        let p = copy.to_path_buf();
        match guarded(copy, || {
            store
                .db_mut()?
                .check_integrity()
                .map_err(|e| storage(&p, e))
        }) {
            Ok(true) => {}
            Ok(false) => report.damaged.push(
                "pages failed their checksums; redb fell back to the last commit whose pages are intact, which may lose the newest commits".to_owned(),
            ),
            Err(err) => report
                .damaged
                .push(format!("the file's pages fail their checksums: {err}")),
        }
        Ok(report)
    }

    /// Repairs the store at `path`: every record that reads back (and belongs to a stored
    /// session) is copied to a new file, which takes the old one's place; the old file is
    /// kept beside it as `NAME.damaged-UNIXTIME`. A file redb cannot open at all is moved
    /// aside the same way and an empty store takes its place. Returns what was found (and so
    /// lost) and where the old file went; `None` if there was nothing to repair. A store in
    /// use, or written by a newer build, is refused.
    pub fn repair_file(
        path: impl AsRef<Path>,
    ) -> Result<(CheckReport, Option<PathBuf>), StoreError> {
        let path = path.as_ref().to_path_buf();
        let readable = match Self::check_file(&path) {
            Ok(report) if report.is_clean() && report.orphans == 0 => return Ok((report, None)),
            Ok(_) => true,
            Err(StoreError::Corrupt(why)) => {
                tracing::warn!(%why, "the store cannot be opened; replacing it with an empty one");
                false
            }
            Err(other) => return Err(other),
        };
        let unix = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let name = path
            .file_name()
            .map_or_else(|| "store".into(), |n| n.to_string_lossy().into_owned());
        let mut aside = path.with_file_name(format!("{name}.damaged-{unix}"));
        for n in 1.. {
            if !aside.exists() {
                break;
            }
            aside = path.with_file_name(format!("{name}.damaged-{unix}-{n}"));
        }
        let fresh = path.with_file_name(format!("{name}.repairing"));
        let _ = std::fs::remove_file(&fresh);
        let salvaged = if readable {
            let mut target = Self::open(&fresh, SyncPolicy::Always)?;
            let outcome = Self::open(&path, SyncPolicy::Always)
                .and_then(|source| guarded(&path, || source.salvage(&mut target)));
            drop(target);
            match outcome {
                Ok(report) => Some(report),
                Err(StoreError::Corrupt(why)) => {
                    tracing::warn!(%why, "the store cannot be read; replacing it with an empty one");
                    let _ = std::fs::remove_file(&fresh);
                    None
                }
                Err(other) => {
                    let _ = std::fs::remove_file(&fresh);
                    return Err(other);
                }
            }
        } else {
            None
        };
        let report = match salvaged {
            Some(report) => report,
            None => {
                drop(Self::open(&fresh, SyncPolicy::Always)?);
                CheckReport {
                    path: path.clone(),
                    file_bytes: std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0),
                    damaged: vec![
                        "the whole file (redb could not read it): everything it held".to_owned(),
                    ],
                    ..CheckReport::default()
                }
            }
        };
        std::fs::rename(&path, &aside).map_err(|e| io(&path, "cannot move aside", e))?;
        std::fs::rename(&fresh, &path).map_err(|e| io(&fresh, "cannot move into place", e))?;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty())
            && let Ok(dir) = std::fs::File::open(dir)
        {
            let _ = dir.sync_all();
        }
        Ok((report, Some(aside)))
    }

    /// Copies every record that reads back into `target` (one commit), reporting the rest.
    fn salvage(&self, target: &mut Self) -> Result<CheckReport, StoreError> {
        let p = &self.path;
        let clock = self.clock;
        let mut report = CheckReport {
            path: p.clone(),
            file_bytes: std::fs::metadata(p).map(|m| m.len()).unwrap_or(0),
            ..CheckReport::default()
        };
        let src = self.db()?.begin_read().map_err(|e| storage(p, e))?;
        let t = &target.path;
        let dst = target.db()?.begin_write().map_err(|e| storage(t, e))?;
        let mut live = std::collections::BTreeSet::new();
        {
            let mut out = dst.open_table(SESSIONS).map_err(|e| storage(t, e))?;
            let table = src.open_table(SESSIONS).map_err(|e| storage(p, e))?;
            for entry in table.iter().map_err(|e| storage(p, e))? {
                let Ok((k, v)) = entry else {
                    report
                        .damaged
                        .push("the sessions table: unreadable from here on".to_owned());
                    break;
                };
                let id = k.value();
                match record::decode_session(v.value(), clock) {
                    Ok(d) if *d.record.client_id == *id => {
                        out.insert(id, v.value()).map_err(|e| storage(t, e))?;
                        live.insert(id.to_owned());
                        report.sessions += 1;
                    }
                    Ok(_) => report
                        .damaged
                        .push(format!("session {id:?}: names another client")),
                    Err(why) => report.damaged.push(format!("session {id:?}: {why}")),
                }
            }
            let mut out = dst.open_table(MESSAGES).map_err(|e| storage(t, e))?;
            let table = src.open_table(MESSAGES).map_err(|e| storage(p, e))?;
            for entry in table.iter().map_err(|e| storage(p, e))? {
                let Ok((k, v)) = entry else {
                    report
                        .damaged
                        .push("the messages table: unreadable from here on".to_owned());
                    break;
                };
                let (id, seq) = k.value();
                if !live.contains(id) {
                    report.orphans += 1;
                } else if let Err(why) = record::decode_message(v.value(), seq, clock) {
                    report
                        .damaged
                        .push(format!("message {seq} of session {id:?}: {why}"));
                } else {
                    out.insert((id, seq), v.value())
                        .map_err(|e| storage(t, e))?;
                    report.messages += 1;
                }
            }
            let mut out = dst.open_table(QOS2).map_err(|e| storage(t, e))?;
            let table = src.open_table(QOS2).map_err(|e| storage(p, e))?;
            for entry in table.iter().map_err(|e| storage(p, e))? {
                let Ok((k, _)) = entry else {
                    report
                        .damaged
                        .push("the qos2 table: unreadable from here on".to_owned());
                    break;
                };
                let (id, packet_id) = k.value();
                if !live.contains(id) {
                    report.orphans += 1;
                } else if packet_id != 0 {
                    out.insert((id, packet_id), ()).map_err(|e| storage(t, e))?;
                    report.qos2 += 1;
                } else {
                    report.damaged.push(format!(
                        "QoS 2 identifier of session {id:?}: packet identifier 0"
                    ));
                }
            }
            let mut out = dst.open_table(RETAINED).map_err(|e| storage(t, e))?;
            let table = src.open_table(RETAINED).map_err(|e| storage(p, e))?;
            for entry in table.iter().map_err(|e| storage(p, e))? {
                let Ok((k, v)) = entry else {
                    report
                        .damaged
                        .push("the retained table: unreadable from here on".to_owned());
                    break;
                };
                let topic = k.value();
                match record::decode_retained(v.value(), clock) {
                    Ok((m, _)) if m.topic.as_str() == topic => {
                        out.insert(topic, v.value()).map_err(|e| storage(t, e))?;
                        report.retained += 1;
                    }
                    Ok(_) => report.damaged.push(format!(
                        "retained message on {topic:?}: names another topic"
                    )),
                    Err(why) => report
                        .damaged
                        .push(format!("retained message on {topic:?}: {why}")),
                }
            }
        }
        dst.commit().map_err(|e| storage(t, e))?;
        Ok(report)
    }

    /// Removes the messages and QoS 2 identifiers of client ids without a session record
    /// (a later session with that id must not find them); returns how many.
    fn remove_orphans(&mut self, restored: &Restored) -> Result<u64, StoreError> {
        let p = self.path.clone();
        let live: std::collections::HashSet<&str> = restored
            .sessions
            .iter()
            .map(|s| &*s.record.client_id)
            .collect();
        let txn = self.db()?.begin_write().map_err(|e| storage(&p, e))?;
        let mut removed = 0u64;
        {
            let mut messages = txn.open_table(MESSAGES).map_err(|e| storage(&p, e))?;
            messages
                .retain(|(id, _), _| {
                    let keep = live.contains(id);
                    removed += u64::from(!keep);
                    keep
                })
                .map_err(|e| storage(&p, e))?;
            let mut qos2 = txn.open_table(QOS2).map_err(|e| storage(&p, e))?;
            qos2.retain(|(id, _), ()| {
                let keep = live.contains(id);
                removed += u64::from(!keep);
                keep
            })
            .map_err(|e| storage(&p, e))?;
        }
        txn.commit().map_err(|e| storage(&p, e))?;
        Ok(removed)
    }

    /// Gives free pages back to the file system, as far as redb can.
    pub fn compact(&mut self) -> Result<(), StoreError> {
        self.sync_now()?;
        for _ in 0..8 {
            match self.db_mut()?.compact() {
                Ok(true) => {}
                Ok(false) => break,
                Err(err) => return Err(storage(&self.path, err)),
            }
        }
        self.commits_since_compact = 0;
        self.last_compact = Instant::now();
        Ok(())
    }

    /// Makes every commit so far durable (periodic sync).
    fn sync_now(&mut self) -> Result<(), StoreError> {
        if self.unsynced_since.is_some() {
            let p = &self.path;
            let mut txn = self.db()?.begin_write().map_err(|e| storage(p, e))?;
            txn.set_durability(Durability::Immediate)
                .map_err(|e| storage(p, e))?;
            txn.set_quick_repair(true);
            txn.commit().map_err(|e| storage(p, e))?;
            self.unsynced_since = None;
        }
        Ok(())
    }

    /// Which operations of `ops` need not reach the disk ([`superseded`]), and also the
    /// removal of a message written and removed within this batch (its record is not on the
    /// disk: its number is above every one written for its session so far).
    fn moot(&self, ops: &[StoreOp]) -> Vec<bool> {
        let (mut skip, done_last) = superseded(ops);
        if let Some(written) = &self.written {
            for i in done_last {
                if let Some(StoreOp::MessageDone { client_id, seq }) = ops.get(i)
                    && *seq > written.get(client_id).copied().unwrap_or(0)
                    && let Some(s) = skip.get_mut(i)
                {
                    *s = true;
                }
            }
        }
        skip
    }

    /// Keeps `written` up to date after a commit of `ops` (less `skip`).
    fn note_written(&mut self, ops: &[StoreOp], skip: &[bool]) {
        let Some(written) = &mut self.written else {
            return;
        };
        for (op, skip) in ops.iter().zip(skip) {
            match op {
                StoreOp::Message { client_id, seq, .. } if !skip => {
                    let top = written.entry(client_id.clone()).or_default();
                    *top = (*top).max(*seq);
                }
                StoreOp::SessionEnded { client_id } => {
                    written.remove(client_id);
                }
                _ => {}
            }
        }
    }

    fn apply(
        &self,
        txn: &redb::WriteTransaction,
        ops: &[StoreOp],
        skip: &[bool],
    ) -> Result<(), StoreError> {
        let p = &self.path;
        let clock = self.clock;
        let mut sessions = txn.open_table(SESSIONS).map_err(|e| storage(p, e))?;
        let mut messages = txn.open_table(MESSAGES).map_err(|e| storage(p, e))?;
        let mut qos2 = txn.open_table(QOS2).map_err(|e| storage(p, e))?;
        let mut retained = txn.open_table(RETAINED).map_err(|e| storage(p, e))?;
        for (op, skip) in ops.iter().zip(skip) {
            if *skip {
                continue;
            }
            match op {
                StoreOp::Session(record) => {
                    let bytes = record::encode_session(record, clock);
                    sessions
                        .insert(&*record.client_id, bytes.as_slice())
                        .map_err(|e| storage(p, e))?;
                }
                StoreOp::SessionEnded { client_id } => {
                    let id: &str = client_id;
                    sessions.remove(id).map_err(|e| storage(p, e))?;
                    messages
                        .retain_in((id, 0)..=(id, u64::MAX), |_, _| false)
                        .map_err(|e| storage(p, e))?;
                    qos2.retain_in((id, 0)..=(id, u16::MAX), |_, ()| false)
                        .map_err(|e| storage(p, e))?;
                }
                StoreOp::Message {
                    client_id,
                    seq,
                    delivery,
                    sent,
                } => {
                    let bytes = record::encode_message(delivery, *sent, clock);
                    messages
                        .insert((&**client_id, *seq), bytes.as_slice())
                        .map_err(|e| storage(p, e))?;
                }
                StoreOp::MessageDone { client_id, seq } => {
                    messages
                        .remove((&**client_id, *seq))
                        .map_err(|e| storage(p, e))?;
                }
                StoreOp::Qos2Received {
                    client_id,
                    packet_id,
                } => {
                    qos2.insert((&**client_id, packet_id.get()), ())
                        .map_err(|e| storage(p, e))?;
                }
                StoreOp::Qos2Released {
                    client_id,
                    packet_id,
                } => {
                    qos2.remove((&**client_id, packet_id.get()))
                        .map_err(|e| storage(p, e))?;
                }
                StoreOp::Retained { message, owner } => {
                    let bytes = record::encode_retained(message, owner.as_deref(), clock);
                    retained
                        .insert(message.topic.as_str(), bytes.as_slice())
                        .map_err(|e| storage(p, e))?;
                }
                StoreOp::RetainedCleared(topic) => {
                    retained.remove(topic.as_str()).map_err(|e| storage(p, e))?;
                }
            }
        }
        Ok(())
    }
}

/// What a later operation of the same batch makes moot: a message, QoS 2 identifier,
/// session record or retained message written again (or removed) further on. A message sent
/// at once is recorded queued, taken from the queue and recorded in flight within one round;
/// only the last of those reaches the disk. `SessionEnded` is never skipped (it removes what
/// earlier batches wrote).
///
/// Also returns where a message's last operation in the batch is its removal, after an
/// earlier one of the batch wrote it: candidates for [`DiskStore::moot`].
fn superseded(ops: &[StoreOp]) -> (Vec<bool>, Vec<usize>) {
    use std::collections::HashSet;
    #[derive(PartialEq, Eq, Hash)]
    enum Key<'a> {
        Message(&'a str, u64),
        Qos2(&'a str, u16),
        Session(&'a str),
        Retained(&'a str),
    }
    let mut later: HashSet<Key<'_>> = HashSet::new();
    let mut skip = vec![false; ops.len()];
    // Messages whose last operation is a removal, by where it is; `true` once an earlier
    // write of the batch is seen.
    let mut removed: HashMap<Key<'_>, (usize, bool)> = HashMap::new();
    let mut ended: HashSet<&str> = HashSet::new();
    for (i, (op, skip)) in ops.iter().zip(skip.iter_mut()).enumerate().rev() {
        let key = match op {
            StoreOp::Message { client_id, seq, .. } => {
                if let Some((_, written)) = removed.get_mut(&Key::Message(client_id, *seq)) {
                    *written = true;
                }
                Key::Message(client_id, *seq)
            }
            StoreOp::MessageDone { client_id, seq } => {
                let key = Key::Message(client_id, *seq);
                if !later.contains(&key) {
                    removed.insert(Key::Message(client_id, *seq), (i, false));
                }
                key
            }
            StoreOp::Qos2Received {
                client_id,
                packet_id,
            }
            | StoreOp::Qos2Released {
                client_id,
                packet_id,
            } => Key::Qos2(client_id, packet_id.get()),
            StoreOp::Session(record) => Key::Session(&record.client_id),
            StoreOp::SessionEnded { client_id } => {
                later.insert(Key::Session(client_id));
                ended.insert(client_id);
                continue;
            }
            StoreOp::Retained { message, .. } => Key::Retained(message.topic.as_str()),
            StoreOp::RetainedCleared(topic) => Key::Retained(topic.as_str()),
        };
        *skip = !later.insert(key);
    }
    let done_last = removed
        .into_iter()
        .filter(|(key, (_, written))| {
            *written && !matches!(key, Key::Message(client_id, _) if ended.contains(client_id))
        })
        .map(|(_, (i, _))| i)
        .collect();
    (skip, done_last)
}

/// The handle is closed (a reopen after a failed commit failed too).
fn closed(path: &Path) -> StoreError {
    StoreError::Io {
        context: format!(
            "the store {} is closed after a failed commit",
            path.display()
        ),
        source: std::io::Error::other("closed"),
    }
}

/// Runs `f`, turning a panic inside redb (which a file damaged outside it can cause) into an
/// error naming the file.
fn guarded<T>(path: &Path, f: impl FnOnce() -> Result<T, StoreError>) -> Result<T, StoreError> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(result) => result,
        Err(panic) => {
            let why = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "no message".to_owned());
            Err(StoreError::Corrupt(format!(
                "{}: the file cannot be read ({why}); `bulwark store repair --path {}` keeps what reads back",
                path.display(),
                path.display()
            )))
        }
    }
}

fn open_db(path: &Path, builder: &mut redb::Builder) -> Result<Database, StoreError> {
    guarded(path, || {
        builder.create(path).map_err(|e| open_error(path, e))
    })
}

/// An error opening the file, with what an operator can do about it.
fn open_error(path: &Path, err: DatabaseError) -> StoreError {
    match err {
        DatabaseError::Storage(redb::StorageError::Io(e))
            if e.kind() == std::io::ErrorKind::UnexpectedEof =>
        {
            StoreError::Corrupt(format!(
                "{}: the file ends early (truncated): {e}; `bulwark store repair --path {}` moves it aside and starts an empty store",
                path.display(),
                path.display()
            ))
        }
        other => storage(path, other),
    }
}

impl Store for DiskStore {
    fn load(&mut self) -> Result<Restored, StoreError> {
        let path = self.path.clone();
        let (restored, report, top) = guarded(&path, || self.read_all())?;
        if let Some(first) = report.damaged.first() {
            return Err(StoreError::Corrupt(format!(
                "{}: {} damaged record(s), the first: {first}; `bulwark store check --path {}` lists them, `bulwark store repair` removes them",
                self.path.display(),
                report.damaged.len(),
                self.path.display()
            )));
        }
        if report.orphans > 0 {
            let removed = self.remove_orphans(&restored)?;
            tracing::warn!(
                removed,
                "removed messages and QoS 2 identifiers of sessions the store does not hold"
            );
        }
        // Start from a compact file: what a long run left free goes back to the disk.
        self.compact()?;
        self.written = Some(top);
        Ok(restored)
    }

    fn commit(&mut self, ops: &[StoreOp]) -> Result<(), StoreError> {
        let p = self.path.clone();
        let mut txn = self.db()?.begin_write().map_err(|e| storage(&p, e))?;
        let durable = match self.sync {
            SyncPolicy::Always => true,
            SyncPolicy::Periodic(every) => self
                .unsynced_since
                .is_some_and(|since| since.elapsed() >= every),
        };
        if durable {
            txn.set_quick_repair(true);
        } else {
            txn.set_durability(Durability::None)
                .map_err(|e| storage(&p, e))?;
        }
        let skip = self.moot(ops);
        let applied = self.apply(&txn, ops, &skip);
        if let Err(err) = applied {
            let _ = txn.abort();
            return Err(err);
        }
        txn.commit().map_err(|e| storage(&p, e))?;
        self.note_written(ops, &skip);
        if durable {
            self.unsynced_since = None;
        } else if self.unsynced_since.is_none() {
            self.unsynced_since = Some(Instant::now());
        }
        self.commits_since_compact += 1;
        Ok(())
    }

    fn recover(&mut self) -> Result<(), StoreError> {
        self.reopen()
    }

    fn idle(&mut self) -> Result<(), StoreError> {
        self.sync_now()?;
        if self.commits_since_compact >= COMPACT_AFTER_COMMITS
            && self.last_compact.elapsed() >= COMPACT_EVERY
        {
            self.compact()?;
        }
        Ok(())
    }

    fn idle_interval(&self) -> Option<Duration> {
        match self.sync {
            SyncPolicy::Always => Some(Duration::from_secs(5)),
            SyncPolicy::Periodic(every) => Some(every),
        }
    }
}

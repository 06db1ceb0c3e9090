//! The interface every engine implements: the broker's persistent session
//! queue reduced to the four operations it needs.

use std::error::Error;
use std::path::Path;

pub type Result<T> = std::result::Result<T, Box<dyn Error + Send + Sync>>;

/// One queued message: (session id, per-session sequence number, payload).
pub type Record<'a> = (u64, u64, &'a [u8]);

/// How durable a commit is when the call returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Survives power loss: fjall `PersistMode::SyncAll`, redb
    /// `Durability::Immediate`, SQLite WAL + `synchronous=FULL`.
    Durable,
    /// fjall only: `PersistMode::SyncData` (fdatasync instead of fsync).
    SyncData,
    /// SQLite only: WAL + `synchronous=NORMAL` (may lose the last commits on
    /// power loss, never corrupts).
    Normal,
    /// No fsync per commit: fjall writes to OS buffers, redb
    /// `Durability::None`, SQLite `synchronous=OFF`.
    NoSync,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::Durable => "durable",
            Mode::SyncData => "sync-data",
            Mode::Normal => "normal",
            Mode::NoSync => "no-sync",
        }
    }
}

/// The key layout shared by the key-value engines: big-endian session id then
/// big-endian sequence number, so one session's messages are contiguous and in
/// order.
#[allow(dead_code)]
pub fn key(session: u64, seq: u64) -> [u8; 16] {
    let mut k = [0u8; 16];
    k[..8].copy_from_slice(&session.to_be_bytes());
    k[8..].copy_from_slice(&seq.to_be_bytes());
    k
}

#[allow(dead_code)]
pub fn seq_of(key: &[u8]) -> u64 {
    u64::from_be_bytes(key[8..16].try_into().expect("16-byte key"))
}

pub trait Store {
    /// One commit holding every record; when it returns, the records are as
    /// durable as the store's `Mode` promises.
    fn append_batch(&mut self, batch: &[Record<'_>]) -> Result<()>;
    /// One commit removing every (session, seq) given.
    fn delete_batch(&mut self, keys: &[(u64, u64)]) -> Result<()>;
    /// All messages of one session, in sequence order.
    fn range_read(&mut self, session: u64) -> Result<Vec<(u64, Vec<u8>)>>;
    /// Make everything written so far durable (a no-op in a durable mode
    /// apart from what the engine does anyway). Called at the end of every
    /// timed phase, inside the timing, so non-durable modes pay for one sync.
    fn flush(&mut self) -> Result<()>;
    /// The engine's own space reclamation; returns what it did.
    fn compact(&mut self) -> Result<String>;
    /// Close cleanly.
    fn close(self: Box<Self>) -> Result<()>;
}

pub fn open(engine: &str, dir: &Path, mode: Mode, opts: &Options) -> Result<Box<dyn Store>> {
    std::fs::create_dir_all(dir)?;
    match engine {
        #[cfg(feature = "fjall")]
        "fjall" => Ok(Box::new(crate::fjall_store::FjallStore::open(dir, mode)?)),
        #[cfg(feature = "redb")]
        "redb" => Ok(Box::new(crate::redb_store::RedbStore::open(
            dir,
            mode,
            opts.redb_quick_repair,
        )?)),
        #[cfg(feature = "sqlite")]
        "sqlite" => Ok(Box::new(crate::sqlite_store::SqliteStore::open(dir, mode)?)),
        other => {
            let _ = opts;
            Err(format!(
                "engine {other:?} unknown or not compiled in (features: fjall, redb, sqlite)"
            )
            .into())
        }
    }
}

/// Engine-specific switches.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// redb: `set_quick_repair(true)` on every write transaction (2-phase
    /// commit plus the allocator state saved per commit: slower commits,
    /// near-instant recovery after a crash).
    pub redb_quick_repair: bool,
}

//! fjall: LSM-tree with a write-ahead journal. One keyspace; a batch is an
//! `OwnedWriteBatch` whose durability is set per commit.

use crate::store::{Mode, Record, Result, Store, key, seq_of};
use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode};
use std::path::Path;

pub struct FjallStore {
    db: Database,
    ks: Keyspace,
    persist: PersistMode,
}

impl FjallStore {
    pub fn open(dir: &Path, mode: Mode) -> Result<Self> {
        let persist = match mode {
            Mode::Durable => PersistMode::SyncAll,
            Mode::SyncData => PersistMode::SyncData,
            // What `Database::batch()` does by default: each batch is flushed
            // from fjall's buffer to the OS (page cache), no fsync. (`None`
            // would leave it in the process's buffer, lost even on kill -9.)
            Mode::NoSync => PersistMode::Buffer,
            Mode::Normal => return Err("fjall has no 'normal' mode (that is SQLite's)".into()),
        };
        let db = Database::builder(dir).open()?;
        let ks = db.keyspace("msgs", KeyspaceCreateOptions::default)?;
        Ok(Self { db, ks, persist })
    }
}

impl Store for FjallStore {
    fn append_batch(&mut self, batch: &[Record<'_>]) -> Result<()> {
        let mut b = self.db.batch().durability(Some(self.persist));
        for &(s, q, p) in batch {
            b.insert(&self.ks, key(s, q), p);
        }
        b.commit()?;
        Ok(())
    }

    fn delete_batch(&mut self, keys: &[(u64, u64)]) -> Result<()> {
        let mut b = self.db.batch().durability(Some(self.persist));
        for &(s, q) in keys {
            b.remove(&self.ks, key(s, q));
        }
        b.commit()?;
        Ok(())
    }

    fn range_read(&mut self, session: u64) -> Result<Vec<(u64, Vec<u8>)>> {
        let mut out = Vec::new();
        for g in self.ks.prefix(session.to_be_bytes()) {
            let (k, v) = g.into_inner()?;
            out.push((seq_of(&k), v.to_vec()));
        }
        Ok(out)
    }

    fn flush(&mut self) -> Result<()> {
        self.db.persist(PersistMode::SyncAll)?;
        Ok(())
    }

    fn compact(&mut self) -> Result<String> {
        // Flush the memtable to a table so the journal can be dropped, then a
        // major compaction (tombstones meet their values and both vanish).
        self.ks.rotate_memtable_and_wait()?;
        self.ks.major_compact()?;
        self.db.persist(PersistMode::SyncAll)?;
        Ok("rotate_memtable_and_wait + major_compact (doc(hidden) API)".into())
    }

    fn close(self: Box<Self>) -> Result<()> {
        let FjallStore { db, ks, .. } = *self;
        db.persist(PersistMode::SyncAll)?;
        drop(ks);
        // Dropping the last handle stops the workers and syncs the journal.
        drop(db);
        Ok(())
    }
}

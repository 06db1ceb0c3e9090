//! redb: copy-on-write B+tree in one file. One write transaction per batch.

use crate::store::{Mode, Record, Result, Store, key, seq_of};
use redb::{Database, Durability, ReadableDatabase, TableDefinition};
use std::path::Path;

const MSGS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("msgs");

pub struct RedbStore {
    db: Database,
    durability: Durability,
    quick_repair: bool,
}

impl RedbStore {
    pub fn open(dir: &Path, mode: Mode, quick_repair: bool) -> Result<Self> {
        let durability = match mode {
            Mode::Durable => Durability::Immediate,
            Mode::NoSync => Durability::None,
            other => return Err(format!("redb has no {:?} mode", other.name()).into()),
        };
        let db = Database::create(dir.join("store.redb"))?;
        // Make sure the table exists so readers never see "table missing".
        let txn = db.begin_write()?;
        txn.open_table(MSGS)?;
        txn.commit()?;
        Ok(Self {
            db,
            durability,
            quick_repair,
        })
    }

    fn write<F>(&mut self, f: F) -> Result<()>
    where
        F: FnOnce(&mut redb::Table<'_, &'static [u8], &'static [u8]>) -> Result<()>,
    {
        let mut txn = self.db.begin_write()?;
        txn.set_durability(self.durability)?;
        if self.quick_repair {
            txn.set_quick_repair(true);
        }
        {
            let mut t = txn.open_table(MSGS)?;
            f(&mut t)?;
        }
        txn.commit()?;
        Ok(())
    }
}

impl Store for RedbStore {
    fn append_batch(&mut self, batch: &[Record<'_>]) -> Result<()> {
        self.write(|t| {
            for &(s, q, p) in batch {
                t.insert(key(s, q).as_slice(), p)?;
            }
            Ok(())
        })
    }

    fn delete_batch(&mut self, keys: &[(u64, u64)]) -> Result<()> {
        self.write(|t| {
            for &(s, q) in keys {
                t.remove(key(s, q).as_slice())?;
            }
            Ok(())
        })
    }

    fn range_read(&mut self, session: u64) -> Result<Vec<(u64, Vec<u8>)>> {
        let txn = self.db.begin_read()?;
        let t = txn.open_table(MSGS)?;
        let lo = key(session, 0);
        let hi = key(session + 1, 0);
        let mut out = Vec::new();
        for r in t.range::<&[u8]>(lo.as_slice()..hi.as_slice())? {
            let (k, v) = r?;
            out.push((seq_of(k.value()), v.value().to_vec()));
        }
        Ok(out)
    }

    fn flush(&mut self) -> Result<()> {
        if matches!(self.durability, Durability::None) {
            // One empty durable commit makes the non-durable ones durable.
            let txn = self.db.begin_write()?;
            txn.commit()?;
        }
        Ok(())
    }

    fn compact(&mut self) -> Result<String> {
        let mut passes = 0;
        while self.db.compact()? {
            passes += 1;
            if passes >= 16 {
                break;
            }
        }
        Ok(format!(
            "Database::compact() x{passes} (until it reports nothing left)"
        ))
    }

    fn close(self: Box<Self>) -> Result<()> {
        let RedbStore { db, .. } = *self;
        db.close()?;
        Ok(())
    }
}

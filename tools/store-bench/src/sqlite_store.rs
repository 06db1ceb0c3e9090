//! SQLite (bundled, via rusqlite) in WAL mode. One table keyed by
//! (session, seq), WITHOUT ROWID so the primary key is the B-tree's key and a
//! session's messages are contiguous.

use crate::store::{Mode, Record, Result, Store};
use rusqlite::Connection;
use std::path::Path;

pub struct SqliteStore {
    conn: Connection,
}

const SCHEMA: &str = "CREATE TABLE IF NOT EXISTS msg (
    session INTEGER NOT NULL,
    seq     INTEGER NOT NULL,
    payload BLOB    NOT NULL,
    PRIMARY KEY (session, seq)
) WITHOUT ROWID;";

impl SqliteStore {
    pub fn open(dir: &Path, mode: Mode) -> Result<Self> {
        let sync = match mode {
            Mode::Durable => "FULL",
            Mode::Normal => "NORMAL",
            Mode::NoSync => "OFF",
            Mode::SyncData => return Err("sqlite has no 'sync-data' mode (that is fjall's)".into()),
        };
        let conn = Connection::open(dir.join("store.sqlite"))?;
        let jm: String = conn.pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))?;
        if !jm.eq_ignore_ascii_case("wal") {
            return Err(format!("journal_mode is {jm}, not WAL").into());
        }
        conn.pragma_update(None, "synchronous", sync)?;
        conn.execute_batch(SCHEMA)?;
        Ok(Self { conn })
    }
}

fn i(v: u64) -> i64 {
    i64::try_from(v).expect("ids below 2^63")
}

impl Store for SqliteStore {
    fn append_batch(&mut self, batch: &[Record<'_>]) -> Result<()> {
        let tx = self.conn.transaction()?;
        {
            let mut st =
                tx.prepare_cached("INSERT INTO msg (session, seq, payload) VALUES (?1, ?2, ?3)")?;
            for &(s, q, p) in batch {
                st.execute((i(s), i(q), p))?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    fn delete_batch(&mut self, keys: &[(u64, u64)]) -> Result<()> {
        let tx = self.conn.transaction()?;
        {
            let mut st = tx.prepare_cached("DELETE FROM msg WHERE session = ?1 AND seq = ?2")?;
            for &(s, q) in keys {
                st.execute((i(s), i(q)))?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    fn range_read(&mut self, session: u64) -> Result<Vec<(u64, Vec<u8>)>> {
        let mut st = self
            .conn
            .prepare_cached("SELECT seq, payload FROM msg WHERE session = ?1 ORDER BY seq")?;
        let rows = st.query_map([i(session)], |r| {
            Ok((r.get::<_, i64>(0)? as u64, r.get::<_, Vec<u8>>(1)?))
        })?;
        let mut out = Vec::new();
        for r in rows {
            out.push(r?);
        }
        Ok(out)
    }

    fn flush(&mut self) -> Result<()> {
        // synchronous=OFF/NORMAL: a checkpoint syncs the WAL and the database.
        Ok(())
    }

    fn compact(&mut self) -> Result<String> {
        self.conn.execute_batch("VACUUM;")?;
        let (busy, log, ckpt): (i64, i64, i64) =
            self.conn
                .query_row("PRAGMA wal_checkpoint(TRUNCATE);", [], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?))
                })?;
        Ok(format!(
            "VACUUM + wal_checkpoint(TRUNCATE) (busy={busy} log={log} checkpointed={ckpt})"
        ))
    }

    fn close(self: Box<Self>) -> Result<()> {
        self.conn.close().map_err(|(_, e)| e)?;
        Ok(())
    }
}

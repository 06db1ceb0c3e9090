//! `bulwark-store`: where the broker's durable state lives. The engine (`bulwark-core`)
//! records every change to persistent sessions, their QoS 1/2 messages and the retained
//! messages as [`StoreOp`]s; the server commits each round's operations to a [`Store`] and
//! sends that round's acknowledgements only once the commit is durable; at start it reads the
//! store back ([`Store::load`]) and restores the engine from it.
//!
//! This crate holds the trait and its stores. It depends on `bulwark-core` for the operation
//! types and must never depend on an async runtime: the server calls it from a thread of its
//! own, where a commit may block on the disk.
#![forbid(unsafe_code)]

mod disk;
mod record;

use std::sync::{Arc, Mutex};
use std::time::Duration;

pub use bulwark_core::{Image, Restored, StoreOp};
pub use disk::{CheckReport, DiskStore, SyncPolicy};

pub(crate) use bulwark_core::persist::Sent;

/// For the fuzzer: `body` (a record without its checksum) is read as every kind of record,
/// with and without a valid checksum appended; whatever reads back must write out and read
/// back the same. Panics otherwise.
#[doc(hidden)]
pub fn check_record_bytes(body: &[u8]) {
    record::fuzz(body);
}

/// Why a store could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The disk (or the file system) failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done, naming the file.
        context: String,
        /// The error.
        source: std::io::Error,
    },
    /// What is stored does not read back: named, so that an operator knows what is damaged.
    #[error("the store is damaged: {0}")]
    Corrupt(String),
    /// Another process (another broker on the same data directory?) has the store open.
    #[error("{} is in use by another process (another broker on the same data directory?)", .0.display())]
    InUse(std::path::PathBuf),
    /// The store was written by a version of Bulwark this one cannot read.
    #[error("{0}")]
    Format(String),
}

/// Durable state: committed in batches, read back at start.
///
/// A commit applies every operation of the batch, in order, atomically: after a crash the
/// store holds all of a batch or none of it, and a commit that returned `Ok` survives the
/// crash (within what the store's sync setting promises).
pub trait Store: Send + std::fmt::Debug {
    /// Reads everything back, for `Broker::restore`.
    fn load(&mut self) -> Result<Restored, StoreError>;
    /// Applies `ops` as one atomic, durable batch.
    fn commit(&mut self, ops: &[StoreOp]) -> Result<(), StoreError>;
    /// Called when no commit came for [`Store::idle_interval`]: time for background work
    /// (a periodic sync, compaction).
    fn idle(&mut self) -> Result<(), StoreError> {
        Ok(())
    }
    /// Called after a failed commit, before it is tried again: a store that needs to, opens
    /// its file again.
    fn recover(&mut self) -> Result<(), StoreError> {
        Ok(())
    }
    /// How long without commits before [`Store::idle`]; `None`: never.
    fn idle_interval(&self) -> Option<Duration> {
        None
    }
}

/// A store in memory: lost with the process, shared by whoever holds a clone (tests restart a
/// server on the same one to stand for a restart on the same disk).
#[derive(Debug, Clone, Default)]
pub struct MemoryImageStore {
    image: Arc<Mutex<Image>>,
}

impl MemoryImageStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// The state it holds now.
    pub fn image(&self) -> Image {
        match self.image.lock() {
            Ok(image) => image.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }
}

impl Store for MemoryImageStore {
    fn load(&mut self) -> Result<Restored, StoreError> {
        Ok(self.image().restored())
    }

    fn commit(&mut self, ops: &[StoreOp]) -> Result<(), StoreError> {
        let mut image = match self.image.lock() {
            Ok(image) => image,
            Err(poisoned) => poisoned.into_inner(),
        };
        image.apply_all(ops.iter().cloned());
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests")]
mod tests {
    use super::*;

    #[test]
    fn a_shared_memory_store_reads_back_what_was_committed() {
        let mut store = MemoryImageStore::new();
        let mut again = store.clone();
        let message = Arc::new(bulwark_core::Message {
            topic: bulwark_proto::TopicName::new("r/x").unwrap(),
            payload: bytes::Bytes::from_static(b"kept"),
            qos: bulwark_proto::QoS::AtLeastOnce,
            retain: true,
            properties: Default::default(),
            expires_at: None,
            publisher: None,
        });
        store
            .commit(&[StoreOp::Retained {
                message: message.clone(),
                owner: None,
            }])
            .unwrap();
        assert_eq!(
            again.load().unwrap().retained,
            vec![(message.clone(), None)]
        );
        store
            .commit(&[StoreOp::RetainedCleared(message.topic.clone())])
            .unwrap();
        assert!(again.load().unwrap().retained.is_empty());
    }
}

//! `bulwark-audit`: the tamper-evident audit trail as data. The record format (one JSON object
//! per line, each carrying its sequence number and the SHA-256 of the record before it), the
//! hash chain a writer extends, checkpoints signed with Ed25519, and the verifier that reads
//! segments back and says precisely what was changed, deleted, inserted, reordered or cut.
//!
//! The format is specified in `docs/audit.md`, so that others can write verifiers. The crate
//! reads and writes bytes only: files, queues and clocks belong to the server and the CLI. It
//! must never depend on tokio or on the broker's crates.
#![forbid(unsafe_code)]

pub mod key;
pub mod record;
pub mod verify;

pub use key::{AuditKey, KeyError, PublicKey};
pub use record::{Chain, Hash, Head};
pub use verify::{Finding, FindingKind, Report, Segment, Severity, Verifier};

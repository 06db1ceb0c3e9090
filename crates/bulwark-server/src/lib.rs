//! `bulwark-server`: the tokio glue around the engine. TCP listeners, one driver task per
//! connection (read, decode, encode, write, keep alive), one router task that owns the
//! [`bulwark_core::Broker`], and an orderly shutdown.
//!
//! Protocol decisions live in `bulwark-proto` (bytes) and `bulwark-core` (behaviour); this
//! crate only moves bytes and packets between sockets and the engine, and must never grow
//! protocol logic of its own.
#![forbid(unsafe_code)]

mod config;
mod driver;
mod outbox;
mod router;
mod server;
pub mod tls;
mod transport;

pub use config::{ConfigError, ListenerConfig, ListenerKind, ServerConfig};
pub use server::{Server, ServerError};

//! `bulwark-server`: the tokio glue around the engine. TCP, TLS, WebSocket and WSS listeners
//! (optionally behind a PROXY-protocol load balancer), one driver task per
//! connection (read, decode, encode, write, keep alive), one router task that owns the
//! [`bulwark_core::Broker`], and an orderly shutdown.
//!
//! Protocol decisions live in `bulwark-proto` (bytes) and `bulwark-core` (behaviour); this
//! crate only moves bytes and packets between sockets and the engine, and must never grow
//! protocol logic in its async code. The one exchange the engine does not see, the login
//! (authenticator chain, SCRAM, JWT, re-authentication, refusals), is a sans-IO state machine
//! of its own (`handshake`), which the driver feeds and whose requests `login` answers.
#![forbid(unsafe_code)]

pub mod acl;
mod admin;
pub mod audit;
pub mod auth;
pub mod bans;
mod config;
mod detect;
mod driver;
mod durable;
pub mod files;
mod gate;
mod handshake;
pub(crate) mod jwks;
mod login;
mod memory;
mod outbox;
pub(crate) mod proxy;
mod router;
mod server;
mod sync;
pub mod tls;
mod transport;
pub(crate) mod ws;

pub use audit::{AuditFormat, AuditSettings};
pub use auth::{AuthSettings, Authenticator, JwtAuthSettings};
pub use config::{
    AclSettings, AdminSettings, ConfigError, ListenerConfig, ListenerKind, ServerConfig,
    StorageSettings,
};
pub use proxy::TrustedProxies;
pub use server::{Server, ServerError};
pub use ws::WsOptions;

//! `bulwark-auth`: who a client is, as pure evaluation over data. The password store (argon2id,
//! imported Mosquitto hashes, generated passwords) and its password policy, MQTT 5 enhanced
//! authentication (SCRAM-SHA-256/512), JWT verification, the credential cache, the login guard
//! (failed-login backoff and bans), and the admin HTTP API's tokens and roles ([`token`]).
//! [`lenient`] reads TOML files so that every problem is reported at once; the password store
//! and the broker's configuration file use it.
//!
//! No I/O, no sockets, no clock: callers read files and pass time in. Must never depend on
//! tokio or on `bulwark-server`; the engine must never depend on this crate (its crypto stays
//! out of `bulwark-core`).
#![forbid(unsafe_code)]

pub mod cache;
pub mod guard;
pub mod jwt;
pub mod lenient;
pub mod password;
pub mod policy;
pub mod scram;
pub mod token;

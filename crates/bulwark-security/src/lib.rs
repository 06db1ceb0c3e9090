//! `bulwark-security`: the broker's security decisions as pure evaluation over data.
//! Credentials (the password store, password policy, imported Mosquitto hashes) and MQTT 5
//! enhanced authentication (SCRAM) now; ACL rules, limits and bans as they land.
//!
//! No I/O, no sockets, no clock: callers read files and pass time in. Must never depend on
//! tokio or on `bulwark-server`.
#![forbid(unsafe_code)]

pub mod cache;
pub mod event;
pub mod guard;
pub mod jwt;
pub mod password;
pub mod policy;
pub mod scram;

//! `bulwark-security`: the broker's security decisions as pure evaluation over data.
//! Credentials (the password store, password policy, imported Mosquitto hashes) and MQTT 5
//! enhanced authentication (SCRAM), JWT verification, login backoff and bans, and authorization
//! (ACL rules, templates, decisions); limits as they land.
//!
//! No I/O, no sockets, no clock: callers read files and pass time in. Must never depend on
//! tokio or on `bulwark-server`.
#![forbid(unsafe_code)]

pub mod acl;
pub mod admission;
pub mod ban;
pub mod cache;
pub mod event;
pub mod guard;
pub mod jwt;
pub mod password;
pub mod policy;
pub mod rate;
pub mod scram;

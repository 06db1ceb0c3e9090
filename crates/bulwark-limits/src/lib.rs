//! `bulwark-limits`: how much a source or a client may do, as pure evaluation over data with
//! `now` passed in. Admission control at accept (connections and handshakes per address and
//! network, connection rates with cooling off), per-client message and byte rates, and the ban
//! list (addresses, usernames, client ids, a user's use of a client id).
//!
//! No I/O, no sockets, no clock. Must never depend on tokio, on `bulwark-server`, or on
//! credential crypto.
#![forbid(unsafe_code)]

pub mod admission;
pub mod ban;
pub mod detect;
pub mod rate;

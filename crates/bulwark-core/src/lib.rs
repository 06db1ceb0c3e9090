//! `bulwark-core`: the broker engine. Sessions, the subscription index, retained messages,
//! wills, shared subscriptions, QoS 1 and 2 exchanges and delivery queues, driven by decoded
//! packets and by `now`.
//!
//! The engine is sans I/O: it reads no clock (time is an argument), owns no socket and
//! spawns no task, so a test can drive it packet by packet with a controlled clock. It
//! depends on `bulwark-proto`, `bulwark-acl` (authorization decisions) and `bytes` only, and
//! must never depend on an async runtime or on credential crypto (`bulwark-auth`).
#![forbid(unsafe_code)]

mod authz;
mod broker;
mod clients;
mod config;
mod connect;
pub mod index;
mod keepalive;
mod message;
mod output;
mod parked;
pub mod persist;
mod quota;
mod retained;
mod routing;
mod session;
mod stats;
mod subscription;
mod wills;

pub use authz::AuthzEvent;
pub use broker::{
    AclPreviewStep, Broker, DeleteSession, QueueTotals, RetainedSummary, Revocation,
    SessionSummary, SessionView, SubscriptionEntry,
};
pub use clients::{ConnectionId, SessionKey};
pub use config::{
    BrokerConfig, DeniedPublish, PacketLimits, RetainedLimits, SessionLimits, UserQuotas,
};
pub use connect::ConnectAuth;
pub use keepalive::KeepAlive;
pub use message::{Delivery, GroupKey, Inflight, Message, OutState};
pub use output::{Accepted, OutgoingPublish, Output};
pub use persist::{Image, Journal, Restored, RestoredSession, SessionRecord, StoreOp, WillRecord};
pub use session::{QueueFull, QueueLimits, QueuePolicy, Session};
pub use stats::{ByteCounts, ConnectionCounts, DenialCounts, DropCounts, MessageCounts, Stats};
pub use subscription::SubscriptionRecord;

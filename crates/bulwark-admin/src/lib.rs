//! Bulwark's operations plane over HTTP: the versioned admin API (`/api/v1`, JSON, described
//! by an OpenAPI document it serves), Prometheus metrics (`/metrics`), API-token
//! authentication with roles, and the hardening every answer carries.
//!
//! It knows the broker only through [`Backend`], which the server implements: no engine,
//! store or socket type of the MQTT side appears here, and nothing here can block the MQTT
//! path (the server answers each call with bounded work). It must never depend on
//! `bulwark-server`.

#![forbid(unsafe_code)]

pub mod api;
pub mod backend;
pub mod error;
pub mod metrics;
pub mod serve;
pub mod session;
pub mod ui;

pub use backend::Backend;
pub use serve::{TlsConfig, serve};

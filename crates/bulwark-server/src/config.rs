//! The server's typed settings, checked as a whole before anything binds.

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use bulwark_core::BrokerConfig;
use bulwark_proto::DecoderLimits;

/// One listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerConfig {
    /// A name for logs (default `tcp-{index}`).
    pub name: String,
    /// Address and port to bind; port 0 picks a free one.
    pub bind: SocketAddr,
}

/// Everything `Server::bind` needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerConfig {
    /// Listeners, at least one.
    pub listeners: Vec<ListenerConfig>,
    /// The engine's settings.
    pub broker: BrokerConfig,
    /// Packet size limits of every connection's decoder.
    pub decoder: DecoderLimits,
    /// A socket that has not delivered a complete CONNECT within this is closed.
    pub connect_timeout: Duration,
    /// A write that does not complete within this (the client stopped reading) closes the
    /// connection.
    pub write_timeout: Duration,
    /// How long shutdown waits for connections to flush before giving up on them.
    pub shutdown_grace: Duration,
    /// Runtime worker threads; 0 means one per core the process may run on. With one, the
    /// whole broker runs on a single thread (no cross-thread wake-ups: lowest latency).
    pub workers: usize,
}

impl ServerConfig {
    /// The number of worker threads `workers` stands for.
    pub fn worker_threads(&self) -> usize {
        match self.workers {
            0 => std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get),
            n => n,
        }
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listeners: vec![ListenerConfig {
                name: "tcp-0".into(),
                bind: SocketAddr::from(([127, 0, 0, 1], 1883)),
            }],
            broker: BrokerConfig::default(),
            decoder: DecoderLimits::default(),
            connect_timeout: Duration::from_secs(10),
            write_timeout: Duration::from_secs(60),
            shutdown_grace: Duration::from_secs(5),
            workers: 0,
        }
    }
}

/// Every problem found in a configuration, reported together.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// One line per problem, each naming the key.
    pub problems: Vec<String>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.problems.len();
        write!(
            f,
            "{n} configuration error{}:",
            if n == 1 { "" } else { "s" }
        )?;
        for problem in &self.problems {
            write!(f, "\n  - {problem}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

impl ServerConfig {
    /// Checks rules that span fields. Authentication has not landed yet, so a listener on a
    /// non-loopback address would be an open broker: it is refused.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut problems = Vec::new();
        if self.listeners.is_empty() {
            problems.push("listener: at least one listener is needed".to_owned());
        }
        for (i, listener) in self.listeners.iter().enumerate() {
            if !listener.bind.ip().is_loopback() {
                problems.push(format!(
                    "listener[{i}].bind = \"{}\": only loopback addresses may be bound until \
                     authentication is available (clients would connect anonymously)",
                    listener.bind
                ));
            }
        }
        if self.decoder.max_unauthenticated_packet_size > self.decoder.max_packet_size {
            problems.push(
                "limits.max_unauthenticated_packet_size must not exceed limits.max_packet_size"
                    .to_owned(),
            );
        }
        if self.broker.max_packet_size != self.decoder.max_packet_size {
            problems.push(
                "broker and decoder disagree on max_packet_size (set it once, in [limits])"
                    .to_owned(),
            );
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(ConfigError { problems })
        }
    }
}

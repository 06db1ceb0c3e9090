//! `bulwark-bench`: the load generator behind `bulwark bench`, for any MQTT broker (Bulwark,
//! Mosquitto, rumqttd, ...).
//!
//! Scenarios ([`Scenario`]): `conn` (many idle connections: connect rate, connect latency,
//! broker memory per connection), `churn` (connect/disconnect loops), `fan-in` (N publishers to
//! one wildcard subscriber), `pairs` (N publisher/subscriber pairs), `fan-out` (one publisher
//! to N subscribers), `latency` (pairs at a fixed rate) and `flood` (`latency` undisturbed, then
//! under a slowloris and a connection flood from another source address). Each publication carries its send
//! time and sequence number in its payload ([`payload`]), so subscribers measure end-to-end
//! latency into an HDR histogram and count loss and duplicates per publisher. An end-to-end
//! [`window`] bounds the publications in flight, so the broker's queues stay bounded and
//! throughput is what the broker sustains, not how fast queues grow. The broker's and the
//! loader's CPU use come from `/proc` ([`procfs`]), so a run limited by the loader shows.
//!
//! The library entry point is [`run_scenario`], which returns a [`Report`]; the command line
//! ([`BenchArgs`], [`run`]) wraps it and prints a table or JSON.
//!
//! This crate speaks MQTT only through `bulwark-proto`, the client side of the codec the broker
//! uses. It must never depend on the broker's internals (`bulwark-core`, `bulwark-server`,
//! outside tests): it measures brokers from the outside, the same way for every broker.
//!
//! Each connection is one tokio task that reads and writes (no task per direction), encodes
//! every ready packet into one buffer and writes it with one call, so that the loader itself
//! pushes several hundred thousand messages per second on two cores.
#![forbid(unsafe_code)]

mod client;
mod conn;
mod flood;
mod options;
pub mod payload;
pub mod procfs;
mod procs;
mod pubsub;
pub mod stats;
pub mod track;
pub mod window;

use std::process::ExitCode;

use bulwark_proto::{DecodeError, ReasonCode};

pub use options::{
    AttackArgs, AttackOptions, BenchArgs, BenchOptions, ConnectArgs, ConnectOptions,
    DEFAULT_FAN_OUT_DELIVERIES, DEFAULT_FLOOD_RATE, DEFAULT_INFLIGHT, DEFAULT_SLOWLORIS,
    DEFAULT_WINDOW, LoadArgs, LoadOptions, OutputArgs, Protocol, Scenario,
};
pub use stats::{
    AttackStats, ConnectStats, CpuStats, FloodStats, Latency, MemoryStats, MessageStats, Report,
    RunSetup,
};

/// Why a run could not be made or finished.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// The options are inconsistent.
    #[error("invalid options: {0}")]
    Options(String),
    /// A socket operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The error.
        source: std::io::Error,
    },
    /// TLS configuration or handshake.
    #[error("TLS: {0}")]
    Tls(String),
    /// A client could not be set up (bad client id, topic, user name).
    #[error("set-up: {0}")]
    Setup(String),
    /// The broker refused a CONNECT or SUBSCRIBE, or lacks a needed capability.
    #[error("refused by the broker: {0}")]
    Refused(String),
    /// The broker sent something the codec rejects.
    #[error("protocol error from the broker: {0}")]
    Decode(#[from] DecodeError),
    /// The broker sent something unexpected.
    #[error("protocol: {0}")]
    Protocol(String),
    /// The broker sent DISCONNECT.
    #[error("the broker disconnected with {0}")]
    Disconnected(ReasonCode),
    /// The broker closed the connection.
    #[error("the broker closed the connection while waiting for {0}")]
    Closed(&'static str),
    /// Something took too long.
    #[error("timed out: {0}")]
    Timeout(&'static str),
    /// A task of the run failed to finish.
    #[error("internal: {0}")]
    Internal(String),
}

impl BenchError {
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Self::Io {
            context: context.into(),
            source,
        }
    }
}

/// Runs one scenario against a broker and measures it.
///
/// Must be called inside a multi-threaded tokio runtime (the load spreads over its workers).
/// Errors are set-up failures (no connection could be made, a subscription was refused);
/// connections that fail during the run are counted in [`Report::errors`].
pub async fn run_scenario(options: &BenchOptions) -> Result<Report, BenchError> {
    options.validate()?;
    match options.scenario {
        Scenario::Conn => conn::run_conn(options).await,
        Scenario::Churn => conn::run_churn(options).await,
        Scenario::Flood => flood::run_flood(options).await,
        Scenario::FanIn | Scenario::Pairs | Scenario::FanOut | Scenario::Latency => {
            pubsub::run(options).await
        }
    }
}

/// `bulwark bench`: runs the scenario on a new multi-threaded runtime and prints the report
/// (a table, or JSON with `--json`) on standard output. Exit status 0 when the run completed,
/// 1 when it could not be made, 2 for invalid options.
pub fn run(args: BenchArgs) -> ExitCode {
    let options = match BenchOptions::try_from(&args) {
        Ok(options) => options,
        Err(err) => {
            eprintln!("error: {err}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("error: cannot start the runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    let result = if options.scenario == Scenario::Churn && options.load.procs > 1 {
        procs::run_churn_procs(&options)
    } else {
        runtime.block_on(run_scenario(&options))
    };
    match result {
        Ok(report) => {
            let text = if args.output.json {
                format!("{}\n", report.to_json())
            } else {
                report.to_table()
            };
            // A reader that went away (`bench ... | head`) is not worth a panic.
            let mut stdout = std::io::stdout().lock();
            match std::io::Write::write_all(&mut stdout, text.as_bytes())
                .and_then(|()| std::io::Write::flush(&mut stdout))
            {
                Ok(()) => ExitCode::SUCCESS,
                Err(err) => {
                    eprintln!("error: cannot write the report: {err}");
                    ExitCode::FAILURE
                }
            }
        }
        Err(err) => {
            eprintln!("error: {err}");
            ExitCode::FAILURE
        }
    }
}

/// A random suffix for client ids, so that runs against one broker do not take over each
/// other's sessions. `RandomState` is seeded from the OS once per process and per call
/// differently, which is all the randomness an id needs.
pub(crate) fn random_suffix() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default(),
    );
    format!("{:08x}", hasher.finish() as u32)
}

/// `bench-{scenario}-{role}-{i}-{random}`.
pub(crate) fn client_id(scenario: Scenario, role: &str, index: usize, random: &str) -> String {
    format!("bench-{}-{role}-{index}-{random}", scenario.name())
}

/// Records connection failures during a run: how many, and the first message.
#[derive(Debug, Default)]
pub(crate) struct ErrorLog {
    inner: std::sync::Mutex<(u64, Option<String>)>,
}

impl ErrorLog {
    pub(crate) fn record(&self, err: &BenchError) {
        let mut guard = match self.inner.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        guard.0 += 1;
        if guard.1.is_none() {
            guard.1 = Some(err.to_string());
        }
    }

    pub(crate) fn take(&self) -> (u64, Option<String>) {
        let mut guard = match self.inner.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        (guard.0, guard.1.take())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_ids() {
        let random = random_suffix();
        assert_eq!(random.len(), 8);
        assert_eq!(
            client_id(Scenario::FanIn, "pub", 7, "abcd0123"),
            "bench-fan-in-pub-7-abcd0123"
        );
    }

    #[test]
    fn error_log_keeps_the_first() {
        let log = ErrorLog::default();
        log.record(&BenchError::Timeout("a"));
        log.record(&BenchError::Timeout("b"));
        assert_eq!(log.take(), (2, Some("timed out: a".to_owned())));
    }
}

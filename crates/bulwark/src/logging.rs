//! Logging setup for `bulwark serve`: text or JSON lines on standard error, and what is not
//! worth a line.

use std::fmt;

use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::Layer;
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Format {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Installs the global subscriber: `RUST_LOG` if set, else `level`, else `info`.
pub(crate) fn init(format: Format, level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(level))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colours only on a terminal: not in files, pipes or journald.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let registry = tracing_subscriber::registry()
        .with(filter)
        .with(QuietNotices);
    let _ = match format {
        Format::Text => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .with_ansi(ansi)
                    .with_writer(std::io::stderr),
            )
            .try_init(),
        Format::Json => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_writer(std::io::stderr),
            )
            .try_init(),
    };
}

/// Warnings from libraries about what is normal for a broker, dropped before any output.
///
/// rustls warns "Illegal SNI extension: ignoring IP address presented as hostname" for every
/// client that connects by IP address and sends it as SNI (Mosquitto's clients do). The
/// handshake goes on as it should (an IP address is not a server name, RFC 6066 §3), so it is
/// not a warning here; rustls's other warnings, SNI ones included, are kept.
const QUIET: &[(&str, &str)] = &[(
    "rustls",
    "Illegal SNI extension: ignoring IP address presented as hostname",
)];

/// The layer that drops the [`QUIET`] events.
struct QuietNotices;

impl<S: Subscriber> Layer<S> for QuietNotices {
    fn event_enabled(&self, event: &Event<'_>, _ctx: Context<'_, S>) -> bool {
        !is_quiet(event)
    }
}

fn is_quiet(event: &Event<'_>) -> bool {
    let mut fields = Fields::default();
    event.record(&mut fields);
    // Events forwarded from the `log` crate name their origin in a field.
    let target = fields
        .log_target
        .as_deref()
        .unwrap_or(event.metadata().target());
    QUIET.iter().any(|(crate_name, prefix)| {
        (target == *crate_name || target.starts_with(&format!("{crate_name}::")))
            && fields.message.starts_with(prefix)
    })
}

/// The message and, for events from the `log` crate, the target of an event.
#[derive(Default)]
struct Fields {
    message: String,
    log_target: Option<String>,
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        match field.name() {
            "message" => value.clone_into(&mut self.message),
            "log.target" => self.log_target = Some(value.to_owned()),
            _ => {}
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        match field.name() {
            "message" => self.message = format!("{value:?}"),
            "log.target" => self.log_target = Some(format!("{value:?}")),
            _ => {}
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests")]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    /// Records the message of every event that reaches it.
    #[derive(Clone, Default)]
    struct Seen(Arc<Mutex<Vec<String>>>);

    impl<S: Subscriber> Layer<S> for Seen {
        fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
            let mut fields = Fields::default();
            event.record(&mut fields);
            self.0.lock().unwrap().push(fields.message);
        }
    }

    #[test]
    fn the_sni_ip_address_notice_is_dropped_and_other_rustls_warnings_are_kept() {
        let seen = Seen::default();
        let subscriber = tracing_subscriber::registry()
            .with(QuietNotices)
            .with(seen.clone());
        tracing::subscriber::with_default(subscriber, || {
            tracing::warn!(
                target: "rustls::msgs::handshake",
                "Illegal SNI extension: ignoring IP address presented as hostname (\"127.0.0.1\")"
            );
            tracing::warn!(
                target: "rustls::msgs::handshake",
                "Illegal SNI extension: duplicate host_name received"
            );
            tracing::warn!(
                target: "bulwark_server",
                "Illegal SNI extension: ignoring IP address presented as hostname, from elsewhere"
            );
        });
        let seen = seen.0.lock().unwrap();
        assert_eq!(
            *seen,
            vec![
                "Illegal SNI extension: duplicate host_name received".to_owned(),
                "Illegal SNI extension: ignoring IP address presented as hostname, from elsewhere"
                    .to_owned(),
            ]
        );
    }
}

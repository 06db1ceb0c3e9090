//! Latency histograms, the report, and its two renderings (a table for people, JSON for
//! scripts).

use std::fmt::Write as _;
use std::sync::Mutex;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::Scenario;

/// Highest latency the histograms resolve: 100 s in nanoseconds. Larger samples are counted
/// at this value.
const MAX_TRACKABLE_NS: u64 = 100_000_000_000;

/// Samples a task collects before taking the shared histogram's lock.
const LOCAL_SAMPLES: usize = 1024;

/// A histogram of nanosecond latencies shared by many tasks, each recording through its own
/// [`LocalSamples`] so the lock is taken once per thousand samples, not once per message.
#[derive(Debug)]
pub struct SharedHistogram {
    inner: Mutex<Option<Histogram<u64>>>,
}

impl Default for SharedHistogram {
    fn default() -> Self {
        Self::new()
    }
}

impl SharedHistogram {
    /// An empty histogram from 1 ns to 100 s, three significant digits (about 220 KiB).
    pub fn new() -> Self {
        Self {
            inner: Mutex::new(Histogram::new_with_bounds(1, MAX_TRACKABLE_NS, 3).ok()),
        }
    }

    /// Adds a batch of samples.
    pub fn record_all(&self, samples: &[u64]) {
        let mut guard = match self.inner.lock() {
            Ok(guard) => guard,
            // A task that panicked while holding the lock left whole samples behind: the
            // histogram is still usable.
            Err(poisoned) => poisoned.into_inner(),
        };
        if let Some(hist) = guard.as_mut() {
            for &ns in samples {
                hist.saturating_record(ns.max(1));
            }
        }
    }

    /// The percentiles so far, or `None` with no samples.
    pub fn summary(&self) -> Option<Latency> {
        let guard = match self.inner.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        guard.as_ref().and_then(Latency::from_histogram)
    }
}

/// A task's buffer of samples for a [`SharedHistogram`].
#[derive(Debug, Default)]
pub struct LocalSamples {
    samples: Vec<u64>,
}

impl LocalSamples {
    /// Adds one sample, flushing to `shared` when the buffer is full.
    pub fn push(&mut self, ns: u64, shared: &SharedHistogram) {
        self.samples.push(ns);
        if self.samples.len() >= LOCAL_SAMPLES {
            self.flush(shared);
        }
    }

    /// Moves every buffered sample into `shared`.
    pub fn flush(&mut self, shared: &SharedHistogram) {
        if !self.samples.is_empty() {
            shared.record_all(&self.samples);
            self.samples.clear();
        }
    }
}

/// Latency percentiles, in microseconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Latency {
    /// Samples.
    pub count: u64,
    /// Mean.
    pub mean_us: f64,
    /// Median.
    pub p50_us: f64,
    /// 99th percentile.
    pub p99_us: f64,
    /// 99.9th percentile.
    pub p999_us: f64,
    /// Largest sample.
    pub max_us: f64,
}

impl Latency {
    /// "p50 … µs, p99 … µs, p99.9 … µs, max … µs", for the table.
    pub fn percentiles(&self) -> String {
        format!(
            "p50 {} µs, p99 {} µs, p99.9 {} µs, max {} µs",
            micros(self.p50_us),
            micros(self.p99_us),
            micros(self.p999_us),
            micros(self.max_us)
        )
    }

    /// The summary of a nanosecond histogram, or `None` if it is empty.
    pub fn from_histogram(hist: &Histogram<u64>) -> Option<Self> {
        if hist.is_empty() {
            return None;
        }
        let us = |ns: u64| ns as f64 / 1000.0;
        Some(Self {
            count: hist.len(),
            mean_us: hist.mean() / 1000.0,
            p50_us: us(hist.value_at_quantile(0.50)),
            p99_us: us(hist.value_at_quantile(0.99)),
            p999_us: us(hist.value_at_quantile(0.999)),
            max_us: us(hist.max()),
        })
    }
}

/// Connection set-up figures (conn and churn).
#[derive(Debug, Clone, Serialize)]
pub struct ConnectStats {
    /// Connections that got a successful CONNACK (churn: in the measured interval).
    pub connected: u64,
    /// Attempts that failed (refused, timed out, I/O error).
    pub failed: u64,
    /// Successful connections per second: conn, over the time to open them all; churn,
    /// complete CONNECT/CONNACK/DISCONNECT/close cycles over the measured interval.
    pub per_second: f64,
    /// CONNECT written to CONNACK read.
    pub latency: Option<Latency>,
    /// Conn: seconds from the first connect to the last CONNACK.
    pub elapsed_s: Option<f64>,
}

/// The broker's memory, from `/proc/PID/status` (conn with `--broker-pid`).
#[derive(Debug, Clone, Serialize)]
pub struct MemoryStats {
    /// VmRSS before the first connection, KiB.
    pub rss_before_kib: u64,
    /// VmRSS with every connection open, KiB.
    pub rss_after_kib: u64,
    /// (after − before) / connections, bytes.
    pub per_connection_bytes: f64,
}

/// What the flood's attacker did, and what the broker made of it.
#[derive(Debug, Clone, Default, Serialize)]
pub struct AttackStats {
    /// The attack's local address.
    pub source: String,
    /// Seconds the attack ran (from its start to the end of the measured run).
    pub duration_s: f64,
    /// Slowloris sockets the attacker tries to hold open.
    pub slowloris_target: usize,
    /// Slowloris connections the broker accepted at the TCP level.
    pub slowloris_opened: u64,
    /// Of those, closed by the broker (refused at once, or timed out).
    pub slowloris_closed: u64,
    /// Slowloris connects that failed: refused, or reset by the broker before the connect
    /// completed (a broker that refuses at accept with a reset).
    pub slowloris_failed: u64,
    /// Slowloris sockets still open when the attack stopped.
    pub slowloris_open_at_end: u64,
    /// The slowest the broker was to close a slowloris socket, seconds (0 when it closed none).
    pub slowloris_longest_s: f64,
    /// New connections per second the flood aimed at.
    pub flood_rate: u64,
    /// Flood connections attempted.
    pub flood_attempts: u64,
    /// Of those, answered with a successful CONNACK.
    pub flood_accepted: u64,
    /// Of those, refused: closed or reset before a CONNACK, a CONNACK with an error, or a
    /// failed connect or TLS handshake.
    pub flood_refused: u64,
    /// Attempts not made because 1,000 were already waiting for the broker.
    pub flood_skipped: u64,
}

/// The flood scenario's comparison: the clients undisturbed, and the attack that ran while
/// they were measured again (the report's own figures).
#[derive(Debug, Clone, Serialize)]
pub struct FloodStats {
    /// Latency of the same clients without the attack.
    pub baseline_latency: Option<Latency>,
    /// Deliveries per second without the attack.
    pub baseline_received_per_s: f64,
    /// Deliveries expected and not received without the attack.
    pub baseline_lost: u64,
    /// The attack.
    pub attack: AttackStats,
    /// p99 under attack / p99 undisturbed.
    pub p99_ratio: Option<f64>,
}

/// Everything one run measured. Its JSON is one flat object: the groups below
/// ([`RunSetup`], [`MessageStats`], [`CpuStats`]) add their fields to it, not objects of
/// their own.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// What was run, against what.
    #[serde(flatten)]
    pub setup: RunSetup,
    /// Publications and deliveries in the measured interval.
    #[serde(flatten)]
    pub messages: MessageStats,
    /// Send timestamp to receipt, for deliveries in the measured interval.
    pub latency: Option<Latency>,
    /// Connection set-up (conn, churn).
    pub connect: Option<ConnectStats>,
    /// Broker memory (conn with `--broker-pid`).
    pub memory: Option<MemoryStats>,
    /// CPU use of the broker and of the load generator.
    #[serde(flatten)]
    pub cpu: CpuStats,
    /// Connections that failed during the run.
    pub errors: u64,
    /// The first of those failures.
    pub first_error: Option<String>,
    /// Flood: the undisturbed run and the attack; the other figures are those under attack.
    pub flood: Option<FloodStats>,
}

/// What a run was: the scenario, the broker, the clients and the timing.
#[derive(Debug, Clone, Serialize)]
pub struct RunSetup {
    /// The scenario.
    pub scenario: Scenario,
    /// `host:port`.
    pub broker: String,
    /// Whether the connections used TLS.
    pub tls: bool,
    /// MQTT version, e.g. "3.1.1".
    pub protocol: String,
    /// QoS of publications and subscriptions.
    pub qos: u8,
    /// Payload bytes.
    pub payload_bytes: usize,
    /// Connections the scenario opened (churn: workers).
    pub connections: usize,
    /// Publishing connections.
    pub publishers: usize,
    /// Subscribing connections.
    pub subscribers: usize,
    /// Window, in publications (0 where the scenario publishes nothing).
    pub window: u64,
    /// Total publish rate limit, if any.
    pub rate_limit: Option<u64>,
    /// Publishers wrote up to 256 PUBLISHes per write (`--batched`); `false`: one write per
    /// PUBLISH, as devices do.
    pub batched: bool,
    /// Load generator processes whose figures were added up (churn with `--procs`).
    pub loader_processes: usize,
    /// Seconds not measured at the start.
    pub warmup_s: f64,
    /// Seconds measured.
    pub measured_s: f64,
}

/// Publications and deliveries in the measured interval (all 0 for conn and churn).
#[derive(Debug, Clone, Default, Serialize)]
pub struct MessageStats {
    /// Publications sent in the measured interval.
    pub published: u64,
    /// Of those, deliveries expected: published × subscribers of each publication.
    pub expected: u64,
    /// Of those, deliveries received (each once).
    pub received: u64,
    /// Publications per second.
    pub published_per_s: f64,
    /// Deliveries per second (fan-out: messages × subscribers).
    pub received_per_s: f64,
    /// Expected − received, after the drain.
    pub lost: u64,
    /// Deliveries of a sequence number already received.
    pub duplicates: u64,
    /// Deliveries that arrived after a later message of the same publisher (MQTT §4.6: a
    /// server delivers one client's messages on a topic, at one QoS, in the order received).
    pub reordered: u64,
    /// Times the window was forced open after 2 s without room (messages taken as lost).
    pub window_resets: u64,
    /// QoS 1/2 publications still unacknowledged when the connections closed.
    pub unacked: u64,
}

/// CPU use over the measured interval (conn: the whole run), % of one core.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct CpuStats {
    /// The broker's (with `--broker-pid`).
    pub broker_cpu_percent: Option<f64>,
    /// The load generator's own: near 100 × cores means the loader, not the broker, set the
    /// pace.
    pub loader_cpu_percent: Option<f64>,
}

impl Report {
    /// One JSON object.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_else(|err| format!("{{\"error\":\"{err}\"}}"))
    }

    /// A table for people.
    pub fn to_table(&self) -> String {
        let mut rows: Vec<(String, String)> = Vec::new();
        let mut row = |k: &str, v: String| rows.push((k.to_owned(), v));
        let (s, m) = (&self.setup, &self.messages);
        let connections_only = matches!(s.scenario, Scenario::Conn | Scenario::Churn);
        let tls = if s.tls { " over TLS" } else { "" };
        let what = if connections_only {
            format!("MQTT {}", s.protocol)
        } else {
            format!(
                "MQTT {}, QoS {}, payload {} B",
                s.protocol, s.qos, s.payload_bytes
            )
        };
        row(
            "scenario",
            format!("{} against {}{tls} ({what})", s.scenario.name(), s.broker),
        );
        match s.scenario {
            Scenario::Conn | Scenario::Churn => {
                row("connections", thousands(s.connections as u64));
                if s.loader_processes > 1 {
                    row(
                        "loader",
                        format!(
                            "{} processes, figures added up (latency percentiles: the highest)",
                            s.loader_processes
                        ),
                    );
                }
            }
            _ => row(
                "clients",
                format!(
                    "{}, {}, window {}{}",
                    count(s.publishers, "publisher"),
                    count(s.subscribers, "subscriber"),
                    thousands(s.window),
                    s.rate_limit
                        .map(|r| format!(", rate {} msg/s", thousands(r)))
                        .unwrap_or_default()
                ),
            ),
        }
        if !connections_only && s.publishers > 0 {
            row(
                "writes",
                if s.batched {
                    "batched: up to 256 PUBLISHes per write (not device-like)"
                } else {
                    "one per PUBLISH, as devices write"
                }
                .to_owned(),
            );
        }
        if s.scenario == Scenario::Conn {
            row("held", format!("{:.1} s", s.measured_s));
        } else {
            row(
                "measured",
                format!("{:.1} s after {:.1} s warm-up", s.measured_s, s.warmup_s),
            );
        }
        if let Some(c) = &self.connect {
            let label = if s.scenario == Scenario::Churn {
                "connect/disconnect"
            } else {
                "connect rate"
            };
            row(label, format!("{} conn/s", rate(c.per_second)));
            row(
                "connected",
                format!(
                    "{} ok, {} failed",
                    thousands(c.connected),
                    thousands(c.failed)
                ),
            );
            if let Some(l) = &c.latency {
                row(
                    "connect latency",
                    format!(
                        "p50 {} µs, p99 {} µs, max {} µs",
                        micros(l.p50_us),
                        micros(l.p99_us),
                        micros(l.max_us)
                    ),
                );
            }
        }
        if let Some(mem) = &self.memory {
            row(
                "broker memory",
                format!(
                    "{} B per connection (RSS {} → {} KiB)",
                    thousands(mem.per_connection_bytes.max(0.0).round() as u64),
                    thousands(mem.rss_before_kib),
                    thousands(mem.rss_after_kib)
                ),
            );
        }
        if !connections_only {
            row(
                "published",
                format!(
                    "{} msg/s ({})",
                    rate(m.published_per_s),
                    thousands(m.published)
                ),
            );
            let label = if s.scenario == Scenario::FanOut {
                "deliveries"
            } else {
                "received"
            };
            row(
                label,
                format!(
                    "{} msg/s ({})",
                    rate(m.received_per_s),
                    thousands(m.received)
                ),
            );
            if let Some(l) = &self.latency {
                row("latency", l.percentiles());
            }
            row(
                "lost / dup / reordered",
                format!(
                    "{} / {} / {}{}",
                    thousands(m.lost),
                    thousands(m.duplicates),
                    thousands(m.reordered),
                    if m.window_resets > 0 {
                        format!(" (window reset {} times)", m.window_resets)
                    } else {
                        String::new()
                    }
                ),
            );
            if m.unacked > 0 {
                row("unacknowledged", thousands(m.unacked));
            }
        }
        if let Some(f) = &self.flood {
            flood_rows(f, &mut row);
        }
        if let Some(cpu) = self.cpu.broker_cpu_percent {
            row("broker CPU", format!("{cpu:.0} %"));
        }
        if let Some(cpu) = self.cpu.loader_cpu_percent {
            row("loader CPU", format!("{cpu:.0} %"));
        }
        if self.errors > 0 {
            row(
                "errors",
                format!(
                    "{} ({})",
                    thousands(self.errors),
                    self.first_error.as_deref().unwrap_or("")
                ),
            );
        }
        let width = rows
            .iter()
            .map(|(k, _)| k.chars().count())
            .max()
            .unwrap_or(0);
        let mut out = String::new();
        for (k, v) in rows {
            let _ = writeln!(out, "{k:<width$}  {v}");
        }
        out
    }
}

/// The flood's rows: the undisturbed latency, the ratio, and what the attack did.
fn flood_rows(f: &FloodStats, row: &mut impl FnMut(&str, String)) {
    if let Some(l) = &f.baseline_latency {
        row("undisturbed latency", l.percentiles());
    }
    row(
        "undisturbed received",
        format!(
            "{} msg/s, {} lost",
            rate(f.baseline_received_per_s),
            thousands(f.baseline_lost)
        ),
    );
    if let Some(ratio) = f.p99_ratio {
        row("p99 attack / undisturbed", format!("{ratio:.2}x"));
    }
    let a = &f.attack;
    row(
        "attack",
        format!("from {} for {:.1} s", a.source, a.duration_s),
    );
    if a.slowloris_target > 0 {
        row(
            "slowloris",
            format!(
                "{} sockets: {} opened, {} closed by the broker (slowest after {:.1} s), {} refused or reset while connecting, {} open at the end",
                thousands(a.slowloris_target as u64),
                thousands(a.slowloris_opened),
                thousands(a.slowloris_closed),
                a.slowloris_longest_s,
                thousands(a.slowloris_failed),
                thousands(a.slowloris_open_at_end)
            ),
        );
    }
    if a.flood_rate > 0 {
        row(
            "connection flood",
            format!(
                "{} conn/s: {} attempts, {} accepted, {} refused{}",
                thousands(a.flood_rate),
                thousands(a.flood_attempts),
                thousands(a.flood_accepted),
                thousands(a.flood_refused),
                if a.flood_skipped > 0 {
                    format!(", {} not made (1,000 pending)", thousands(a.flood_skipped))
                } else {
                    String::new()
                }
            ),
        );
    }
}

/// An integer with thin thousands separators: 1,234,567.
pub fn thousands(value: u64) -> String {
    let digits = value.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// "1 subscriber", "1,000 subscribers".
fn count(n: usize, noun: &str) -> String {
    let plural = if n == 1 { "" } else { "s" };
    format!("{} {noun}{plural}", thousands(n as u64))
}

/// A rate, rounded to a whole number with separators.
pub fn rate(per_second: f64) -> String {
    if per_second.is_finite() && per_second >= 0.0 {
        thousands(per_second.round() as u64)
    } else {
        "-".to_owned()
    }
}

/// Microseconds: one decimal below 100 µs, whole numbers with separators above.
pub fn micros(us: f64) -> String {
    if !us.is_finite() || us < 0.0 {
        "-".to_owned()
    } else if us < 100.0 {
        format!("{us:.1}")
    } else {
        thousands(us.round() as u64)
    }
}

/// Events per second over `elapsed`, 0 for an empty interval.
pub fn per_second(count: u64, elapsed: Duration) -> f64 {
    let secs = elapsed.as_secs_f64();
    if secs > 0.0 { count as f64 / secs } else { 0.0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thousands_separators() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1000), "1,000");
        assert_eq!(thousands(1_234_567), "1,234,567");
        assert_eq!(thousands(u64::MAX), "18,446,744,073,709,551,615");
    }

    #[test]
    fn micros_and_rates() {
        assert_eq!(micros(45.06), "45.1");
        assert_eq!(micros(1234.4), "1,234");
        assert_eq!(micros(f64::NAN), "-");
        assert_eq!(rate(250_123.6), "250,124");
        assert_eq!(per_second(500, Duration::from_secs(2)), 250.0);
        assert_eq!(per_second(5, Duration::ZERO), 0.0);
    }

    #[test]
    fn percentiles_from_shared_samples() {
        let shared = SharedHistogram::new();
        assert!(shared.summary().is_none());
        let mut local = LocalSamples::default();
        // 1..=1000 µs: p50 500 µs, p99 990 µs, max 1000 µs (within 0.1 %).
        for us in 1..=1000u64 {
            local.push(us * 1000, &shared);
        }
        local.flush(&shared);
        let l = shared.summary().unwrap();
        assert_eq!(l.count, 1000);
        let close = |a: f64, b: f64| (a - b).abs() <= b * 0.001 + 0.001;
        assert!(close(l.p50_us, 500.0), "{l:?}");
        assert!(close(l.p99_us, 990.0), "{l:?}");
        assert!(close(l.p999_us, 999.0), "{l:?}");
        assert!(close(l.max_us, 1000.0), "{l:?}");
        assert!(close(l.mean_us, 500.5), "{l:?}");
    }

    #[test]
    fn huge_samples_saturate() {
        let shared = SharedHistogram::new();
        shared.record_all(&[u64::MAX, 0]);
        let l = shared.summary().unwrap();
        assert_eq!(l.count, 2);
        assert!(l.max_us >= 99_000_000.0);
    }

    fn sample_report() -> Report {
        Report {
            setup: RunSetup {
                scenario: Scenario::FanIn,
                broker: "127.0.0.1:1883".to_owned(),
                tls: false,
                protocol: "3.1.1".to_owned(),
                qos: 1,
                payload_bytes: 64,
                connections: 101,
                publishers: 100,
                subscribers: 1,
                window: 1000,
                rate_limit: None,
                batched: false,
                loader_processes: 1,
                warmup_s: 2.0,
                measured_s: 10.0,
            },
            messages: MessageStats {
                published: 2_500_000,
                expected: 2_500_000,
                received: 2_500_000,
                published_per_s: 250_000.0,
                received_per_s: 250_000.0,
                lost: 0,
                duplicates: 0,
                reordered: 0,
                window_resets: 0,
                unacked: 0,
            },
            latency: Some(Latency {
                count: 2_500_000,
                mean_us: 900.0,
                p50_us: 850.0,
                p99_us: 2100.0,
                p999_us: 3000.0,
                max_us: 9000.0,
            }),
            connect: None,
            memory: None,
            cpu: CpuStats {
                broker_cpu_percent: Some(99.6),
                loader_cpu_percent: Some(80.2),
            },
            errors: 0,
            first_error: None,
            flood: None,
        }
    }

    #[test]
    fn flood_table_compares_and_counts() {
        let mut report = sample_report();
        report.setup.scenario = Scenario::Flood;
        let baseline = report.latency.map(|mut l| {
            l.p99_us = 1050.0;
            l
        });
        report.flood = Some(FloodStats {
            baseline_latency: baseline,
            baseline_received_per_s: 10_000.0,
            baseline_lost: 0,
            attack: AttackStats {
                source: "127.0.0.2".to_owned(),
                duration_s: 13.0,
                slowloris_target: 1000,
                slowloris_opened: 1200,
                slowloris_closed: 1100,
                slowloris_longest_s: 10.2,
                flood_rate: 1000,
                flood_attempts: 13_000,
                flood_accepted: 200,
                flood_refused: 12_800,
                ..AttackStats::default()
            },
            p99_ratio: Some(2.0),
        });
        let table = report.to_table();
        assert!(table.contains("p99 attack / undisturbed  2.00x"), "{table}");
        assert!(
            table.contains("13,000 attempts, 200 accepted, 12,800 refused"),
            "{table}"
        );
        assert!(table.contains("slowest after 10.2 s"), "{table}");
        let json: serde_json::Value = serde_json::from_str(&report.to_json()).unwrap();
        assert_eq!(json["flood"]["attack"]["flood_refused"], 12_800);
        assert_eq!(json["flood"]["baseline_latency"]["p99_us"], 1050.0);
    }

    #[test]
    fn table_has_the_figures() {
        let table = sample_report().to_table();
        assert!(table.contains("fan-in against 127.0.0.1:1883"), "{table}");
        let line = |label: &str| {
            table
                .lines()
                .find(|l| l.starts_with(label))
                .map(|l| l[label.len()..].trim().to_owned())
                .unwrap_or_default()
        };
        assert_eq!(line("received"), "250,000 msg/s (2,500,000)", "{table}");
        assert!(line("latency").contains("p99.9 3,000 µs"), "{table}");
        assert_eq!(line("broker CPU"), "100 %", "{table}");
        assert_eq!(
            line("clients"),
            "100 publishers, 1 subscriber, window 1,000",
            "{table}"
        );
        assert_eq!(
            line("writes"),
            "one per PUBLISH, as devices write",
            "{table}"
        );
        assert!(!table.contains("errors"), "{table}");
    }

    /// A report with every optional part present.
    fn full_report() -> Report {
        let mut report = sample_report();
        report.connect = Some(ConnectStats {
            connected: 50,
            failed: 1,
            per_second: 5000.0,
            latency: report.latency,
            elapsed_s: Some(0.01),
        });
        report.memory = Some(MemoryStats {
            rss_before_kib: 1000,
            rss_after_kib: 2000,
            per_connection_bytes: 20_480.0,
        });
        report.errors = 1;
        report.first_error = Some("timed out: CONNACK".to_owned());
        report.flood = Some(FloodStats {
            baseline_latency: report.latency,
            baseline_received_per_s: 10_000.0,
            baseline_lost: 0,
            attack: AttackStats::default(),
            p99_ratio: Some(1.5),
        });
        report
    }

    /// The keys of a pretty-printed JSON object, in their order, as dotted paths.
    fn key_paths(json: &str) -> Vec<String> {
        let mut path: Vec<String> = Vec::new();
        let mut keys = Vec::new();
        for line in json.lines() {
            let trimmed = line.trim_start();
            let depth = (line.len() - trimmed.len()) / 2;
            if let Some(rest) = trimmed.strip_prefix('"') {
                let key = rest.split('"').next().unwrap().to_owned();
                path.truncate(depth - 1);
                path.push(key);
                keys.push(path.join("."));
            }
        }
        keys
    }

    #[test]
    fn json_keys_are_those_scripts_read() {
        let latency = |prefix: &str| {
            [
                "", ".count", ".mean_us", ".p50_us", ".p99_us", ".p999_us", ".max_us",
            ]
            .map(|k| format!("{prefix}{k}"))
        };
        let mut expected: Vec<String> = [
            "scenario",
            "broker",
            "tls",
            "protocol",
            "qos",
            "payload_bytes",
            "connections",
            "publishers",
            "subscribers",
            "window",
            "rate_limit",
            "batched",
            "loader_processes",
            "warmup_s",
            "measured_s",
            "published",
            "expected",
            "received",
            "published_per_s",
            "received_per_s",
            "lost",
            "duplicates",
            "reordered",
            "window_resets",
            "unacked",
        ]
        .map(String::from)
        .to_vec();
        expected.extend(latency("latency"));
        expected.extend(
            [
                "connect",
                "connect.connected",
                "connect.failed",
                "connect.per_second",
            ]
            .map(String::from),
        );
        expected.extend(latency("connect.latency"));
        expected.extend(
            [
                "connect.elapsed_s",
                "memory",
                "memory.rss_before_kib",
                "memory.rss_after_kib",
                "memory.per_connection_bytes",
                "broker_cpu_percent",
                "loader_cpu_percent",
                "errors",
                "first_error",
                "flood",
            ]
            .map(String::from),
        );
        expected.extend(latency("flood.baseline_latency"));
        expected.extend(
            [
                "flood.baseline_received_per_s",
                "flood.baseline_lost",
                "flood.attack",
                "flood.attack.source",
                "flood.attack.duration_s",
                "flood.attack.slowloris_target",
                "flood.attack.slowloris_opened",
                "flood.attack.slowloris_closed",
                "flood.attack.slowloris_failed",
                "flood.attack.slowloris_open_at_end",
                "flood.attack.slowloris_longest_s",
                "flood.attack.flood_rate",
                "flood.attack.flood_attempts",
                "flood.attack.flood_accepted",
                "flood.attack.flood_refused",
                "flood.attack.flood_skipped",
                "flood.p99_ratio",
            ]
            .map(String::from),
        );
        assert_eq!(key_paths(&full_report().to_json()), expected);

        // Without the optional parts, their keys are still there, as null.
        let json = sample_report().to_json();
        let top: Vec<String> = key_paths(&json)
            .into_iter()
            .filter(|k| !k.contains('.'))
            .collect();
        let expected_top: Vec<&String> = expected.iter().filter(|k| !k.contains('.')).collect();
        assert_eq!(top.iter().collect::<Vec<_>>(), expected_top);
        for key in ["connect", "memory", "first_error", "flood", "rate_limit"] {
            assert!(json.contains(&format!("\"{key}\": null")), "{key}: {json}");
        }
        // What scripts/bench_compare.py reads.
        let value: serde_json::Value = serde_json::from_str(&full_report().to_json()).unwrap();
        assert_eq!(value["received_per_s"], 250_000.0);
        assert_eq!(value["latency"]["p99_us"], 2100.0);
        assert_eq!(value["memory"]["per_connection_bytes"], 20_480.0);
        assert_eq!(value["connect"]["per_second"], 5000.0);
        assert_eq!(value["loader_cpu_percent"], 80.2);
        assert_eq!(value["broker_cpu_percent"], 99.6);
        assert_eq!(value["lost"], 0);
        assert_eq!(value["errors"], 1);
        assert_eq!(value["first_error"], "timed out: CONNACK");
    }

    #[test]
    fn json_is_machine_readable() {
        let json: serde_json::Value = serde_json::from_str(&sample_report().to_json()).unwrap();
        assert_eq!(json["scenario"], "fan-in");
        assert_eq!(json["received_per_s"], 250_000.0);
        assert_eq!(json["latency"]["p99_us"], 2100.0);
        assert!(json["memory"].is_null());
    }
}

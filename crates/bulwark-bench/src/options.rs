//! What to run: the command-line arguments ([`BenchArgs`]) and the checked options the library
//! runs on ([`BenchOptions`]).

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use bulwark_proto::{ProtocolVersion, QoS};

use crate::BenchError;
use crate::payload::MIN_PAYLOAD;

/// The load patterns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Scenario {
    /// Open N connections (default 1000) and hold them idle; connect rate, connect latency,
    /// broker memory per connection.
    Conn,
    /// W workers loop CONNECT, CONNACK, DISCONNECT, close; connections per second.
    Churn,
    /// N publishers (default 100) to one subscriber of `bench/fanin/#`.
    FanIn,
    /// N publisher/subscriber pairs (default 100), topic `bench/pairs/{i}`.
    Pairs,
    /// One publisher to N subscribers (default 1000) of one topic; deliveries per second.
    FanOut,
    /// N pairs (default 100) publishing at a fixed total `--rate`; latency percentiles.
    Latency,
    /// `latency` twice: undisturbed, then while a slowloris and a connection flood run from
    /// another source address (`--attack-source`); both p99s and their ratio.
    Flood,
}

impl Scenario {
    /// The name used on the command line, in client ids and in topics.
    pub fn name(self) -> &'static str {
        match self {
            Self::Conn => "conn",
            Self::Churn => "churn",
            Self::FanIn => "fan-in",
            Self::Pairs => "pairs",
            Self::FanOut => "fan-out",
            Self::Latency => "latency",
            Self::Flood => "flood",
        }
    }

    /// Connections (conn), publishers (fan-in), pairs (pairs, latency) or subscribers
    /// (fan-out) when `-n` is not given; unused by churn.
    pub fn default_connections(self) -> usize {
        match self {
            Self::Conn | Self::FanOut => 1000,
            Self::FanIn | Self::Pairs | Self::Latency | Self::Flood => 100,
            Self::Churn => 0,
        }
    }
}

/// The MQTT version the load generator speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Protocol {
    /// MQTT 3.1.1.
    #[value(name = "3.1.1")]
    V3_1_1,
    /// MQTT 5.0.
    #[value(name = "5")]
    V5,
}

impl From<Protocol> for ProtocolVersion {
    fn from(value: Protocol) -> Self {
        match value {
            Protocol::V3_1_1 => Self::V3_1_1,
            Protocol::V5 => Self::V5,
        }
    }
}

/// Default `--window`: publications in flight across the whole scenario. Below the default
/// per-session queue limits of Mosquitto (`max_queued_messages 1000`) and Bulwark (1000 queued
/// plus 128 in flight), so one subscriber that receives everything never overflows its queue.
pub const DEFAULT_WINDOW: u64 = 1000;

/// Default `--window` for fan-out, in deliveries: every publication there takes one unit per
/// subscriber, so the window in publications is this divided by the subscribers (at least 10,
/// at most [`DEFAULT_WINDOW`]). Each delivery in flight adds to every message's latency
/// (Little's law), so this is kept to what keeps a fast broker busy.
pub const DEFAULT_FAN_OUT_DELIVERIES: u64 = 20_000;

/// Default per-connection limit of unacknowledged QoS 1/2 publications.
pub const DEFAULT_INFLIGHT: u16 = 64;

/// Default `--slowloris`: sockets the flood's attacker holds open, trickling a CONNECT.
pub const DEFAULT_SLOWLORIS: usize = 1000;

/// Default `--flood-rate`: new connections per second the flood's attacker opens.
pub const DEFAULT_FLOOD_RATE: u64 = 1000;

/// `bulwark bench`: a load generator for any MQTT broker.
#[derive(Debug, Clone, clap::Args)]
#[command(about = "Load-test an MQTT broker (any broker): throughput, latency, connections")]
pub struct BenchArgs {
    /// The load pattern.
    #[arg(value_enum)]
    pub scenario: Scenario,
    /// Where and how to connect.
    #[command(flatten)]
    pub connect: ConnectArgs,
    /// How much load, and for how long.
    #[command(flatten)]
    pub load: LoadArgs,
    /// The flood scenario's attack.
    #[command(flatten)]
    pub attack: AttackArgs,
    /// What is printed and measured besides the load.
    #[command(flatten)]
    pub output: OutputArgs,
}

/// `bulwark bench` options: the broker and how the clients connect to it.
#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "Connection")]
pub struct ConnectArgs {
    /// Broker host name or address (also the TLS server name).
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// Broker port.
    #[arg(long, default_value_t = 1883)]
    pub port: u16,
    /// Local address the clients connect from (default: the system's choice).
    #[arg(long, value_name = "ADDR")]
    pub source: Option<IpAddr>,
    /// MQTT version.
    #[arg(long, value_enum, default_value_t = Protocol::V3_1_1)]
    pub protocol: Protocol,
    /// Connect with TLS (offering 1.3 and 1.2), verifying the broker against --ca.
    #[arg(long, requires = "ca")]
    pub tls: bool,
    /// PEM file of the certificate authorities to trust with --tls.
    #[arg(long, value_name = "FILE", requires = "tls")]
    pub ca: Option<PathBuf>,
    /// With --tls: no TLS session resumption, so every connection does a full handshake
    /// (certificate verification and key exchange). Without it, the connections of a run share
    /// a session cache and resume where the broker allows it (TLS 1.3 tickets), which for churn
    /// measures resumed rather than full handshakes per second.
    #[arg(long, requires = "tls")]
    pub tls_no_resume: bool,
    /// User name for every connection. Conn: `{i}` in it stands for the connection's number
    /// (`--username 'device-{i}'`: one user per device).
    #[arg(long)]
    pub username: Option<String>,
    /// Password for every connection.
    #[arg(long)]
    pub password: Option<String>,
    /// Keep alive in seconds; idle connections send PINGREQ this often.
    #[arg(long, default_value_t = 30)]
    pub keep_alive: u16,
}

/// `bulwark bench` options: the load and its timing.
#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "Load")]
pub struct LoadArgs {
    /// QoS of every publication and subscription.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=2))]
    pub qos: u8,
    /// Payload size in bytes (at least 16: send time and sequence number, then filler).
    #[arg(long, default_value_t = 64)]
    pub payload: usize,
    /// Seconds measured (after the warm-up); for conn, how long the connections are held.
    #[arg(long, default_value_t = 10.0, value_name = "SECS")]
    pub duration: f64,
    /// Seconds of load before measuring starts (messages sent then are not counted).
    #[arg(long, default_value_t = 2.0, value_name = "SECS")]
    pub warmup: f64,
    /// Publications sent and not yet received by every subscriber, at most, across the
    /// scenario. Default 1000; fan-out: 20000 / subscribers, between 10 and 1000.
    #[arg(long, value_name = "W")]
    pub window: Option<u64>,
    /// Connections (conn), publishers (fan-in), pairs (pairs, latency), subscribers (fan-out).
    #[arg(long, short = 'n', value_name = "N")]
    pub connections: Option<usize>,
    /// Churn: concurrent connect/disconnect loops. Conn and set-up: connections being opened at
    /// once.
    #[arg(long, default_value_t = 16)]
    pub workers: usize,
    /// Total publications per second, spread evenly over the publishers by a timer (latency:
    /// default 10000; other scenarios: as fast as the window allows).
    #[arg(long, value_name = "MSG/S")]
    pub rate: Option<u64>,
    /// Unacknowledged QoS 1/2 publications per connection, at most (lowered to the broker's
    /// Receive Maximum in MQTT 5.0).
    #[arg(long, default_value_t = DEFAULT_INFLIGHT)]
    pub inflight: u16,
    /// Subscribers hold persistent sessions (5.0: Session Expiry Interval 3600 s with Clean
    /// Start; 3.1.1: clean session off), so a durable broker stores every QoS 1/2 message it
    /// routes to them until acknowledged.
    #[arg(long)]
    pub persistent: bool,
    /// Batched mode: each publisher writes as many PUBLISHes as its window allows (up to 256)
    /// in one write. Not how devices behave: the default writes every PUBLISH on its own, as a
    /// device does, so the broker reads one packet per read; batched figures are higher and
    /// are labelled as such in the report.
    #[arg(long)]
    pub batched: bool,
    /// Churn: loader processes (1 to 64), each running --workers loops (this program started
    /// N times, figures added up), so that the broker rather than one loader core sets the pace.
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub procs: usize,
}

/// `bulwark bench` options: the flood scenario's attacker.
#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "Flood attack")]
pub struct AttackArgs {
    /// Flood: local address the attack comes from (default 127.0.0.2 for a broker on
    /// 127.0.0.0/8; required otherwise). Must differ from the clients' address.
    #[arg(long, value_name = "ADDR")]
    pub attack_source: Option<IpAddr>,
    /// Flood: sockets the attacker holds open, each trickling a CONNECT one byte per
    /// --slowloris-interval (with --tls: sending nothing); 0 turns the slowloris off.
    #[arg(long, default_value_t = DEFAULT_SLOWLORIS, value_name = "N")]
    pub slowloris: usize,
    /// Flood: seconds between the bytes of a slowloris socket, and before one the broker
    /// closed is reopened.
    #[arg(long, default_value_t = 1.0, value_name = "SECS")]
    pub slowloris_interval: f64,
    /// Flood: new connections per second the attacker opens, each sending a CONNECT (no
    /// credentials) and closing (reset) after the broker's answer; 0 turns the flood off.
    #[arg(long, default_value_t = DEFAULT_FLOOD_RATE, value_name = "CONN/S")]
    pub flood_rate: u64,
}

/// `bulwark bench` options: the report's form, the broker's figures and progress lines.
#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "Output")]
pub struct OutputArgs {
    /// Print the result as one JSON object on standard output.
    #[arg(long)]
    pub json: bool,
    /// The broker's process id: report its CPU use and, for conn, memory per connection.
    #[arg(long, value_name = "PID")]
    pub broker_pid: Option<u32>,
    /// A progress line every second on standard error (default: when standard error is a
    /// terminal or the run is longer than 5 s).
    #[arg(long, overrides_with = "no_progress")]
    pub progress: bool,
    /// No progress lines.
    #[arg(long, overrides_with = "progress")]
    pub no_progress: bool,
}

/// What the `flood` scenario's attacker does.
#[derive(Debug, Clone, PartialEq)]
pub struct AttackOptions {
    /// Local address of the attack; `None`: 127.0.0.2 for a broker on 127.0.0.0/8.
    pub source: Option<IpAddr>,
    /// Slowloris sockets held open (0: none).
    pub slowloris: usize,
    /// Between the bytes of a slowloris socket, and before reopening a closed one.
    pub slowloris_interval: Duration,
    /// New connections per second (0: none).
    pub flood_rate: u64,
}

impl Default for AttackOptions {
    fn default() -> Self {
        Self {
            source: None,
            slowloris: DEFAULT_SLOWLORIS,
            slowloris_interval: Duration::from_secs(1),
            flood_rate: DEFAULT_FLOOD_RATE,
        }
    }
}

/// Where and how the clients connect.
#[derive(Debug, Clone, PartialEq)]
pub struct ConnectOptions {
    /// Broker host (also the TLS server name).
    pub host: String,
    /// Broker port.
    pub port: u16,
    /// Local address of the clients; `None`: the system's choice.
    pub source: Option<IpAddr>,
    /// MQTT version.
    pub version: ProtocolVersion,
    /// Certificate authorities (PEM) for TLS; `None`: plain TCP.
    pub tls_ca: Option<PathBuf>,
    /// Resume TLS sessions (the default); `false`: a full handshake on every connection.
    pub tls_resume: bool,
    /// User name.
    pub username: Option<String>,
    /// Password.
    pub password: Option<String>,
    /// Keep alive, seconds.
    pub keep_alive: u16,
}

impl ConnectOptions {
    /// `host:port` over plain TCP, MQTT 3.1.1, no credentials, keep alive 30 s.
    pub fn new(host: impl Into<String>, port: u16) -> Self {
        Self {
            host: host.into(),
            port,
            source: None,
            version: ProtocolVersion::V3_1_1,
            tls_ca: None,
            tls_resume: true,
            username: None,
            password: None,
            keep_alive: 30,
        }
    }

    /// `host:port`, as the report names the broker.
    pub fn broker(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }
}

/// How much load, and for how long.
#[derive(Debug, Clone, PartialEq)]
pub struct LoadOptions {
    /// QoS of publications and subscriptions.
    pub qos: QoS,
    /// Payload bytes (at least 16).
    pub payload: usize,
    /// Measured time (conn: hold time).
    pub duration: Duration,
    /// Unmeasured time before it.
    pub warmup: Duration,
    /// Window in publications (`None`: the scenario's default).
    pub window: Option<u64>,
    /// See [`LoadArgs::connections`]; `None`: the scenario's default.
    pub connections: Option<usize>,
    /// See [`LoadArgs::workers`].
    pub workers: usize,
    /// Total publications per second; `None`: unlimited (latency: 10000).
    pub rate: Option<u64>,
    /// Per-connection QoS 1/2 inflight limit.
    pub inflight: u16,
    /// Subscribers hold persistent sessions.
    pub persistent: bool,
    /// Publishers write up to 256 PUBLISHes at once; `false` (the default): one write per
    /// PUBLISH, as devices do.
    pub batched: bool,
    /// Churn: loader processes (1: this one only).
    pub procs: usize,
}

impl Default for LoadOptions {
    /// QoS 0, 64-byte payloads, 10 s measured after 2 s of warm-up, 16 workers, the
    /// scenario's connections, window and rate, one write per PUBLISH.
    fn default() -> Self {
        Self {
            qos: QoS::AtMostOnce,
            payload: 64,
            duration: Duration::from_secs(10),
            warmup: Duration::from_secs(2),
            window: None,
            connections: None,
            workers: 16,
            rate: None,
            inflight: DEFAULT_INFLIGHT,
            persistent: false,
            batched: false,
            procs: 1,
        }
    }
}

/// A checked set of options: what [`crate::run_scenario`] runs.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// The load pattern.
    pub scenario: Scenario,
    /// The broker and how to connect to it.
    pub connect: ConnectOptions,
    /// The load and its timing.
    pub load: LoadOptions,
    /// The flood's attack (unused by the other scenarios).
    pub attack: AttackOptions,
    /// Broker process for CPU and memory figures.
    pub broker_pid: Option<u32>,
    /// Print a progress line every second on standard error.
    pub progress: bool,
}

impl BenchOptions {
    /// Options for `scenario` against `host:port` with every other setting at its default and
    /// no progress output: the starting point for tests and for `compare`.
    pub fn new(scenario: Scenario, host: impl Into<String>, port: u16) -> Self {
        Self {
            scenario,
            connect: ConnectOptions::new(host, port),
            load: LoadOptions::default(),
            attack: AttackOptions::default(),
            broker_pid: None,
            progress: false,
        }
    }

    /// Checks the options; every problem is reported at once.
    pub fn validate(&self) -> Result<(), BenchError> {
        let mut problems = Vec::new();
        let l = &self.load;
        if l.payload < MIN_PAYLOAD {
            problems.push(format!(
                "--payload must be at least {MIN_PAYLOAD} bytes (send time and sequence number)"
            ));
        }
        if l.workers == 0 {
            problems.push("--workers must be at least 1".to_owned());
        }
        if l.connections == Some(0) {
            problems.push("-n/--connections must be at least 1".to_owned());
        }
        if l.window == Some(0) {
            problems.push("--window must be at least 1".to_owned());
        }
        if l.rate == Some(0) {
            problems.push("--rate must be at least 1".to_owned());
        }
        if l.procs == 0 || l.procs > 64 {
            problems.push("--procs must be between 1 and 64".to_owned());
        } else if l.procs > 1 && self.scenario != Scenario::Churn {
            problems.push("--procs is for churn only".to_owned());
        }
        if l.inflight == 0 {
            problems.push("--inflight must be at least 1".to_owned());
        }
        if l.duration.is_zero() {
            problems.push("--duration must be more than 0".to_owned());
        }
        if self.scenario == Scenario::Flood {
            let a = &self.attack;
            if a.slowloris == 0 && a.flood_rate == 0 {
                problems.push(
                    "flood needs an attack: --slowloris or --flood-rate must be more than 0"
                        .to_owned(),
                );
            }
            if a.slowloris_interval.is_zero() {
                problems.push("--slowloris-interval must be more than 0".to_owned());
            }
            if a.flood_rate > 1_000_000 {
                problems.push("--flood-rate must be at most 1000000".to_owned());
            }
            if a.source.is_some() && a.source == self.connect.source {
                problems.push(
                    "--attack-source must differ from --source: the attack comes from another address than the clients"
                        .to_owned(),
                );
            }
        }
        if self.connect.version == ProtocolVersion::V3_1 {
            problems.push("MQTT 3.1 is not supported by the load generator".to_owned());
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(BenchError::Options(problems.join("; ")))
        }
    }

    /// `-n`, or the scenario's default.
    pub fn connections(&self) -> usize {
        self.load
            .connections
            .unwrap_or_else(|| self.scenario.default_connections())
    }

    /// Publications per second, if limited.
    pub fn rate(&self) -> Option<u64> {
        match self.scenario {
            Scenario::Latency | Scenario::Flood => Some(self.load.rate.unwrap_or(10_000)),
            _ => self.load.rate,
        }
    }

    /// The window in units (deliveries) for a scenario whose publications each reach
    /// `fanout` subscribers.
    pub fn window_units(&self, fanout: u64) -> u64 {
        let fanout = fanout.max(1);
        match self.load.window {
            Some(messages) => messages.max(1).saturating_mul(fanout),
            None if self.scenario == Scenario::FanOut => {
                let messages = (DEFAULT_FAN_OUT_DELIVERIES / fanout).clamp(10, DEFAULT_WINDOW);
                messages.saturating_mul(fanout)
            }
            None => DEFAULT_WINDOW.saturating_mul(fanout),
        }
    }
}

impl TryFrom<&BenchArgs> for BenchOptions {
    type Error = BenchError;

    fn try_from(args: &BenchArgs) -> Result<Self, BenchError> {
        let seconds = |value: f64, name: &str| {
            Duration::try_from_secs_f64(value).map_err(|_| {
                BenchError::Options(format!("{name} must be a number of seconds >= 0"))
            })
        };
        let (c, l, a, out) = (&args.connect, &args.load, &args.attack, &args.output);
        let duration = seconds(l.duration, "--duration")?;
        let warmup = seconds(l.warmup, "--warmup")?;
        let slowloris_interval = seconds(a.slowloris_interval, "--slowloris-interval")?;
        let progress = if out.no_progress {
            false
        } else {
            out.progress
                || std::io::IsTerminal::is_terminal(&std::io::stderr())
                || duration + warmup > Duration::from_secs(5)
        };
        let options = Self {
            scenario: args.scenario,
            connect: ConnectOptions {
                host: c.host.clone(),
                port: c.port,
                source: c.source,
                version: c.protocol.into(),
                tls_ca: if c.tls { c.ca.clone() } else { None },
                tls_resume: !c.tls_no_resume,
                username: c.username.clone(),
                password: c.password.clone(),
                keep_alive: c.keep_alive,
            },
            load: LoadOptions {
                qos: QoS::from_u8(l.qos)
                    .ok_or_else(|| BenchError::Options("--qos must be 0, 1 or 2".to_owned()))?,
                payload: l.payload,
                duration,
                warmup,
                window: l.window,
                connections: l.connections,
                workers: l.workers,
                rate: l.rate,
                inflight: l.inflight,
                persistent: l.persistent,
                batched: l.batched,
                procs: l.procs,
            },
            attack: AttackOptions {
                source: a.attack_source,
                slowloris: a.slowloris,
                slowloris_interval,
                flood_rate: a.flood_rate,
            },
            broker_pid: out.broker_pid,
            progress,
        };
        options.validate()?;
        Ok(options)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_defaults() {
        let pairs = BenchOptions::new(Scenario::Pairs, "127.0.0.1", 1883);
        assert_eq!(pairs.window_units(1), 1000);
        let mut fan_out = BenchOptions::new(Scenario::FanOut, "127.0.0.1", 1883);
        // 1000 subscribers: 20 publications of 1000 deliveries.
        assert_eq!(fan_out.window_units(1000), 20_000);
        // 5 subscribers: capped at 1000 publications.
        assert_eq!(fan_out.window_units(5), 5000);
        // 100 000 subscribers: at least 10 publications.
        assert_eq!(fan_out.window_units(100_000), 1_000_000);
        fan_out.load.window = Some(500);
        assert_eq!(fan_out.window_units(1000), 500_000);
    }

    #[test]
    fn procs_are_for_churn_only() {
        let mut o = BenchOptions::new(Scenario::Churn, "127.0.0.1", 1883);
        o.load.procs = 4;
        assert!(o.validate().is_ok());
        o.scenario = Scenario::FanIn;
        let err = o.validate().unwrap_err().to_string();
        assert!(err.contains("--procs is for churn only"), "{err}");
        o.load.procs = 0;
        let err = o.validate().unwrap_err().to_string();
        assert!(err.contains("--procs must be between 1 and 64"), "{err}");
    }

    #[test]
    fn validation_reports_every_problem() {
        let mut o = BenchOptions::new(Scenario::FanIn, "127.0.0.1", 1883);
        assert!(o.validate().is_ok());
        o.load.payload = 8;
        o.load.workers = 0;
        let err = o.validate().unwrap_err().to_string();
        assert!(err.contains("--payload"), "{err}");
        assert!(err.contains("--workers"), "{err}");
    }

    #[test]
    fn flood_needs_an_attack_from_another_address() {
        let mut o = BenchOptions::new(Scenario::Flood, "127.0.0.1", 1883);
        assert!(o.validate().is_ok());
        assert_eq!(o.rate(), Some(10_000));
        o.attack.slowloris = 0;
        o.attack.flood_rate = 0;
        o.connect.source = Some("127.0.0.5".parse().unwrap());
        o.attack.source = o.connect.source;
        let err = o.validate().unwrap_err().to_string();
        assert!(err.contains("needs an attack"), "{err}");
        assert!(err.contains("--attack-source must differ"), "{err}");
    }

    /// The `bench` command line as `bulwark` builds it.
    fn command() -> clap::Command {
        <BenchArgs as clap::Args>::augment_args(clap::Command::new("bench"))
    }

    fn parse(line: &[&str]) -> Result<BenchArgs, clap::Error> {
        let matches = command().try_get_matches_from(line)?;
        <BenchArgs as clap::FromArgMatches>::from_arg_matches(&matches)
    }

    #[test]
    fn the_flags_and_their_defaults() {
        let mut flags: Vec<String> = command()
            .get_arguments()
            .map(|a| {
                let defaults: Vec<String> = a
                    .get_default_values()
                    .iter()
                    .map(|v| v.to_string_lossy().into_owned())
                    .collect();
                format!(
                    "{} --{} -{} [{}]",
                    a.get_id(),
                    a.get_long().unwrap_or(""),
                    a.get_short().map(String::from).unwrap_or_default(),
                    defaults.join(",")
                )
            })
            .collect();
        flags.sort();
        let expected = [
            "attack_source --attack-source - []",
            "batched --batched - []",
            "broker_pid --broker-pid - []",
            "ca --ca - []",
            "connections --connections -n []",
            "duration --duration - [10]",
            "flood_rate --flood-rate - [1000]",
            "host --host - [127.0.0.1]",
            "inflight --inflight - [64]",
            "json --json - []",
            "keep_alive --keep-alive - [30]",
            "no_progress --no-progress - []",
            "password --password - []",
            "payload --payload - [64]",
            "persistent --persistent - []",
            "port --port - [1883]",
            "procs --procs - [1]",
            "progress --progress - []",
            "protocol --protocol - [3.1.1]",
            "qos --qos - [0]",
            "rate --rate - []",
            "scenario -- - []",
            "slowloris --slowloris - [1000]",
            "slowloris_interval --slowloris-interval - [1]",
            "source --source - []",
            "tls --tls - []",
            "tls_no_resume --tls-no-resume - []",
            "username --username - []",
            "warmup --warmup - [2]",
            "window --window - []",
            "workers --workers - [16]",
        ];
        assert_eq!(flags, expected);
    }

    #[test]
    fn command_line_to_options() {
        let args = parse(&["bench", "fan-in"]).unwrap();
        let o = BenchOptions::try_from(&args).unwrap();
        let mut d = BenchOptions::new(Scenario::FanIn, "127.0.0.1", 1883);
        d.progress = o.progress;
        assert_eq!(format!("{o:?}"), format!("{d:?}"));

        let args = parse(&[
            "bench",
            "flood",
            "--host",
            "broker",
            "--port",
            "8883",
            "--source",
            "10.0.0.1",
            "--attack-source",
            "10.0.0.2",
            "--slowloris",
            "5",
            "--slowloris-interval",
            "0.5",
            "--flood-rate",
            "7",
            "--qos",
            "2",
            "--payload",
            "100",
            "--protocol",
            "5",
            "--tls",
            "--ca",
            "ca.pem",
            "--tls-no-resume",
            "--username",
            "u",
            "--password",
            "p",
            "--duration",
            "3",
            "--warmup",
            "0",
            "--window",
            "9",
            "-n",
            "4",
            "--workers",
            "2",
            "--rate",
            "50",
            "--inflight",
            "8",
            "--keep-alive",
            "11",
            "--persistent",
            "--batched",
            "--json",
            "--broker-pid",
            "42",
            "--no-progress",
        ])
        .unwrap();
        assert!(args.output.json);
        let o = BenchOptions::try_from(&args).unwrap();
        let mut e = BenchOptions::new(Scenario::Flood, "broker", 8883);
        e.connect = ConnectOptions {
            host: "broker".to_owned(),
            port: 8883,
            source: Some("10.0.0.1".parse().unwrap()),
            version: ProtocolVersion::V5,
            tls_ca: Some(PathBuf::from("ca.pem")),
            tls_resume: false,
            username: Some("u".to_owned()),
            password: Some("p".to_owned()),
            keep_alive: 11,
        };
        e.load = LoadOptions {
            qos: QoS::ExactlyOnce,
            payload: 100,
            duration: Duration::from_secs(3),
            warmup: Duration::ZERO,
            window: Some(9),
            connections: Some(4),
            workers: 2,
            rate: Some(50),
            inflight: 8,
            persistent: true,
            batched: true,
            procs: 1,
        };
        e.attack = AttackOptions {
            source: Some("10.0.0.2".parse().unwrap()),
            slowloris: 5,
            slowloris_interval: Duration::from_millis(500),
            flood_rate: 7,
        };
        e.broker_pid = Some(42);
        assert_eq!(format!("{o:?}"), format!("{e:?}"));
    }

    #[test]
    fn flags_that_need_or_override_each_other() {
        // --tls and --ca need each other, and --tls-no-resume needs --tls.
        assert!(parse(&["bench", "conn", "--tls"]).is_err());
        assert!(parse(&["bench", "conn", "--ca", "ca.pem"]).is_err());
        assert!(parse(&["bench", "conn", "--tls-no-resume"]).is_err());
        assert!(
            parse(&[
                "bench",
                "conn",
                "--tls",
                "--ca",
                "ca.pem",
                "--tls-no-resume"
            ])
            .is_ok()
        );
        // The last of --progress and --no-progress wins.
        let args = parse(&["bench", "conn", "--progress", "--no-progress"]).unwrap();
        assert!(!args.output.progress && args.output.no_progress);
        let args = parse(&["bench", "conn", "--no-progress", "--progress"]).unwrap();
        assert!(args.output.progress && !args.output.no_progress);
        let o = BenchOptions::try_from(&args).unwrap();
        assert!(o.progress);
        // Out-of-range values are refused by the parser.
        assert!(parse(&["bench", "conn", "--qos", "3"]).is_err());
        assert!(parse(&["bench", "conn", "--protocol", "4"]).is_err());
    }

    #[test]
    fn latency_has_a_default_rate() {
        let o = BenchOptions::new(Scenario::Latency, "127.0.0.1", 1883);
        assert_eq!(o.rate(), Some(10_000));
        let o = BenchOptions::new(Scenario::Pairs, "127.0.0.1", 1883);
        assert_eq!(o.rate(), None);
    }
}

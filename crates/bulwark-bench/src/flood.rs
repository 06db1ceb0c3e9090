//! The `flood` scenario: the clients of `latency`, first undisturbed, then again while an
//! attacker on another local address runs a slowloris and a connection flood at the same
//! broker; the report compares the two p99 latencies.
//!
//! The attack ([`AttackOptions`]):
//! - **slowloris**: `slowloris` sockets, opened evenly over the first interval; each writes one
//!   byte of an MQTT 3.1.1 CONNECT every `slowloris_interval` and never the last byte (over TLS
//!   nothing at all: a handshake that never starts), so a broker without a CONNECT timeout
//!   holds it for ever. A socket the broker closes is reopened one interval later.
//! - **connection flood**: `flood_rate` new connections a second, each a TCP (and TLS)
//!   connect, a CONNECT without credentials, a wait for the CONNACK or the close (5 s at most),
//!   then a reset. At most [`FLOOD_PENDING`] wait at once; ticks beyond are counted as skipped.
//!
//! Every attack socket closes with a reset (`SO_LINGER` 0), as an attacker's would: thousands
//! of connections a second then leave no TIME_WAIT behind and never run out of local ports.
//! The attack starts [`HEAD_START`] before the second run's set-up, so the clients also
//! connect while it runs, and stops when that run ends.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bulwark_proto::{ClientId, Connect, Encoder, ProtocolVersion, QoS};
use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::{Instant, MissedTickBehavior, sleep_until, timeout};

use crate::client::{Client, ConnectParams, Target};
use crate::options::AttackOptions;
use crate::stats::{AttackStats, FloodStats};
use crate::{BenchError, BenchOptions, Report, Scenario, pubsub, random_suffix};

/// How long the attack runs before the clients of the second run connect.
pub(crate) const HEAD_START: Duration = Duration::from_secs(1);

/// Flood connections waiting for the broker at once, at most.
pub(crate) const FLOOD_PENDING: u64 = 1000;

/// How long a flood connection waits for the broker's CONNACK or close.
const FLOOD_WAIT: Duration = Duration::from_secs(5);

/// The attack's address when none is given and the broker is on 127.0.0.0/8.
const DEFAULT_ATTACK_SOURCE: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);

pub(crate) async fn run_flood(o: &BenchOptions) -> Result<Report, BenchError> {
    let source = attack_source(o).await?;
    let mut clients = o.clone();
    clients.scenario = Scenario::Latency;
    if o.progress {
        eprintln!("flood: 1/2, the clients undisturbed");
    }
    let baseline = pubsub::run(&clients).await?;
    let c = &o.connect;
    let target = Target::new(&c.host, c.port, c.tls_ca.as_deref(), false)?
        .connecting_from(Some(source))
        .resetting();
    if o.progress {
        eprintln!(
            "flood: 2/2, the clients again while {source} attacks (slowloris {}, flood {} conn/s)",
            o.attack.slowloris, o.attack.flood_rate
        );
    }
    let attack = Attack::start(target, source, &o.attack, c.version);
    tokio::time::sleep(HEAD_START).await;
    let attacked = pubsub::run(&clients).await;
    let stats = attack.stop().await;
    let mut report = match attacked {
        Ok(report) => report,
        Err(err) => {
            eprintln!("flood: the clients could not be set up while under attack");
            return Err(err);
        }
    };
    report.setup.scenario = Scenario::Flood;
    let p99_ratio = match (baseline.latency, report.latency) {
        (Some(before), Some(during)) if before.p99_us > 0.0 => Some(during.p99_us / before.p99_us),
        _ => None,
    };
    report.flood = Some(FloodStats {
        baseline_latency: baseline.latency,
        baseline_received_per_s: baseline.messages.received_per_s,
        baseline_lost: baseline.messages.lost,
        attack: stats,
        p99_ratio,
    });
    Ok(report)
}

/// `--attack-source`, or 127.0.0.2 for a broker on the IPv4 loopback network.
async fn attack_source(o: &BenchOptions) -> Result<IpAddr, BenchError> {
    if let Some(source) = o.attack.source {
        return Ok(source);
    }
    let c = &o.connect;
    let on_loopback = tokio::net::lookup_host((c.host.as_str(), c.port))
        .await
        .map_err(|err| BenchError::io(format!("resolve {}", c.host), err))?
        .any(|addr| addr.is_ipv4() && addr.ip().is_loopback());
    let default = IpAddr::V4(DEFAULT_ATTACK_SOURCE);
    if !on_loopback {
        return Err(BenchError::Options(format!(
            "--attack-source is required for a broker outside 127.0.0.0/8 ({}): the attack must come from another local address than the clients",
            c.host
        )));
    }
    if c.source == Some(default) {
        return Err(BenchError::Options(format!(
            "--source is {default}, the attack's default address: give --attack-source"
        )));
    }
    Ok(default)
}

#[derive(Debug, Default)]
struct Counters {
    slow_opened: AtomicU64,
    slow_closed: AtomicU64,
    slow_failed: AtomicU64,
    slow_open: AtomicU64,
    slow_longest_ms: AtomicU64,
    flood_attempts: AtomicU64,
    flood_accepted: AtomicU64,
    flood_refused: AtomicU64,
    flood_skipped: AtomicU64,
    flood_pending: AtomicU64,
}

/// A running attack.
struct Attack {
    started: Instant,
    source: IpAddr,
    options: AttackOptions,
    stop: watch::Sender<bool>,
    tasks: JoinSet<()>,
    counters: Arc<Counters>,
}

impl Attack {
    fn start(
        target: Target,
        source: IpAddr,
        options: &AttackOptions,
        version: ProtocolVersion,
    ) -> Self {
        let (stop, stop_rx) = watch::channel(false);
        let counters = Arc::new(Counters::default());
        let target = Arc::new(target);
        let random = random_suffix();
        let mut tasks = JoinSet::new();
        let interval = options.slowloris_interval;
        for i in 0..options.slowloris {
            let bytes = if target.is_tls() {
                Vec::new()
            } else {
                slowloris_connect(&format!("bench-flood-slow-{i}-{random}"))
            };
            // Opened evenly over the first interval rather than all at once.
            let delay = interval.mul_f64(i as f64 / options.slowloris as f64);
            tasks.spawn(slowloris(
                target.clone(),
                bytes,
                interval,
                delay,
                counters.clone(),
                stop_rx.clone(),
            ));
        }
        if options.flood_rate > 0 {
            let params = Arc::new(ConnectParams {
                version,
                keep_alive: 30,
                username: None,
                password: None,
                qos: QoS::AtMostOnce,
                persistent: false,
            });
            tasks.spawn(flood(
                target,
                params,
                options.flood_rate,
                random,
                counters.clone(),
                stop_rx,
            ));
        }
        Self {
            started: Instant::now(),
            source,
            options: options.clone(),
            stop,
            tasks,
            counters,
        }
    }

    async fn stop(mut self) -> AttackStats {
        let duration = self.started.elapsed();
        let open_at_end = self.counters.slow_open.load(Ordering::Relaxed);
        let _ = self.stop.send(true);
        // Every task returns promptly on the signal; the deadline only guards against a
        // connect the system holds on to.
        let drained = timeout(Duration::from_secs(5), async {
            while self.tasks.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            self.tasks.shutdown().await;
        }
        let c = &self.counters;
        let load = |v: &AtomicU64| v.load(Ordering::Relaxed);
        AttackStats {
            source: self.source.to_string(),
            duration_s: duration.as_secs_f64(),
            slowloris_target: self.options.slowloris,
            slowloris_opened: load(&c.slow_opened),
            slowloris_closed: load(&c.slow_closed),
            slowloris_failed: load(&c.slow_failed),
            slowloris_open_at_end: open_at_end,
            slowloris_longest_s: load(&c.slow_longest_ms) as f64 / 1000.0,
            flood_rate: self.options.flood_rate,
            flood_attempts: load(&c.flood_attempts),
            flood_accepted: load(&c.flood_accepted),
            flood_refused: load(&c.flood_refused),
            flood_skipped: load(&c.flood_skipped),
        }
    }
}

/// The bytes of an MQTT 3.1.1 CONNECT for `client_id` (empty if it cannot be encoded).
fn slowloris_connect(client_id: &str) -> Vec<u8> {
    let Ok(id) = ClientId::new(client_id) else {
        return Vec::new();
    };
    let connect = Connect::new(ProtocolVersion::V3_1_1, id);
    let mut out = BytesMut::new();
    match Encoder::new(ProtocolVersion::V3_1_1).encode(&connect, &mut out) {
        Ok(_) => out.to_vec(),
        Err(_) => Vec::new(),
    }
}

/// Resolves when the stop signal is given (or its sender is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    while !*stop.borrow_and_update() {
        if stop.changed().await.is_err() {
            return;
        }
    }
}

/// Sleeps until `until`; `true` if the stop signal came first.
async fn sleep_or_stop(until: Instant, stop: &mut watch::Receiver<bool>) -> bool {
    tokio::select! {
        () = stopped(stop) => true,
        () = sleep_until(until) => false,
    }
}

/// One slowloris socket, reopened whenever the broker closes it, until the stop signal.
async fn slowloris(
    target: Arc<Target>,
    bytes: Vec<u8>,
    interval: Duration,
    delay: Duration,
    counters: Arc<Counters>,
    mut stop: watch::Receiver<bool>,
) {
    if sleep_or_stop(Instant::now() + delay, &mut stop).await {
        return;
    }
    loop {
        let opened = tokio::select! {
            () = stopped(&mut stop) => return,
            opened = target.open_tcp() => opened,
        };
        match opened {
            Err(_) => {
                counters.slow_failed.fetch_add(1, Ordering::Relaxed);
            }
            Ok(tcp) => {
                counters.slow_opened.fetch_add(1, Ordering::Relaxed);
                counters.slow_open.fetch_add(1, Ordering::Relaxed);
                let since = Instant::now();
                let closed = trickle(tcp, &bytes, interval, &mut stop).await;
                counters.slow_open.fetch_sub(1, Ordering::Relaxed);
                if !closed {
                    return;
                }
                counters.slow_closed.fetch_add(1, Ordering::Relaxed);
                let held = u64::try_from(since.elapsed().as_millis()).unwrap_or(u64::MAX);
                counters.slow_longest_ms.fetch_max(held, Ordering::Relaxed);
            }
        }
        if sleep_or_stop(Instant::now() + interval, &mut stop).await {
            return;
        }
    }
}

/// Writes `bytes` but the last, one every `interval`, then holds the socket. `true` when the
/// broker closed it, `false` on the stop signal.
async fn trickle(
    mut tcp: TcpStream,
    bytes: &[u8],
    interval: Duration,
    stop: &mut watch::Receiver<bool>,
) -> bool {
    let mut sink = [0u8; 64];
    let mut sent = 0;
    loop {
        if let Some(byte) = bytes.get(sent..sent + 1).filter(|_| sent + 1 < bytes.len()) {
            if tcp.write_all(byte).await.is_err() {
                return true;
            }
            sent += 1;
        }
        let next = Instant::now() + interval;
        loop {
            tokio::select! {
                () = stopped(stop) => return false,
                read = tcp.read(&mut sink) => match read {
                    Ok(0) | Err(_) => return true,
                    // A broker that answers a partial CONNECT: keep holding.
                    Ok(_) => {}
                },
                () = sleep_until(next) => break,
            }
        }
    }
}

/// Opens `rate` connections a second until the stop signal.
async fn flood(
    target: Arc<Target>,
    params: Arc<ConnectParams>,
    rate: u64,
    random: String,
    counters: Arc<Counters>,
    mut stop: watch::Receiver<bool>,
) {
    let period = Duration::from_secs_f64(1.0 / rate.max(1) as f64);
    let mut ticker = tokio::time::interval(period);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Burst);
    let mut attempts = JoinSet::new();
    let mut n = 0u64;
    loop {
        tokio::select! {
            () = stopped(&mut stop) => break,
            _ = ticker.tick() => {}
        }
        while attempts.try_join_next().is_some() {}
        if counters.flood_pending.load(Ordering::Relaxed) >= FLOOD_PENDING {
            counters.flood_skipped.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        n += 1;
        counters.flood_attempts.fetch_add(1, Ordering::Relaxed);
        counters.flood_pending.fetch_add(1, Ordering::Relaxed);
        let (target, params, counters) = (target.clone(), params.clone(), counters.clone());
        let id = format!("bench-flood-conn-{n}-{random}");
        attempts.spawn(async move {
            let accepted = matches!(
                timeout(FLOOD_WAIT, Client::connect(&target, &params, &id, 256)).await,
                Ok(Ok(_))
            );
            let counter = if accepted {
                &counters.flood_accepted
            } else {
                &counters.flood_refused
            };
            counter.fetch_add(1, Ordering::Relaxed);
            counters.flood_pending.fetch_sub(1, Ordering::Relaxed);
        });
    }
    // Attempts still waiting are abandoned: neither accepted nor refused.
    attempts.shutdown().await;
}

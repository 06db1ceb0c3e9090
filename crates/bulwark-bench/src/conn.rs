//! The connection scenarios: `conn` (many idle connections) and `churn` (connect/disconnect
//! loops).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bulwark_proto::{Packet, QoS};
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;
use tokio::time::{Instant, sleep, sleep_until};

use crate::client::{Client, ConnectParams, Target, pump, read_some};
use crate::procfs::{self, CpuSample, Process};
use crate::stats::{
    ConnectStats, CpuStats, LocalSamples, MemoryStats, MessageStats, Report, RunSetup,
    SharedHistogram, per_second, thousands,
};
use crate::{BenchError, BenchOptions, ErrorLog, Scenario, client_id, random_suffix};

/// Read room for an idle connection: only PINGRESP is expected, and ten thousand connections
/// with large buffers would measure the loader's memory, not the broker's.
const IDLE_READ_CHUNK: usize = 64;
/// How long the conn scenario waits for the next connection to be answered before measuring
/// anyway (a login storm of distinct users is paced by the broker's password hashing: the
/// whole run may take longer, as long as it progresses).
const CONNECT_ALL_TIMEOUT: Duration = Duration::from_secs(120);
/// Pause between opening the last connection and reading the broker's memory, so that the
/// broker has handled every CONNECT.
const SETTLE: Duration = Duration::from_millis(500);
/// A churn worker whose attempt failed waits this long before the next, so that a broker
/// refusing connections is not hammered in a tight loop.
const RETRY_PAUSE: Duration = Duration::from_millis(10);

fn params(o: &BenchOptions) -> ConnectParams {
    ConnectParams::new(&o.connect, QoS::AtMostOnce)
}

/// `params` for connection `i`: `{i}` in the username stands for its number, so that each
/// device logs in as a user of its own.
fn numbered(params: &ConnectParams, i: usize) -> ConnectParams {
    let mut params = params.clone();
    if let Some(name) = params.username.as_mut()
        && name.contains("{i}")
    {
        *name = name.replace("{i}", &i.to_string());
    }
    params
}

/// CPU samples of the broker (if known) and of the load generator.
pub(crate) fn samples(process: Option<Process>) -> (Option<CpuSample>, Option<CpuSample>) {
    (
        process.and_then(procfs::cpu_sample),
        procfs::cpu_sample(Process::Current),
    )
}

/// The CPU use of the broker and of the load generator between two [`samples`].
pub(crate) fn percent(
    start: (Option<CpuSample>, Option<CpuSample>),
    end: (Option<CpuSample>, Option<CpuSample>),
) -> CpuStats {
    let p = |a: Option<CpuSample>, b: Option<CpuSample>| match a.zip(b) {
        Some((a, b)) => procfs::cpu_percent(a, b),
        None => None,
    };
    CpuStats {
        broker_cpu_percent: p(start.0, end.0),
        loader_cpu_percent: p(start.1, end.1),
    }
}

/// A report with the publish figures empty.
pub(crate) fn connection_report(o: &BenchOptions, connections: usize) -> Report {
    Report {
        setup: RunSetup {
            scenario: o.scenario,
            broker: o.connect.broker(),
            tls: o.connect.tls_ca.is_some(),
            protocol: o.connect.version.to_string(),
            qos: 0,
            payload_bytes: 0,
            connections,
            publishers: 0,
            subscribers: 0,
            window: 0,
            rate_limit: None,
            batched: false,
            loader_processes: 1,
            warmup_s: 0.0,
            measured_s: o.load.duration.as_secs_f64(),
        },
        messages: MessageStats::default(),
        latency: None,
        connect: None,
        memory: None,
        cpu: CpuStats::default(),
        errors: 0,
        first_error: None,
        flood: None,
    }
}

/// Opens `-n` connections, `--workers` at a time, holds them for `--duration`, and measures
/// the connect rate, connect latency and the broker's memory per connection. CPU figures
/// cover the whole run, opening included.
pub(crate) async fn run_conn(o: &BenchOptions) -> Result<Report, BenchError> {
    let n = o.connections();
    let target = Target::for_clients(&o.connect)?;
    let params = params(o);
    let random = random_suffix();
    let broker = o.broker_pid.map(Process::Pid);
    let keep_alive = Duration::from_secs(u64::from(o.connect.keep_alive.max(1)));

    let rss_before = broker.and_then(procfs::rss_kib);
    let cpu_start = samples(broker);
    let latency = Arc::new(SharedHistogram::new());
    let connected = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(ErrorLog::default());
    let limit = Arc::new(Semaphore::new(o.load.workers.max(1)));
    let (stop_tx, stop_rx) = watch::channel(false);
    let start = Instant::now();
    let mut tasks = JoinSet::new();
    for i in 0..n {
        let id = client_id(Scenario::Conn, "idle", i, &random);
        let (target, params, limit) = (target.clone(), numbered(&params, i), limit.clone());
        let (latency, connected, failed, errors) = (
            latency.clone(),
            connected.clone(),
            failed.clone(),
            errors.clone(),
        );
        let stop = stop_rx.clone();
        tasks.spawn(async move {
            let permit = limit.acquire_owned().await;
            let attempt = Client::connect(&target, &params, &id, IDLE_READ_CHUNK).await;
            drop(permit);
            match attempt {
                Ok((client, took)) => {
                    latency.record_all(&[crate::pubsub::nanos(took)]);
                    connected.fetch_add(1, Ordering::SeqCst);
                    if let Err(err) = hold(client, keep_alive, stop).await {
                        errors.record(&err);
                    }
                }
                Err(err) => {
                    failed.fetch_add(1, Ordering::SeqCst);
                    errors.record(&err);
                }
            }
        });
    }

    let mut deadline = start + CONNECT_ALL_TIMEOUT;
    let mut next_line = start + Duration::from_secs(1);
    let mut answered = 0;
    loop {
        let done = connected.load(Ordering::SeqCst) + failed.load(Ordering::SeqCst);
        if done > answered {
            answered = done;
            deadline = Instant::now() + CONNECT_ALL_TIMEOUT;
        }
        if done >= n as u64 || Instant::now() >= deadline {
            break;
        }
        if o.progress && Instant::now() >= next_line {
            eprintln!(
                "[{:>4.0}s] connected {} / {} ({} failed)",
                start.elapsed().as_secs_f64(),
                thousands(connected.load(Ordering::SeqCst)),
                thousands(n as u64),
                thousands(failed.load(Ordering::SeqCst)),
            );
            next_line += Duration::from_secs(1);
        }
        sleep(Duration::from_millis(5)).await;
    }
    let elapsed = start.elapsed();
    let opened = connected.load(Ordering::SeqCst);
    sleep(SETTLE).await;
    let rss_after = broker.and_then(procfs::rss_kib);

    let hold_end = Instant::now() + o.load.duration;
    while Instant::now() < hold_end {
        let next = (Instant::now() + Duration::from_secs(1)).min(hold_end);
        sleep_until(next).await;
        if o.progress && next < hold_end {
            eprintln!(
                "[{:>4.0}s] holding {} connections",
                start.elapsed().as_secs_f64(),
                thousands(opened)
            );
        }
    }
    let cpu_end = samples(broker);
    let _ = stop_tx.send(true);
    while let Some(joined) = tasks.join_next().await {
        if let Err(err) = joined {
            errors.record(&BenchError::Internal(err.to_string()));
        }
    }

    let mut report = connection_report(o, n);
    report.connect = Some(ConnectStats {
        connected: opened,
        failed: failed.load(Ordering::SeqCst),
        per_second: per_second(opened, elapsed),
        latency: latency.summary(),
        elapsed_s: Some(elapsed.as_secs_f64()),
    });
    report.memory = match (rss_before, rss_after) {
        (Some(before), Some(after)) if opened > 0 => Some(MemoryStats {
            rss_before_kib: before,
            rss_after_kib: after,
            per_connection_bytes: (after as f64 - before as f64) * 1024.0 / opened as f64,
        }),
        _ => None,
    };
    report.cpu = percent(cpu_start, cpu_end);
    (report.errors, report.first_error) = errors.take();
    Ok(report)
}

/// Keeps a connection open and alive (PINGREQ every keep alive) until the stop.
async fn hold(
    mut c: Client,
    keep_alive: Duration,
    mut stop: watch::Receiver<bool>,
) -> Result<(), BenchError> {
    let mut last_write = Instant::now();
    loop {
        tokio::select! {
            biased;
            read = read_some(&mut c.rd, &mut c.dec, IDLE_READ_CHUNK) => {
                match read {
                    Ok(0) => return Err(BenchError::Closed("the end of the run")),
                    Ok(_) => {}
                    Err(err) => return Err(BenchError::io("read from the broker", err)),
                }
                while let Some(packet) = c.dec.poll_packet()? {
                    if let Packet::Disconnect(d) = packet {
                        return Err(BenchError::Disconnected(d.reason_code));
                    }
                }
            }
            written = pump(&mut c.wr, &mut c.out, &mut c.dirty), if !c.out.is_empty() || c.dirty => {
                written.map_err(|err| BenchError::io("write to the broker", err))?;
                last_write = Instant::now();
            }
            _ = stop.changed() => break,
            () = sleep_until(last_write + keep_alive) => {
                c.encode(&Packet::PingReq)?;
                // Counted as written now, so that a slow write does not queue a second ping.
                last_write = Instant::now();
            }
        }
    }
    c.disconnect(false).await
}

/// `--workers` loops of connect, CONNECT, CONNACK, DISCONNECT, wait for the broker's close,
/// for warm-up + duration. Cycles that end in the measured interval are counted.
pub(crate) async fn run_churn(o: &BenchOptions) -> Result<Report, BenchError> {
    let target = Target::for_clients(&o.connect)?;
    let params = params(o);
    let random = random_suffix();
    let broker = o.broker_pid.map(Process::Pid);
    let epoch = Instant::now();
    let measure_start = epoch + o.load.warmup;
    let end = measure_start + o.load.duration;
    let latency = Arc::new(SharedHistogram::new());
    let cycles = Arc::new(AtomicU64::new(0));
    let measured = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(ErrorLog::default());
    let mut tasks = JoinSet::new();
    for worker in 0..o.load.workers {
        let id = client_id(Scenario::Churn, "worker", worker, &random);
        let (target, params) = (target.clone(), params.clone());
        let (latency, cycles, measured, failed, errors) = (
            latency.clone(),
            cycles.clone(),
            measured.clone(),
            failed.clone(),
            errors.clone(),
        );
        tasks.spawn(async move {
            let mut samples = LocalSamples::default();
            while Instant::now() < end {
                let attempt = async {
                    let (client, took) =
                        Client::connect(&target, &params, &id, IDLE_READ_CHUNK).await?;
                    client.disconnect(true).await?;
                    Ok::<_, BenchError>(took)
                };
                match attempt.await {
                    Ok(took) => {
                        cycles.fetch_add(1, Ordering::Relaxed);
                        let now = Instant::now();
                        if now >= measure_start && now < end {
                            measured.fetch_add(1, Ordering::Relaxed);
                            samples.push(crate::pubsub::nanos(took), &latency);
                        }
                    }
                    Err(err) => {
                        failed.fetch_add(1, Ordering::Relaxed);
                        errors.record(&err);
                        sleep(RETRY_PAUSE).await;
                    }
                }
            }
            samples.flush(&latency);
        });
    }

    let mut cpu_start = (None, None);
    let mut started = false;
    let mut last = (0, epoch);
    let mut next = epoch;
    while next < end {
        next = (next + Duration::from_secs(1)).min(end);
        if !started && next > measure_start {
            sleep_until(measure_start).await;
            cpu_start = samples(broker);
            started = true;
        }
        sleep_until(next).await;
        if o.progress && next < end {
            let now = Instant::now();
            let total = cycles.load(Ordering::Relaxed);
            eprintln!(
                "[{:>4.0}s] {} | {} conn/s ({} failed)",
                now.duration_since(epoch).as_secs_f64(),
                if now < measure_start {
                    "warm-up"
                } else {
                    "measure"
                },
                crate::stats::rate(per_second(total - last.0, now.duration_since(last.1))),
                thousands(failed.load(Ordering::Relaxed)),
            );
            last = (total, now);
        }
    }
    if !started {
        cpu_start = samples(broker);
    }
    let cpu_end = samples(broker);
    while let Some(joined) = tasks.join_next().await {
        if let Err(err) = joined {
            errors.record(&BenchError::Internal(err.to_string()));
        }
    }

    let done = measured.load(Ordering::Relaxed);
    let mut report = connection_report(o, o.load.workers);
    report.setup.warmup_s = o.load.warmup.as_secs_f64();
    report.connect = Some(ConnectStats {
        connected: done,
        failed: failed.load(Ordering::Relaxed),
        per_second: per_second(done, o.load.duration),
        latency: latency.summary(),
        elapsed_s: None,
    });
    report.cpu = percent(cpu_start, cpu_end);
    (report.errors, report.first_error) = errors.take();
    Ok(report)
}

//! Churn over several loader processes (`--procs N`): one process's connect/disconnect loops
//! are bound by its own core (TCP handshakes and closes cost the loader about as much as the
//! broker), so on a machine with cores to spare several processes make the broker the limit.
//!
//! The parent starts `N` copies of this program's own command line with `--procs 1 --json`,
//! each running `--workers` loops, waits for them and adds their figures up: connections per
//! second, failures and loader CPU are summed; the connect latency is the children's combined
//! count and mean, with each percentile the highest any child saw (an upper bound).

use std::ffi::OsString;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::stats::{ConnectStats, CpuStats, Latency, Report};
use crate::{BenchError, BenchOptions};

/// Arguments that the parent sets for its children (value-less flags, and `--procs VALUE`).
const FLAGS_DROPPED: [&str; 3] = ["--json", "--progress", "--no-progress"];

/// The children's command line: this program's arguments without `--procs` and the output
/// flags, then `--procs 1 --json --no-progress`.
pub(crate) fn child_args(args: impl IntoIterator<Item = OsString>) -> Vec<OsString> {
    let mut out = Vec::new();
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        let text = arg.to_string_lossy();
        if text == "--procs" {
            args.next();
            continue;
        }
        if text.starts_with("--procs=") || FLAGS_DROPPED.contains(&text.as_ref()) {
            continue;
        }
        out.push(arg);
    }
    out.extend(["--procs", "1", "--json", "--no-progress"].map(OsString::from));
    out
}

/// Runs the churn in `o.load.procs` child processes and merges their reports.
pub(crate) fn run_churn_procs(o: &BenchOptions) -> Result<Report, BenchError> {
    let program = std::env::current_exe()
        .map_err(|err| BenchError::Setup(format!("cannot find this program: {err}")))?;
    let args = child_args(std::env::args_os().skip(1));
    let mut children = Vec::with_capacity(o.load.procs);
    for _ in 0..o.load.procs {
        let child = Command::new(&program)
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|err| BenchError::Setup(format!("cannot start a loader process: {err}")))?;
        children.push(child);
    }
    // Every child stops by itself after warm-up and duration; this bounds a stuck one.
    let deadline = Instant::now() + o.load.warmup + o.load.duration + Duration::from_secs(60);
    let mut reports = Vec::with_capacity(children.len());
    let mut failure = None;
    for mut child in children {
        loop {
            match child.try_wait() {
                Ok(Some(_)) => break,
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(50));
                }
                _ => {
                    let _ = child.kill();
                    break;
                }
            }
        }
        match child.wait_with_output() {
            Ok(out) if out.status.success() => {
                match serde_json::from_slice::<serde_json::Value>(&out.stdout) {
                    Ok(value) => reports.push(value),
                    Err(err) => failure = Some(format!("a loader process's report: {err}")),
                }
            }
            Ok(out) => failure = Some(format!("a loader process failed ({})", out.status)),
            Err(err) => failure = Some(format!("a loader process: {err}")),
        }
    }
    if let Some(why) = failure {
        return Err(BenchError::Setup(why));
    }
    merge(o, &reports)
}

/// Adds the children's JSON reports up into one (see the module documentation).
pub(crate) fn merge(o: &BenchOptions, reports: &[serde_json::Value]) -> Result<Report, BenchError> {
    let number = |v: &serde_json::Value, path: &[&str]| -> Option<f64> {
        path.iter().try_fold(v, |v, key| v.get(key))?.as_f64()
    };
    let mut report = crate::conn::connection_report(o, o.load.workers * o.load.procs);
    report.setup.warmup_s = o.load.warmup.as_secs_f64();
    report.setup.loader_processes = o.load.procs;
    let mut connect = ConnectStats {
        connected: 0,
        failed: 0,
        per_second: 0.0,
        latency: None,
        elapsed_s: None,
    };
    let mut latency: Option<Latency> = None;
    let mut loader_cpu = None::<f64>;
    let mut broker_cpu = Vec::new();
    for r in reports {
        let missing =
            || BenchError::Protocol("a loader process's report has no connect figures".to_owned());
        connect.connected += number(r, &["connect", "connected"]).ok_or_else(missing)? as u64;
        connect.failed += number(r, &["connect", "failed"]).unwrap_or(0.0) as u64;
        connect.per_second += number(r, &["connect", "per_second"]).ok_or_else(missing)?;
        if let Some(count) = number(r, &["connect", "latency", "count"]).filter(|&c| c > 0.0) {
            let field = |name: &str| number(r, &["connect", "latency", name]).unwrap_or(0.0);
            let this = Latency {
                count: count as u64,
                mean_us: field("mean_us"),
                p50_us: field("p50_us"),
                p99_us: field("p99_us"),
                p999_us: field("p999_us"),
                max_us: field("max_us"),
            };
            latency = Some(match latency {
                None => this,
                Some(l) => {
                    let total = l.count + this.count;
                    Latency {
                        count: total,
                        mean_us: (l.mean_us * l.count as f64 + this.mean_us * this.count as f64)
                            / total as f64,
                        p50_us: l.p50_us.max(this.p50_us),
                        p99_us: l.p99_us.max(this.p99_us),
                        p999_us: l.p999_us.max(this.p999_us),
                        max_us: l.max_us.max(this.max_us),
                    }
                }
            });
        }
        if let Some(cpu) = number(r, &["loader_cpu_percent"]) {
            *loader_cpu.get_or_insert(0.0) += cpu;
        }
        broker_cpu.extend(number(r, &["broker_cpu_percent"]));
        report.errors += number(r, &["errors"]).unwrap_or(0.0) as u64;
        if report.first_error.is_none() {
            report.first_error = r
                .get("first_error")
                .and_then(serde_json::Value::as_str)
                .map(str::to_owned);
        }
    }
    connect.latency = latency;
    report.connect = Some(connect);
    report.cpu = CpuStats {
        // Each child measured the same broker over nearly the same interval.
        broker_cpu_percent: (!broker_cpu.is_empty())
            .then(|| broker_cpu.iter().sum::<f64>() / broker_cpu.len() as f64),
        loader_cpu_percent: loader_cpu,
    };
    Ok(report)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "test code")]

    use super::*;
    use crate::Scenario;

    #[test]
    fn children_get_the_command_line_without_procs_and_output_flags() {
        let args = [
            "bench",
            "churn",
            "--procs",
            "4",
            "--workers",
            "8",
            "--json",
            "--progress",
            "--procs=2",
            "--port",
            "1884",
        ]
        .map(OsString::from);
        let expected = [
            "bench",
            "churn",
            "--workers",
            "8",
            "--port",
            "1884",
            "--procs",
            "1",
            "--json",
            "--no-progress",
        ]
        .map(OsString::from);
        assert_eq!(child_args(args), expected);
    }

    #[test]
    fn reports_add_up() {
        let mut o = BenchOptions::new(Scenario::Churn, "127.0.0.1", 1883);
        o.load.procs = 2;
        o.load.workers = 8;
        let child = |per_second: f64, p99: f64, cpu: f64| {
            serde_json::json!({
                "connect": {"connected": per_second as u64 * 10, "failed": 1,
                    "per_second": per_second, "elapsed_s": null,
                    "latency": {"count": 100, "mean_us": p99 / 2.0, "p50_us": 10.0,
                        "p99_us": p99, "p999_us": p99, "max_us": p99}},
                "loader_cpu_percent": cpu, "broker_cpu_percent": 80.0,
                "errors": 1, "first_error": "refused"
            })
        };
        let report = merge(
            &o,
            &[child(5000.0, 300.0, 90.0), child(7000.0, 500.0, 95.0)],
        )
        .unwrap();
        let c = report.connect.unwrap();
        assert_eq!(c.connected, 120_000);
        assert_eq!(c.failed, 2);
        assert!((c.per_second - 12_000.0).abs() < 1e-9);
        let l = c.latency.unwrap();
        assert_eq!(l.count, 200);
        assert!((l.mean_us - 200.0).abs() < 1e-9);
        assert!((l.p99_us - 500.0).abs() < 1e-9);
        assert_eq!(report.cpu.loader_cpu_percent, Some(185.0));
        assert_eq!(report.cpu.broker_cpu_percent, Some(80.0));
        assert_eq!(report.errors, 2);
        assert_eq!(report.first_error.as_deref(), Some("refused"));
        assert_eq!(report.setup.connections, 16);
        assert_eq!(report.setup.loader_processes, 2);
        assert!(merge(&o, &[serde_json::json!({"errors": 0})]).is_err());
    }
}

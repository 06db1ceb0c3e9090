//! CPU time and resident memory of a process, from Linux's `/proc`.
//!
//! Only Linux has these files; elsewhere every reading is `None` and the report leaves the
//! figures out.

use std::time::Instant;

/// `/proc/*/stat` counts CPU time in USER_HZ ticks, which Linux fixes at 100 per second on
/// every architecture, whatever the kernel's internal HZ (see proc(5), `utime`).
const TICKS_PER_SECOND: f64 = 100.0;

/// Which process to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Process {
    /// The load generator itself.
    Current,
    /// Another process, by id.
    Pid(u32),
}

impl Process {
    fn dir(self) -> String {
        match self {
            Self::Current => "/proc/self".to_owned(),
            Self::Pid(pid) => format!("/proc/{pid}"),
        }
    }
}

/// CPU time used so far (user + system), read at a moment.
#[derive(Debug, Clone, Copy)]
pub struct CpuSample {
    ticks: u64,
    at: Instant,
}

/// Reads a process's CPU time.
pub fn cpu_sample(process: Process) -> Option<CpuSample> {
    let text = std::fs::read_to_string(format!("{}/stat", process.dir())).ok()?;
    let ticks = parse_stat_ticks(&text)?;
    Some(CpuSample {
        ticks,
        at: Instant::now(),
    })
}

/// CPU use between two samples as a percentage of one core (200 means two cores busy).
pub fn cpu_percent(start: CpuSample, end: CpuSample) -> Option<f64> {
    let wall = end.at.checked_duration_since(start.at)?.as_secs_f64();
    if wall <= 0.0 {
        return None;
    }
    let ticks = end.ticks.checked_sub(start.ticks)?;
    Some(ticks as f64 / TICKS_PER_SECOND / wall * 100.0)
}

/// `utime + stime` from the text of `/proc/PID/stat`. The command name (field 2) is in
/// parentheses and may itself contain spaces and parentheses, so fields are counted from the
/// last `)`.
pub fn parse_stat_ticks(text: &str) -> Option<u64> {
    let rest = text.get(text.rfind(')')? + 1..)?;
    // After the name: state is field 3, utime field 14, stime field 15.
    let mut fields = rest.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// Resident set size in KiB.
pub fn rss_kib(process: Process) -> Option<u64> {
    let text = std::fs::read_to_string(format!("{}/status", process.dir())).ok()?;
    parse_status_rss_kib(&text)
}

/// `VmRSS` from the text of `/proc/PID/status`.
pub fn parse_status_rss_kib(text: &str) -> Option<u64> {
    let line = text.lines().find(|line| line.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_with_odd_command_name() {
        let text = "1234 (my (odd) name) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 75 0 0 20 0 \
                    4 0 1000 12345678 900 18446744073709551615";
        assert_eq!(parse_stat_ticks(text), Some(325));
        assert_eq!(parse_stat_ticks("garbage"), None);
    }

    #[test]
    fn status_rss() {
        let text = "Name:\tmosquitto\nVmPeak:\t  10000 kB\nVmRSS:\t    5120 kB\nThreads:\t1\n";
        assert_eq!(parse_status_rss_kib(text), Some(5120));
        assert_eq!(parse_status_rss_kib("Name: x\n"), None);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn own_process_is_readable() {
        assert!(rss_kib(Process::Current).is_some_and(|kib| kib > 0));
        let a = cpu_sample(Process::Current);
        assert!(a.is_some());
    }

    #[test]
    fn percent() {
        let at = Instant::now();
        let start = CpuSample { ticks: 100, at };
        let end = CpuSample {
            ticks: 250,
            at: at + std::time::Duration::from_secs(1),
        };
        let p = cpu_percent(start, end).unwrap();
        assert!((p - 150.0).abs() < 1e-9);
    }
}

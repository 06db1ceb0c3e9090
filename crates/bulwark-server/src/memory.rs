//! The memory watermark: the broker's resident memory is read every second; above the
//! watermark new connections are refused and queued messages are shed (QoS 0 first, the
//! largest queues first) until it is back under nine tenths of it.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bulwark_acl::event::{EventKind, SecurityEvent};
use tokio::sync::{mpsc, watch};
use tracing::{info, warn};

use crate::audit::Audit;
use crate::gate::Gate;
use crate::router::ToRouter;

/// How often memory is read.
const INTERVAL: Duration = Duration::from_secs(1);

/// A `Key:   1234 kB` value of a `/proc` status file, in bytes.
fn kb_value(text: &str, key: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with(key))?;
    let kb: u64 = line
        .trim_start_matches(key)
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    kb.checked_mul(1024)
}

/// This process's resident memory, where the system tells it (Linux).
pub(crate) fn resident() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/self/status").ok()?;
    kb_value(&text, "VmRSS:")
}

/// Three quarters of the machine's memory; 0 where it cannot be read.
pub(crate) fn default_watermark() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|t| kb_value(&t, "MemTotal:"))
        .map_or(0, |total| total / 4 * 3)
}

/// Watches memory until `stop`.
pub(crate) async fn watch(
    watermark: u64,
    gate: Arc<Gate>,
    router: mpsc::Sender<ToRouter>,
    audit: Audit,
    mut stop: watch::Receiver<bool>,
) {
    if resident().is_none() {
        warn!("the memory watermark cannot be watched here (no /proc/self/status)");
        return;
    }
    let low = watermark / 10 * 9;
    loop {
        tokio::select! {
            () = tokio::time::sleep(INTERVAL) => {}
            _ = stop.changed() => return,
        }
        let Some(rss) = resident() else { continue };
        let over = gate.overloaded.load(Ordering::Relaxed);
        if rss > watermark {
            if !over {
                gate.overloaded.store(true, Ordering::Relaxed);
                warn!(
                    rss,
                    watermark, "memory over its watermark: refusing new connections"
                );
                let mut event =
                    SecurityEvent::new(EventKind::Overload, std::time::SystemTime::now());
                event.reason = Some(format!(
                    "resident memory {rss} bytes over the watermark of {watermark}: new connections refused"
                ));
                audit.record(event);
            }
            let excess = usize::try_from(rss - low).unwrap_or(usize::MAX);
            let _ = router.try_send(ToRouter::Shed(excess));
        } else if over && rss < low {
            gate.overloaded.store(false, Ordering::Relaxed);
            info!(
                rss,
                watermark, "memory back under its watermark: accepting connections"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_values_are_read_in_bytes() {
        let text = "Name:\tbulwark\nVmRSS:\t   12345 kB\nThreads:\t4\n";
        assert_eq!(kb_value(text, "VmRSS:"), Some(12345 * 1024));
        assert_eq!(kb_value(text, "VmHWM:"), None);
        assert_eq!(kb_value("VmRSS: lots kB\n", "VmRSS:"), None);
        assert!(resident().is_some_and(|r| r > 0));
    }
}

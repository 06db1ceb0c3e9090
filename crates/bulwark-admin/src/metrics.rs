//! `/metrics`: a [`MetricsSnapshot`] in the Prometheus text exposition format (OpenMetrics
//! text, which Prometheus reads), through `prometheus-client`'s encoder.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family as PromFamily;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;

use crate::backend::{HistogramFamily, MetricKind, MetricsSnapshot};

/// A histogram read elsewhere, written as it is.
#[derive(Debug)]
struct Snapshot(HistogramFamily);

impl EncodeMetric for Snapshot {
    fn encode(&self, mut encoder: MetricEncoder<'_>) -> Result<(), std::fmt::Error> {
        let count = self.0.buckets.iter().map(|(_, n)| n).sum();
        encoder.encode_histogram::<NoLabelSet>(self.0.sum, count, &self.0.buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

/// Labels of one sample.
type Labels = Vec<(&'static str, String)>;

/// The snapshot as exposition text; every metric's name starts with `bulwark_`.
pub fn render(snapshot: &MetricsSnapshot) -> Result<String, std::fmt::Error> {
    let mut registry = Registry::with_prefix("bulwark");
    for family in &snapshot.families {
        // The encoder ends the help text with a full stop of its own.
        let help = family.help.trim_end_matches('.');
        if let [(labels, value)] = family.samples.as_slice()
            && labels.is_empty()
        {
            match family.kind {
                MetricKind::Counter => {
                    let metric = Counter::<u64>::default();
                    metric.inc_by(*value);
                    registry.register(family.name, help, metric);
                }
                MetricKind::Gauge => {
                    let metric = Gauge::<i64>::default();
                    metric.set(i64::try_from(*value).unwrap_or(i64::MAX));
                    registry.register(family.name, help, metric);
                }
            }
            continue;
        }
        match family.kind {
            MetricKind::Counter => {
                let metric = PromFamily::<Labels, Counter>::default();
                for (labels, value) in &family.samples {
                    metric.get_or_create(labels).inc_by(*value);
                }
                registry.register(family.name, help, metric);
            }
            MetricKind::Gauge => {
                let metric = PromFamily::<Labels, Gauge>::default();
                for (labels, value) in &family.samples {
                    metric
                        .get_or_create(labels)
                        .set(i64::try_from(*value).unwrap_or(i64::MAX));
                }
                registry.register(family.name, help, metric);
            }
        }
    }
    for histogram in &snapshot.histograms {
        registry.register(
            histogram.name,
            histogram.help.trim_end_matches('.'),
            Snapshot(histogram.clone()),
        );
    }
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry)?;
    Ok(text)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests")]
mod tests {
    use super::*;
    use crate::backend::Family;

    #[test]
    fn counters_and_gauges_are_written_with_their_labels() {
        let snapshot = MetricsSnapshot {
            families: vec![
                Family {
                    name: "logins",
                    help: "Logins.",
                    kind: MetricKind::Counter,
                    samples: vec![
                        (vec![("result", "failure".to_owned())], 3),
                        (vec![("result", "success".to_owned())], 5),
                    ],
                },
                Family {
                    name: "up",
                    help: "Up.",
                    kind: MetricKind::Gauge,
                    samples: vec![(Vec::new(), 1)],
                },
                Family {
                    name: "connections",
                    help: "Connected clients.",
                    kind: MetricKind::Gauge,
                    samples: vec![(vec![("listener", "tcp-0".to_owned())], 2)],
                },
            ],
            histograms: vec![HistogramFamily {
                name: "commit_seconds",
                help: "Commits.",
                buckets: vec![(0.001, 2), (0.01, 1), (f64::MAX, 1)],
                sum: 2.5,
            }],
        };
        let text = render(&snapshot).unwrap();
        assert!(
            text.contains("# TYPE bulwark_commit_seconds histogram"),
            "{text}"
        );
        assert!(text.contains("bulwark_commit_seconds_count 4"), "{text}");
        assert!(
            text.contains("bulwark_commit_seconds_bucket{le=\"0.01\"} 3"),
            "{text}"
        );
        assert!(
            text.contains("bulwark_commit_seconds_bucket{le=\"+Inf\"} 4"),
            "{text}"
        );
        assert!(text.contains("# TYPE bulwark_logins counter"), "{text}");
        assert!(
            text.contains("bulwark_logins_total{result=\"failure\"} 3"),
            "{text}"
        );
        assert!(text.contains("\nbulwark_up 1\n"), "{text}");
        assert!(
            text.contains("bulwark_connections{listener=\"tcp-0\"} 2"),
            "{text}"
        );
        assert!(text.contains("# HELP bulwark_logins Logins.\n"), "{text}");
        assert!(text.trim_end().ends_with("# EOF"), "{text}");
    }
}

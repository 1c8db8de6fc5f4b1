//! Prometheus metrics: what `serve`, `send` and `bench` publish on `GET /metrics` (OpenMetrics
//! text, by the Prometheus project's `prometheus-client`).
//!
//! Nothing on the send path touches a metric: every value is read at scrape time from what the
//! program already keeps for itself. The cores' counters are the atomics they publish a few
//! times a second for progress ([`EngineCollector`]); the delivery log's counts are the
//! ledger's, copied out after each sync of the log, so they match the log's durable records
//! ([`delivery`]); serve's intake counts its own ([`crate::serve::metrics`]). A scrape takes
//! one short lock (the ledger's copy) and never stalls a core.
//!
//! [`http`] serves them: on serve's API listener, or on `--metrics-listen` for `send` and
//! `bench`.

pub mod delivery;
pub mod http;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};

use crate::engine::Progress;

/// Every metric of a process, read when scraped.
#[derive(Debug, Default)]
pub struct Metrics {
    registry: Registry,
}

impl Metrics {
    pub fn new() -> Metrics {
        Metrics::default()
    }

    /// Adds a source of metrics, read at every scrape.
    pub fn register(&mut self, collector: impl Collector) {
        self.registry.register_collector(Box::new(collector));
    }

    /// The exposition, in OpenMetrics text.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(8 * 1024);
        // Writing to a String cannot fail; a collector's own error would leave a partial text.
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

/// Upper bounds (seconds) of the latency histograms' buckets: from a fast local intake (a few
/// milliseconds) to a retry schedule's days.
pub const LATENCY_BOUNDS: [f64; 20] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0,
    3600.0, 14400.0, 86400.0,
];

/// A latency histogram with [`LATENCY_BOUNDS`], counted by one thread and copied out.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Buckets {
    /// Per bucket (not cumulative), the last one for values above every bound.
    counts: [u64; LATENCY_BOUNDS.len() + 1],
    sum_micros: u64,
}

impl Buckets {
    pub fn observe_micros(&mut self, micros: u64) {
        self.counts[bucket_of(micros)] += 1;
        self.sum_micros = self.sum_micros.saturating_add(micros);
    }

    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }

    fn encode(&self, encoder: &mut prometheus_client::encoding::MetricEncoder<'_>) -> std::fmt::Result {
        // Per bucket: the encoder makes them cumulative, and writes `f64::MAX` as `+Inf`.
        let buckets: Vec<(f64, u64)> = self
            .counts
            .iter()
            .enumerate()
            .map(|(i, n)| (LATENCY_BOUNDS.get(i).copied().unwrap_or(f64::MAX), *n))
            .collect();
        encoder.encode_histogram::<NoLabelSet>(self.sum_micros as f64 / 1e6, self.count(), &buckets, None)
    }
}

/// The same, counted from several threads at once (relaxed atomics: no lock).
#[derive(Debug, Default)]
pub struct AtomicBuckets {
    counts: [AtomicU64; LATENCY_BOUNDS.len() + 1],
    sum_micros: AtomicU64,
}

impl AtomicBuckets {
    pub fn observe_micros(&self, micros: u64) {
        self.counts[bucket_of(micros)].fetch_add(1, Ordering::Relaxed);
        self.sum_micros.fetch_add(micros, Ordering::Relaxed);
    }

    pub fn read(&self) -> Buckets {
        let mut b = Buckets { sum_micros: self.sum_micros.load(Ordering::Relaxed), ..Buckets::default() };
        for (to, from) in b.counts.iter_mut().zip(&self.counts) {
            *to = from.load(Ordering::Relaxed);
        }
        b
    }
}

fn bucket_of(micros: u64) -> usize {
    let seconds = micros as f64 / 1e6;
    LATENCY_BOUNDS.iter().position(|bound| seconds <= *bound).unwrap_or(LATENCY_BOUNDS.len())
}

/// Writes one metric family at a time (a thin layer over prometheus-client's encoder, so that
/// collectors read as a list of metrics).
pub struct Family<'e, 'a> {
    encoder: &'e mut DescriptorEncoder<'a>,
}

impl<'e, 'a> Family<'e, 'a> {
    pub fn new(encoder: &'e mut DescriptorEncoder<'a>) -> Family<'e, 'a> {
        Family { encoder }
    }

    /// A counter (`name` without `_total`: the encoder adds it).
    pub fn counter(&mut self, name: &str, help: &str, value: u64) -> std::fmt::Result {
        let mut m = self.encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
        m.encode_counter::<NoLabelSet, _, u64>(&value, None)
    }

    /// A counter with a value per label set.
    pub fn counters<L: EncodeLabelSet>(
        &mut self,
        name: &str,
        help: &str,
        values: impl IntoIterator<Item = (L, u64)>,
    ) -> std::fmt::Result {
        let mut m = self.encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
        for (labels, value) in values {
            m.encode_family(&labels)?.encode_counter::<NoLabelSet, _, u64>(&value, None)?;
        }
        Ok(())
    }

    pub fn gauge(&mut self, name: &str, help: &str, unit: Option<Unit>, value: u64) -> std::fmt::Result {
        let mut m = self.encoder.encode_descriptor(name, help, unit.as_ref(), MetricType::Gauge)?;
        m.encode_gauge(&value)
    }

    /// A gauge with a value per label set.
    pub fn gauges<L: EncodeLabelSet>(
        &mut self,
        name: &str,
        help: &str,
        values: impl IntoIterator<Item = (L, u64)>,
    ) -> std::fmt::Result {
        let mut m = self.encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
        for (labels, value) in values {
            m.encode_family(&labels)?.encode_gauge(&value)?;
        }
        Ok(())
    }

    /// A latency histogram, in seconds.
    pub fn histogram(&mut self, name: &str, help: &str, buckets: &Buckets) -> std::fmt::Result {
        let mut m =
            self.encoder.encode_descriptor(name, help, Some(&Unit::Seconds), MetricType::Histogram)?;
        buckets.encode(&mut m)
    }

    /// A latency histogram, in seconds, with a histogram per label set.
    pub fn histograms<L: EncodeLabelSet>(
        &mut self,
        name: &str,
        help: &str,
        values: impl IntoIterator<Item = (L, Buckets)>,
    ) -> std::fmt::Result {
        let mut m =
            self.encoder.encode_descriptor(name, help, Some(&Unit::Seconds), MetricType::Histogram)?;
        for (labels, buckets) in values {
            buckets.encode(&mut m.encode_family(&labels)?)?;
        }
        Ok(())
    }
}

/// The cores' counters, summed at scrape time from what each publishes for progress.
#[derive(Debug)]
pub struct EngineCollector {
    progress: Vec<Arc<Progress>>,
}

impl EngineCollector {
    pub fn new(progress: Vec<Arc<Progress>>) -> EngineCollector {
        EngineCollector { progress }
    }

    fn sum(&self, field: impl Fn(&Progress) -> &AtomicU64) -> u64 {
        self.progress.iter().map(|p| field(p).load(Ordering::Relaxed)).sum()
    }
}

impl Collector for EngineCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> std::fmt::Result {
        let mut f = Family::new(&mut encoder);
        f.counters(
            "volley_engine_messages",
            "Messages the engine finished sending, by outcome (a deferred one may be tried again).",
            [
                ("delivered", self.sum(|p| &p.delivered)),
                ("deferred", self.sum(|p| &p.deferred)),
                ("bounced", self.sum(|p| &p.bounced)),
                ("uncertain", self.sum(|p| &p.uncertain)),
            ]
            .map(|(outcome, n)| ([("outcome", outcome)], n)),
        )?;
        f.gauge("volley_in_flight_messages", "Messages in a session now.", None, self.sum(|p| &p.in_flight))?;
        f.gauge(
            "volley_connections_open",
            "Connections open or being opened now.",
            None,
            self.sum(|p| &p.connections_open),
        )?;
        f.counter("volley_connections_opened", "Connections opened.", self.sum(|p| &p.connections))?;
        f.counter(
            "volley_connection_failures",
            "Connection attempts that failed (refused, timed out, no greeting).",
            self.sum(|p| &p.connect_failures),
        )?;
        f.counter(
            "volley_session_errors",
            "Sessions that ended in an error after connecting.",
            self.sum(|p| &p.session_errors),
        )?;
        f.counters(
            "volley_tls_handshakes",
            "TLS handshakes by result: full, resumed, failed.",
            [
                ("full", self.sum(|p| &p.tls_full)),
                ("resumed", self.sum(|p| &p.tls_resumed)),
                ("failed", self.sum(|p| &p.tls_failed)),
            ]
            .map(|(result, n)| ([("result", result)], n)),
        )?;
        f.counter(
            "volley_plaintext_sessions",
            "Sessions that went on without TLS under the opportunistic policy.",
            self.sum(|p| &p.tls_plaintext),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_cumulative_with_the_sum_in_seconds() {
        let shared = AtomicBuckets::default();
        for micros in [500, 3_000, 3_000, 2_000_000, 200_000_000_000] {
            shared.observe_micros(micros);
        }
        let b = shared.read();
        assert_eq!(b.count(), 5);
        struct One(Buckets);
        impl std::fmt::Debug for One {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("one")
            }
        }
        impl Collector for One {
            fn encode(&self, mut encoder: DescriptorEncoder) -> std::fmt::Result {
                Family::new(&mut encoder).histograms(
                    "volley_test_duration",
                    "Test.",
                    [([("a", "b")], self.0.clone())],
                )
            }
        }
        let mut metrics = Metrics::new();
        metrics.register(One(b));
        let text = metrics.render();
        assert!(text.contains("# TYPE volley_test_duration_seconds histogram"), "{text}");
        assert!(text.contains(r#"volley_test_duration_seconds_bucket{le="0.001",a="b"} 1"#), "{text}");
        assert!(text.contains(r#"volley_test_duration_seconds_bucket{le="0.005",a="b"} 3"#), "{text}");
        assert!(text.contains(r#"volley_test_duration_seconds_bucket{le="2.5",a="b"} 4"#), "{text}");
        assert!(text.contains(r#"volley_test_duration_seconds_bucket{le="86400.0",a="b"} 4"#), "{text}");
        assert!(text.contains(r#"volley_test_duration_seconds_bucket{le="+Inf",a="b"} 5"#), "{text}");
        assert!(text.contains(r#"volley_test_duration_seconds_count{a="b"} 5"#), "{text}");
        assert!(text.contains(r#"volley_test_duration_seconds_sum{a="b"} 200002.0065"#), "{text}");
        assert!(text.ends_with("# EOF\n"));
    }
}

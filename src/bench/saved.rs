//! A bench run kept whole, to merge with others: `bench --save`, the runs nodes publish
//! through Redis (`bench --queue`), and `volley report merge`.
//!
//! A run keeps its counters and every phase's histogram in HdrHistogram's V2 serialization
//! (base64), the format HdrHistogram's other implementations read. Merging adds counters and
//! histograms: a merged run's percentiles are those of the merged histograms, never averages
//! of percentiles, and its rate is the runs' rates summed (they ran at the same time).

use std::collections::{BTreeMap, HashSet};
use std::sync::Mutex;
use std::time::Duration;

use base64::Engine as _;
use hdrhistogram::Histogram;
use hdrhistogram::serialization::{Deserializer, Serializer, V2Serializer};
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::engine::Report;
use crate::engine::stats::{METRICS, Stats};
use crate::rt::Driver;

/// The version of the format; a file of another is refused.
const VERSION: u32 = 1;

#[derive(Debug, Error)]
pub enum SavedError {
    #[error("not a volley bench run (or of another version): {0}")]
    Format(String),
    #[error("histogram {metric}: {error}")]
    Histogram { metric: String, error: String },
    #[error("no runs to merge")]
    Empty,
}

/// One run, as saved.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SavedRun {
    pub volley_bench_run: u32,
    /// The node (host) that ran it.
    pub node: String,
    pub target: String,
    pub elapsed_s: f64,
    pub warmup_s: f64,
    pub threads: usize,
    pub driver: String,
    pub produced: u64,
    pub counters: BTreeMap<String, u64>,
    /// Final reply codes, failure kinds, session errors, TLS sessions ("version suite").
    pub codes: BTreeMap<u16, u64>,
    pub failures: BTreeMap<String, u64>,
    pub session_errors: BTreeMap<String, u64>,
    pub tls_negotiated: BTreeMap<String, u64>,
    pub last_session_error: Option<String>,
    pub last_connect_error: Option<String>,
    pub last_violation: Option<String>,
    /// Each phase's histogram, V2-serialized and base64-encoded, by the report's phase name.
    pub histograms: BTreeMap<String, String>,
}

/// The counters kept, by name, with how to read and write them.
type Field = (&'static str, fn(&Stats) -> u64, fn(&mut Stats, u64));

const COUNTERS: [Field; 22] = [
    ("delivered", |s| s.delivered, |s, v| s.delivered = v),
    ("deferred", |s| s.deferred, |s, v| s.deferred = v),
    ("bounced", |s| s.bounced, |s, v| s.bounced = v),
    ("uncertain", |s| s.uncertain, |s, v| s.uncertain = v),
    ("unsent", |s| s.unsent, |s, v| s.unsent = v),
    ("unsendable", |s| s.unsendable, |s, v| s.unsendable = v),
    ("recipients_delivered", |s| s.recipients.delivered, |s, v| s.recipients.delivered = v),
    ("recipients_deferred", |s| s.recipients.deferred, |s, v| s.recipients.deferred = v),
    ("recipients_bounced", |s| s.recipients.bounced, |s, v| s.recipients.bounced = v),
    ("recipients_uncertain", |s| s.recipients.uncertain, |s, v| s.recipients.uncertain = v),
    ("retries", |s| s.retries, |s, v| s.retries = v),
    ("bytes", |s| s.bytes, |s, v| s.bytes = v),
    ("measured", |s| s.measured, |s, v| s.measured = v),
    ("measured_bytes", |s| s.measured_bytes, |s, v| s.measured_bytes = v),
    ("connections", |s| s.connections, |s, v| s.connections = v),
    ("connect_failures", |s| s.connect_failures, |s, v| s.connect_failures = v),
    ("cap_refusals", |s| s.cap_refusals, |s, v| s.cap_refusals = v),
    ("connection_cap", |s| s.connection_cap, |s, v| s.connection_cap = v),
    ("violations", |s| s.violations, |s, v| s.violations = v),
    ("starttls_offered", |s| s.starttls_offered, |s, v| s.starttls_offered = v),
    ("authenticated", |s| s.authenticated, |s, v| s.authenticated = v),
    ("suspended", |s| s.suspended, |s, v| s.suspended = v),
];

const TLS_COUNTERS: [Field; 4] = [
    ("tls_full", |s| s.tls.full, |s, v| s.tls.full = v),
    ("tls_resumed", |s| s.tls.resumed, |s, v| s.tls.resumed = v),
    ("tls_failed", |s| s.tls.failed, |s, v| s.tls.failed = v),
    ("tls_plaintext", |s| s.tls.plaintext, |s, v| s.tls.plaintext = v),
];

/// The report's maps are keyed by static names (error kinds, TLS versions and suites); one read
/// back from a file gets its name made static once per distinct name (a few dozen at most, in
/// a process that reads a handful of files).
fn intern(name: &str) -> &'static str {
    static NAMES: Mutex<Option<HashSet<&'static str>>> = Mutex::new(None);
    let Ok(mut names) = NAMES.lock() else { return "?" };
    let names = names.get_or_insert_with(HashSet::new);
    if let Some(known) = names.get(name) {
        return known;
    }
    let leaked: &'static str = Box::leak(name.to_owned().into_boxed_str());
    names.insert(leaked);
    leaked
}

impl SavedRun {
    /// A finished run, as `node` ran it against `target`.
    pub fn of(report: &Report, target: &str, node: &str) -> SavedRun {
        let s = &report.stats;
        let counters =
            COUNTERS.iter().chain(&TLS_COUNTERS).map(|(name, get, _)| (name.to_string(), get(s))).collect();
        let histograms = METRICS
            .iter()
            .map(|&(metric, name)| {
                let mut bytes = Vec::new();
                // Into a Vec: only an invalid histogram could fail, and ours are valid.
                let _ = V2Serializer::new().serialize(s.histogram(metric), &mut bytes);
                (name.to_owned(), base64::engine::general_purpose::STANDARD.encode(bytes))
            })
            .collect();
        SavedRun {
            volley_bench_run: VERSION,
            node: node.to_owned(),
            target: target.to_owned(),
            elapsed_s: report.elapsed.as_secs_f64(),
            warmup_s: report.warmup.as_secs_f64(),
            threads: report.threads,
            driver: report.driver.name().to_owned(),
            produced: report.produced,
            counters,
            codes: s.codes.clone(),
            failures: s.failures.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
            session_errors: s.session_errors.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
            tls_negotiated: s.tls.negotiated.iter().map(|((v, c), n)| (format!("{v} {c}"), *n)).collect(),
            last_session_error: s.last_session_error.clone(),
            last_connect_error: s.last_connect_error.clone(),
            last_violation: s.last_violation.clone(),
            histograms,
        }
    }

    pub fn parse(text: &str) -> Result<SavedRun, SavedError> {
        let run: SavedRun = serde_json::from_str(text).map_err(|e| SavedError::Format(e.to_string()))?;
        if run.volley_bench_run != VERSION {
            return Err(SavedError::Format(format!("version {}", run.volley_bench_run)));
        }
        Ok(run)
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_default()
    }

    /// The run as the engine reported it.
    pub fn report(&self) -> Result<Report, SavedError> {
        let mut s = Stats::default();
        for (name, _, set) in COUNTERS.iter().chain(&TLS_COUNTERS) {
            set(&mut s, self.counters.get(*name).copied().unwrap_or(0));
        }
        s.codes = self.codes.clone();
        s.failures = self.failures.iter().map(|(k, v)| (intern(k), *v)).collect();
        s.session_errors = self.session_errors.iter().map(|(k, v)| (intern(k), *v)).collect();
        for (key, n) in &self.tls_negotiated {
            let (version, suite) = key.split_once(' ').unwrap_or((key, ""));
            s.tls.negotiated.insert((intern(version), intern(suite)), *n);
        }
        s.last_session_error = self.last_session_error.clone();
        s.last_connect_error = self.last_connect_error.clone();
        s.last_violation = self.last_violation.clone();
        for &(metric, name) in &METRICS {
            let Some(text) = self.histograms.get(name) else { continue };
            let error = |error: String| SavedError::Histogram { metric: name.to_owned(), error };
            let bytes =
                base64::engine::general_purpose::STANDARD.decode(text).map_err(|e| error(e.to_string()))?;
            let h: Histogram<u64> = Deserializer::new()
                .deserialize(&mut bytes.as_slice())
                .map_err(|e| error(format!("{e:?}")))?;
            s.histogram_mut(metric).add(&h).map_err(|e| error(format!("{e:?}")))?;
        }
        let driver = if self.driver == "io_uring" { Driver::Uring } else { Driver::Epoll };
        Ok(Report {
            stats: s,
            produced: self.produced,
            elapsed: Duration::from_secs_f64(self.elapsed_s.max(0.0)),
            threads: self.threads,
            driver,
            warmup: Duration::from_secs_f64(self.warmup_s.max(0.0)),
        })
    }
}

/// Runs made at the same time, as one.
#[derive(Debug)]
pub struct Merged {
    /// Counters and histograms added; elapsed the longest run's; threads summed.
    pub report: Report,
    /// The runs' nodes, and their rates (delivered messages a second after the warmup) summed.
    pub nodes: Vec<String>,
    pub rate: f64,
    pub megabytes: f64,
}

/// Merges runs made at the same time (a distributed bench's nodes).
pub fn merge(runs: &[SavedRun]) -> Result<Merged, SavedError> {
    let mut merged: Option<Report> = None;
    let (mut rate, mut megabytes) = (0.0, 0.0);
    for run in runs {
        let report = run.report()?;
        let (r, mb) = report.rates();
        rate += r;
        megabytes += mb;
        merged = Some(match merged {
            None => report,
            Some(mut m) => {
                m.stats.merge(&report.stats);
                m.produced += report.produced;
                m.threads += report.threads;
                m.elapsed = m.elapsed.max(report.elapsed);
                m.warmup = m.warmup.max(report.warmup);
                m
            }
        });
    }
    let report = merged.ok_or(SavedError::Empty)?;
    Ok(Merged { report, nodes: runs.iter().map(|r| r.node.clone()).collect(), rate, megabytes })
}

/// The merged report as text: the report of the merged histograms and counters, with the
/// rates summed over the runs.
pub fn merged_text(m: &Merged, target: &str) -> String {
    let mut out = format!(
        "merged      {} runs ({}): delivered {:.0} msg/s, {:.1} MB/s summed over the runs\n",
        m.nodes.len(),
        m.nodes.join(", "),
        m.rate,
        m.megabytes
    );
    out.push_str(&super::text(&m.report, target));
    out
}

/// The merged report as JSON: the runs, the summed rates, the outcomes, and each phase's
/// percentiles (milliseconds) from the merged histograms.
pub fn merged_json(m: &Merged) -> serde_json::Value {
    let s = &m.report.stats;
    let phases: serde_json::Map<String, serde_json::Value> = METRICS
        .iter()
        .map(|&(metric, name)| {
            let fields: serde_json::Map<String, serde_json::Value> =
                super::report::percentiles(s.histogram(metric))
                    .into_iter()
                    .map(|(k, v)| match k {
                        "count" => (k.to_owned(), v.into()),
                        _ => (format!("{k}_ms"), (v as f64 / 1000.0).into()),
                    })
                    .collect();
            (name.to_owned(), fields.into())
        })
        .collect();
    serde_json::json!({
        "runs": m.nodes.len(),
        "nodes": m.nodes,
        "rate_msg_s": m.rate,
        "rate_mb_s": m.megabytes,
        "longest_run_s": m.report.elapsed.as_secs_f64(),
        "delivered": s.delivered,
        "deferred": s.deferred,
        "bounced": s.bounced,
        "uncertain": s.uncertain,
        "unsent": s.unsent,
        "connections": s.connections,
        "latency": phases,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::stats::Metric;

    fn run(node: &str, latencies_us: &[u64], delivered: u64, elapsed_s: f64) -> SavedRun {
        let mut s = Stats::default();
        for &us in latencies_us {
            s.record(Metric::Message, Duration::from_micros(us));
        }
        s.delivered = delivered;
        s.measured = delivered;
        *s.codes.entry(250).or_default() += delivered;
        *s.session_errors.entry("timeout").or_default() += 1;
        let report = Report {
            stats: s,
            produced: delivered,
            elapsed: Duration::from_secs_f64(elapsed_s),
            threads: 1,
            driver: Driver::Epoll,
            warmup: Duration::ZERO,
        };
        SavedRun::of(&report, "127.0.0.1:25", node)
    }

    #[test]
    fn a_run_comes_back_from_its_file_as_it_was() {
        let a = run("a", &[100, 200, 5000], 3, 1.0);
        let back = SavedRun::parse(&a.to_json()).unwrap();
        assert_eq!(back, a);
        let report = back.report().unwrap();
        assert_eq!(report.stats.delivered, 3);
        assert_eq!(report.stats.session_errors.get("timeout"), Some(&1));
        assert_eq!(report.stats.histogram(Metric::Message).len(), 3);
        assert!(SavedRun::parse("{\"volley_bench_run\": 9}").is_err());
    }

    /// The merged percentiles are the merged histogram's: a slow node's tail shows, as it
    /// would not in an average of the nodes' p99s.
    #[test]
    fn merged_percentiles_are_those_of_the_merged_histograms() {
        let fast: Vec<u64> = (0..990).map(|i| 100 + i % 50).collect();
        let slow: Vec<u64> = (0..10).map(|_| 90_000).collect();
        let runs = [run("a", &fast, 990, 2.0), run("b", &slow, 10, 2.0)];
        let m = merge(&runs).unwrap();
        let mut all = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
        for r in &runs {
            all.add(r.report().unwrap().stats.histogram(Metric::Message)).unwrap();
        }
        let merged = m.report.stats.histogram(Metric::Message);
        for q in [0.5, 0.9, 0.99, 0.999, 1.0] {
            assert_eq!(merged.value_at_quantile(q), all.value_at_quantile(q), "q {q}");
        }
        assert!(merged.value_at_quantile(0.999) >= 89_000, "the slow node's tail shows");
        assert_eq!(m.report.stats.delivered, 1000);
        assert_eq!(m.report.stats.session_errors.get("timeout"), Some(&2));
        assert!((m.rate - (495.0 + 5.0)).abs() < 1e-6, "rates summed: {}", m.rate);
        assert!(merged_text(&m, "t").contains("2 runs (a, b)"));
        let json = merged_json(&m);
        assert_eq!(json["delivered"], 1000);
        assert_eq!(json["latency"]["message"]["count"], 1000);
        assert_eq!(json["latency"]["message"]["p99.9_ms"], merged.value_at_quantile(0.999) as f64 / 1000.0);
        assert!(matches!(merge(&[]), Err(SavedError::Empty)));
    }
}

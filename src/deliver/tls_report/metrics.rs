//! The TLS report figures as metrics: sessions counted since the start by policy type and
//! result (the same counts the reports carry, never cut at a period's end), and what became
//! of the reports (written, and sent or not at each address).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;

use super::outbox::{Outcome, Sent};
use super::run::TlsReports;
use crate::metrics::Family;

/// What became of the reports, counted by whoever writes and sends them.
#[derive(Debug, Default)]
pub struct ReportCounts {
    written: AtomicU64,
    sent: AtomicU64,
    not_wanted: AtomicU64,
    failed: AtomicU64,
}

impl ReportCounts {
    pub fn written(&self, files: usize) {
        self.written.fetch_add(files as u64, Ordering::Relaxed);
    }

    /// Counts one sending's results (a report sent by an earlier attempt is not counted again).
    pub fn sent(&self, results: &[Sent]) {
        for r in results {
            let counter = match &r.result {
                Outcome::Sent(_) if r.earlier => continue,
                Outcome::Sent(_) => &self.sent,
                Outcome::NotWanted => &self.not_wanted,
                Outcome::Failed(_) => &self.failed,
            };
            counter.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Reads a run's TLS report figures at each scrape.
#[derive(Debug)]
pub struct TlsReportCollector {
    pub reports: Arc<TlsReports>,
    /// What became of the reports, where they are sent while the process runs (serve).
    pub counts: Option<Arc<ReportCounts>>,
}

impl Collector for TlsReportCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> std::fmt::Result {
        let mut f = Family::new(&mut encoder);
        f.counters(
            "volley_tls_sessions",
            "TLS sessions to MX hosts whose domain or host publishes a policy (MTA-STS, DANE), and failed \
             policy lookups, by policy type and result (`success`, or RFC 8460's result type), as the TLS \
             reports count them.",
            self.reports.totals().into_iter().map(|(kind, result, n)| {
                ([("policy_type", kind.name()), ("result", result.map_or("success", |r| r.name()))], n)
            }),
        )?;
        let Some(c) = &self.counts else { return Ok(()) };
        f.counter(
            "volley_tls_reports_written",
            "TLS report files written (one per policy domain and period).",
            c.written.load(Ordering::Relaxed),
        )?;
        f.counters(
            "volley_tls_report_deliveries",
            "Attempts to send a TLS report to an address its domain names: `sent` (POSTed, or mail made \
             durable for delivery), `failed` (tried again later), `not_wanted` (the domain publishes no \
             TLS-RPT record).",
            [
                ([("result", "sent")], c.sent.load(Ordering::Relaxed)),
                ([("result", "failed")], c.failed.load(Ordering::Relaxed)),
                ([("result", "not_wanted")], c.not_wanted.load(Ordering::Relaxed)),
            ],
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::deliver::mta_sts::Policy;
    use crate::engine::{TlsObserver, TlsSeen};
    use crate::metrics::Metrics;

    #[test]
    fn sessions_show_by_policy_type_and_result_and_survive_a_periods_end() {
        let reports = TlsReports::new();
        let policy = Policy::parse(b"version: STSv1\nmode: enforce\nmx: *.a.test\nmax_age: 600\n").unwrap();
        let watch = reports.watch("a.test", &policy);
        let addr = "127.0.0.2:25".parse().unwrap();
        watch.seen(TlsSeen::Secured { addr, host: Some("mx.a.test") });
        watch.seen(TlsSeen::Secured { addr, host: Some("mx.a.test") });
        watch.seen(TlsSeen::NotOffered { addr, host: Some("mx.a.test") });
        reports.dane_failed("mx.b.test", "bogus");
        let _ = reports.take(std::time::SystemTime::now());
        let counts = Arc::new(ReportCounts::default());
        counts.written(2);
        let sent =
            |result, earlier| Sent { file: "f".into(), domain: "a.test".into(), to: None, result, earlier };
        counts.sent(&[sent(Outcome::Sent("HTTP 200".into()), false), sent(Outcome::Sent("x".into()), true)]);
        counts.sent(&[sent(Outcome::Failed("500".into()), false)]);
        let mut metrics = Metrics::new();
        metrics.register(TlsReportCollector { reports, counts: Some(counts) });
        let text = metrics.render();
        for line in [
            r#"volley_tls_sessions_total{policy_type="sts",result="success"} 2"#,
            r#"volley_tls_sessions_total{policy_type="sts",result="starttls-not-supported"} 1"#,
            r#"volley_tls_sessions_total{policy_type="tlsa",result="dnssec-invalid"} 1"#,
            "volley_tls_reports_written_total 2",
            r#"volley_tls_report_deliveries_total{result="sent"} 1"#,
            r#"volley_tls_report_deliveries_total{result="failed"} 1"#,
        ] {
            assert!(text.contains(line), "{line} in\n{text}");
        }
    }
}

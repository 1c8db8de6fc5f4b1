//! The bench report: text for people, JSON for machines, and HdrHistogram's percentile format.

use std::fmt::Write as _;

use hdrhistogram::Histogram;

use crate::engine::stats::TlsStats;
use crate::engine::{METRICS, Metric, Report};
use crate::report::{json_object, json_string};

fn ms(micros: u64) -> f64 {
    micros as f64 / 1000.0
}

pub(crate) fn percentiles(h: &Histogram<u64>) -> [(&'static str, u64); 6] {
    let q = |x| if h.is_empty() { 0 } else { h.value_at_quantile(x) };
    [
        ("p50", q(0.5)),
        ("p90", q(0.9)),
        ("p99", q(0.99)),
        ("p99.9", q(0.999)),
        ("max", h.max()),
        ("count", h.len()),
    ]
}

/// Lines that warn about the run, for the text report and stderr alike.
pub fn warnings(report: &Report) -> Vec<String> {
    let s = &report.stats;
    let mut out = Vec::new();
    if s.violations > 0 {
        out.push(format!(
            "PROTOCOL VIOLATION: {} session(s) out of step with the server; {} message(s) uncertain \
             (the server may or may not have them: not counted delivered, not retried). Last: {}",
            s.violations,
            s.uncertain,
            s.last_violation.as_deref().unwrap_or("?")
        ));
    }
    out
}

/// Notes about the server, for the text report.
fn notes(report: &Report) -> Vec<String> {
    let s = &report.stats;
    let mut out = Vec::new();
    if s.cap_refusals > 0 {
        out.push(format!(
            "server capped connections at {}: it refused {} more while those were open; volley lowered its target",
            s.connection_cap, s.cap_refusals
        ));
    }
    if s.starttls_offered > 0 && s.tls.full + s.tls.resumed == 0 {
        out.push("the server offers STARTTLS; volley bench sent in plaintext (see --starttls)".into());
    }
    if !report.warmup.is_zero() {
        out.push(format!(
            "warmup {:?}: messages due before it are left out of the latency figures and the rate",
            report.warmup
        ));
    }
    out
}

fn counts(map: &std::collections::BTreeMap<&'static str, u64>) -> String {
    map.iter().map(|(k, n)| format!("{k} {n}")).collect::<Vec<_>>().join(", ")
}

/// The human-readable report.
pub fn text(report: &Report, target: &str) -> String {
    let s = &report.stats;
    let (rate, mbps) = report.rates();
    let mut out = String::new();
    let _ = writeln!(out, "target      {target} ({} threads, {})", report.threads, report.driver.name());
    let _ = writeln!(
        out,
        "messages    {} finished in {:.2}s; delivered {rate:.0} msg/s, {mbps:.1} MB/s",
        s.finished(),
        report.elapsed.as_secs_f64(),
    );
    let _ = writeln!(
        out,
        "outcomes    delivered {}, deferred {}, bounced {}, uncertain {}, unsent {} (retries {})",
        s.delivered, s.deferred, s.bounced, s.uncertain, s.unsent, s.retries
    );
    let r = &s.recipients;
    let _ = writeln!(
        out,
        "recipients  delivered {}, deferred {}, bounced {}, uncertain {}",
        r.delivered, r.deferred, r.bounced, r.uncertain
    );
    let _ = writeln!(out, "connections {} opened, {} failed to connect", s.connections, s.connect_failures);
    if !s.codes.is_empty() {
        let codes: Vec<String> = s.codes.iter().map(|(c, n)| format!("{c}: {n}")).collect();
        let _ = writeln!(out, "replies     final replies {}", codes.join(", "));
    }
    if !s.session_errors.is_empty() {
        let _ = writeln!(out, "sessions    ended by an error: {}", counts(&s.session_errors));
    }
    if !s.failures.is_empty() {
        let _ = writeln!(out, "unanswered  messages without a final reply: {}", counts(&s.failures));
    }
    if let Some(e) = &s.last_connect_error {
        let _ = writeln!(out, "last connect error: {e}");
    }
    if let Some(e) = s.last_session_error.as_ref().filter(|_| !s.session_errors.is_empty()) {
        let _ = writeln!(out, "last session error: {e}");
    }
    if let Some(line) = tls_line(&s.tls) {
        let _ = writeln!(out, "tls         {line}");
    }
    if s.authenticated > 0 {
        let _ = writeln!(out, "auth        {} sessions authenticated", s.authenticated);
    }
    for note in notes(report) {
        let _ = writeln!(out, "note        {note}");
    }
    for warning in warnings(report) {
        let _ = writeln!(out, "{warning}");
    }
    let _ = writeln!(out, "latency (ms)       p50       p90       p99     p99.9       max     count");
    for (metric, name) in METRICS {
        if matches!(metric, Metric::Tls | Metric::Auth) && s.histogram(metric).is_empty() {
            continue; // a plaintext or unauthenticated run: nothing to show
        }
        let p = percentiles(s.histogram(metric));
        let _ = writeln!(
            out,
            "  {name:<11}{:>9.3} {:>9.3} {:>9.3} {:>9.3} {:>9.3} {:>9}",
            ms(p[0].1),
            ms(p[1].1),
            ms(p[2].1),
            ms(p[3].1),
            ms(p[4].1),
            p[5].1
        );
    }
    out
}

/// TLS sessions in a line, if there were any (or any attempts).
fn tls_line(t: &TlsStats) -> Option<String> {
    if t.full + t.resumed + t.failed + t.plaintext == 0 {
        return None;
    }
    let negotiated: Vec<String> = t.negotiated.iter().map(|((v, c), n)| format!("{v} {c} {n}")).collect();
    Some(format!(
        "{} sessions (full handshakes {}, resumed {}): {}; handshakes failed {}, plaintext sessions {}",
        t.full + t.resumed,
        t.full,
        t.resumed,
        if negotiated.is_empty() { "none".into() } else { negotiated.join(", ") },
        t.failed,
        t.plaintext
    ))
}

/// The machine-readable report.
/// The report as JSON; `plot`: the run's curves and timeline, for `volley plot` later.
pub fn json(
    report: &Report,
    sizes: (usize, usize),
    target: &str,
    sink: Option<String>,
    plot: &crate::plot::Run,
) -> String {
    let s = &report.stats;
    let (rate, mbps) = report.rates();
    let hist = json_object(METRICS.iter().map(|&(metric, name)| {
        let fields = percentiles(s.histogram(metric)).map(|(k, v)| {
            (
                format!("{k}{}", if k == "count" { "" } else { "_ms" }),
                if k == "count" { v.to_string() } else { format!("{:.3}", ms(v)) },
            )
        });
        (name, json_object(fields))
    }));
    let codes = json_object(s.codes.iter().map(|(c, n)| (c.to_string(), n.to_string())));
    let failures = json_object(s.failures.iter().map(|(k, n)| (*k, n.to_string())));
    let session_errors = json_object(s.session_errors.iter().map(|(k, n)| (*k, n.to_string())));
    let r = &s.recipients;
    let mut fields = vec![
        ("target".to_owned(), json_string(target)),
        ("threads".into(), report.threads.to_string()),
        ("driver".into(), json_string(report.driver.name())),
        ("message_size_min".into(), sizes.0.to_string()),
        ("message_size_max".into(), sizes.1.to_string()),
        ("seconds".into(), format!("{:.3}", report.elapsed.as_secs_f64())),
        ("warmup_seconds".into(), format!("{:.3}", report.warmup.as_secs_f64())),
        ("produced".into(), report.produced.to_string()),
        ("delivered".into(), s.delivered.to_string()),
        ("deferred".into(), s.deferred.to_string()),
        ("bounced".into(), s.bounced.to_string()),
        ("uncertain".into(), s.uncertain.to_string()),
        ("unsent".into(), s.unsent.to_string()),
        ("retries".into(), s.retries.to_string()),
        (
            "recipients".into(),
            json_object([
                ("delivered", r.delivered.to_string()),
                ("deferred", r.deferred.to_string()),
                ("bounced", r.bounced.to_string()),
                ("uncertain", r.uncertain.to_string()),
            ]),
        ),
        ("messages_per_second".into(), format!("{rate:.1}")),
        ("megabytes_per_second".into(), format!("{mbps:.3}")),
        ("connections".into(), s.connections.to_string()),
        ("connect_failures".into(), s.connect_failures.to_string()),
        (
            "connection_cap".into(),
            if s.cap_refusals > 0 { s.connection_cap.to_string() } else { "null".into() },
        ),
        ("cap_refusals".into(), s.cap_refusals.to_string()),
        ("starttls_offered".into(), (s.starttls_offered > 0).to_string()),
        (
            "tls".into(),
            json_object([
                ("full_handshakes", s.tls.full.to_string()),
                ("resumed_handshakes", s.tls.resumed.to_string()),
                ("failed_handshakes", s.tls.failed.to_string()),
                ("plaintext_sessions", s.tls.plaintext.to_string()),
                (
                    "negotiated",
                    json_object(
                        s.tls.negotiated.iter().map(|((v, c), n)| (format!("{v} {c}"), n.to_string())),
                    ),
                ),
            ]),
        ),
        ("authenticated_sessions".into(), s.authenticated.to_string()),
        ("last_session_error".into(), s.last_session_error.as_deref().map_or("null".into(), json_string)),
        ("protocol_violations".into(), s.violations.to_string()),
        ("last_violation".into(), s.last_violation.as_deref().map_or("null".into(), json_string)),
        ("final_reply_codes".into(), codes),
        ("unanswered_messages".into(), failures),
        ("session_errors".into(), session_errors),
        ("latency".into(), hist),
    ];
    if let Some(sink) = sink {
        fields.push(("sink".into(), sink));
    }
    fields.extend(crate::plot::json_fields(plot));
    json_object(fields)
}

/// HdrHistogram's percentile-distribution text (as `HistogramLogProcessor` and the plotter at
/// hdrhistogram.github.io read it), values in milliseconds.
pub fn hgrm(h: &Histogram<u64>) -> String {
    let mut out = String::from("       Value     Percentile TotalCount 1/(1-Percentile)\n\n");
    if h.is_empty() {
        return out;
    }
    let mut total = 0u64;
    for v in h.iter_quantiles(5) {
        total += v.count_since_last_iteration();
        let q = v.quantile_iterated_to();
        let value = ms(v.value_iterated_to());
        if q < 1.0 {
            let _ = writeln!(out, "{value:12.3} {q:14.12} {total:10} {:14.2}", 1.0 / (1.0 - q));
        } else {
            let _ = writeln!(out, "{value:12.3} {q:14.12} {total:10}",);
        }
    }
    let _ = writeln!(
        out,
        "#[Mean    = {:12.3}, StdDeviation   = {:12.3}]",
        h.mean() / 1000.0,
        h.stdev() / 1000.0
    );
    let _ = writeln!(out, "#[Max     = {:12.3}, Total count    = {:12}]", ms(h.max()), h.len());
    // HdrHistogram's sub-bucket count: the power of two covering 2 * 10^significant digits.
    let sub_buckets = (2 * 10u64.pow(u32::from(h.sigfig()))).next_power_of_two();
    let _ = writeln!(out, "#[Buckets = {:12}, SubBuckets     = {:12}]", h.buckets(), sub_buckets);
    out
}

/// The histogram `--hgrm` writes: message latency.
pub fn latency(report: &Report) -> &Histogram<u64> {
    report.stats.histogram(Metric::Message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hgrm_format() {
        let mut h = Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3).unwrap();
        for v in 1..=1000u64 {
            h.record(v * 10).unwrap();
        }
        let text = hgrm(&h);
        assert!(text.starts_with("       Value     Percentile TotalCount 1/(1-Percentile)"));
        // Values print at the histogram's precision (3 significant digits).
        assert!(text.contains("#[Max     =       10.007, Total count    =         1000]"), "{text}");
        assert!(text.contains("SubBuckets     =         2048]"), "{text}");
        let last_value_line = text.lines().rfind(|l| !l.starts_with('#') && !l.trim().is_empty()).unwrap();
        assert!(last_value_line.contains("1.000000000000"), "{last_value_line}");
    }
}

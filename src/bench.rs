//! `volley bench` as a library: the job source (closed or open loop), the test message, and the
//! report in text, JSON and HdrHistogram's percentile-distribution format.

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use crate::engine::{Destination, Job, JobSource, METRICS, Metric, Next, Report};
use crate::proto::{Address, Body, Envelope, Message};
use crate::report::{json_object, json_string};

/// How much to send and how fast.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Plan {
    /// Stop after this many messages.
    pub messages: Option<u64>,
    /// Stop producing after this long.
    pub duration: Option<Duration>,
    /// Open loop: messages per second on a fixed schedule. `None`: closed loop.
    pub rate: Option<f64>,
}

/// A message of exactly `size` octets (headers included) with `recipients` recipients.
pub fn message(size: usize, recipients: usize) -> Message {
    let sender = Address::new("bench@volley.invalid").expect("static address is valid");
    let recipients = (0..recipients.max(1))
        .map(|i| Address::new(&format!("rcpt{i}@sink.invalid")).expect("generated address is valid"))
        .collect();
    let mut text = String::from(
        "From: <bench@volley.invalid>\r\nTo: <rcpt0@sink.invalid>\r\nSubject: volley bench\r\n\
         Message-ID: <bench@volley.invalid>\r\nMIME-Version: 1.0\r\nContent-Type: text/plain\r\n\r\n",
    );
    const LINE: &str = "The quick brown fox jumps over the lazy dog, again and again, for volley.";
    while text.len() + LINE.len() + 2 <= size {
        text.push_str(LINE);
        text.push_str("\r\n");
    }
    let missing = size.saturating_sub(text.len());
    if missing >= 3 {
        text.push_str(&"x".repeat(missing - 2));
        text.push_str("\r\n");
    }
    Message {
        envelope: Arc::new(Envelope { sender: Some(sender), recipients }),
        body: Body::new(text.as_bytes()),
    }
}

/// Generates the bench's jobs: as fast as the engine takes them (closed loop), or on a fixed
/// schedule with each job due at its scheduled time (open loop, coordinated omission corrected).
pub struct BenchSource {
    plan: Plan,
    destination: Arc<Destination>,
    message: Message,
    produced: u64,
    start: Option<Instant>,
}

impl BenchSource {
    pub fn new(plan: Plan, destination: Arc<Destination>, message: Message) -> Self {
        BenchSource { plan, destination, message, produced: 0, start: None }
    }
}

impl JobSource for BenchSource {
    fn next(&mut self, now: Instant) -> Next {
        let start = *self.start.get_or_insert(now);
        if self.plan.messages.is_some_and(|n| self.produced >= n) {
            return Next::Done;
        }
        let due = match self.plan.rate {
            Some(rate) => start + Duration::from_secs_f64(self.produced as f64 / rate),
            None => now,
        };
        if self.plan.duration.is_some_and(|d| due.saturating_duration_since(start) >= d) {
            return Next::Done;
        }
        if due > now {
            return Next::Wait(due);
        }
        self.produced += 1;
        Next::Job(Job {
            id: self.produced,
            destination: Arc::clone(&self.destination),
            message: self.message.clone(),
            due,
            attempts: 0,
            last_conn: 0,
            partial: false,
        })
    }
}

fn ms(micros: u64) -> f64 {
    micros as f64 / 1000.0
}

fn percentiles(h: &Histogram<u64>) -> [(&'static str, u64); 6] {
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

/// The human-readable report.
pub fn text(report: &Report, target: &str) -> String {
    let s = &report.stats;
    let secs = report.elapsed.as_secs_f64().max(1e-9);
    let mut out = String::new();
    let _ = writeln!(out, "target      {target} ({} threads, {})", report.threads, report.driver.name());
    let _ = writeln!(
        out,
        "messages    {} sent in {:.2}s: {:.0} msg/s, {:.1} MB/s",
        s.finished(),
        secs,
        s.delivered as f64 / secs,
        s.bytes as f64 / secs / 1e6
    );
    let _ = writeln!(
        out,
        "outcomes    delivered {}, deferred {}, bounced {}, unsent {} (retries {})",
        s.delivered, s.deferred, s.bounced, s.unsent, s.retries
    );
    let r = &s.recipients;
    let _ = writeln!(
        out,
        "recipients  delivered {}, deferred {}, bounced {}",
        r.delivered, r.deferred, r.bounced
    );
    let _ = writeln!(out, "connections {} opened, {} failed", s.connections, s.connect_failures);
    if !s.codes.is_empty() {
        let codes: Vec<String> = s.codes.iter().map(|(c, n)| format!("{c}: {n}")).collect();
        let _ = writeln!(out, "replies     {}", codes.join(", "));
    }
    for (kind, n) in s.failures.iter().chain(&s.session_errors) {
        let _ = writeln!(out, "failure     {kind}: {n}");
    }
    if let Some(e) = &s.last_connect_error {
        let _ = writeln!(out, "last connect error: {e}");
    }
    let _ = writeln!(out, "latency (ms)       p50       p90       p99     p99.9       max     count");
    for (metric, name) in METRICS {
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

/// The machine-readable report.
pub fn json(report: &Report, size: usize, target: &str, sink: Option<String>) -> String {
    let s = &report.stats;
    let secs = report.elapsed.as_secs_f64().max(1e-9);
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
        ("message_size".into(), size.to_string()),
        ("seconds".into(), format!("{secs:.3}")),
        ("produced".into(), report.produced.to_string()),
        ("delivered".into(), s.delivered.to_string()),
        ("deferred".into(), s.deferred.to_string()),
        ("bounced".into(), s.bounced.to_string()),
        ("unsent".into(), s.unsent.to_string()),
        ("retries".into(), s.retries.to_string()),
        (
            "recipients".into(),
            json_object([
                ("delivered", r.delivered.to_string()),
                ("deferred", r.deferred.to_string()),
                ("bounced", r.bounced.to_string()),
            ]),
        ),
        ("messages_per_second".into(), format!("{:.1}", s.delivered as f64 / secs)),
        ("megabytes_per_second".into(), format!("{:.3}", s.bytes as f64 / secs / 1e6)),
        ("connections".into(), s.connections.to_string()),
        ("connect_failures".into(), s.connect_failures.to_string()),
        ("reply_codes".into(), codes),
        ("failures".into(), failures),
        ("session_errors".into(), session_errors),
        ("latency".into(), hist),
    ];
    if let Some(sink) = sink {
        fields.push(("sink".into(), sink));
    }
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

    fn dest() -> Arc<Destination> {
        Arc::new(Destination::new(0, "t", vec![], 1))
    }

    #[test]
    fn message_has_the_requested_size() {
        for size in [200, 1000, 1001, 4096, 100_000] {
            let m = message(size, 3);
            assert_eq!(m.body.len(), size, "size {size}");
            assert_eq!(m.envelope.recipients.len(), 3);
        }
    }

    #[test]
    fn closed_loop_counts_messages() {
        let plan = Plan { messages: Some(3), duration: None, rate: None };
        let mut s = BenchSource::new(plan, dest(), message(300, 1));
        let now = Instant::now();
        let ids: Vec<u64> = (0..5)
            .filter_map(|_| match s.next(now) {
                Next::Job(j) => Some(j.id),
                _ => None,
            })
            .collect();
        assert_eq!(ids, vec![1, 2, 3]);
        assert!(matches!(s.next(now), Next::Done));
    }

    #[test]
    fn open_loop_schedules_at_the_rate_and_keeps_due_times() {
        let plan = Plan { messages: None, duration: Some(Duration::from_secs(1)), rate: Some(100.0) };
        let mut s = BenchSource::new(plan, dest(), message(300, 1));
        let t0 = Instant::now();
        let Next::Job(first) = s.next(t0) else { panic!("first job due at once") };
        assert_eq!(first.due, t0);
        match s.next(t0) {
            Next::Wait(t) => assert_eq!(t, t0 + Duration::from_millis(10)),
            other => panic!("{other:?}"),
        }
        // Far behind schedule: jobs keep their scheduled due time (latency counts from it).
        let late = t0 + Duration::from_millis(500);
        let Next::Job(j) = s.next(late) else { panic!("due") };
        assert_eq!(j.due, t0 + Duration::from_millis(10));
        let mut count = 2;
        while let Next::Job(_) = s.next(late + Duration::from_secs(5)) {
            count += 1;
        }
        assert_eq!(count, 100, "one second at 100/s");
    }

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

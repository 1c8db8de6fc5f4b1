//! Per-core measurements: latency histograms on the send path and outcome counters. Each core
//! owns its own; they are merged once, for the report.

use std::collections::BTreeMap;
use std::time::Duration;

use hdrhistogram::Histogram;

use crate::proto::client::{Completed, Disposition, TxnResult};

/// Highest latency recorded exactly: one hour, in microseconds. Longer values saturate.
const MAX_MICROS: u64 = 3_600_000_000;

/// The histograms, in the order reports list them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Metric {
    /// TCP connect.
    Connect,
    /// Connected to 220 greeting.
    Greeting,
    /// EHLO (or HELO) sent to its reply.
    Ehlo,
    /// Job due (created, or scheduled in open loop) to its final reply: what a user waits.
    Message,
    /// Job due to handed to a session.
    Queue,
    /// Handed to a session to its final reply: the server's share of the message latency.
    Transaction,
}

pub const METRICS: [(Metric, &str); 6] = [
    (Metric::Connect, "connect"),
    (Metric::Greeting, "greeting"),
    (Metric::Ehlo, "ehlo"),
    (Metric::Message, "message"),
    (Metric::Queue, "queue"),
    (Metric::Transaction, "transaction"),
];

/// Final states of recipients (a message may be delivered to some and not others).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RecipientTotals {
    pub delivered: u64,
    pub deferred: u64,
    pub bounced: u64,
}

#[derive(Debug, Clone)]
pub struct Stats {
    histograms: Vec<Histogram<u64>>,
    pub delivered: u64,
    pub deferred: u64,
    pub bounced: u64,
    /// Jobs never attempted because the run was cut short.
    pub unsent: u64,
    pub recipients: RecipientTotals,
    /// Attempts that ended deferred and were tried again.
    pub retries: u64,
    /// Content octets of delivered messages.
    pub bytes: u64,
    pub connections: u64,
    pub connect_failures: u64,
    /// Final reply codes of finished messages.
    pub codes: BTreeMap<u16, u64>,
    /// Messages finished without a reply, by failure kind.
    pub failures: BTreeMap<&'static str, u64>,
    /// Sessions that ended with an error, by kind.
    pub session_errors: BTreeMap<&'static str, u64>,
    pub last_connect_error: Option<String>,
}

impl Default for Stats {
    fn default() -> Self {
        let h = || Histogram::new_with_bounds(1, MAX_MICROS, 3).expect("static histogram bounds are valid");
        Stats {
            histograms: METRICS.iter().map(|_| h()).collect(),
            delivered: 0,
            deferred: 0,
            bounced: 0,
            unsent: 0,
            recipients: RecipientTotals::default(),
            retries: 0,
            bytes: 0,
            connections: 0,
            connect_failures: 0,
            codes: BTreeMap::new(),
            failures: BTreeMap::new(),
            session_errors: BTreeMap::new(),
            last_connect_error: None,
        }
    }
}

impl Stats {
    pub fn record(&mut self, metric: Metric, d: Duration) {
        let micros = u64::try_from(d.as_micros()).unwrap_or(u64::MAX).max(1);
        self.histograms[metric as usize].saturating_record(micros);
    }

    pub fn histogram(&self, metric: Metric) -> &Histogram<u64> {
        &self.histograms[metric as usize]
    }

    /// Counts a finished attempt's outcome as final.
    pub fn finish<T>(&mut self, done: &Completed<T>, disposition: Disposition) {
        match disposition {
            Disposition::Delivered => {
                self.delivered += 1;
                self.bytes += done.message.body.len() as u64;
            }
            Disposition::Deferred => self.deferred += 1,
            Disposition::Bounced => self.bounced += 1,
        }
        match &done.result {
            TxnResult::Accepted(r) | TxnResult::Rejected { reply: r, .. } => {
                *self.codes.entry(r.code).or_default() += 1
            }
            TxnResult::NoValidRecipients => {
                for (_, r) in &done.rejected {
                    *self.codes.entry(r.code).or_default() += 1;
                }
            }
            TxnResult::Aborted(e) => *self.failures.entry(e.kind()).or_default() += 1,
            TxnResult::NotAttempted(_) => *self.failures.entry("refused locally").or_default() += 1,
        }
    }

    pub fn finished(&self) -> u64 {
        self.delivered + self.deferred + self.bounced
    }

    pub fn merge(&mut self, o: &Stats) {
        for (a, b) in self.histograms.iter_mut().zip(&o.histograms) {
            // Same bounds on both sides, so adding cannot fail.
            let _ = a.add(b);
        }
        self.delivered += o.delivered;
        self.deferred += o.deferred;
        self.bounced += o.bounced;
        self.retries += o.retries;
        self.unsent += o.unsent;
        self.recipients.delivered += o.recipients.delivered;
        self.recipients.deferred += o.recipients.deferred;
        self.recipients.bounced += o.recipients.bounced;
        if o.last_connect_error.is_some() {
            self.last_connect_error.clone_from(&o.last_connect_error);
        }
        self.bytes += o.bytes;
        self.connections += o.connections;
        self.connect_failures += o.connect_failures;
        for (k, v) in &o.codes {
            *self.codes.entry(*k).or_default() += v;
        }
        for (k, v) in &o.failures {
            *self.failures.entry(k).or_default() += v;
        }
        for (k, v) in &o.session_errors {
            *self.session_errors.entry(k).or_default() += v;
        }
    }
}

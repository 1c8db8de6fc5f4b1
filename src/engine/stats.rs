//! Per-core measurements: latency histograms on the send path and outcome counters. Each core
//! owns its own; they are merged once, for the report.

use std::collections::BTreeMap;
use std::time::Duration;

use hdrhistogram::Histogram;

use crate::proto::Command;
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
    /// TLS handshake (after STARTTLS's 220, or right after connecting for implicit TLS).
    Tls,
    /// AUTH sent to its 235.
    Auth,
    /// MAIL FROM sent to its reply.
    Mail,
    /// Each RCPT TO sent to its reply.
    Rcpt,
    /// DATA sent to its reply (354).
    Data,
    /// End of data (the dot, or BDAT LAST with the content) sent to the final reply.
    EndOfData,
    /// Job due (created, or scheduled in open loop) to its final reply: what a user waits.
    Message,
    /// Job due to handed to a session.
    Queue,
    /// Handed to a session to its final reply: the server's share of the message latency.
    Transaction,
}

pub const METRICS: [(Metric, &str); 12] = [
    (Metric::Connect, "connect"),
    (Metric::Greeting, "greeting"),
    (Metric::Ehlo, "ehlo"),
    (Metric::Tls, "tls"),
    (Metric::Auth, "auth"),
    (Metric::Mail, "mail"),
    (Metric::Rcpt, "rcpt"),
    (Metric::Data, "data"),
    (Metric::EndOfData, "end-of-data"),
    (Metric::Transaction, "transaction"),
    (Metric::Queue, "queue"),
    (Metric::Message, "message"),
];

impl Metric {
    /// The histogram for a reply to `command`, if it has one.
    pub fn for_reply_to(command: Command) -> Option<Metric> {
        match command {
            Command::MailFrom => Some(Metric::Mail),
            Command::RcptTo => Some(Metric::Rcpt),
            Command::Data => Some(Metric::Data),
            Command::EndOfData | Command::Bdat => Some(Metric::EndOfData),
            _ => None,
        }
    }
}

/// Final states of recipients (a message may be delivered to some and not others).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RecipientTotals {
    pub delivered: u64,
    pub deferred: u64,
    pub bounced: u64,
    pub uncertain: u64,
}

/// TLS sessions: how they were set up and what they negotiated.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsStats {
    pub full: u64,
    pub resumed: u64,
    /// Sessions by protocol version and cipher suite.
    pub negotiated: BTreeMap<(&'static str, &'static str), u64>,
    /// Handshakes that failed, and connections that went on in plaintext under the
    /// opportunistic policy (STARTTLS not offered, refused, or its handshake failed earlier).
    pub failed: u64,
    pub plaintext: u64,
}

impl TlsStats {
    pub fn established(&mut self, info: &crate::tls::TlsInfo) {
        match info.kind {
            crate::tls::HandshakeKind::Full => self.full += 1,
            crate::tls::HandshakeKind::Resumed => self.resumed += 1,
        }
        *self.negotiated.entry((info.version, info.cipher_suite)).or_default() += 1;
    }

    fn merge(&mut self, o: &TlsStats) {
        self.full += o.full;
        self.resumed += o.resumed;
        self.failed += o.failed;
        self.plaintext += o.plaintext;
        for (k, v) in &o.negotiated {
            *self.negotiated.entry(*k).or_default() += v;
        }
    }
}

#[derive(Debug, Clone)]
pub struct Stats {
    histograms: Vec<Histogram<u64>>,
    pub delivered: u64,
    pub deferred: u64,
    pub bounced: u64,
    /// Messages whose outcome came from a session proven out of step (never retried).
    pub uncertain: u64,
    /// Jobs never attempted because the run was cut short.
    pub unsent: u64,
    /// Messages whose composition failed (see `engine::Unsendable`): never sent.
    pub unsendable: u64,
    pub recipients: RecipientTotals,
    /// Attempts that ended deferred and were tried again.
    pub retries: u64,
    /// Content octets of delivered messages.
    pub bytes: u64,
    /// Delivered messages due after the warmup, and their octets: what the rate counts.
    pub measured: u64,
    pub measured_bytes: u64,
    /// Whether the warmup is over: session and reply latencies are recorded only then.
    pub measuring: bool,
    pub connections: u64,
    pub connect_failures: u64,
    /// Connections or sessions refused while others to the same destination were open, and the
    /// most sessions the server kept open at once: its connection cap.
    pub cap_refusals: u64,
    pub connection_cap: u64,
    /// Final reply codes of finished messages.
    pub codes: BTreeMap<u16, u64>,
    /// Messages finished without a reply, by failure kind.
    pub failures: BTreeMap<&'static str, u64>,
    /// Sessions that ended with an error, by kind.
    pub session_errors: BTreeMap<&'static str, u64>,
    /// Sessions proven out of step with the server (a protocol violation), and the last one.
    pub violations: u64,
    pub last_violation: Option<String>,
    /// Sessions whose server offered STARTTLS.
    pub starttls_offered: u64,
    pub tls: TlsStats,
    /// Sessions that authenticated.
    pub authenticated: u64,
    /// The last session error, in full (a refused AUTH, a failed handshake).
    pub last_session_error: Option<String>,
    pub last_connect_error: Option<String>,
    /// Jobs handed back unattempted because their destination was suspended.
    pub suspended: u64,
    /// Shaping events the reader had no room for (see `RunState::events`).
    pub shaping_events_dropped: u64,
}

impl Default for Stats {
    fn default() -> Self {
        let h = || Histogram::new_with_bounds(1, MAX_MICROS, 3).expect("static histogram bounds are valid");
        Stats {
            histograms: METRICS.iter().map(|_| h()).collect(),
            delivered: 0,
            deferred: 0,
            bounced: 0,
            uncertain: 0,
            unsent: 0,
            unsendable: 0,
            recipients: RecipientTotals::default(),
            retries: 0,
            bytes: 0,
            measured: 0,
            measured_bytes: 0,
            measuring: true,
            connections: 0,
            connect_failures: 0,
            cap_refusals: 0,
            connection_cap: 0,
            codes: BTreeMap::new(),
            failures: BTreeMap::new(),
            session_errors: BTreeMap::new(),
            violations: 0,
            last_violation: None,
            starttls_offered: 0,
            tls: TlsStats::default(),
            authenticated: 0,
            last_session_error: None,
            last_connect_error: None,
            suspended: 0,
            shaping_events_dropped: 0,
        }
    }
}

impl Stats {
    /// Records a latency measured now: nothing during the warmup.
    pub fn record(&mut self, metric: Metric, d: Duration) {
        if self.measuring {
            self.record_always(metric, d);
        }
    }

    /// Records a latency whose message the caller has judged to be measured.
    pub fn record_always(&mut self, metric: Metric, d: Duration) {
        // u64 arithmetic: as_micros() works in u128, and this runs several times per message.
        let micros =
            d.as_secs().saturating_mul(1_000_000).saturating_add(u64::from(d.subsec_micros())).max(1);
        self.histograms[metric as usize].saturating_record(micros);
    }

    /// A phase's histogram, to fill from elsewhere (a saved run read back).
    pub fn histogram_mut(&mut self, metric: Metric) -> &mut Histogram<u64> {
        &mut self.histograms[metric as usize]
    }

    pub fn histogram(&self, metric: Metric) -> &Histogram<u64> {
        &self.histograms[metric as usize]
    }

    /// Counts a finished attempt's outcome as final.
    pub fn finish<T>(&mut self, done: &Completed<T>, disposition: Disposition) {
        match disposition {
            Disposition::Delivered => {
                self.delivered += 1;
                self.bytes += done.message.len() as u64;
            }
            Disposition::Deferred => self.deferred += 1,
            Disposition::Bounced => self.bounced += 1,
            Disposition::Uncertain => self.uncertain += 1,
        }
        match &done.result {
            TxnResult::Accepted(r) | TxnResult::Rejected { reply: r, .. } => {
                *self.codes.entry(r.code).or_default() += 1
            }
            TxnResult::NoValidRecipients => {
                for r in &done.rejected {
                    *self.codes.entry(r.reply.code).or_default() += 1;
                }
            }
            TxnResult::Aborted(e) => *self.failures.entry(e.kind()).or_default() += 1,
            TxnResult::NotAttempted(_) => *self.failures.entry("refused locally").or_default() += 1,
            // Its reply (if any) is not to be believed, so it is not counted among the codes.
            TxnResult::Uncertain { .. } => {}
        }
    }

    pub fn finished(&self) -> u64 {
        self.delivered + self.deferred + self.bounced + self.uncertain
    }

    /// A session ended with `error`: counted by kind, and as a violation when it proves the
    /// server out of step.
    pub fn session_failed(&mut self, error: &crate::proto::SessionError) {
        *self.session_errors.entry(error.kind()).or_default() += 1;
        self.last_session_error = Some(error.to_string());
        if error.is_violation() {
            self.violations += 1;
            self.last_violation = Some(error.to_string());
        }
    }

    pub fn merge(&mut self, o: &Stats) {
        for (a, b) in self.histograms.iter_mut().zip(&o.histograms) {
            // Same bounds on both sides, so adding cannot fail.
            let _ = a.add(b);
        }
        self.delivered += o.delivered;
        self.deferred += o.deferred;
        self.bounced += o.bounced;
        self.uncertain += o.uncertain;
        self.retries += o.retries;
        self.unsent += o.unsent;
        self.unsendable += o.unsendable;
        self.recipients.delivered += o.recipients.delivered;
        self.recipients.deferred += o.recipients.deferred;
        self.recipients.bounced += o.recipients.bounced;
        self.recipients.uncertain += o.recipients.uncertain;
        self.violations += o.violations;
        self.starttls_offered += o.starttls_offered;
        self.tls.merge(&o.tls);
        self.authenticated += o.authenticated;
        if o.last_session_error.is_some() {
            self.last_session_error.clone_from(&o.last_session_error);
        }
        if o.last_violation.is_some() {
            self.last_violation.clone_from(&o.last_violation);
        }
        if o.last_connect_error.is_some() {
            self.last_connect_error.clone_from(&o.last_connect_error);
        }
        self.bytes += o.bytes;
        self.measured += o.measured;
        self.measured_bytes += o.measured_bytes;
        self.connections += o.connections;
        self.connect_failures += o.connect_failures;
        self.cap_refusals += o.cap_refusals;
        self.suspended += o.suspended;
        self.shaping_events_dropped += o.shaping_events_dropped;
        self.connection_cap = self.connection_cap.max(o.connection_cap);
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

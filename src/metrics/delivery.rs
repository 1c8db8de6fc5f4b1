//! The delivery log's counts as metrics: recipients by outcome and destination, failures by
//! category, and the time from acceptance to a recipient's final record. Counted by the ledger
//! on the log thread as it writes each record ([`DeliveryMeter`], plain numbers, no lock), and
//! copied out after each sync of the log ([`DeliveryMeter::publish`]), so a scrape sees what
//! the log durably says.
//!
//! A destination (the recipient's domain) gets its own label only while it is among the
//! [`LABELED`] busiest, re-ranked every [`RERANK_EVERY`] by recent volume (halved at each
//! ranking); the rest are `other`. Counters stay monotonic: a destination's label counts from
//! when it got it (what it had before stays in `other`), and a destination that loses its
//! label hands its counts to `other`, so nothing grows with the destinations ever seen.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;

use super::{Buckets, Family};
use crate::deliver::bounce::Category;
use crate::deliver::ledger::CategoryTally;
use crate::deliver::log::Status;
use crate::hash::FxMap;

/// Destinations with a label of their own.
pub const LABELED: usize = 20;
/// Destinations whose volume is kept to rank them; past it, the quieter half is forgotten.
const CANDIDATES: usize = 1024;
/// How often the labeled destinations are chosen again.
pub const RERANK_EVERY: Duration = Duration::from_secs(60);

/// Counts per status, at its place in [`Status::ALL`]; only those about a recipient (see
/// [`about_a_recipient`]) are ever counted.
type PerOutcome = [u64; Status::ALL.len()];

fn about_a_recipient(status: Status) -> bool {
    status.is_final() || status == Status::Deferred
}

fn slot(status: Status) -> Option<usize> {
    Status::ALL.iter().position(|s| *s == status).filter(|_| about_a_recipient(status))
}

/// What a scrape shows.
#[derive(Debug, Clone, Default)]
struct Counts {
    labeled: Vec<(Arc<str>, PerOutcome)>,
    other: PerOutcome,
    /// The ledger's own tally of failures by category (see [`DeliveryMeter::publish`]).
    categories: BTreeMap<Category, CategoryTally>,
    /// Acceptance (or the campaign's start of the recipient) to its final record.
    to_final: Buckets,
    received: u64,
    shaping: u64,
}

/// The ledger's side: counts records as they are written.
#[derive(Debug, Default)]
pub struct DeliveryMeter {
    counts: Counts,
    /// The destinations seen lately, labeled or not (bounded: see [`CANDIDATES`], so Fx's
    /// lack of flooding protection costs at most a slower lookup): one lookup a record.
    seen: FxMap<Arc<str>, Seen>,
    ranked: Option<Instant>,
    shared: Arc<DeliveryMetrics>,
}

#[derive(Debug, Default, Clone, Copy)]
struct Seen {
    /// Records lately (halved at each ranking).
    volume: u64,
    /// Where its counts are in `Counts::labeled`, while it has a label.
    label: Option<usize>,
}

/// The scrape's side: the counts as of the last sync of the log.
#[derive(Debug, Default)]
pub struct DeliveryMetrics {
    published: Mutex<Counts>,
}

impl DeliveryMeter {
    pub fn new() -> DeliveryMeter {
        DeliveryMeter::default()
    }

    /// What to register with [`super::Metrics`].
    pub fn metrics(&self) -> Arc<DeliveryMetrics> {
        Arc::clone(&self.shared)
    }

    /// Counts a record: its status, its recipient's `domain` (lowercase), and for a final one
    /// the time since the recipient was accepted.
    pub fn count(&mut self, status: Status, domain: Option<&str>, queued: Option<Duration>) {
        match status {
            Status::Received => self.counts.received += 1,
            Status::Shaping => self.counts.shaping += 1,
            _ => {}
        }
        if status.is_final()
            && let Some(q) = queued
        {
            self.counts.to_final.observe_micros(q.as_micros() as u64);
        }
        let Some(i) = slot(status) else { return };
        let Some(domain) = domain else {
            self.counts.other[i] += 1;
            return;
        };
        if let Some(seen) = self.seen.get_mut(domain) {
            seen.volume += 1;
            match seen.label {
                Some(at) => self.counts.labeled[at].1[i] += 1,
                None => self.counts.other[i] += 1,
            }
            return;
        }
        self.counts.other[i] += 1;
        if self.seen.len() >= CANDIDATES {
            self.forget_quiet_half();
        }
        self.seen.insert(domain.into(), Seen { volume: 1, label: None });
    }

    /// Keeps the louder half of the unlabeled destinations (labeled ones stay).
    fn forget_quiet_half(&mut self) {
        let mut volumes: Vec<u64> = self.seen.values().map(|s| s.volume).collect();
        let middle = volumes.len() / 2;
        let (_, median, _) = volumes.select_nth_unstable(middle);
        let median = *median;
        self.seen.retain(|_, s| s.volume > median || s.label.is_some());
    }

    /// Makes the counts so far, with the ledger's failures by category, what a scrape sees
    /// (call once the log holds them durably); chooses the labeled destinations again if it
    /// is time, or if a label is free and a destination without one has been seen.
    pub fn publish(&mut self, now: Instant, categories: &BTreeMap<Category, CategoryTally>) {
        self.counts.categories.clone_from(categories);
        let due = self.ranked.is_none_or(|at| now.duration_since(at) >= RERANK_EVERY);
        let labeled = self.counts.labeled.len();
        let free = labeled < LABELED && self.seen.len() > labeled;
        if due || free {
            self.rank();
            if due {
                self.ranked = Some(now);
                self.seen.values_mut().for_each(|s| s.volume /= 2);
                self.seen.retain(|_, s| s.volume > 0 || s.label.is_some());
            }
        }
        let mut published = self.shared.published.lock().unwrap_or_else(PoisonError::into_inner);
        published.clone_from(&self.counts);
    }

    fn rank(&mut self) {
        let mut by_volume: Vec<(&Arc<str>, u64)> = self.seen.iter().map(|(d, s)| (d, s.volume)).collect();
        // Ties by name, so the ranking does not depend on the map's order.
        by_volume.sort_unstable_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(b.0)));
        let top: Vec<Arc<str>> = by_volume.iter().take(LABELED).map(|(d, _)| Arc::clone(d)).collect();
        let mut labeled = Vec::with_capacity(top.len());
        for (domain, counts) in std::mem::take(&mut self.counts.labeled) {
            if top.contains(&domain) {
                labeled.push((domain, counts));
            } else {
                // Its counts go on under `other`.
                for (o, c) in self.counts.other.iter_mut().zip(counts) {
                    *o += c;
                }
            }
        }
        for domain in top {
            if !labeled.iter().any(|(d, _)| *d == domain) {
                labeled.push((domain, PerOutcome::default()));
            }
        }
        labeled.sort_by(|a, b| a.0.cmp(&b.0));
        self.seen.values_mut().for_each(|s| s.label = None);
        for (at, (domain, _)) in labeled.iter().enumerate() {
            if let Some(s) = self.seen.get_mut(domain) {
                s.label = Some(at);
            }
        }
        self.counts.labeled = labeled;
    }
}

impl Collector for DeliveryMetrics {
    fn encode(&self, mut encoder: DescriptorEncoder) -> std::fmt::Result {
        let counts = self.published.lock().unwrap_or_else(PoisonError::into_inner).clone();
        let mut f = Family::new(&mut encoder);
        let per_destination = |i: usize| {
            let labeled = counts.labeled.iter().map(move |(d, c)| (d.as_ref(), c[i]));
            labeled.chain([("other", counts.other[i])])
        };
        let mut outcomes = Vec::new();
        for (i, status) in Status::ALL.iter().enumerate().filter(|(_, s)| about_a_recipient(**s)) {
            for (destination, n) in per_destination(i) {
                if n > 0 || destination == "other" {
                    outcomes.push(([("outcome", status.name()), ("destination", destination)], n));
                }
            }
        }
        f.counters(
            "volley_recipients",
            "Records of the delivery log about recipients, by outcome and destination (the busiest by \
             name, the rest `other`): `deferred` counts attempts, the others are final, one a recipient.",
            outcomes,
        )?;
        f.counters(
            "volley_failures",
            "Deferred, bounced and expired recipients by the failure's category.",
            counts.categories.iter().flat_map(|(category, t)| {
                [("deferred", t.deferred), ("bounced", t.bounced), ("expired", t.expired)]
                    .into_iter()
                    .filter(|(_, n)| *n > 0)
                    .map(|(outcome, n)| ([("category", category.as_str()), ("outcome", outcome)], n))
            }),
        )?;
        f.histogram(
            "volley_delivery_duration",
            "From a recipient's acceptance (serve) or the campaign's first attempt at it (send) to its final record.",
            &counts.to_final,
        )?;
        f.counter("volley_received_messages", "Messages accepted for delivery (serve).", counts.received)?;
        f.counter(
            "volley_shaping_actions",
            "Destinations suspended or slowed by a shaping reaction.",
            counts.shaping,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Metrics;

    fn scrape(meter: &DeliveryMeter) -> String {
        let mut metrics = Metrics::new();
        metrics.register(meter.metrics());
        metrics.render()
    }

    fn value(text: &str, series: &str) -> Option<u64> {
        text.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
    }

    #[test]
    fn a_scrape_sees_what_was_published_and_the_busiest_destinations_by_name() {
        let mut meter = DeliveryMeter::new();
        let t0 = Instant::now();
        meter.count(Status::Delivered, Some("big.test"), Some(Duration::from_millis(3)));
        meter.count(Status::Deferred, Some("big.test"), None);
        // The ledger's tally of that deferral's category.
        let categories =
            BTreeMap::from([(Category::Policy, CategoryTally { deferred: 1, ..Default::default() })]);
        assert!(!scrape(&meter).contains("big.test"), "nothing before it is published");
        meter.publish(t0, &categories);
        let text = scrape(&meter);
        // Counted before it had a label: under `other`.
        assert_eq!(
            value(&text, r#"volley_recipients_total{outcome="delivered",destination="other"}"#),
            Some(1)
        );
        assert_eq!(value(&text, r#"volley_failures_total{category="policy",outcome="deferred"}"#), Some(1));
        assert_eq!(value(&text, "volley_delivery_duration_seconds_count"), Some(1));
        for _ in 0..5 {
            meter.count(Status::Delivered, Some("big.test"), None);
        }
        meter.publish(t0, &categories);
        let text = scrape(&meter);
        assert_eq!(
            value(&text, r#"volley_recipients_total{outcome="delivered",destination="big.test"}"#),
            Some(5)
        );
        assert_eq!(
            value(&text, r#"volley_recipients_total{outcome="delivered",destination="other"}"#),
            Some(1)
        );
    }

    #[test]
    fn labels_are_bounded_and_every_counter_only_grows() {
        let mut meter = DeliveryMeter::new();
        let mut now = Instant::now();
        let total = |text: &str| -> u64 {
            text.lines()
                .filter(|l| l.starts_with(r#"volley_recipients_total{outcome="delivered""#))
                .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
                .sum()
        };
        let mut previous_other = 0;
        let mut sent = 0;
        for round in 0..5u64 {
            // Each round a different set of 30 destinations is busiest.
            for d in 0..30 {
                for _ in 0..(d + 1) {
                    meter.count(Status::Delivered, Some(&format!("d{}.test", round * 30 + d)), None);
                    sent += 1;
                }
            }
            now += RERANK_EVERY;
            meter.publish(now, &BTreeMap::new());
            let text = scrape(&meter);
            let labels = text.lines().filter(|l| l.starts_with("volley_recipients_total{")).count();
            assert!(labels <= LABELED + 1, "{labels} series");
            assert_eq!(total(&text), sent, "nothing lost or counted twice");
            let other =
                value(&text, r#"volley_recipients_total{outcome="delivered",destination="other"}"#).unwrap();
            assert!(other >= previous_other, "`other` never goes down");
            previous_other = other;
        }
        assert!(meter.seen.len() <= CANDIDATES);
    }
}

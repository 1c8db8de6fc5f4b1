//! A campaign's books by recipient domain: a tally and a latency histogram per domain, for
//! the busiest domains only, so a list of millions of domains keeps a bounded ledger.

use hdrhistogram::Histogram;
use std::time::Duration;

use super::log::Status;
use crate::hash::DomainMap;

/// Domains that get their own latency histogram (1 significant digit, ~2 KB each); later ones
/// are counted without latency (the report shows `-`), until folding frees some.
const MAX_DOMAIN_HISTOGRAMS: usize = 10_000;
/// Domains with books of their own: the busiest this many (by recipients with an outcome)
/// are kept whenever twice as many have books, and the rest folded into one "other domains"
/// tally, so a list of millions of domains keeps a bounded ledger.
pub const MAX_DOMAIN_BOOKS: usize = 10_000;

/// Counts by final state (and deferrals, which are attempts).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Tally {
    pub delivered: u64,
    pub deferred: u64,
    pub bounced: u64,
    pub expired: u64,
    pub rejected: u64,
    pub suppressed: u64,
    pub uncertain: u64,
}

impl Tally {
    pub fn count(&mut self, status: Status) {
        match status {
            Status::Delivered => self.delivered += 1,
            Status::Deferred => self.deferred += 1,
            Status::Bounced => self.bounced += 1,
            Status::Expired => self.expired += 1,
            Status::Rejected => self.rejected += 1,
            Status::Suppressed => self.suppressed += 1,
            Status::Uncertain => self.uncertain += 1,
            Status::Run | Status::Shaping | Status::Received => {}
        }
    }

    pub fn finals(&self) -> u64 {
        self.delivered + self.bounced + self.expired + self.rejected + self.suppressed + self.uncertain
    }

    fn add(&mut self, other: &Tally) {
        self.delivered += other.delivered;
        self.deferred += other.deferred;
        self.bounced += other.bounced;
        self.expired += other.expired;
        self.rejected += other.rejected;
        self.suppressed += other.suppressed;
        self.uncertain += other.uncertain;
    }
}

/// How much a domain had: the order of the report's domains, and which keep their books.
fn volume(t: &Tally) -> u64 {
    t.finals() + t.deferred
}

/// One recipient domain's books.
#[derive(Debug, Clone)]
struct DomainBook {
    pub tally: Tally,
    /// Delivered recipients' queue time (admission to the server's final reply), milliseconds.
    latency: Option<Histogram<u32>>,
}

/// What the report shows for a domain.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DomainSummary {
    pub domain: String,
    #[serde(flatten)]
    pub tally: Tally,
    pub p50_ms: Option<u64>,
    pub p99_ms: Option<u64>,
    /// Delivered recipients' queue time, milliseconds (for `send --plot`).
    #[serde(skip)]
    pub queue_ms: Option<Histogram<u32>>,
}

/// The books of every domain, up to [`MAX_DOMAIN_BOOKS`] of their own.
#[derive(Debug, Default)]
pub struct DomainBooks {
    books: DomainMap<DomainBook>,
    /// What domains folded out of `books` had.
    other: Option<Tally>,
    /// Books with a histogram.
    histograms: usize,
}

impl DomainBooks {
    /// Counts an outcome of a recipient at `domain` (lower-case); `latency`: a delivered
    /// recipient's queue time.
    pub fn count(&mut self, domain: &str, status: Status, latency: Option<Duration>) {
        if self.books.len() >= 2 * MAX_DOMAIN_BOOKS && !self.books.contains_key(domain) {
            self.fold_quiet_domains();
        }
        let book = match self.books.get_mut(domain) {
            Some(book) => book,
            None => self
                .books
                .entry(domain.to_owned())
                .or_insert(DomainBook { tally: Tally::default(), latency: None }),
        };
        book.tally.count(status);
        if let Some(queued) = latency {
            if book.latency.is_none() && self.histograms < MAX_DOMAIN_HISTOGRAMS {
                book.latency = Histogram::new_with_bounds(1, 86_400_000, 1).ok();
                self.histograms += 1;
            }
            if let Some(h) = &mut book.latency {
                h.saturating_record((queued.as_millis() as u64).max(1));
            }
        }
    }

    /// Keeps the books of the [`MAX_DOMAIN_BOOKS`] busiest domains and adds the others' tallies
    /// into `other`. A folded domain that has more outcomes later gets a book again.
    fn fold_quiet_domains(&mut self) {
        let mut volumes: Vec<u64> = self.books.values().map(|b| volume(&b.tally)).collect();
        if volumes.len() <= MAX_DOMAIN_BOOKS {
            return;
        }
        let cut = volumes.len() - MAX_DOMAIN_BOOKS;
        // The smallest volume among the busiest MAX_DOMAIN_BOOKS.
        let threshold = *volumes.select_nth_unstable(cut).1;
        // Of the domains at the threshold, as many are kept as fit.
        let above = self.books.values().filter(|b| volume(&b.tally) > threshold).count();
        let mut room_at_threshold = MAX_DOMAIN_BOOKS.saturating_sub(above);
        let other = self.other.get_or_insert_with(Tally::default);
        let mut freed = 0;
        self.books.retain(|_, b| {
            let v = volume(&b.tally);
            if v > threshold || (v == threshold && room_at_threshold > 0) {
                room_at_threshold -= usize::from(v == threshold);
                return true;
            }
            other.add(&b.tally);
            freed += usize::from(b.latency.is_some());
            false
        });
        self.histograms -= freed;
    }

    /// The `n` domains with the highest p99 queue time, for the progress line.
    pub fn slowest(&self, n: usize) -> String {
        let mut ranked: Vec<(u64, &str)> = self
            .books
            .iter()
            .filter_map(|(d, b)| {
                b.latency.as_ref().filter(|h| !h.is_empty()).map(|h| (h.value_at_quantile(0.99), d.as_str()))
            })
            .collect();
        ranked.sort_unstable_by(|a, b| b.cmp(a));
        ranked
            .iter()
            .take(n)
            .map(|(p99, d)| format!("{d} p99 {}", fmt_ms(*p99)))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// The domains with books, busiest first, and the folded ones together.
    pub fn summaries(self) -> (Vec<DomainSummary>, Option<Tally>) {
        let mut domains: Vec<DomainSummary> = self
            .books
            .into_iter()
            .map(|(domain, b)| {
                let q = |p: f64| b.latency.as_ref().filter(|h| !h.is_empty()).map(|h| h.value_at_quantile(p));
                let (p50_ms, p99_ms) = (q(0.5), q(0.99));
                DomainSummary {
                    domain,
                    p50_ms,
                    p99_ms,
                    tally: b.tally,
                    queue_ms: b.latency.filter(|h| !h.is_empty()),
                }
            })
            .collect();
        domains.sort_by(|a, b| volume(&b.tally).cmp(&volume(&a.tally)).then_with(|| a.domain.cmp(&b.domain)));
        (domains, self.other)
    }
}

pub fn fmt_ms(ms: u64) -> String {
    if ms >= 10_000 {
        format!("{:.0}s", ms as f64 / 1000.0)
    } else if ms >= 1000 {
        format!("{:.1}s", ms as f64 / 1000.0)
    } else {
        format!("{ms}ms")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn past_twice_the_bound_the_quietest_domains_are_folded_together() {
        let mut books = DomainBooks::default();
        // A busy domain first, then a flood of domains with one outcome each.
        for _ in 0..5 {
            books.count("busy.test", Status::Delivered, Some(Duration::from_millis(20)));
        }
        books.count("busy.test", Status::Deferred, None);
        for i in 0..2 * MAX_DOMAIN_BOOKS {
            books.count(&format!("d{i}.test"), Status::Delivered, Some(Duration::from_millis(5)));
        }
        assert!(books.books.len() <= 2 * MAX_DOMAIN_BOOKS);
        assert!(books.histograms <= books.books.len());
        // A busy domain arriving after the flood still gets its book.
        for _ in 0..3 {
            books.count("late.test", Status::Bounced, None);
        }
        let (domains, other) = books.summaries();
        assert!(domains.len() <= 2 * MAX_DOMAIN_BOOKS && domains.len() > MAX_DOMAIN_BOOKS);
        assert_eq!(domains[0].domain, "busy.test");
        assert_eq!((domains[0].tally.delivered, domains[0].tally.deferred), (5, 1));
        assert_eq!(domains[0].p50_ms, Some(20));
        assert_eq!((domains[1].domain.as_str(), domains[1].tally.bounced), ("late.test", 3));
        let other = other.expect("some domains were folded");
        // Nothing is lost: the folded domains' outcomes are in `other`.
        let kept: u64 = domains.iter().map(|d| d.tally.delivered).sum();
        assert_eq!(kept + other.delivered, 5 + 2 * MAX_DOMAIN_BOOKS as u64);
        assert_eq!(other.delivered as usize + domains.len() - 2, 2 * MAX_DOMAIN_BOOKS);
    }

    #[test]
    fn few_domains_are_never_folded() {
        let mut books = DomainBooks::default();
        for i in 0..100 {
            books.count(&format!("d{i}.test"), Status::Delivered, None);
        }
        let (domains, other) = books.summaries();
        assert_eq!((domains.len(), other), (100, None));
    }

    #[test]
    fn durations_print_at_a_readable_precision() {
        assert_eq!(fmt_ms(999), "999ms");
        assert_eq!(fmt_ms(1500), "1.5s");
        assert_eq!(fmt_ms(12_400), "12s");
    }
}

//! How long a helper thread (the producer, the log) waits when it finds no room or no work.
//!
//! Those threads share cores with the engines. Every wake-up preempts an engine (a context switch,
//! and the two evict each other's caches), so a helper should wake as seldom as it can while
//! still keeping the queues between them from filling or running dry. [`AdaptiveWait`] does that
//! with the work itself as the measure: the wait doubles while each wake finds little to do and
//! halves when a wake finds much, so it settles where one wake handles about `target` items.
//! A sender held back by DKIM at ~28,000 messages a second thus wakes its producer and log a few
//! dozen times a second instead of a thousand.

use std::time::Duration;

#[derive(Debug, Clone)]
pub struct AdaptiveWait {
    wait: Duration,
    min: Duration,
    max: Duration,
    /// Items one wake should find: well under the capacity of the queue being filled or drained.
    target: usize,
    /// Items handled since the last wait.
    done: usize,
}

impl AdaptiveWait {
    /// Starts at `min`, the shortest wait (the queues' fastest turnover); never waits longer than
    /// `max`.
    pub fn new(min: Duration, max: Duration, target: usize) -> AdaptiveWait {
        AdaptiveWait { wait: min, min, max: max.max(min), target: target.max(1), done: 0 }
    }

    /// Counts `n` items handled since the last wait.
    pub fn done(&mut self, n: usize) {
        self.done = self.done.saturating_add(n);
    }

    /// The wait to take now, adjusted to the work found since the last one.
    pub fn next_wait(&mut self) -> Duration {
        if self.done < self.target / 2 {
            self.wait = (self.wait * 2).min(self.max);
        } else if self.done > self.target.saturating_mul(2) {
            self.wait = (self.wait / 2).max(self.min);
        }
        self.done = 0;
        self.wait
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    /// Feeds `rate` items per millisecond of wait (what a queue turning over at that rate gives)
    /// and returns the waits taken.
    fn settle(b: &mut AdaptiveWait, rate: f64, rounds: usize) -> Vec<Duration> {
        let mut waits = Vec::new();
        let mut wait = Duration::ZERO;
        for _ in 0..rounds {
            b.done((wait.as_secs_f64() * 1000.0 * rate) as usize);
            wait = b.next_wait();
            waits.push(wait);
        }
        waits
    }

    #[test]
    fn settles_where_a_wake_finds_about_the_target() {
        // (items per ms, expected settled wait): slow turnover waits long, fast waits short,
        // always within [min, max].
        for (rate, settled) in
            [(0.0, 16 * MS), (28.0, 16 * MS), (100.0, 4 * MS), (400.0, 2 * MS), (5_000.0, MS)]
        {
            let mut b = AdaptiveWait::new(MS, 16 * MS, 512);
            let waits = settle(&mut b, rate, 12);
            assert_eq!(*waits.last().unwrap(), settled, "rate {rate}/ms: {waits:?}");
            assert!(waits.iter().all(|w| (MS..=16 * MS).contains(w)));
            let found = settled.as_secs_f64() * 1000.0 * rate;
            assert!(settled == 16 * MS || settled == MS || (256.0..=1024.0).contains(&found), "{found}");
        }
    }

    #[test]
    fn a_burst_of_work_shortens_the_wait_at_once() {
        let mut b = AdaptiveWait::new(MS, 32 * MS, 100);
        for _ in 0..10 {
            b.next_wait();
        }
        assert_eq!(b.next_wait(), 32 * MS, "idle: the longest wait");
        b.done(250);
        assert_eq!(b.next_wait(), 16 * MS, "more than twice the target: half");
        b.done(100);
        assert_eq!(b.next_wait(), 16 * MS, "about the target: kept");
        b.done(usize::MAX);
        b.done(1);
        assert_eq!(b.next_wait(), 8 * MS, "counts saturate");
        assert_eq!(b.done, 0, "the count starts over after each wait");
    }

    #[test]
    fn degenerate_settings_stay_sane() {
        let mut b = AdaptiveWait::new(4 * MS, MS, 0);
        assert_eq!(b.next_wait(), 4 * MS, "max below min: min");
        b.done(3);
        assert_eq!(b.next_wait(), 4 * MS);
    }
}

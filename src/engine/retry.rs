//! Whether a deferred recipient is tried again, and when: one decision for every way a deferral
//! comes about (a server's reply, a lost session, a suspended destination, DNS that could not
//! answer), whoever applies it. The engine applies [`Verdict::Now`] itself (a load test's
//! immediate retries); a job source's ledger applies the rest (`deliver::ledger`).

use std::time::{Duration, Instant};

use crate::rng::Rng;

/// How deferred recipients are retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryPolicy {
    /// A load test's: again at once, on the next connection, up to `retries` more times; then
    /// the deferral is final.
    Immediate { retries: u32 },
    /// Store and forward: later, on the schedule, until the recipient's maximum age. The engine
    /// hands every deferral back (see `EngineConfig::outcomes`).
    Scheduled(Schedule),
}

/// The retry schedule: doubling waits with jitter, until a maximum age.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Schedule {
    /// The wait before the first retry; it doubles per attempt...
    pub first: Duration,
    /// ...up to this.
    pub max: Duration,
    /// After this long since the recipient was first admitted, a deferral is final: expired.
    pub max_age: Duration,
}

/// A recipient whose attempt was deferred.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deferral {
    /// Attempts made, the deferred one included (at least one).
    pub attempts: u32,
    /// When it was first admitted: its maximum age counts from here.
    pub born: Instant,
    /// Not to be retried before this (its destination is suspended until then).
    pub not_before: Option<Instant>,
}

/// What becomes of a deferral.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Try again at once.
    Now,
    /// Try again then.
    At(Instant),
    /// No more tries: the deferral is the recipient's final state (expired, for a campaign).
    Final,
}

impl RetryPolicy {
    /// The one retry-or-expire decision. Jitter of ±10% on scheduled waits keeps a greylisted
    /// batch from coming back all at once; the last retry is at the deadline itself, so a
    /// recipient gets its chance right before it expires. A suspension that lasts past the
    /// deadline expires the recipient: it would otherwise wait past its maximum age.
    pub fn decide(&self, d: Deferral, now: Instant, rng: &mut Rng) -> Verdict {
        match self {
            RetryPolicy::Immediate { retries } => {
                let suspended = d.not_before.is_some_and(|t| t > now);
                if d.attempts <= *retries && !suspended { Verdict::Now } else { Verdict::Final }
            }
            RetryPolicy::Scheduled(s) => {
                let deadline = d.born + s.max_age;
                if now >= deadline {
                    return Verdict::Final;
                }
                let doublings = d.attempts.saturating_sub(1).min(30);
                let wait = s.first.saturating_mul(1 << doublings).min(s.max);
                let jitter = 0.9 + 0.2 * rng.next_f64();
                let at = (now + wait.mul_f64(jitter)).min(deadline);
                match d.not_before {
                    Some(until) if until > deadline => Verdict::Final,
                    Some(until) => Verdict::At(at.max(until)),
                    None => Verdict::At(at),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SCHEDULE: Schedule = Schedule {
        first: Duration::from_secs(60),
        max: Duration::from_secs(1800),
        max_age: Duration::from_secs(7200),
    };

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    #[test]
    fn scheduled_waits_double_with_jitter_up_to_the_cap() {
        let born = Instant::now();
        let mut rng = Rng::new(3);
        let policy = RetryPolicy::Scheduled(SCHEDULE);
        for (attempts, want) in [(1, 60.0), (2, 120.0), (3, 240.0), (5, 960.0), (6, 1800.0), (20, 1800.0)] {
            let d = Deferral { attempts, born, not_before: None };
            let Verdict::At(at) = policy.decide(d, born, &mut rng) else { panic!("attempt {attempts}") };
            let waited = at.duration_since(born).as_secs_f64();
            assert!((waited / want - 1.0).abs() <= 0.1 + 1e-9, "attempt {attempts}: {waited} vs {want}");
        }
    }

    /// (attempts, now, not_before, verdict), times in seconds after the recipient was born;
    /// the jitter source is fixed, so only cases whose answer jitter cannot move are listed.
    #[test]
    fn decisions_table() {
        let born = Instant::now();
        let at = |s: u64| born + secs(s);
        let scheduled = RetryPolicy::Scheduled(SCHEDULE);
        let immediate = RetryPolicy::Immediate { retries: 2 };
        type Case = (RetryPolicy, u32, u64, Option<u64>, Verdict, &'static str);
        let cases: [Case; 9] = [
            (scheduled, 3, 7000, None, Verdict::At(at(7200)), "the last try is at the deadline"),
            (scheduled, 3, 7200, None, Verdict::Final, "then it is expired"),
            (scheduled, 1, 10, Some(3600), Verdict::At(at(3600)), "not before its suspension ends"),
            (scheduled, 1, 10, Some(7200), Verdict::At(at(7200)), "a suspension to the deadline"),
            (scheduled, 1, 10, Some(7300), Verdict::Final, "a suspension past the deadline expires it"),
            (immediate, 1, 10, None, Verdict::Now, "first deferral: again at once"),
            (immediate, 2, 10, None, Verdict::Now, "second: again"),
            (immediate, 3, 10, None, Verdict::Final, "retries used up"),
            (immediate, 1, 10, Some(60), Verdict::Final, "suspended: no immediate retry"),
        ];
        let mut rng = Rng::new(1);
        for (policy, attempts, now, not_before, want, why) in cases {
            let d = Deferral { attempts, born, not_before: not_before.map(at) };
            assert_eq!(policy.decide(d, at(now), &mut rng), want, "{why}");
        }
    }
}

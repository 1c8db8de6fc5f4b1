//! When a deferred recipient is tried again: store and forward, on a doubling schedule with
//! jitter, until its maximum age.

use std::time::{Duration, Instant};

use crate::engine::Payload;
use crate::proto::Address;
use crate::rng::Rng;

#[derive(Debug, Clone, Copy)]
pub struct Schedule {
    /// The wait before the first retry; it doubles per attempt...
    pub first: Duration,
    /// ...up to this.
    pub max: Duration,
    /// After this long since the recipient was first admitted, a deferral is final: expired.
    pub max_age: Duration,
}

impl Schedule {
    /// When to try again after `attempts` attempts (at least one), or `None` once the
    /// recipient is too old. The last retry is at the deadline itself, so a recipient gets its
    /// chance right before it expires. Jitter of ±10% keeps a greylisted batch from coming back
    /// all at once.
    pub fn next(&self, attempts: u32, born: Instant, now: Instant, rng: &mut Rng) -> Option<Instant> {
        let deadline = born + self.max_age;
        if now >= deadline {
            return None;
        }
        let doublings = attempts.saturating_sub(1).min(30);
        let wait = self.first.saturating_mul(1 << doublings).min(self.max);
        let jitter = 0.9 + 0.2 * rng.next_f64();
        Some((now + wait.mul_f64(jitter)).min(deadline))
    }
}

/// A recipient between attempts: its message (to be rendered by a core, or rendered by the
/// first attempt and kept for the rest) and its history.
#[derive(Debug)]
pub struct Pending {
    /// The recipient's id (see [`crate::deliver`]).
    pub id: u64,
    pub rcpt: Address,
    pub message: Payload,
    /// When it was first admitted: queue time and maximum age count from here.
    pub born: Instant,
    pub attempts: u32,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_with_jitter_up_to_the_cap_and_expires_at_the_deadline() {
        let s = Schedule {
            first: Duration::from_secs(60),
            max: Duration::from_secs(1800),
            max_age: Duration::from_secs(7200),
        };
        let born = Instant::now();
        let mut rng = Rng::new(3);
        for (attempts, want) in [(1, 60.0), (2, 120.0), (3, 240.0), (5, 960.0), (6, 1800.0), (20, 1800.0)] {
            let at = s.next(attempts, born, born, &mut rng).unwrap();
            let waited = at.duration_since(born).as_secs_f64();
            assert!((waited / want - 1.0).abs() <= 0.1 + 1e-9, "attempt {attempts}: {waited} vs {want}");
        }
        let late = born + Duration::from_secs(7000);
        assert_eq!(
            s.next(3, born, late, &mut rng),
            Some(born + Duration::from_secs(7200)),
            "last try at the deadline"
        );
        assert_eq!(s.next(3, born, born + Duration::from_secs(7200), &mut rng), None, "then expired");
    }
}

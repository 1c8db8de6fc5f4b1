//! `volley bench` as a library: the job source (closed or open loop, with a ramp), what each
//! message looks like ([`content`]), and the report ([`report`]).

pub mod content;
pub mod report;
pub mod saved;

use std::sync::Arc;
use std::time::{Duration, Instant};

pub use content::{BodySpec, Content, ContentError, ContentSpec, Recipients, Sizes};
pub use report::{hgrm, json, latency, text, warnings};

use crate::engine::{Destination, Job, JobSource, Next, Payload};
use crate::proto::Address;

/// How much to send and how fast.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Plan {
    /// Stop after this many messages.
    pub messages: Option<u64>,
    /// Stop producing after this long.
    pub duration: Option<Duration>,
    /// Open loop: messages per second on a fixed schedule. `None`: closed loop.
    pub rate: Option<f64>,
    /// Open loop: the rate grows linearly from zero to `rate` over this long. (In a closed loop
    /// the engine ramps connections instead.)
    pub ramp_up: Option<Duration>,
}

impl Plan {
    /// When the `k`-th job (from 0) is due, after the start: `k / rate`, or on the ramp, where
    /// the rate at `t` is `rate * t / ramp` and `k` jobs are due by `rate * t^2 / (2 ramp)`.
    fn due_after(&self, k: u64, rate: f64) -> Duration {
        let k = k as f64;
        let secs = match self.ramp_up.map(|r| r.as_secs_f64()).filter(|&r| r > 0.0) {
            Some(ramp) if k < rate * ramp / 2.0 => (2.0 * ramp * k / rate).sqrt(),
            Some(ramp) => ramp + (k - rate * ramp / 2.0) / rate,
            None => k / rate,
        };
        Duration::from_secs_f64(secs)
    }
}

/// The default bench message: `size` octets, `recipients` recipients at sink.invalid, a unique
/// Message-ID and Date each.
pub fn default_content(size: usize, recipients: usize) -> ContentSpec {
    let list = (0..recipients.max(1))
        .map(|i| Address::new(&format!("rcpt{i}@sink.invalid")).expect("generated address is valid"))
        .collect();
    ContentSpec {
        sender: Some(Address::new("bench@volley.invalid").expect("static address is valid")),
        recipients: Recipients::List(list),
        per_message: recipients.max(1),
        body: BodySpec::Generated(Sizes { min: size, max: size }),
        unique: true,
        seed: 0x766f_6c6c_6579,
    }
}

/// Generates the bench's jobs: as fast as the engine takes them (closed loop), or on a fixed
/// schedule with each job due at its scheduled time (open loop, coordinated omission corrected).
pub struct BenchSource {
    plan: Plan,
    destination: Arc<Destination>,
    content: Content,
    produced: u64,
    start: Option<Instant>,
}

impl BenchSource {
    pub fn new(plan: Plan, destination: Arc<Destination>, content: Content) -> Self {
        BenchSource { plan, destination, content, produced: 0, start: None }
    }
}

impl JobSource for BenchSource {
    fn next(&mut self, now: Instant) -> Next {
        let start = *self.start.get_or_insert(now);
        if self.plan.messages.is_some_and(|n| self.produced >= n) {
            return Next::Done;
        }
        let due = match self.plan.rate {
            Some(rate) => start + self.plan.due_after(self.produced, rate),
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
            message: Payload::Ready(self.content.next_message()),
            due,
            attempts: 0,
            last_conn: 0,
            partial: false,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dest() -> Arc<Destination> {
        Arc::new(Destination::new(0, "t", vec![], 1))
    }

    fn content(size: usize, recipients: usize) -> Content {
        Content::new(default_content(size, recipients)).unwrap()
    }

    #[test]
    fn message_has_the_requested_size() {
        for size in 300..1200 {
            let m = content(size, 3).next_message();
            assert_eq!(m.len(), size, "size {size}");
            assert_eq!(m.envelope.recipients.len(), 3);
        }
    }

    #[test]
    fn open_loop_ramps_up_linearly() {
        let plan = Plan { rate: Some(100.0), ramp_up: Some(Duration::from_secs(2)), ..Plan::default() };
        // 100 jobs are due during the ramp (half of 2 s at full rate), then 100 per second.
        assert_eq!(plan.due_after(0, 100.0), Duration::ZERO);
        assert!((plan.due_after(25, 100.0).as_secs_f64() - 1.0).abs() < 1e-9, "a quarter by mid-ramp");
        assert!((plan.due_after(100, 100.0).as_secs_f64() - 2.0).abs() < 1e-9);
        assert!((plan.due_after(200, 100.0).as_secs_f64() - 3.0).abs() < 1e-9);
        let gaps: Vec<f64> = (1..100)
            .map(|k| (plan.due_after(k + 1, 100.0) - plan.due_after(k, 100.0)).as_secs_f64())
            .collect();
        assert!(gaps.windows(2).all(|w| w[1] <= w[0] + 1e-12), "the rate only grows");
    }

    #[test]
    fn closed_loop_counts_messages() {
        let plan = Plan { messages: Some(3), ..Plan::default() };
        let mut s = BenchSource::new(plan, dest(), content(400, 1));
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
        let plan = Plan { duration: Some(Duration::from_secs(1)), rate: Some(100.0), ..Plan::default() };
        let mut s = BenchSource::new(plan, dest(), content(400, 1));
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
}

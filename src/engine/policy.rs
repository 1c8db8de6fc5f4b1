//! One core's connection policy for one destination: how many connections to keep open (an
//! additive-increase, cap-on-refusal target within the core's share), and what a connection
//! that failed before carrying anything means (a server capping connections, a failing
//! destination, a failure every connection would repeat, an opportunistic TLS handshake to give
//! up on). A plain type fed events, what it can see of the destination and `now`, answering
//! with a decision, as quinn-proto's congestion `Controller` is; `Core` reads the clock and the
//! destination's shared `Health`, and applies the answer. Table-tested below, without sockets.
//!
//! Calling order, per pool: [`ConnectionPolicy::new`] when the pool is made;
//! [`ConnectionPolicy::target`] before each new connection; [`ConnectionPolicy::failed_early`]
//! when a connection or session ends without carrying a job while jobs wait;
//! [`ConnectionPolicy::session_ready`] when a session gets past EHLO.

use std::time::{Duration, Instant};

use crate::proto::SessionError;

/// How soon after a refused connection a session must become ready for the refusal to count as
/// the server capping connections (see [`ConnectionPolicy::session_ready`]).
pub const PROVE_WITHIN: Duration = Duration::from_secs(1);

/// The run's settings the policy decides by.
#[derive(Debug, Clone, Copy)]
pub struct PolicyRules {
    /// After a refusal lowered the target, one more connection per this long.
    pub probe_interval: Duration,
    /// A destination failing for this long charges its waiting jobs an attempt per failure.
    pub failing_after: Duration,
    /// Opportunistic STARTTLS: a failed handshake means plaintext from then on.
    pub tls_fallback: bool,
    /// A TLS failure every connection would repeat gives the destination up (a load test), or
    /// only charges the waiting jobs (a campaign: certificates get fixed).
    pub give_up_on_tls: bool,
    /// Connections grow linearly from one to the share over this long after the start.
    pub ramp: Option<(Instant, Duration)>,
}

/// What the policy sees of the destination at an event: read from its `Health` (shared by the
/// cores) and this core's pool.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Sight {
    /// This core's connections to it, open or being opened (the failed one not counted).
    pub open: usize,
    /// Sessions past EHLO on every core.
    pub established: usize,
    /// The most sessions the server allowed at once, once it has refused one more.
    pub cap: Option<usize>,
}

/// Limits on the target from outside the policy, at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Bounds {
    /// This core's share of a shaping reaction's connection limit, while one holds.
    pub reaction: Option<usize>,
    /// Jobs wait here that the producer no longer takes back (the run is closing): a target
    /// of zero would strand them.
    pub stranded: bool,
}

/// What a connection that failed before carrying a job means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterFailure {
    /// An opportunistic TLS handshake failed: this core's next connections go in plaintext.
    FallBackToPlaintext,
    /// A failure every new connection would repeat (a refused password or certificate, TLS
    /// required and not offered): this connection was the waiting jobs' attempt, each is
    /// charged one; `give_up`: and the destination is tried no more.
    Persistent { give_up: bool },
    /// The server refused one more connection while `cap` sessions to it were established: it
    /// allows no more (the target is lowered). `blocked`: this core has none of them, so its
    /// jobs go to the cores that do.
    Capped { cap: usize, blocked: bool },
    /// The destination is failing (since now, if it was not): `charge` each waiting job an
    /// attempt once it has been failing for `failing_after`.
    Failing { charge: bool },
}

/// Refusals just before a session became ready, proven to be the server capping connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Proven {
    pub refusals: u64,
    /// The sessions the server allows.
    pub cap: usize,
}

#[derive(Debug, Clone)]
pub struct ConnectionPolicy {
    rules: PolicyRules,
    /// This core's share of the destination's connection limit.
    share: usize,
    /// Connections this core may open now: the share, lowered when the server refuses a
    /// connection while others are open, raised by one per probe interval since.
    target: usize,
    target_changed: Instant,
    /// Connections refused while no session to the destination was established yet, and when
    /// the last was: a cap if a session becomes ready soon after.
    unproven: u64,
    unproven_at: Option<Instant>,
}

impl ConnectionPolicy {
    /// A pool's policy. A pool made again for a destination the server caps starts within the
    /// cap, as the retired one had learnt to.
    pub fn new(rules: PolicyRules, share: usize, sight: Sight, now: Instant) -> ConnectionPolicy {
        let target = sight.cap.map_or(share, |cap| share.min(cap.saturating_sub(sight.established).max(1)));
        ConnectionPolicy { rules, share, target, target_changed: now, unproven: 0, unproven_at: None }
    }

    pub fn share(&self) -> usize {
        self.share
    }

    /// How many connections this core may have open to the destination now.
    pub fn target(&mut self, now: Instant, sight: Sight, bounds: Bounds) -> usize {
        if self.target < self.share
            && now.saturating_duration_since(self.target_changed) >= self.rules.probe_interval
        {
            self.target += 1;
            self.target_changed = now;
        }
        // Room the server's cap leaves beside the other cores' sessions is this core's at once:
        // when their sessions end, a core capped low takes their place rather than growing one
        // per probe interval (regression: one core carried half a run over one session while
        // the server allowed four, 8 s against 5.7 s).
        if let Some(cap) = sight.cap {
            let elsewhere = sight.established.saturating_sub(sight.open);
            let room = cap.saturating_sub(elsewhere).min(self.share);
            if room > self.target {
                self.target = room;
                self.target_changed = now;
            }
        }
        let mut target = self.target;
        if target == 0 && bounds.stranded {
            // Capped to nothing, with jobs only this core can send: try at the reconnect pace
            // (a refusal backs off) rather than wait out the probe interval (regression:
            // stranded at the end of a run for the whole interval, 5 s by default).
            target = 1;
        }
        if let Some(reaction) = bounds.reaction {
            target = target.min(reaction);
        }
        let Some((started, ramp)) = self.rules.ramp.filter(|(_, r)| !r.is_zero()) else { return target };
        let done = now.saturating_duration_since(started).as_secs_f64() / ramp.as_secs_f64();
        let ramped = (self.share as f64 * done).ceil() as usize;
        target.min(ramped.max(1))
    }

    /// A connection or session failed with `error` before carrying a job, while jobs wait;
    /// `failing_since`: since when the destination's sessions have all failed, if they have.
    /// While other sessions to it are established this is the server capping connections:
    /// lower the target, charge nobody. Otherwise jobs are charged an attempt only once the
    /// destination as a whole has been failing for `failing_after`. TLS and AUTH failures are
    /// not the server capping connections.
    pub fn failed_early(
        &mut self,
        error: &SessionError,
        sight: Sight,
        failing_since: Option<Instant>,
        now: Instant,
    ) -> AfterFailure {
        if self.rules.tls_fallback && matches!(error, SessionError::Tls(_) | SessionError::TlsCertificate(_))
        {
            return AfterFailure::FallBackToPlaintext;
        }
        if error.is_persistent() {
            let tls = matches!(error, SessionError::TlsCertificate(_) | SessionError::TlsUnavailable { .. });
            return AfterFailure::Persistent { give_up: self.rules.give_up_on_tls || !tls };
        }
        if sight.established > 0 && !error.is_tls_or_auth() {
            self.capped(sight.open, now);
            return AfterFailure::Capped { cap: sight.established, blocked: sight.open == 0 };
        }
        if !error.is_tls_or_auth() {
            self.unproven += 1;
            self.unproven_at = Some(now);
        }
        let failing_for = failing_since.map_or(Duration::ZERO, |since| now.saturating_duration_since(since));
        AfterFailure::Failing { charge: failing_for >= self.rules.failing_after }
    }

    /// A session to the destination became ready: connections refused just before, while the
    /// server was still greeting the ones it took (so none was established to show it), were
    /// the server capping connections after all.
    pub fn session_ready(&mut self, sight: Sight, now: Instant) -> Option<Proven> {
        let (refusals, at) = (std::mem::take(&mut self.unproven), self.unproven_at.take());
        if refusals == 0 || at.is_none_or(|at| now.saturating_duration_since(at) > PROVE_WITHIN) {
            return None;
        }
        self.capped(sight.open, now);
        Some(Proven { refusals, cap: sight.established })
    }

    /// The server allows no more than `others` of this core's connections; zero waits for the
    /// next probe. Never raised by a refusal.
    fn capped(&mut self, others: usize, now: Instant) {
        self.target = self.target.min(others);
        self.target_changed = now;
    }
}

/// Exponential backoff between connection attempts that carried nothing, with an upper bound.
#[derive(Debug)]
pub struct ReconnectBackoff {
    base: Duration,
    max: Duration,
    current: Duration,
}

impl ReconnectBackoff {
    pub fn new(base: Duration, max: Duration) -> Self {
        ReconnectBackoff { base, max: max.max(base), current: base }
    }

    pub fn next_delay(&mut self) -> Duration {
        let d = self.current;
        self.current = (self.current * 2).min(self.max);
        d
    }

    pub fn reset(&mut self) {
        self.current = self.base;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PROBE: Duration = Duration::from_secs(5);

    fn rules() -> PolicyRules {
        PolicyRules {
            probe_interval: PROBE,
            failing_after: Duration::from_secs(10),
            tls_fallback: false,
            give_up_on_tls: false,
            ramp: None,
        }
    }

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    fn sight(open: usize, established: usize, cap: Option<usize>) -> Sight {
        Sight { open, established, cap }
    }

    #[test]
    fn the_target_drops_to_what_the_server_allowed_and_probes_back_up() {
        let t0 = Instant::now();
        let mut p = ConnectionPolicy::new(rules(), 5, Sight::default(), t0);
        let none = Bounds::default();
        let at = |s: u64| t0 + secs(s);
        assert_eq!(p.target(t0, Sight::default(), none), 5);
        // (event at, this core's open, established, decision, target after)
        assert_eq!(
            p.failed_early(&refused(), sight(2, 6, None), None, at(0)),
            AfterFailure::Capped { cap: 6, blocked: false }
        );
        assert_eq!(p.target(at(1), Sight::default(), none), 2);
        p.failed_early(&refused(), sight(3, 6, None), None, at(1));
        assert_eq!(p.target(at(2), Sight::default(), none), 2, "never raised by a refusal");
        assert_eq!(p.target(at(6), Sight::default(), none), 3, "one more after a quiet interval");
        assert_eq!(p.target(at(7), Sight::default(), none), 3);
        assert_eq!(
            p.failed_early(&refused(), sight(0, 3, None), None, at(8)),
            AfterFailure::Capped { cap: 3, blocked: true },
            "every allowed session is elsewhere: blocked"
        );
        assert_eq!(p.target(at(8), Sight::default(), none), 0);
        assert_eq!(p.target(at(8), Sight::default(), Bounds { stranded: true, ..none }), 1, "stranded jobs");
        assert_eq!(p.target(at(13), Sight::default(), none), 1, "probed again");
        let probes: Vec<usize> =
            (18..=38).step_by(5).map(|s| p.target(at(s), Sight::default(), none)).collect();
        assert_eq!(probes, [2, 3, 4, 5, 5], "one more per quiet interval, up to the share and no further");
    }

    #[test]
    fn a_capped_core_takes_the_room_other_cores_sessions_leave_at_once() {
        let t0 = Instant::now();
        let mut p = ConnectionPolicy::new(rules(), 5, Sight::default(), t0);
        let none = Bounds::default();
        // The server allows 4: three sessions on another core, one here, and a refusal.
        p.failed_early(&refused(), sight(1, 4, None), None, t0);
        assert_eq!(p.target(t0, sight(1, 4, Some(4)), none), 1);
        // The other core's sessions end: their room is this core's now, not a probe at a time.
        assert_eq!(p.target(t0 + Duration::from_millis(10), sight(1, 1, Some(4)), none), 4);
        assert_eq!(
            p.target(t0 + Duration::from_millis(20), sight(1, 1, Some(9)), none),
            5,
            "within the share"
        );
        let reaction = Bounds { reaction: Some(2), stranded: false };
        assert_eq!(p.target(t0 + Duration::from_millis(30), sight(1, 1, Some(9)), reaction), 2);
    }

    #[test]
    fn a_new_pool_for_a_capped_destination_starts_within_the_cap() {
        let t0 = Instant::now();
        let none = Bounds::default();
        let table = [
            (Sight::default(), 5, "no cap: the share"),
            (sight(0, 1, Some(3)), 2, "the room the cap leaves"),
            (sight(0, 3, Some(3)), 1, "at least one"),
            (sight(0, 0, Some(9)), 5, "never above the share"),
        ];
        for (seen, want, why) in table {
            let p = ConnectionPolicy::new(rules(), 5, seen, t0);
            assert_eq!(p.target, want, "{why}");
        }
        let mut ramped = ConnectionPolicy::new(
            PolicyRules { ramp: Some((t0, secs(10))), ..rules() },
            8,
            Sight::default(),
            t0,
        );
        let ramp: Vec<usize> =
            [0, 1, 5, 10, 20].map(|s| ramped.target(t0 + secs(s), Sight::default(), none)).to_vec();
        assert_eq!(ramp, [1, 1, 4, 8, 8], "a linear ramp from one to the share");
    }

    fn refused() -> SessionError {
        SessionError::Connect { waited: Duration::ZERO, message: "refused".into() }
    }

    /// (error, rules, established elsewhere, failing for, decision): what a failure that carried
    /// nothing means.
    #[test]
    fn failures_table() {
        let t0 = Instant::now() + secs(100);
        let tls = SessionError::Tls("handshake".into());
        let auth =
            SessionError::Auth { mechanism: "PLAIN", reply: crate::proto::Reply::new(535, None, "no") };
        let unavailable = SessionError::TlsUnavailable { reply: None };
        let refused = refused();
        let fallback = PolicyRules { tls_fallback: true, ..rules() };
        let load_test = PolicyRules { give_up_on_tls: true, ..rules() };
        type Case<'a> = (&'a SessionError, PolicyRules, usize, Option<u64>, AfterFailure, &'static str);
        let cases: Vec<Case> = vec![
            (&tls, fallback, 0, None, AfterFailure::FallBackToPlaintext, "opportunistic TLS falls back"),
            (&tls, rules(), 2, None, AfterFailure::Failing { charge: false }, "TLS is not a cap"),
            (
                &auth,
                rules(),
                0,
                None,
                AfterFailure::Persistent { give_up: true },
                "a refused password ends it",
            ),
            (
                &unavailable,
                rules(),
                0,
                None,
                AfterFailure::Persistent { give_up: false },
                "a campaign waits for TLS",
            ),
            (
                &unavailable,
                load_test,
                0,
                None,
                AfterFailure::Persistent { give_up: true },
                "a load test does not",
            ),
            (
                &refused,
                rules(),
                3,
                None,
                AfterFailure::Capped { cap: 3, blocked: false },
                "others open: a cap",
            ),
            (&refused, rules(), 0, None, AfterFailure::Failing { charge: false }, "failing, not yet long"),
            (&refused, rules(), 0, Some(9), AfterFailure::Failing { charge: false }, "9 s of failing"),
            (&refused, rules(), 0, Some(10), AfterFailure::Failing { charge: true }, "10 s: charged"),
        ];
        for (error, rules, established, failing_for, want, why) in cases {
            let mut p = ConnectionPolicy::new(rules, 4, Sight::default(), t0);
            let since = failing_for.map(|s| t0 - secs(s));
            assert_eq!(p.failed_early(error, sight(1, established, None), since, t0), want, "{why}");
        }
    }

    #[test]
    fn refusals_just_before_a_session_are_proven_a_cap() {
        let t0 = Instant::now();
        let mut p = ConnectionPolicy::new(rules(), 4, Sight::default(), t0);
        assert_eq!(p.session_ready(sight(1, 1, None), t0), None, "nothing refused");
        p.failed_early(&refused(), Sight::default(), None, t0);
        p.failed_early(&refused(), Sight::default(), None, t0);
        let ready = t0 + Duration::from_millis(300);
        assert_eq!(p.session_ready(sight(1, 2, None), ready), Some(Proven { refusals: 2, cap: 2 }));
        assert_eq!(p.target(ready, Sight::default(), Bounds::default()), 1, "lowered to this core's open");
        assert_eq!(p.session_ready(sight(1, 2, None), ready), None, "counted once");
        p.failed_early(&refused(), Sight::default(), None, t0);
        assert_eq!(p.session_ready(sight(1, 2, None), t0 + secs(2)), None, "too long after: not proven");
    }

    #[test]
    fn backoff_doubles_up_to_a_bound() {
        let mut b = ReconnectBackoff::new(Duration::from_millis(100), Duration::from_secs(5));
        let seq: Vec<_> = (0..8).map(|_| b.next_delay().as_millis()).collect();
        assert_eq!(seq, vec![100, 200, 400, 800, 1600, 3200, 5000, 5000]);
        b.reset();
        assert_eq!(b.next_delay(), Duration::from_millis(100));
    }
}

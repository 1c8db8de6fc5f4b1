//! Outcomes held until a checkpoint proves the replies that decided them were matched to the
//! right commands (see the module documentation of `client` for what a checkpoint is and
//! proves). [`fit`](super::fit) rejects replies that cannot answer their command; this decides
//! when outcomes may be believed, and what is left of them when the session is proven out of
//! step.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::{Completed, Event, SessionError, TxnResult};

/// An outcome waiting for a checkpoint.
struct Held<T> {
    done: Completed<T>,
    /// The content went out: the server may have the message.
    content_sent: bool,
}

pub(super) struct Checkpoints<T> {
    /// Replies received so far, and the number of the last one that was a checkpoint.
    replies: u64,
    proven: u64,
    /// Outcomes decided by replies after the last checkpoint, oldest first.
    held: VecDeque<Held<T>>,
    /// A second EHLO can serve as a checkpoint: the first reply was multi-line and a repeat
    /// has not been refused.
    ehlo_marks: bool,
    /// A checkpoint EHLO is awaiting its reply; nothing may follow it (RFC 2920 §3.1).
    syncing: bool,
    /// Held outcomes that call for a checkpoint, and the age of the oldest that does.
    sync_every: usize,
    sync_after: Option<Duration>,
}

impl<T> Checkpoints<T> {
    pub fn new(sync_every: usize, sync_after: Option<Duration>) -> Self {
        Checkpoints {
            replies: 0,
            proven: 0,
            held: VecDeque::new(),
            ehlo_marks: false,
            syncing: false,
            sync_every: sync_every.max(1),
            sync_after,
        }
    }

    /// A reply arrived: its number in the session.
    pub fn count_reply(&mut self) -> u64 {
        self.replies += 1;
        self.replies
    }

    pub fn replies(&self) -> u64 {
        self.replies
    }

    pub fn held(&self) -> usize {
        self.held.len()
    }

    /// What EHLO's reply says of a second EHLO: a checkpoint if the reply was multi-line
    /// (single-line ones could be a shifted reply to anything), none once a repeat is refused
    /// or TLS starts a new session.
    pub fn set_ehlo_marks(&mut self, marks: bool) {
        self.ehlo_marks = marks;
    }

    pub fn ehlo_marks(&self) -> bool {
        self.ehlo_marks
    }

    /// A checkpoint EHLO went out; [`Checkpoints::sync_answered`] when its reply comes.
    pub fn start_sync(&mut self) {
        self.syncing = true;
    }

    pub fn sync_answered(&mut self) {
        self.syncing = false;
    }

    pub fn syncing(&self) -> bool {
        self.syncing
    }

    /// An outcome the server decided: believed at the next checkpoint.
    pub fn hold(&mut self, done: Completed<T>, content_sent: bool) {
        self.held.push_back(Held { done, content_sent });
    }

    /// A checkpoint: every outcome held so far was decided by replies now proven in step.
    pub fn release(&mut self, events: &mut VecDeque<Event<T>>) {
        self.proven = self.replies;
        events.extend(self.held.drain(..).map(|h| Event::Done(h.done)));
    }

    /// The session is proven out of step by `error`: every held outcome is reported for what
    /// is left of it (see [`Checkpoints::distrust`]).
    pub fn distrust_all(&mut self, error: &SessionError, events: &mut VecDeque<Event<T>>) {
        while let Some(h) = self.held.pop_front() {
            let done = self.distrust(h.done, h.content_sent, error);
            events.push_back(Event::Done(done));
        }
    }

    /// What is left of an outcome decided after the last checkpoint, once the session is proven
    /// out of step: refusals from before the checkpoint stand; content that went out is
    /// uncertain; a transaction whose content never went out can safely be tried again.
    pub fn distrust(&self, mut done: Completed<T>, content_sent: bool, error: &SessionError) -> Completed<T> {
        done.rejected.retain(|r| r.nth_reply <= self.proven);
        done.result = if content_sent {
            let reply = match &done.result {
                TxnResult::Accepted(r) | TxnResult::Rejected { reply: r, .. } => Some(r.clone()),
                _ => None,
            };
            TxnResult::Uncertain { error: error.clone(), reply }
        } else {
            TxnResult::Aborted(error.clone())
        };
        done
    }

    /// When the oldest held outcome will have waited `sync_after`, if a checkpoint EHLO could
    /// then be sent: the session is `ready` for commands and a second EHLO is a checkpoint.
    /// Without one the checkpoint is QUIT and a new connection, and such sessions (HELO, no
    /// pipelining) hold at most the one outcome the next `354` proves. `between`: no
    /// transaction is between DATA and its `354` (a checkpoint EHLO may only follow complete
    /// transactions; such a transaction waits for a checkpoint of its own).
    pub fn due(&self, ready: bool, between: impl FnOnce() -> bool) -> Option<Instant> {
        let after = self.sync_after?;
        if !self.ehlo_marks || self.syncing || !ready {
            return None;
        }
        let oldest = self.held.front()?;
        between().then_some(oldest.done.at + after)
    }

    /// Whether held outcomes call for a checkpoint `now`, in a ready session: it has nothing
    /// else to do (`idle`), the oldest has waited too long, or too many are held.
    pub fn wanted(&self, now: Instant, idle: bool, between: impl Fn() -> bool) -> bool {
        if self.held.is_empty() || self.syncing {
            return false;
        }
        if idle {
            return true;
        }
        // The transactions are scanned (`between`) only once the oldest is old enough...
        let aged = self.sync_after.zip(self.held.front()).is_some_and(|(a, h)| now >= h.done.at + a);
        if aged && self.due(true, &between).is_some() {
            return true;
        }
        // ...or enough outcomes are held: this is asked for every write.
        self.held.len() >= self.sync_every && between()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::client::{Envelope, Message, Refusal};
    use crate::proto::{Address, Body, Reply};
    use std::sync::Arc;

    fn done(id: u32, at: Instant, result: TxnResult, rejected: &[(usize, u64)]) -> Completed<u32> {
        let rcpts = (0..3).map(|i| Address::new(&format!("r{i}@x.test")).unwrap()).collect();
        let message = Message::new(Arc::new(Envelope { sender: None, recipients: rcpts }), Body::new(b"x"));
        let rejected = rejected
            .iter()
            .map(|&(rcpt, nth_reply)| Refusal { rcpt, reply: Reply::new(550, None, "no"), nth_reply })
            .collect();
        Completed { user: id, message, result, rejected, at }
    }

    fn accepted() -> TxnResult {
        TxnResult::Accepted(Reply::new(250, None, "ok"))
    }

    fn ids(events: &VecDeque<Event<u32>>) -> Vec<u32> {
        events
            .iter()
            .filter_map(|e| match e {
                Event::Done(d) => Some(d.user),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn held_outcomes_go_out_in_order_at_a_checkpoint_and_not_before() {
        let now = Instant::now();
        let mut c = Checkpoints::new(256, None);
        let mut events = VecDeque::new();
        c.hold(done(1, now, accepted(), &[]), true);
        c.hold(done(2, now, accepted(), &[]), true);
        assert_eq!(c.held(), 2);
        assert!(events.is_empty());
        c.release(&mut events);
        assert_eq!(ids(&events), [1, 2]);
        assert_eq!(c.held(), 0);
    }

    /// Refusals the last checkpoint proved stand; content that went out is uncertain; content
    /// that never did is aborted (safe to retry).
    #[test]
    fn out_of_step_keeps_only_what_was_proven() {
        let now = Instant::now();
        let mut c = Checkpoints::new(256, None);
        let mut events = VecDeque::new();
        for _ in 0..5 {
            c.count_reply();
        }
        c.release(&mut events); // replies 1..=5 proven
        c.hold(done(1, now, accepted(), &[(0, 4), (1, 7)]), true);
        c.hold(done(2, now, TxnResult::NoValidRecipients, &[(0, 6)]), false);
        let error = SessionError::Unsolicited(Reply::new(250, None, "stray"));
        c.distrust_all(&error, &mut events);
        let out: Vec<&Completed<u32>> = events
            .iter()
            .filter_map(|e| match e {
                Event::Done(d) => Some(d),
                _ => None,
            })
            .collect();
        assert_eq!(out[0].rejected.iter().map(|r| r.rcpt).collect::<Vec<_>>(), [0], "proven refusal stands");
        assert!(
            matches!(&out[0].result, TxnResult::Uncertain { reply: Some(r), .. } if r.code == 250),
            "content sent: uncertain, with the reply it got"
        );
        assert!(out[1].rejected.is_empty(), "a refusal after the checkpoint is not believed");
        assert!(matches!(out[1].result, TxnResult::Aborted(_)), "nothing sent: retried");
    }

    /// (held, sync_every, sync_after, age of the oldest, idle, between, ehlo marks, syncing) →
    /// a checkpoint wanted?
    #[test]
    fn when_a_checkpoint_is_wanted() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        type Case = (usize, usize, Option<u64>, u64, bool, bool, bool, bool, bool, &'static str);
        let cases: [Case; 9] = [
            (0, 1, None, 0, true, true, true, false, false, "nothing held"),
            (1, 256, None, 0, true, true, true, false, true, "idle with one held"),
            (1, 256, None, 0, true, true, true, true, false, "already syncing"),
            (3, 3, None, 0, false, true, true, false, true, "enough held"),
            (3, 3, None, 0, false, false, true, false, false, "enough held, a transaction awaits 354"),
            (2, 3, None, 0, false, true, true, false, false, "too few, and no age limit"),
            (1, 256, Some(50), 60, false, true, true, false, true, "the oldest is too old"),
            (1, 256, Some(50), 40, false, true, true, false, false, "not old enough yet"),
            (1, 256, Some(50), 60, false, true, false, false, false, "old, but no second EHLO"),
        ];
        for (held, every, after, age, idle, between, marks, syncing, want, why) in cases {
            let mut c = Checkpoints::new(every, after.map(ms));
            for i in 0..held {
                c.hold(done(i as u32, t0, accepted(), &[]), true);
            }
            c.set_ehlo_marks(marks);
            if syncing {
                c.start_sync();
            }
            assert_eq!(c.wanted(t0 + ms(age), idle, || between), want, "{why}");
        }
        let mut c = Checkpoints::new(256, Some(ms(50)));
        c.set_ehlo_marks(true);
        assert_eq!(c.due(true, || true), None, "nothing held: no timer");
        c.hold(done(1, t0, accepted(), &[]), true);
        assert_eq!(c.due(true, || true), Some(t0 + ms(50)));
        assert_eq!(c.due(false, || true), None, "not while the session is not ready");
    }
}

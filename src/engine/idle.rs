//! The sessions a core keeps open with nothing to send, at most so many, the longest idle
//! closed first. An idle session costs a socket, its buffers and a task; a campaign to many
//! small domains leaves one behind per domain for the idle timeout (30 s), which at thousands
//! of domains a second is tens of thousands of connections and gigabytes. Postfix caches
//! idle connections for 2 s; we keep the idle timeout and bound the count instead, so the
//! sessions of busy destinations, idle only between bursts, stay warm.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::rc::Rc;

use super::signal::Signal;

/// One idle session's place in the list: it leaves when the guard is dropped.
pub struct IdleGuard {
    ticket: Rc<Ticket>,
    list: Rc<Inner>,
}

struct Ticket {
    state: Cell<State>,
    /// Wakes the session when it is asked to close.
    wake: Signal,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum State {
    Idle,
    /// Asked to close: the list was over its bound and this one had been idle longest.
    Evicted,
    Left,
}

#[derive(Default)]
struct Inner {
    bound: usize,
    /// Sessions idle now (tickets in `order` still `Idle`).
    count: Cell<usize>,
    /// Tickets in the order their sessions became idle; those that left are dropped lazily.
    order: RefCell<VecDeque<Rc<Ticket>>>,
}

/// A core's idle sessions.
#[derive(Clone)]
pub struct IdleSessions {
    inner: Rc<Inner>,
}

impl IdleSessions {
    pub fn new(bound: usize) -> Self {
        IdleSessions { inner: Rc::new(Inner { bound: bound.max(1), ..Inner::default() }) }
    }

    /// Sessions idle now.
    #[cfg(test)]
    pub fn count(&self) -> usize {
        self.inner.count.get()
    }

    /// A session became idle; `wake` wakes it. Over the bound, the session idle longest is
    /// asked to close (and woken).
    pub fn enter(&self, wake: Signal) -> IdleGuard {
        let inner = &self.inner;
        let ticket = Rc::new(Ticket { state: Cell::new(State::Idle), wake });
        inner.order.borrow_mut().push_back(Rc::clone(&ticket));
        inner.count.set(inner.count.get() + 1);
        while inner.count.get() > inner.bound {
            self.evict_oldest();
        }
        // Tickets that left stay queued until they reach the front: drop them before they
        // outnumber the idle ones, so the list stays bounded by what is idle.
        let mut order = inner.order.borrow_mut();
        if order.len() > 2 * inner.count.get() + 64 {
            order.retain(|t| t.state.get() == State::Idle);
        }
        IdleGuard { ticket, list: Rc::clone(inner) }
    }

    /// Asks the session idle longest to close (and wakes it), if any is idle: its room is
    /// wanted for work.
    pub fn evict_oldest(&self) {
        let inner = &self.inner;
        let mut order = inner.order.borrow_mut();
        while let Some(oldest) = order.pop_front() {
            if oldest.state.get() == State::Idle {
                oldest.state.set(State::Evicted);
                inner.count.set(inner.count.get() - 1);
                oldest.wake.notify();
                return;
            }
        }
    }
}

impl IdleGuard {
    /// Whether the session was asked to close.
    pub fn evicted(&self) -> bool {
        self.ticket.state.get() == State::Evicted
    }
}

impl Drop for IdleGuard {
    fn drop(&mut self) {
        if self.ticket.state.replace(State::Left) == State::Idle {
            self.list.count.set(self.list.count.get() - 1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn over_the_bound_the_longest_idle_is_asked_to_close() {
        let idle = IdleSessions::new(2);
        let (a, b, c) = (Signal::default(), Signal::default(), Signal::default());
        let woken_a = a.wait();
        let ga = idle.enter(a);
        let gb = idle.enter(b);
        assert_eq!(idle.count(), 2);
        assert!(!ga.evicted() && !gb.evicted());
        let gc = idle.enter(c);
        assert!(ga.evicted(), "the first to become idle goes");
        assert!(!gb.evicted() && !gc.evicted());
        assert_eq!(idle.count(), 2);
        assert!(woken_a.is_ready(), "and is woken to close");
        drop(ga);
        assert_eq!(idle.count(), 2, "an evicted session was already uncounted");
        // Work waiting for a session takes the longest idle one's room.
        idle.evict_oldest();
        assert!(gb.evicted() && !gc.evicted());
        assert_eq!(idle.count(), 1);
        idle.evict_oldest();
        idle.evict_oldest(); // none left idle: nothing happens
        assert_eq!(idle.count(), 0);
        assert!(gc.evicted());
    }

    #[test]
    fn a_session_that_left_is_skipped_and_never_counted_twice() {
        let idle = IdleSessions::new(2);
        let ga = idle.enter(Signal::default());
        let gb = idle.enter(Signal::default());
        drop(ga); // went back to work
        assert_eq!(idle.count(), 1);
        let gc = idle.enter(Signal::default());
        assert!(!gb.evicted() && !gc.evicted(), "room for both");
        let gd = idle.enter(Signal::default());
        assert!(gb.evicted(), "the longest idle of those still idle");
        assert!(!gc.evicted() && !gd.evicted());
        assert_eq!(idle.count(), 2);
    }

    #[test]
    fn sessions_coming_and_going_keep_the_list_small() {
        let idle = IdleSessions::new(100);
        let keep: Vec<_> = (0..10).map(|_| idle.enter(Signal::default())).collect();
        for _ in 0..100_000 {
            drop(idle.enter(Signal::default()));
        }
        assert_eq!(idle.count(), 10);
        assert!(idle.inner.order.borrow().len() <= 2 * 10 + 65);
        assert!(keep.iter().all(|g| !g.evicted()));
    }
}

//! A single-threaded wake-up signal between tasks of one core (no atomics, no locks).

use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

#[derive(Default, Clone)]
pub struct Signal {
    inner: Rc<RefCell<Inner>>,
}

#[derive(Default)]
struct Inner {
    generation: u64,
    waiters: Vec<Waker>,
}

impl Signal {
    /// Wakes every task waiting now.
    pub fn notify(&self) {
        let mut inner = self.inner.borrow_mut();
        inner.generation += 1;
        for w in inner.waiters.drain(..) {
            w.wake();
        }
    }

    /// Resolves at the next `notify` after this call.
    pub fn wait(&self) -> Wait {
        Wait { signal: self.clone(), seen: self.inner.borrow().generation }
    }
}

pub struct Wait {
    signal: Signal,
    seen: u64,
}

impl Future for Wait {
    type Output = ();
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let mut inner = self.signal.inner.borrow_mut();
        if inner.generation != self.seen {
            return Poll::Ready(());
        }
        if !inner.waiters.iter().any(|w| w.will_wake(cx.waker())) {
            inner.waiters.push(cx.waker().clone());
        }
        Poll::Pending
    }
}

#[cfg(test)]
impl Wait {
    /// Whether a `notify` came since the wait began.
    pub fn is_ready(&self) -> bool {
        self.signal.inner.borrow().generation != self.seen
    }
}

//! Reads with deadlines, without a timer per read.
//!
//! Every connection owns a [`Watch`]: its current deadline and a canceller. One [`Watchdog`]
//! task per core wakes at a fixed granularity and cancels the in-flight reads whose deadline
//! has passed (or all of them, when the core is shutting down). A cancelled read is still awaited
//! to completion, so bytes that arrived at that instant are returned, not lost with the buffer.

use std::cell::{Cell, RefCell};
use std::io;
use std::rc::{Rc, Weak};
use std::time::{Duration, Instant};

use monoio::buf::IoBufMut;
use monoio::io::{CancelableAsyncReadRent, Canceller};

/// ECANCELED: what a cancelled operation completes with.
const ECANCELED: i32 = 125;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadOutcome {
    Data(usize),
    Eof,
    Deadline,
}

/// One connection's deadline and the means to interrupt its read.
pub struct Watch {
    deadline: Cell<Option<Instant>>,
    reading: Cell<bool>,
    canceller: RefCell<Canceller>,
}

impl Watch {
    /// Reads into the spare capacity of `buf` (appending), reserving `min_spare` first, until
    /// data, EOF, an error, or `deadline`.
    pub async fn read<S: CancelableAsyncReadRent>(
        &self,
        stream: &mut S,
        mut buf: Vec<u8>,
        min_spare: usize,
        deadline: Option<Instant>,
    ) -> (io::Result<ReadOutcome>, Vec<u8>) {
        if deadline.is_some_and(|d| Instant::now() >= d) {
            return (Ok(ReadOutcome::Deadline), buf);
        }
        if buf.capacity() - buf.len() < min_spare {
            buf.reserve(min_spare);
        }
        let (len, cap) = (buf.len(), buf.capacity());
        self.deadline.set(deadline);
        self.reading.set(true);
        let handle = self.canceller.borrow().handle();
        let (res, slice) = stream.cancelable_read(buf.slice_mut(len..cap), handle).await;
        self.reading.set(false);
        let outcome = match res {
            Ok(0) => Ok(ReadOutcome::Eof),
            Ok(n) => Ok(ReadOutcome::Data(n)),
            Err(e) if e.raw_os_error() == Some(ECANCELED) => Ok(ReadOutcome::Deadline),
            Err(e) => Err(e),
        };
        (outcome, slice.into_inner())
    }

    fn cancel(&self) {
        let old = std::mem::take(&mut *self.canceller.borrow_mut());
        *self.canceller.borrow_mut() = old.cancel();
    }
}

/// The per-core sweeper of [`Watch`]es.
#[derive(Default)]
pub struct Watchdog {
    watches: RefCell<Vec<Weak<Watch>>>,
    shutting_down: Cell<bool>,
}

impl Watchdog {
    pub fn new() -> Rc<Watchdog> {
        Rc::default()
    }

    /// A watch for a new connection; dropped with the connection.
    pub fn watch(&self) -> Rc<Watch> {
        let w = Rc::new(Watch {
            deadline: Cell::new(None),
            reading: Cell::new(false),
            canceller: RefCell::new(Canceller::new()),
        });
        self.watches.borrow_mut().push(Rc::downgrade(&w));
        w
    }

    /// From now on every read is interrupted at the next sweep.
    pub fn shut_down(&self) {
        self.shutting_down.set(true);
    }

    /// Cancels reads past their deadline, and forgets closed connections.
    pub fn sweep(&self, now: Instant) {
        let all = self.shutting_down.get();
        self.watches.borrow_mut().retain(|weak| {
            let Some(w) = weak.upgrade() else { return false };
            if w.reading.get() && (all || w.deadline.get().is_some_and(|d| now >= d)) {
                w.cancel();
            }
            true
        });
    }

    /// Sweeps every `tick` until `done` says so.
    pub async fn run(self: Rc<Self>, tick: Duration, done: impl Fn() -> bool) {
        while !done() {
            monoio::time::sleep(tick).await;
            self.sweep(Instant::now());
        }
    }
}

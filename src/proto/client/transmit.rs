//! The bytes the client wants written: its own command bytes interleaved with shared bodies, so
//! a driver can send a whole pipelined group with one vectored write and no body copy.

use std::ops::Range;
use std::sync::Arc;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Segment {
    /// A range of [`Transmit::buf`].
    Own(Range<usize>),
    /// A body shared with every other send of the same message.
    Shared(Arc<[u8]>),
}

/// One write's worth of output. Hand it back with [`Client::recycle`](super::Client::recycle)
/// once written so its buffers are reused.
#[derive(Debug, Default)]
pub struct Transmit {
    pub buf: Vec<u8>,
    pub segments: Vec<Segment>,
    /// Start of the command bytes not yet closed into a segment.
    open: usize,
}

impl Transmit {
    pub fn is_empty(&self) -> bool {
        self.segments.is_empty() && self.open == self.buf.len()
    }

    /// Total bytes to write.
    pub fn len(&self) -> usize {
        self.segments
            .iter()
            .map(|s| match s {
                Segment::Own(r) => r.len(),
                Segment::Shared(b) => b.len(),
            })
            .sum()
    }

    /// Every segment's bytes in order.
    pub fn slices(&self) -> impl Iterator<Item = &[u8]> {
        self.segments.iter().map(|s| match s {
            Segment::Own(r) => &self.buf[r.clone()],
            Segment::Shared(b) => &b[..],
        })
    }

    /// The whole transmit as one contiguous buffer (tests, and drivers that cannot write vectors).
    pub fn to_vec(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(self.len());
        for s in self.slices() {
            v.extend_from_slice(s);
        }
        v
    }

    pub(super) fn commands(&mut self) -> &mut Vec<u8> {
        &mut self.buf
    }

    pub(super) fn push_shared(&mut self, bytes: &Arc<[u8]>) {
        self.close_own();
        if !bytes.is_empty() {
            self.segments.push(Segment::Shared(Arc::clone(bytes)));
        }
    }

    /// Closes the open command bytes into a segment; call before handing the transmit out.
    pub(super) fn close_own(&mut self) {
        if self.open < self.buf.len() {
            self.segments.push(Segment::Own(self.open..self.buf.len()));
            self.open = self.buf.len();
        }
    }

    pub(super) fn clear(&mut self) {
        self.buf.clear();
        self.segments.clear();
        self.open = 0;
    }
}

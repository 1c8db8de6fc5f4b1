//! A client [`Transmit`] as an io_uring/writev-compatible vector of buffers, so a pipelined
//! group (commands plus shared bodies) goes out in one vectored write without copying bodies.

use monoio::buf::IoVecBuf;

use crate::proto::client::Transmit;

/// Owns the transmit, so every pointer in `iovecs` stays valid while the runtime holds this.
pub struct TransmitBuf {
    transmit: Transmit,
    iovecs: Vec<libc::iovec>,
}

impl TransmitBuf {
    pub fn new(transmit: Transmit, mut iovecs: Vec<libc::iovec>) -> Self {
        iovecs.clear();
        iovecs.extend(
            transmit.slices().map(|s| libc::iovec { iov_base: s.as_ptr() as *mut _, iov_len: s.len() }),
        );
        TransmitBuf { transmit, iovecs }
    }

    /// Gives back the transmit and the iovec vector for reuse.
    pub fn into_parts(self) -> (Transmit, Vec<libc::iovec>) {
        (self.transmit, self.iovecs)
    }
}

// SAFETY: the iovecs point into `transmit`'s heap buffers (its Vec and the Arcs it holds), which
// neither move nor change while `TransmitBuf` owns them; the runtime only reads through them.
unsafe impl IoVecBuf for TransmitBuf {
    fn read_iovec_ptr(&self) -> *const libc::iovec {
        self.iovecs.as_ptr()
    }

    fn read_iovec_len(&self) -> usize {
        self.iovecs.len()
    }
}

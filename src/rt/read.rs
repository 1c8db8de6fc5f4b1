//! Reads with a deadline that lose nothing: on expiry the read is cancelled and then awaited, so
//! bytes that arrived at that instant are still returned (dropping an io_uring read would lose
//! them together with its buffer).

use std::io;
use std::time::Instant;

use monoio::buf::IoBufMut;
use monoio::io::{CancelableAsyncReadRent, Canceller};

/// How much free space a read gets at least.
const MIN_READ: usize = 16 * 1024;

/// ECANCELED: what a cancelled operation completes with.
const ECANCELED: i32 = 125;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadOutcome {
    Data(usize),
    Eof,
    Deadline,
}

/// Reads into the spare capacity of `buf` (appending), until data, EOF, error or `deadline`.
pub async fn read_until<S: CancelableAsyncReadRent>(
    stream: &mut S,
    mut buf: Vec<u8>,
    deadline: Option<Instant>,
) -> (io::Result<ReadOutcome>, Vec<u8>) {
    if buf.capacity() - buf.len() < MIN_READ {
        buf.reserve(MIN_READ);
    }
    let (len, cap) = (buf.len(), buf.capacity());
    let canceller = Canceller::new();
    let read = stream.cancelable_read(buf.slice_mut(len..cap), canceller.handle());
    let mut read = std::pin::pin!(read);
    if let Some(deadline) = deadline {
        let sleep = monoio::time::sleep_until(monoio::time::Instant::from_std(deadline));
        let mut sleep = std::pin::pin!(sleep);
        let finished = monoio::select! {
            r = &mut read => Some(r),
            _ = &mut sleep => None,
        };
        if let Some((res, slice)) = finished {
            return (outcome(res), slice.into_inner());
        }
        let _cancelled = canceller.cancel();
    }
    let (res, slice) = read.await;
    (outcome(res), slice.into_inner())
}

fn outcome(res: io::Result<usize>) -> io::Result<ReadOutcome> {
    match res {
        Ok(0) => Ok(ReadOutcome::Eof),
        Ok(n) => Ok(ReadOutcome::Data(n)),
        Err(e) if e.raw_os_error() == Some(ECANCELED) => Ok(ReadOutcome::Deadline),
        Err(e) => Err(e),
    }
}

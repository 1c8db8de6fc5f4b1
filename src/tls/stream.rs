//! A connection as the drivers see it: a monoio stream, plain until a [`TlsLayer`] is
//! installed. Reads return plaintext and writes take plaintext either way, so the session
//! code above is one path for both; this only moves ciphertext.

use std::io;
use std::time::Instant;

use monoio::io::{AsyncWriteRent, AsyncWriteRentExt, CancelableAsyncReadRent};

use super::TlsError;
use super::layer::TlsLayer;
use crate::proto::client::Transmit;
use crate::rt::{ReadOutcome, TransmitBuf, Watch};

/// Ciphertext read at a time.
const CIPHER_READ: usize = 16 * 1024 + 512;

pub struct Conn<S> {
    io: S,
    tls: Option<Box<TlsLayer>>,
    /// Ciphertext read and ciphertext to write, reused.
    cipher_in: Vec<u8>,
    cipher_out: Vec<u8>,
    /// Plaintext decrypted during the handshake, handed out by the next read.
    early: Vec<u8>,
    iovecs: Vec<libc::iovec>,
}

impl<S: AsyncWriteRent + CancelableAsyncReadRent> Conn<S> {
    pub fn new(io: S) -> Self {
        Conn {
            io,
            tls: None,
            cipher_in: Vec::new(),
            cipher_out: Vec::new(),
            early: Vec::new(),
            iovecs: Vec::new(),
        }
    }

    pub fn tls(&self) -> Option<&TlsLayer> {
        self.tls.as_deref()
    }

    pub fn get_ref(&self) -> &S {
        &self.io
    }

    /// Runs a TLS handshake over the connection, until `deadline`. From then on reads and
    /// writes go through `layer`. The caller has checked that no plaintext is left unread.
    pub async fn start_tls(
        &mut self,
        layer: TlsLayer,
        watch: &Watch,
        deadline: Instant,
    ) -> Result<(), TlsError> {
        let io_error = |e: io::Error| TlsError::Handshake(e.to_string());
        self.tls = Some(Box::new(layer));
        loop {
            self.flush_tls().await.map_err(io_error)?;
            let Some(tls) = self.tls.as_deref() else {
                return Err(TlsError::Handshake("no TLS layer".into()));
            };
            if !tls.is_handshaking() {
                return Ok(());
            }
            let buf = std::mem::take(&mut self.cipher_in);
            let (res, mut buf) = watch.read(&mut self.io, buf, CIPHER_READ, Some(deadline)).await;
            let received = match res {
                Ok(ReadOutcome::Data(_)) => self.receive_into_early(&buf),
                Ok(ReadOutcome::Eof) => {
                    Err(TlsError::Handshake("connection closed during the handshake".into()))
                }
                Ok(ReadOutcome::Deadline) => {
                    Err(TlsError::Handshake("no answer within the time limit".into()))
                }
                Err(e) => Err(io_error(e)),
            };
            buf.clear();
            self.cipher_in = buf;
            if let Err(e) = received {
                // Send the alert rustls queued, if any; the error is what matters.
                let _ = self.flush_tls().await;
                return Err(e);
            }
        }
    }

    fn receive_into_early(&mut self, buf: &[u8]) -> Result<(), TlsError> {
        let Some(tls) = self.tls.as_deref_mut() else { return Ok(()) };
        tls.receive(buf, &mut self.early)
    }

    /// Reads plaintext, appended to `buf`, until data, EOF, an error or `deadline`.
    pub async fn read(
        &mut self,
        watch: &Watch,
        mut buf: Vec<u8>,
        min_spare: usize,
        deadline: Option<Instant>,
    ) -> (io::Result<ReadOutcome>, Vec<u8>) {
        if self.tls.is_none() {
            return watch.read(&mut self.io, buf, min_spare, deadline).await;
        }
        if !self.early.is_empty() {
            let n = self.early.len();
            buf.append(&mut self.early);
            return (Ok(ReadOutcome::Data(n)), buf);
        }
        loop {
            let cipher = std::mem::take(&mut self.cipher_in);
            let (res, mut cipher) = watch.read(&mut self.io, cipher, CIPHER_READ, deadline).await;
            let before = buf.len();
            let outcome = match res {
                Ok(ReadOutcome::Data(_)) => match self.tls.as_deref_mut() {
                    Some(tls) => tls
                        .receive(&cipher, &mut buf)
                        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e)),
                    None => Ok(()),
                },
                Ok(ReadOutcome::Eof) => {
                    // With or without close_notify: SMTP decides what an early end means.
                    if let Some(tls) = self.tls.as_deref_mut() {
                        tls.end_of_stream();
                    }
                    cipher.clear();
                    self.cipher_in = cipher;
                    return (Ok(ReadOutcome::Eof), buf);
                }
                Ok(ReadOutcome::Deadline) => {
                    cipher.clear();
                    self.cipher_in = cipher;
                    return (Ok(ReadOutcome::Deadline), buf);
                }
                Err(e) => Err(e),
            };
            cipher.clear();
            self.cipher_in = cipher;
            if let Err(e) = outcome {
                let _ = self.flush_tls().await;
                return (Err(e), buf);
            }
            // Post-handshake messages (key updates) may need an answer.
            if let Err(e) = self.flush_tls().await {
                return (Err(e), buf);
            }
            if buf.len() > before {
                return (Ok(ReadOutcome::Data(buf.len() - before)), buf);
            }
            if self.tls.as_deref().is_some_and(TlsLayer::peer_closed) {
                return (Ok(ReadOutcome::Eof), buf);
            }
            // A partial record, or a record with no data (a session ticket): read on.
        }
    }

    /// Writes a client transmit: one vectored write in plaintext, or encrypted in one go.
    pub async fn write_transmit(&mut self, transmit: Transmit) -> (io::Result<()>, Transmit) {
        if let Some(tls) = self.tls.as_deref_mut() {
            let slices: Vec<&[u8]> = transmit.slices().collect();
            let res = tls.send(&slices).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e));
            if let Err(e) = res {
                return (Err(e), transmit);
            }
            return (self.flush_tls().await, transmit);
        }
        let buf = TransmitBuf::new(transmit, std::mem::take(&mut self.iovecs));
        let (res, buf) = self.io.write_vectored_all(buf).await;
        let (transmit, iovecs) = buf.into_parts();
        self.iovecs = iovecs;
        (res.map(|_| ()), transmit)
    }

    /// Writes `buf` whole (plaintext; encrypted when TLS is on). Gives the buffer back.
    pub async fn write_all(&mut self, buf: Vec<u8>) -> (io::Result<()>, Vec<u8>) {
        if let Some(tls) = self.tls.as_deref_mut() {
            if let Err(e) = tls.send(&[&buf]) {
                return (Err(io::Error::new(io::ErrorKind::InvalidData, e)), buf);
            }
            return (self.flush_tls().await, buf);
        }
        let (res, buf) = self.io.write_all(buf).await;
        (res.map(|_| ()), buf)
    }

    /// Ends our side: close_notify under TLS, then the TCP FIN.
    pub async fn shutdown(&mut self) -> io::Result<()> {
        if let Some(tls) = self.tls.as_deref_mut() {
            tls.close();
            self.flush_tls().await?;
        }
        self.io.shutdown().await
    }

    /// Sends whatever ciphertext the layer has queued.
    async fn flush_tls(&mut self) -> io::Result<()> {
        let Some(tls) = self.tls.as_deref_mut() else { return Ok(()) };
        if !tls.wants_write() {
            return Ok(());
        }
        let mut out = std::mem::take(&mut self.cipher_out);
        out.clear();
        tls.take_output(&mut out);
        let (res, out) = self.io.write_all(out).await;
        self.cipher_out = out;
        res.map(|_| ())
    }
}

//! The record layer without I/O: feed it the peer's ciphertext, take the plaintext; give it
//! plaintext, take the ciphertext to send. One type for both sides (a `rustls::Connection`).

use std::io::{IoSlice, Read as _, Write as _};
use std::sync::Arc;

use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection, Connection, ServerConfig, ServerConnection};

use super::TlsError;

/// How a session's keys were agreed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandshakeKind {
    Full,
    Resumed,
}

/// What a finished handshake negotiated, for reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsInfo {
    pub version: &'static str,
    pub cipher_suite: &'static str,
    pub kind: HandshakeKind,
}

pub struct TlsLayer {
    conn: Connection,
    peer_closed: bool,
}

impl TlsLayer {
    /// A client of `name` (SNI and, under a verifying policy, the name checked).
    pub fn client(config: Arc<ClientConfig>, name: ServerName<'static>) -> Result<Self, TlsError> {
        Ok(Self::new(ClientConnection::new(config, name)?.into()))
    }

    pub fn server(config: Arc<ServerConfig>) -> Result<Self, TlsError> {
        Ok(Self::new(ServerConnection::new(config)?.into()))
    }

    fn new(mut conn: Connection) -> Self {
        // What we write is bounded by the caller (one transmit at a time, drained at once).
        conn.set_buffer_limit(None);
        TlsLayer { conn, peer_closed: false }
    }

    pub fn is_handshaking(&self) -> bool {
        self.conn.is_handshaking()
    }

    /// Ciphertext is waiting to be taken with [`take_output`](Self::take_output).
    pub fn wants_write(&self) -> bool {
        self.conn.wants_write()
    }

    /// The peer sent close_notify: nothing more will come.
    pub fn peer_closed(&self) -> bool {
        self.peer_closed
    }

    /// Feeds the peer's ciphertext, all of it, appending whatever plaintext it completes to
    /// `plain`. A partial record is kept inside until the rest arrives. After an error the
    /// layer may still hold an alert to send: take the output, then close the connection.
    pub fn receive(&mut self, mut input: &[u8], plain: &mut Vec<u8>) -> Result<(), TlsError> {
        while !input.is_empty() {
            let n = self.conn.read_tls(&mut input).map_err(|e| TlsError::Protocol(e.to_string()))?;
            let state = self.conn.process_new_packets()?;
            let ready = state.plaintext_bytes_to_read();
            if ready > 0 {
                let start = plain.len();
                plain.resize(start + ready, 0);
                self.conn
                    .reader()
                    .read_exact(&mut plain[start..])
                    .map_err(|e| TlsError::Protocol(e.to_string()))?;
            }
            self.peer_closed |= state.peer_has_closed();
            if n == 0 {
                break;
            }
        }
        Ok(())
    }

    /// The peer's side of the connection ended (TCP EOF). Whether it said close_notify first:
    /// without it the stream may have been cut short by someone in between, and a partial
    /// record left inside is dropped, never surfaced as plaintext.
    pub fn end_of_stream(&mut self) -> bool {
        let _ = self.conn.read_tls(&mut &[][..]);
        let _ = self.conn.process_new_packets();
        self.peer_closed
    }

    /// Encrypts `slices` as application data (after the handshake; before it, rustls keeps
    /// the plaintext until it can).
    pub fn send(&mut self, slices: &[&[u8]]) -> Result<(), TlsError> {
        let mut skip = 0usize;
        let total: usize = slices.iter().map(|s| s.len()).sum();
        let mut io: Vec<IoSlice<'_>> = Vec::with_capacity(slices.len());
        while skip < total {
            io.clear();
            let mut offset = skip;
            for s in slices {
                if offset >= s.len() {
                    offset -= s.len();
                    continue;
                }
                io.push(IoSlice::new(&s[offset..]));
                offset = 0;
            }
            let n = self.conn.writer().write_vectored(&io).map_err(|e| TlsError::Protocol(e.to_string()))?;
            if n == 0 {
                return Err(TlsError::Protocol("TLS layer accepts no more data".into()));
            }
            skip += n;
        }
        Ok(())
    }

    /// Appends every pending record (handshake, data, alerts) to `out`.
    pub fn take_output(&mut self, out: &mut Vec<u8>) {
        while self.conn.wants_write() {
            // Writing into a Vec cannot fail.
            if self.conn.write_tls(out).is_err() {
                break;
            }
        }
    }

    /// Queues close_notify.
    pub fn close(&mut self) {
        self.conn.send_close_notify();
    }

    /// The certificates the peer presented (its own first), once the handshake has them.
    pub fn peer_certificates(&self) -> Option<&[rustls::pki_types::CertificateDer<'static>]> {
        self.conn.peer_certificates()
    }

    /// What the handshake negotiated, once it is done.
    pub fn info(&self) -> Option<TlsInfo> {
        if self.conn.is_handshaking() {
            return None;
        }
        let version = match self.conn.protocol_version()? {
            rustls::ProtocolVersion::TLSv1_3 => "TLSv1.3",
            rustls::ProtocolVersion::TLSv1_2 => "TLSv1.2",
            _ => "other",
        };
        let cipher_suite = self.conn.negotiated_cipher_suite()?.suite().as_str().unwrap_or("unknown");
        let kind = match self.conn.handshake_kind()? {
            rustls::HandshakeKind::Resumed => HandshakeKind::Resumed,
            _ => HandshakeKind::Full,
        };
        Some(TlsInfo { version, cipher_suite, kind })
    }
}

#[cfg(test)]
#[path = "layer_tests.rs"]
mod tests;

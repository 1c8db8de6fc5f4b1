//! TLS for both sides, on `rustls` driven by hand.
//!
//! - [`layer`]: a sans-IO record layer (ciphertext in, plaintext out, and back), testable with an
//!   in-memory peer.
//! - [`config`]: client configurations per [`TlsPolicy`], and the sink's server configuration
//!   (PEM files, or a self-signed certificate made at start).
//! - [`stream`]: the thin async adapter that moves ciphertext between a monoio stream and a
//!   layer; a connection is plain until a layer is installed (implicit TLS, or STARTTLS).

mod config;
mod layer;
mod pinned;
mod stream;

use thiserror::Error;

pub use config::{ClientTls, ServerTls, TlsPolicy, provider};
pub use layer::{HandshakeKind, TlsInfo, TlsLayer};
pub use stream::Conn;

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum TlsError {
    /// The peer broke the TLS protocol.
    #[error("TLS: {0}")]
    Protocol(String),
    /// The server's certificate was refused (policy `verify`).
    #[error("certificate refused: {0}")]
    Certificate(String),
    /// Certificates or keys could not be loaded or made.
    #[error("TLS setup: {0}")]
    Setup(String),
    /// The connection failed under the handshake.
    #[error("TLS handshake: {0}")]
    Handshake(String),
}

impl From<rustls::Error> for TlsError {
    fn from(e: rustls::Error) -> Self {
        match e {
            rustls::Error::InvalidCertificate(error) => TlsError::Certificate(pinned::explain(&error)),
            e => TlsError::Protocol(e.to_string()),
        }
    }
}

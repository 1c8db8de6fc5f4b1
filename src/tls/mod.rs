//! TLS for both sides, on `rustls` driven by hand.
//!
//! - [`layer`]: a sans-IO record layer (ciphertext in, plaintext out, and back), testable with an
//!   in-memory peer.
//! - [`config`]: client configurations per [`TlsPolicy`], and the sink's server configuration
//!   (PEM files, or a self-signed certificate made at start).
//! - [`stream`]: the thin async adapter that moves ciphertext between a monoio stream and a
//!   layer; a connection is plain until a layer is installed (implicit TLS, or STARTTLS).

mod config;
pub mod dane;
mod layer;
mod pinned;
mod stream;

use thiserror::Error;

pub use config::{CertificateCheck, ClientTls, ServerTls, TlsPolicy, provider};
pub use layer::{HandshakeKind, TlsInfo, TlsLayer};
pub use stream::Conn;

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum TlsError {
    /// The peer broke the TLS protocol.
    #[error("TLS: {0}")]
    Protocol(String),
    /// The server's certificate was refused (policy `verify`), for this kind of reason.
    #[error("certificate refused: {1}")]
    Certificate(CertificateProblem, String),
    /// Certificates or keys could not be loaded or made.
    #[error("TLS setup: {0}")]
    Setup(String),
    /// The connection failed under the handshake.
    #[error("TLS handshake: {0}")]
    Handshake(String),
}

/// What is wrong with a refused certificate, as TLS reports (RFC 8460 §4.3.1) tell it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CertificateProblem {
    /// It does not name the host connected to.
    HostMismatch,
    Expired,
    /// No trusted authority signed it (or its signature does not verify).
    NotTrusted,
    /// It matches none of the host's TLSA records (DANE).
    TlsaMismatch,
    /// Anything else (not valid yet, revoked, a CA certificate presented as the
    /// server's own).
    Other,
}

impl CertificateProblem {
    pub fn of(error: &rustls::CertificateError) -> CertificateProblem {
        use rustls::CertificateError as E;
        match error {
            E::NotValidForName | E::NotValidForNameContext { .. } => CertificateProblem::HostMismatch,
            E::Expired | E::ExpiredContext { .. } => CertificateProblem::Expired,
            // A chain to no trusted root, or one whose signatures do not verify against it.
            E::UnknownIssuer | E::BadSignature => CertificateProblem::NotTrusted,
            e if dane::is_tlsa_mismatch(e) => CertificateProblem::TlsaMismatch,
            _ => CertificateProblem::Other,
        }
    }
}

impl From<rustls::Error> for TlsError {
    fn from(e: rustls::Error) -> Self {
        match e {
            rustls::Error::InvalidCertificate(error) => {
                TlsError::Certificate(CertificateProblem::of(&error), pinned::explain(&error))
            }
            e => TlsError::Protocol(e.to_string()),
        }
    }
}

//! What became of each session's TLS to a destination, told to whoever watches it (TLS
//! reporting, RFC 8460): the engine says it in its own terms, once per session, never per
//! message; the watcher (a receiver's policy, in `deliver`) counts it.

use std::net::SocketAddr;
use std::sync::Arc;

use crate::tls::{CertificateCheck, CertificateProblem};

/// A session's TLS, as it went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TlsSeen<'a> {
    /// Encrypted, with a certificate valid for the host (checked in the handshake, or after it
    /// by the watch's check).
    Secured { addr: SocketAddr, host: Option<&'a str> },
    /// The server did not offer STARTTLS.
    NotOffered { addr: SocketAddr, host: Option<&'a str> },
    /// STARTTLS was refused, the handshake failed, or the certificate is not valid for the
    /// host (`problem`: what is wrong with it).
    Failed { addr: SocketAddr, host: Option<&'a str>, problem: Option<CertificateProblem>, why: &'a str },
}

/// Told of every session to a destination.
pub trait TlsObserver: Send + Sync + std::fmt::Debug {
    fn seen(&self, seen: TlsSeen<'_>);
}

/// A destination's watch.
#[derive(Debug, Clone)]
pub struct TlsWatch {
    pub observer: Arc<dyn TlsObserver>,
    /// Checks the certificate of a session whose own configuration did not (a policy that is
    /// reported on, not enforced), so the observer hears what a check would have said.
    pub check: Option<CertificateCheck>,
}

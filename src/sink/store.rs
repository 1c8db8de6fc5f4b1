//! Where a server that keeps mail hands it: `volley sink` throws messages away (or dumps them),
//! `volley serve`'s submission listener stores them in its spool. The session decides
//! everything about the protocol; a [`Store`] decides only whether a complete message is kept,
//! and the session answers the end of data with what it says, only once it has said it.

use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;

use crate::proto::Address;

/// A complete message, as the session received it.
#[derive(Debug, Clone)]
pub struct Submission {
    /// `None` is the null sender (`MAIL FROM:<>`).
    pub sender: Option<Address>,
    pub recipients: Vec<Address>,
    /// The content, dot-unstuffed, CRLF line endings (bare ones are refused before this).
    pub content: Vec<u8>,
    /// The user it authenticated as, if it did.
    pub user: Option<String>,
    /// The name it gave in EHLO or HELO.
    pub helo: String,
    pub peer: IpAddr,
    /// Whether it came over TLS.
    pub secure: bool,
}

/// The answer to the end of data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stored {
    /// Kept, durably: `250 2.0.0 Ok: queued as ID`.
    Queued(String),
    /// Not kept: this reply (e.g. `452`, `4.3.1 Insufficient system storage`); the connection
    /// stays open unless the code is 421.
    Refused { code: u16, text: String },
}

/// Keeps complete messages. Called from a server thread's runtime; the future need not be
/// `Send`, and must not block the thread (await the store's own completion instead).
pub trait Store: Send + Sync + std::fmt::Debug {
    fn store(&self, message: Submission) -> Pin<Box<dyn Future<Output = Stored>>>;
}

//! Per-recipient outcomes leaving the cores, for a job source that keeps its own books (the
//! delivery log of `send`). Each core pushes to its own bounded lock-free queue; when that is
//! full the core holds outcomes locally and stops taking new jobs until the reader catches up,
//! so a slow reader slows sending instead of growing memory.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use super::job::{Destination, Payload};
use crate::proto::client::{Completed, Disposition, LocalError, Message, TxnResult};
use crate::proto::{Address, Reply};

/// Where an attempt went: the address connected to, its host name, and TLS if any.
#[derive(Debug, Clone)]
pub struct Via {
    pub addr: SocketAddr,
    /// The MX host (or relay) name the address belongs to, when the destination has names.
    pub host: Option<Arc<str>>,
    /// The TLS protocol version (`TLSv1_3`), or `None` for plaintext.
    pub tls: Option<&'static str>,
}

/// What became of one recipient of one attempt.
#[derive(Debug)]
pub struct Outcome {
    /// The job's id (for `send`, the recipient's input line).
    pub id: u64,
    pub recipient: Address,
    pub disposition: Disposition,
    /// The reply that decided it, if a server gave one.
    pub reply: Option<Reply>,
    /// Why there was no deciding reply (a lost session, a local refusal), if so.
    pub error: Option<String>,
    pub destination: Arc<Destination>,
    /// `None` when no session got that far (every connection failed).
    pub via: Option<Via>,
    /// Octets of content (unknown for a message handed back before it was built).
    pub size: Option<usize>,
    /// Attempts made, this one included (counting the source's own, carried in `Job::attempts`).
    pub attempts: u32,
    /// When the job was first due, and when this attempt's outcome was decided.
    pub due: Instant,
    pub at: Instant,
    /// For a deferred recipient: the message again, addressed to it alone, to retry later.
    pub retry: Option<Payload>,
    /// How the outcome came about, when not from a server's reply or a lost session.
    pub origin: Origin,
}

/// How an outcome came about: one of these at most, so a reader tests one thing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// An attempt: the server's reply, or the session's failure (`error`).
    Attempt,
    /// The message could not be composed (`error` says why): nothing was sent, and
    /// `disposition` is `Bounced`.
    Unsendable,
    /// Not attempted: the destination is suspended until then, and the recipient is not to be
    /// retried before (`disposition` is `Deferred`, no attempt counted).
    Suspended { until: Instant },
    /// Not sent because this server cannot take it (no SMTPUTF8, no 8BITMIME, over SIZE).
    LocalRefusal(LocalError),
}

impl Outcome {
    /// The outcomes of recipient `index` of a finished transaction.
    pub(super) fn of<T>(done: &Completed<T>, index: usize, head: Head<'_>) -> Outcome {
        let (disposition, reply) = done.recipient(index);
        let error = if reply.is_some() {
            None
        } else {
            match &done.result {
                TxnResult::Aborted(e) | TxnResult::Uncertain { error: e, .. } => Some(e.to_string()),
                TxnResult::NotAttempted(e) => Some(e.to_string()),
                TxnResult::NoValidRecipients => Some("no reply for this recipient".into()),
                TxnResult::Accepted(_) | TxnResult::Rejected { .. } => None,
            }
        };
        let recipient = done.message.envelope.recipients[index].clone();
        let retry =
            (disposition == Disposition::Deferred).then(|| Payload::Ready(alone(&done.message, &recipient)));
        Outcome {
            id: head.id,
            recipient,
            disposition,
            reply: reply.cloned(),
            error,
            destination: Arc::clone(head.destination),
            via: head.via.cloned(),
            size: Some(done.message.len()),
            attempts: head.attempts,
            due: head.due,
            at: done.at,
            retry,
            origin: match &done.result {
                TxnResult::NotAttempted(refusal) => Origin::LocalRefusal(refusal.clone()),
                _ => Origin::Attempt,
            },
        }
    }

    /// The outcome of `recipient`, whose message (`retry`, for it alone) was not attempted
    /// because its destination is suspended until `until`: deferred, no attempt counted.
    pub(super) fn suspended(
        recipient: Address,
        retry: Payload,
        head: Head<'_>,
        reason: &str,
        until: Instant,
    ) -> Outcome {
        let size = match &retry {
            Payload::Ready(message) => Some(message.len()),
            Payload::Compose(_) => None,
        };
        Outcome {
            id: head.id,
            recipient,
            disposition: Disposition::Deferred,
            reply: None,
            error: Some(reason.to_owned()),
            destination: Arc::clone(head.destination),
            via: None,
            size,
            attempts: head.attempts,
            due: head.due,
            at: Instant::now(),
            retry: Some(retry),
            origin: Origin::Suspended { until },
        }
    }

    /// The outcome of `recipient` of a message that could not be composed.
    pub(super) fn unsendable(recipient: Address, reason: &str, head: Head<'_>, at: Instant) -> Outcome {
        Outcome {
            id: head.id,
            recipient,
            disposition: Disposition::Bounced,
            reply: None,
            error: Some(reason.to_owned()),
            destination: Arc::clone(head.destination),
            via: None,
            size: None,
            attempts: head.attempts,
            due: head.due,
            at,
            retry: None,
            origin: Origin::Unsendable,
        }
    }
}

/// `message` addressed to `recipient` alone (the same message when it is its only one).
pub(super) fn alone(message: &Message, recipient: &Address) -> Message {
    let envelope = if message.envelope.recipients.len() == 1 {
        Arc::clone(&message.envelope)
    } else {
        Arc::new(crate::proto::client::Envelope {
            sender: message.envelope.sender.clone(),
            recipients: vec![recipient.clone()],
        })
    };
    Message { envelope, ..message.clone() }
}

/// The parts of an outcome common to every recipient of a transaction.
pub(super) struct Head<'a> {
    pub id: u64,
    pub destination: &'a Arc<Destination>,
    pub via: Option<&'a Via>,
    pub attempts: u32,
    pub due: Instant,
}

//! What happened to a transaction, the typed session errors, and the one classifier that maps
//! all of them to delivered / deferred / bounced / uncertain.

use std::fmt;
use std::time::{Duration, Instant};

use thiserror::Error;

use crate::proto::command::Command;
use crate::proto::reply::{Reply, ReplyClass, ReplyError};

/// Why a session ended early. Every transaction without a final reply then reports
/// [`TxnResult::Aborted`] with a clone of this.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SessionError {
    #[error("connect failed after {waited:?}: {message}")]
    Connect { waited: Duration, message: String },
    #[error("greeting refused: {0}")]
    Greeting(Reply),
    #[error("{command} refused: {reply}")]
    Handshake { command: Command, reply: Reply },
    /// A 421: in reply to `command`, or (`None`) unasked, between transactions.
    #[error("server closing the session{}: {reply}", command.map_or_else(String::new, |c| format!(" after {c}")))]
    ServiceClosing { command: Option<Command>, reply: Reply },
    #[error("no reply to {command} within {waited:?}")]
    Timeout { command: Command, waited: Duration },
    #[error("malformed reply to {command}: {error}")]
    Malformed { command: Command, error: ReplyError },
    #[error("reply {reply} does not fit {command} ({why})")]
    Unexpected { command: Command, reply: Reply, why: &'static str },
    #[error("unsolicited reply from server: {0}")]
    Unsolicited(Reply),
    #[error("connection closed by server{}", awaiting(command))]
    Closed { command: Option<Command> },
    #[error("connection lost{}: {message}", awaiting(command))]
    Transport { command: Option<Command>, message: String },
    #[error("session abandoned: {0}")]
    Abandoned(&'static str),
    /// TLS is required and the server does not offer STARTTLS (`reply: None`) or refused it.
    #[error("TLS required, but {}", match reply { Some(r) => format!("STARTTLS was refused: {r}"), None => "the server does not offer STARTTLS".to_owned() })]
    TlsUnavailable { reply: Option<Reply> },
    /// Bytes followed the server's 220 to STARTTLS before the handshake: someone is injecting
    /// plaintext to be read as if it came over TLS (CVE-2011-0411 and kin).
    #[error("{0} octets followed the 220 to STARTTLS before the TLS handshake (injection attempt)")]
    TlsInjection(usize),
    #[error("TLS handshake failed: {0}")]
    Tls(String),
    /// Policy `verify` refused the server's certificate.
    #[error("TLS certificate refused: {0}")]
    TlsCertificate(String),
    #[error("AUTH {mechanism} refused: {reply}")]
    Auth { mechanism: &'static str, reply: Reply },
    /// Authentication is configured and cannot be attempted with this server.
    #[error("cannot authenticate: {0}")]
    AuthImpossible(String),
}

impl SessionError {
    /// A short stable name for counting failures by kind in reports.
    pub fn kind(&self) -> &'static str {
        match self {
            SessionError::Connect { .. } => "connect failed",
            SessionError::Greeting(_) => "greeting refused",
            SessionError::Handshake { .. } => "EHLO/HELO refused",
            SessionError::ServiceClosing { .. } => "421 service closing",
            SessionError::Timeout { .. } => "timeout",
            SessionError::Malformed { .. } => "malformed reply",
            SessionError::Unexpected { .. } => "unexpected reply",
            SessionError::Unsolicited(_) => "unsolicited reply",
            SessionError::Closed { .. } => "closed by server",
            SessionError::Transport { .. } => "connection lost",
            SessionError::Abandoned(_) => "abandoned",
            SessionError::TlsUnavailable { .. } => "TLS unavailable",
            SessionError::TlsInjection(_) => "TLS injection",
            SessionError::Tls(_) => "TLS handshake failed",
            SessionError::TlsCertificate(_) => "TLS certificate refused",
            SessionError::Auth { .. } => "AUTH refused",
            SessionError::AuthImpossible(_) => "AUTH impossible",
        }
    }

    /// The server refused service before the session began: a 4xx/5xx greeting, or it closed
    /// (or the connection broke) before greeting us. Another host of the destination may serve.
    pub fn refused_service(&self) -> bool {
        matches!(
            self,
            SessionError::Greeting(_)
                | SessionError::Closed { command: None }
                | SessionError::Transport { command: None, .. }
        )
    }

    /// The server's refusal that ended the session, when a reply did: what shaping reactions
    /// look at (a `421 4.7.0` greeting, a 421 closing the session).
    pub fn reply(&self) -> Option<&Reply> {
        match self {
            SessionError::Greeting(reply)
            | SessionError::Handshake { reply, .. }
            | SessionError::ServiceClosing { reply, .. } => Some(reply),
            _ => None,
        }
    }

    /// A failure of TLS or AUTH (rather than of the connection or the server's capacity).
    pub fn is_tls_or_auth(&self) -> bool {
        matches!(
            self,
            SessionError::TlsUnavailable { .. }
                | SessionError::TlsInjection(_)
                | SessionError::Tls(_)
                | SessionError::TlsCertificate(_)
                | SessionError::Auth { .. }
                | SessionError::AuthImpossible(_)
        )
    }

    /// Whether a new connection to the same server would meet the same failure: a setting of
    /// ours the server cannot satisfy, or credentials it refused for good. The engine stops
    /// trying such a destination at once rather than after its failing window (retrying bad
    /// credentials gets accounts locked).
    pub fn is_persistent(&self) -> bool {
        match self {
            SessionError::TlsUnavailable { reply } => {
                reply.as_ref().is_none_or(|r| r.class() == ReplyClass::Permanent)
            }
            SessionError::Auth { reply, .. } => reply.class() == ReplyClass::Permanent,
            SessionError::AuthImpossible(_) | SessionError::TlsCertificate(_) => true,
            _ => false,
        }
    }

    /// Whether this error proves the server out of step with the commands: a reply that cannot
    /// answer the command it lines up with, a reply nothing asked for, or bytes that are not
    /// replies. Replies since the last checkpoint can then not be trusted.
    pub fn is_violation(&self) -> bool {
        matches!(
            self,
            SessionError::Unexpected { .. } | SessionError::Unsolicited(_) | SessionError::Malformed { .. }
        )
    }
}

fn awaiting(command: &Option<Command>) -> String {
    command.map(|c| format!(" while waiting for the reply to {c}")).unwrap_or_default()
}

/// Refusals decided locally, before anything is sent, because this server cannot take the message.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum LocalError {
    #[error("message of {size} octets exceeds the server's SIZE limit of {limit}")]
    TooLarge { size: u64, limit: u64 },
    #[error("address needs SMTPUTF8, which the server does not offer")]
    Utf8NotSupported,
    #[error("message is 8-bit and the server does not offer 8BITMIME")]
    EightBitNotSupported,
    #[error("transaction has no recipients")]
    NoRecipients,
}

/// How a transaction ended, as far as the protocol can tell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TxnResult {
    /// The final reply (to the end of data or BDAT LAST) was positive.
    Accepted(Reply),
    /// A negative reply ended it: to MAIL, DATA, the end of data or BDAT.
    Rejected { command: Command, reply: Reply },
    /// Every RCPT was refused; the individual replies are in [`Completed::rejected`].
    NoValidRecipients,
    /// The session ended before a final reply.
    Aborted(SessionError),
    /// The session was proven out of step after the last point where it was provably in step,
    /// and this transaction's final command had been sent: the server may or may not have
    /// taken it. `reply` is what the unverified stream seemed to answer, if anything. Not
    /// retried (that could deliver twice) and never counted delivered.
    Uncertain { error: SessionError, reply: Option<Reply> },
    /// Never sent: this server cannot take it.
    NotAttempted(LocalError),
}

impl TxnResult {
    /// Whether the server gave the transaction a final answer, accepted or refused: the
    /// destination is working, whatever it thought of the message.
    pub fn was_answered(&self) -> bool {
        matches!(self, TxnResult::Accepted(_) | TxnResult::Rejected { .. } | TxnResult::NoValidRecipients)
    }
}

/// The final states of a message or recipient.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Disposition {
    Delivered,
    Deferred,
    Bounced,
    /// The server's answer cannot be trusted (see [`TxnResult::Uncertain`]).
    Uncertain,
}

impl fmt::Display for Disposition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Disposition::Delivered => "delivered",
            Disposition::Deferred => "deferred",
            Disposition::Bounced => "bounced",
            Disposition::Uncertain => "uncertain",
        })
    }
}

/// A recipient refused at RCPT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// Index into the envelope's recipients.
    pub rcpt: usize,
    pub reply: Reply,
    /// Which reply of the session it was (the first is 1): whether a checkpoint proved it.
    pub nth_reply: u64,
}

/// A finished transaction, handed back with the caller's token.
#[derive(Debug)]
pub struct Completed<T> {
    pub user: T,
    pub message: super::Message,
    pub result: TxnResult,
    /// Recipients refused at RCPT. For an uncertain transaction, only refusals the session had
    /// proven in step.
    pub rejected: Vec<Refusal>,
    /// When the outcome was decided (its final reply, or the session's end), which can be
    /// earlier than when it is reported: outcomes wait for proof that the session is in step.
    pub at: Instant,
}

impl<T> Completed<T> {
    /// The message-level disposition (what a load test counts).
    pub fn disposition(&self) -> Disposition {
        match &self.result {
            TxnResult::NoValidRecipients => {
                if self.rejected.iter().all(|r| r.reply.class() == ReplyClass::Permanent) {
                    Disposition::Bounced
                } else {
                    Disposition::Deferred
                }
            }
            other => classify(other),
        }
    }

    /// The disposition of recipient `index`, and the reply that decided it if there was one.
    pub fn recipient(&self, index: usize) -> (Disposition, Option<&Reply>) {
        let own = self.rejected.iter().find(|r| r.rcpt == index).map(|r| &r.reply);
        match (&self.result, own) {
            // A refused MAIL, a lost session or a local refusal decides for everyone.
            (TxnResult::Rejected { command: Command::MailFrom, reply }, _) => {
                (classify(&self.result), Some(reply))
            }
            // A recipient's own refusal is final even if the session died later.
            (_, Some(reply)) => (classify_reply(Command::RcptTo, reply), Some(reply)),
            (TxnResult::Aborted(_) | TxnResult::NotAttempted(_), None) => (classify(&self.result), None),
            (TxnResult::Uncertain { reply, .. }, None) => (Disposition::Uncertain, reply.as_ref()),
            (TxnResult::Accepted(reply) | TxnResult::Rejected { reply, .. }, None) => {
                (classify(&self.result), Some(reply))
            }
            // Cannot happen (every recipient was refused), but a recipient without a refusal
            // was not delivered either: retry it.
            (TxnResult::NoValidRecipients, None) => (Disposition::Deferred, None),
        }
    }
}

/// The classifier. Exhaustive over [`TxnResult`], so a new variant cannot go unclassified.
pub fn classify(result: &TxnResult) -> Disposition {
    match result {
        TxnResult::Accepted(_) => Disposition::Delivered,
        TxnResult::Rejected { command, reply } => classify_reply(*command, reply),
        // Without per-recipient detail, all-refused is only final if nothing says "try later";
        // `Completed::disposition` refines this with the recipients' replies.
        TxnResult::NoValidRecipients => Disposition::Bounced,
        // Nothing final was said about the message: it may be retried.
        TxnResult::Aborted(_) => Disposition::Deferred,
        TxnResult::NotAttempted(_) => Disposition::Bounced,
        TxnResult::Uncertain { .. } => Disposition::Uncertain,
    }
}

/// A negative reply's disposition: 4xx defers, 5xx bounces, with one exception: 503 to MAIL
/// means the session was out of step (a transaction pipelined behind a failed one), which says
/// nothing about the message itself.
pub fn classify_reply(command: Command, reply: &Reply) -> Disposition {
    match reply.class() {
        ReplyClass::Positive => Disposition::Delivered,
        ReplyClass::Transient => Disposition::Deferred,
        ReplyClass::Permanent if command == Command::MailFrom && reply.code == 503 => Disposition::Deferred,
        ReplyClass::Permanent => Disposition::Bounced,
        // A 3xx never ends a transaction; the state machine turns it into a protocol error.
        ReplyClass::Intermediate => Disposition::Deferred,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::Address;
    use crate::proto::body::Body;
    use crate::proto::client::{Envelope, Message};
    use std::sync::Arc;

    fn r(code: u16) -> Reply {
        Reply::new(code, None, "x")
    }

    fn completed(result: TxnResult, rejected: Vec<(usize, Reply)>) -> Completed<()> {
        let rejected =
            rejected.into_iter().map(|(rcpt, reply)| Refusal { rcpt, reply, nth_reply: 1 }).collect();
        let rcpts = (0..3).map(|i| Address::new(&format!("r{i}@x")).unwrap()).collect();
        let envelope = Arc::new(Envelope { sender: None, recipients: rcpts });
        let message = Message::new(envelope, Body::new(b"x"));
        Completed { user: (), message, result, rejected, at: std::time::Instant::now() }
    }

    #[test]
    fn classifier_table() {
        use Disposition::*;
        let cases = [
            (TxnResult::Accepted(r(250)), Delivered),
            (TxnResult::Rejected { command: Command::MailFrom, reply: r(451) }, Deferred),
            (TxnResult::Rejected { command: Command::MailFrom, reply: r(550) }, Bounced),
            (TxnResult::Rejected { command: Command::MailFrom, reply: r(503) }, Deferred),
            (TxnResult::Rejected { command: Command::Data, reply: r(503) }, Bounced),
            (TxnResult::Rejected { command: Command::Data, reply: r(451) }, Deferred),
            (TxnResult::Rejected { command: Command::EndOfData, reply: r(554) }, Bounced),
            (TxnResult::Rejected { command: Command::Bdat, reply: r(452) }, Deferred),
            (TxnResult::Aborted(SessionError::Closed { command: Some(Command::EndOfData) }), Deferred),
            (TxnResult::Aborted(SessionError::Abandoned("test")), Deferred),
            (TxnResult::NotAttempted(LocalError::Utf8NotSupported), Bounced),
            (
                TxnResult::Uncertain { error: SessionError::Unsolicited(r(250)), reply: Some(r(250)) },
                Uncertain,
            ),
            (
                TxnResult::Uncertain { error: SessionError::Unsolicited(r(554)), reply: Some(r(554)) },
                Uncertain,
            ),
        ];
        for (result, want) in cases {
            assert_eq!(classify(&result), want, "{result:?}");
        }
    }

    #[test]
    fn all_recipients_refused() {
        let c = completed(TxnResult::NoValidRecipients, vec![(0, r(550)), (1, r(551)), (2, r(553))]);
        assert_eq!(c.disposition(), Disposition::Bounced);
        let c = completed(TxnResult::NoValidRecipients, vec![(0, r(550)), (1, r(450)), (2, r(553))]);
        assert_eq!(c.disposition(), Disposition::Deferred);
        assert_eq!(c.recipient(1), (Disposition::Deferred, Some(&r(450))));
        assert_eq!(c.recipient(2), (Disposition::Bounced, Some(&r(553))));
    }

    #[test]
    fn per_recipient_dispositions() {
        let c = completed(TxnResult::Accepted(r(250)), vec![(1, r(550)), (2, r(452))]);
        assert_eq!(c.disposition(), Disposition::Delivered);
        assert_eq!(c.recipient(0), (Disposition::Delivered, Some(&r(250))));
        assert_eq!(c.recipient(1), (Disposition::Bounced, Some(&r(550))));
        assert_eq!(c.recipient(2), (Disposition::Deferred, Some(&r(452))));

        // MAIL refused: the RCPT 503s that follow say nothing; MAIL's reply decides.
        let mail = TxnResult::Rejected { command: Command::MailFrom, reply: r(550) };
        let c = completed(mail, vec![(0, r(503))]);
        assert_eq!(c.recipient(0), (Disposition::Bounced, Some(&r(550))));

        let aborted = TxnResult::Aborted(SessionError::Closed { command: Some(Command::RcptTo) });
        let c = completed(aborted, vec![(0, r(550))]);
        assert_eq!(c.recipient(0), (Disposition::Bounced, Some(&r(550))));
        assert_eq!(c.recipient(1), (Disposition::Deferred, None));
        assert_eq!(c.recipient(2), (Disposition::Deferred, None));

        let data = TxnResult::Rejected { command: Command::EndOfData, reply: r(451) };
        let c = completed(data, vec![]);
        assert_eq!(c.recipient(0), (Disposition::Deferred, Some(&r(451))));

        // Out of step: a refusal proven before the last checkpoint stands; the rest is unknown.
        let uncertain =
            TxnResult::Uncertain { error: SessionError::Unsolicited(r(250)), reply: Some(r(250)) };
        let c = completed(uncertain, vec![(1, r(550))]);
        assert_eq!(c.disposition(), Disposition::Uncertain);
        assert_eq!(c.recipient(0), (Disposition::Uncertain, Some(&r(250))));
        assert_eq!(c.recipient(1), (Disposition::Bounced, Some(&r(550))));
    }
}

//! Session settings: EHLO name, pipeline depth, extensions to use, per-phase timeouts.

use std::sync::Arc;
use std::time::Duration;

use super::auth::Credentials;
use crate::proto::address::Domain;
use crate::proto::command::Command;

/// How long to wait for each reply. Defaults are RFC 5321 §4.5.3.2's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    pub greeting: Duration,
    pub ehlo: Duration,
    pub mail: Duration,
    pub rcpt: Duration,
    pub data: Duration,
    pub end_of_data: Duration,
    /// RSET, QUIT, NOOP and anything else.
    pub command: Duration,
    /// A session with nothing to do sends QUIT after this long.
    pub idle: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        let min = |m: u64| Duration::from_secs(60 * m);
        Timeouts {
            greeting: min(5),
            ehlo: min(5),
            mail: min(5),
            rcpt: min(5),
            data: min(2),
            end_of_data: min(10),
            command: min(5),
            idle: Duration::from_secs(30),
        }
    }
}

impl Timeouts {
    /// The same limit for every reply (load tests want one knob), idle left as is.
    pub fn uniform(reply: Duration, idle: Duration) -> Self {
        Timeouts {
            greeting: reply,
            ehlo: reply,
            mail: reply,
            rcpt: reply,
            data: reply,
            end_of_data: reply,
            command: reply,
            idle,
        }
    }

    pub(super) fn for_reply_to(&self, command: Option<Command>) -> Duration {
        match command {
            None => self.greeting,
            Some(Command::Ehlo | Command::Helo) => self.ehlo,
            Some(Command::MailFrom) => self.mail,
            Some(Command::RcptTo) => self.rcpt,
            Some(Command::Data) => self.data,
            Some(Command::EndOfData | Command::Bdat) => self.end_of_data,
            Some(_) => self.command,
        }
    }
}

/// Whether the session upgrades to TLS with STARTTLS (RFC 3207).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StartTls {
    /// Never (plaintext, or the connection is TLS from its first byte).
    #[default]
    Off,
    /// When the server offers it; plaintext otherwise.
    IfOffered,
    /// The session fails if the server does not offer it or refuses it.
    Required,
}

/// How many refusals a session risks. Servers count a client's errors per session and punish
/// past a limit: Postfix answers every command a second late after 10 (`smtpd_soft_error_limit`,
/// `smtpd_error_sleep_time`) and hangs up after 20; sendmail's `BadRcptThrottle` and
/// Exchange's tarpit slow down after a few unknown recipients. A list with dead addresses meets
/// these on every connection, so a careful sender (see `Client`) keeps each session under them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refusals {
    /// Negative replies after which the session takes no new transaction and ends (QUIT; the
    /// caller reconnects, and the server's count starts again).
    pub quit_after: u32,
    /// Refusals a session may ever reach: a transaction is only sent while the refusals seen
    /// plus those its in-flight transactions could still bring stay within this.
    pub at_most: u32,
}

impl Refusals {
    /// Under Postfix's soft limit of 10, the lowest of the common defaults that count.
    pub const CAREFUL: Refusals = Refusals { quit_after: 5, at_most: 8 };
}

#[derive(Debug, Clone)]
pub struct ClientConfig {
    pub helo_domain: Domain,
    /// Most transactions in flight on this connection (with CHUNKING; DATA allows two).
    pub depth: usize,
    /// Transactions after which the session quits.
    pub max_messages: u64,
    /// Use PIPELINING when offered.
    pub pipelining: bool,
    /// Use CHUNKING (BDAT) when offered.
    pub chunking: bool,
    /// Most transactions whose outcome may wait for proof that the session is in step. With
    /// CHUNKING no reply marks the stream (DATA's 354 does), so after this many the client
    /// sends a second EHLO, whose multi-line reply only EHLO gets, and waits for it.
    pub sync_every: usize,
    /// Longest an outcome may wait for that proof before the client sends a checkpoint EHLO
    /// (none: only `sync_every` and falling idle call for one). A sender whose log must keep up
    /// with the server sets it: a held outcome is not yet in the log, so a crash resends it.
    pub sync_after: Option<std::time::Duration>,
    /// Spare servers that count errors (`send`): after a recipient is refused, content waits
    /// for the RCPT replies (RSET, not DATA or BDAT, when none was accepted), and refusals are
    /// kept within these bounds. `None` (`bench`): pipeline regardless.
    pub refusals: Option<Refusals>,
    pub timeouts: Timeouts,
    pub starttls: StartTls,
    /// Authenticate after the (encrypted) EHLO, before any transaction.
    pub auth: Option<Arc<Credentials>>,
}

impl ClientConfig {
    pub fn new(helo_domain: Domain) -> Self {
        ClientConfig {
            helo_domain,
            depth: 32,
            max_messages: u64::MAX,
            pipelining: true,
            chunking: true,
            sync_every: 256,
            sync_after: None,
            refusals: None,
            timeouts: Timeouts::default(),
            starttls: StartTls::Off,
            auth: None,
        }
    }
}

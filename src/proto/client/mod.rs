//! The client session state machine, sans-IO: it is fed the server's bytes and the time, and
//! yields the bytes to write, the deadline to wake it at, and events (session ready, transaction
//! completed, session closed).
//!
//! Replies are matched to commands strictly in order through one FIFO of expected replies, in
//! every mode:
//! - **PIPELINING** (RFC 2920): `MAIL`, every `RCPT` and `DATA` go in one write; after `354` the
//!   body, its terminator and the next transaction's group go in the next one.
//! - **CHUNKING** (RFC 3030) with PIPELINING: `MAIL`, `RCPT`s, `BDAT <len> LAST` and the body, for up
//!   to `depth` transactions in flight without waiting for any reply.
//! - Neither: one command, one reply.
//!
//! Transactions carry a caller's token `T`, returned with the outcome.
//!
//! **Nothing is reported on the word of a stream that may be out of step.** A server that sends
//! one reply too many shifts every later reply onto the wrong command, so an outcome is held
//! until a *checkpoint*: a reply that only its own command can get, in its place, which proves
//! every reply before it was matched to the right command. The checkpoints are DATA's `354`, the
//! multi-line `250` of an EHLO, and `221` to QUIT followed by the server closing with nothing
//! more. With CHUNKING there is no `354`, so after [`ClientConfig::sync_every`] held outcomes,
//! or when the session falls idle with outcomes held, the client sends a second EHLO (RFC 5321
//! §4.1.4 allows it; it resets like RSET) and waits for it. A reply that cannot answer its
//! command ([`fit`]), one nobody asked for, or bytes that are no reply prove the session out of
//! step: held outcomes become [`TxnResult::Uncertain`], and so does every transaction whose
//! content had been sent. Any other end of a session (a timeout, a hang-up, 421) proves nothing
//! either way, and held outcomes are reported as they stand.
//!
//! What a checkpoint proves: no SMTP reply is unique to one position, so a server that inserts
//! extra replies could in principle shift a genuine `354` (or EHLO reply) onto a later DATA (or
//! EHLO). That needs at least as many extra replies, since the previous checkpoint, as there
//! were commands between the two (four or more). Fewer (one stray, a duplicated line, a short
//! burst) are always caught; `221` followed by the close is proof whatever the server did. A
//! server that drops a reply shows up as a timeout, which proves nothing.

mod auth;
mod checkpoint;
mod config;
mod fit;
mod opening;
mod outcome;
mod transaction;
mod transmit;

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub use auth::{Credentials, Mechanism, Secret};
pub use config::{ClientConfig, Refusals, StartTls, Timeouts};
pub use outcome::{
    Completed, Disposition, LocalError, Refusal, SessionError, TxnResult, classify, classify_reply,
};
pub use transmit::{Segment, Transmit};

use checkpoint::Checkpoints;
use transaction::{Step, Txn};

use super::address::Address;
use super::body::{self, Body, Head};
use super::command::{self, Command};
use super::ehlo::Capabilities;
use super::reply::{ReplyClass, ReplyParser, ReplyRef};

/// Sender and recipients of one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    /// `None` is the null reverse-path `<>`.
    pub sender: Option<Address>,
    pub recipients: Vec<Address>,
}

impl Envelope {
    fn needs_smtputf8(&self) -> bool {
        self.sender.as_ref().is_some_and(Address::needs_smtputf8)
            || self.recipients.iter().any(Address::needs_smtputf8)
    }
}

/// A message ready to send: envelope and body are shared, never copied per send.
#[derive(Debug, Clone)]
pub struct Message {
    pub envelope: Arc<Envelope>,
    /// Header lines of this message only, sent ahead of the shared body.
    pub head: Option<Head>,
    pub body: Body,
}

impl Message {
    pub fn new(envelope: Arc<Envelope>, body: Body) -> Self {
        Message { envelope, head: None, body }
    }

    /// Octets of content: the head and the body, CRLF-normalised.
    pub fn len(&self) -> usize {
        body::content_len(self.head.as_ref(), &self.body)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn is_eight_bit(&self) -> bool {
        body::content_is_eight_bit(self.head.as_ref(), &self.body)
    }
}

/// How long the session's opening took.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Handshake {
    /// From the connection to the greeting.
    pub greeting: Duration,
    /// From sending the last EHLO (or HELO) to its positive reply.
    pub ehlo: Duration,
    /// From sending AUTH to its 235, when the session authenticated.
    pub auth: Option<Duration>,
}

#[derive(Debug)]
pub enum Event<T> {
    /// The server said 220 to STARTTLS: the driver runs the TLS handshake, then calls
    /// [`Client::tls_established`] or [`Client::handle_tls_error`].
    StartTls,
    /// Greeting, EHLO/HELO, TLS and AUTH done: transactions can be pushed.
    Ready(Handshake),
    Done(Completed<T>),
    /// The session is over: `None` after a clean QUIT or a server closing an idle session.
    Closed(Option<SessionError>),
}

/// Longest wait, after `221`, for the server to close: anything it sends meanwhile proves the
/// session was out of step.
const QUIT_LINGER: Duration = Duration::from_secs(2);

/// Where the session stands. A phase owns what only it needs (when its command went out, the
/// AUTH exchange); what the opening measured for [`Event::Ready`] is kept in `Client::opening`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Waiting for the greeting of a connection made then.
    Greeting {
        opened: Instant,
    },
    SendEhlo,
    /// EHLO (or HELO) went out then.
    Ehlo {
        sent: Instant,
    },
    SendHelo,
    Helo {
        sent: Instant,
    },
    SendStartTls,
    StartTls,
    /// The driver is running the TLS handshake.
    TlsHandshake,
    /// An AUTH line is due: the command (`exchange` is `None`), or the answer to a 334.
    SendAuth {
        mechanism: Mechanism,
        exchange: Option<AuthExchange>,
    },
    Auth {
        mechanism: Mechanism,
        exchange: AuthExchange,
    },
    Ready,
    SendQuit,
    Quit,
    /// `221` received: waiting, until then, for the server to close with nothing more said.
    Linger {
        until: Instant,
    },
    Closed,
}

/// An AUTH exchange under way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct AuthExchange {
    /// What the next 334 is answered with.
    step: auth::AuthStep,
    /// When the AUTH command went out.
    started: Instant,
}

/// A reply we are waiting for. `seq` names the transaction, if any.
#[derive(Debug, Clone, Copy)]
struct Expect {
    command: Option<Command>, // None: the greeting
    seq: u64,
    rcpt: usize,
    /// When the command went out.
    sent: Instant,
}

const NO_TXN: u64 = u64::MAX;

/// One SMTP client session, sans-IO: it never touches a socket or a clock.
///
/// Calling order, as the driver (`engine::session`) does it:
/// 1. [`Client::new`] when the connection is made; with implicit TLS, [`Client::tls_established`]
///    right after, once the handshake is done.
/// 2. Loop until [`Client::is_closed`]:
///    - [`Client::poll_transmit`]`(now)`: write what it returns (in order), then hand the buffer
///      back with [`Client::recycle`]. Call it again after anything below: every input, timeout
///      or pushed transaction may make something due.
///    - [`Client::push`] transactions while [`Client::wants_transaction`].
///    - [`Client::poll_event`] until `None`: [`Event::StartTls`] asks the driver to run the TLS
///      handshake and call [`Client::tls_established`] or [`Client::handle_tls_error`];
///      [`Event::Done`] reports a transaction, only once a checkpoint has proven it.
///    - Wait for input or [`Client::poll_timeout`], whichever is first: bytes go to
///      [`Client::handle_input`]`(now, bytes)` (keep what it did not consume, a partial reply,
///      and pass it again with more); the deadline to [`Client::handle_timeout`]`(now)`; the
///      end of the stream to [`Client::handle_eof`]; a failed read or write to
///      [`Client::handle_transport_error`].
/// 3. [`Client::close`] asks for a clean QUIT once the transactions in flight are done;
///    [`Client::abandon`] ends at once. Either way, drain [`Client::poll_event`]: every pushed
///    transaction is reported exactly once.
pub struct Client<T> {
    config: ClientConfig,
    phase: Phase,
    /// What the opening took so far, reported with [`Event::Ready`].
    opening: Handshake,
    caps: Option<Capabilities>,
    pipelining: bool,
    chunking: bool,
    /// The connection is encrypted (implicit TLS, or after STARTTLS).
    secure: bool,
    /// The server refused STARTTLS and the policy allows going on in plaintext.
    tls_declined: bool,
    /// AUTH succeeded (or none is configured).
    authenticated: bool,

    // The pipeline: replies awaited in order, and the transactions they belong to.
    parser: ReplyParser,
    expect: VecDeque<Expect>,
    /// When the reply at the front of `expect` started being waited for.
    head_since: Instant,
    /// When the session last became idle (Ready, nothing queued or expected).
    idle_since: Instant,
    txns: VecDeque<Txn<T>>,
    next_seq: u64,
    /// Transactions pushed in this session (at most `config.max_messages`).
    started: u64,
    /// The server's transaction state must be reset before the next MAIL.
    needs_rset: bool,
    quit_requested: bool,
    /// Negative replies to transaction commands in this session (see [`Refusals`]).
    refusals: u32,
    /// A recipient was refused in this session (and `config.refusals` is set): a transaction's
    /// content now waits for its RCPT replies, one transaction at a time.
    hold_content: bool,

    /// Outcomes held until a checkpoint proves them, and what calls for one.
    checkpoints: Checkpoints<T>,

    /// The `now` of the input being handled, and of the output being prepared.
    input_at: Instant,
    output_at: Instant,
    /// Reply latencies of transaction commands since the driver last took them.
    latencies: Vec<(Command, Duration)>,
    out: Transmit,
    spare: Option<Transmit>,
    events: VecDeque<Event<T>>,
}

impl<T> Client<T> {
    /// A session on a connection established at `now`; the greeting is awaited first.
    pub fn new(config: ClientConfig, now: Instant) -> Self {
        let mut expect = VecDeque::with_capacity(64);
        expect.push_back(Expect { command: None, seq: NO_TXN, rcpt: 0, sent: now });
        Client {
            checkpoints: Checkpoints::new(config.sync_every, config.sync_after),
            config,
            phase: Phase::Greeting { opened: now },
            caps: None,
            pipelining: false,
            chunking: false,
            parser: ReplyParser::new(),
            expect,
            head_since: now,
            idle_since: now,
            txns: VecDeque::new(),
            next_seq: 0,
            started: 0,
            needs_rset: false,
            quit_requested: false,
            opening: Handshake { greeting: Duration::ZERO, ehlo: Duration::ZERO, auth: None },
            input_at: now,
            output_at: now,
            refusals: 0,
            hold_content: false,
            latencies: Vec::with_capacity(64),
            secure: false,
            tls_declined: false,
            authenticated: false,
            out: Transmit::default(),
            spare: None,
            events: VecDeque::new(),
        }
    }

    pub fn capabilities(&self) -> Option<&Capabilities> {
        self.caps.as_ref()
    }

    pub fn is_pipelining(&self) -> bool {
        self.pipelining
    }

    pub fn is_chunking(&self) -> bool {
        self.chunking
    }

    pub fn is_closed(&self) -> bool {
        self.phase == Phase::Closed
    }

    /// Whether the connection is encrypted.
    pub fn is_secure(&self) -> bool {
        self.secure
    }

    /// Whether the server owes a reply, or its close after `221` (so the driver should read).
    pub fn awaiting_reply(&self) -> bool {
        !self.expect.is_empty() || matches!(self.phase, Phase::Linger { .. })
    }

    /// Transactions pushed whose outcome has not been reported yet.
    pub fn in_flight(&self) -> usize {
        self.txns.len() + self.checkpoints.held()
    }

    fn capacity(&self) -> usize {
        let depth = self.config.depth.max(1);
        match (self.pipelining, self.chunking) {
            (true, true) => depth,
            // One transaction awaiting its final reply, the next one's group sent with its body.
            (true, false) => depth.min(2),
            (false, _) => 1,
        }
    }

    /// Whether [`push`](Self::push) would take a transaction now.
    pub fn wants_transaction(&self) -> bool {
        self.phase == Phase::Ready
            && !self.quit_requested
            && self.started < self.config.max_messages
            && self.txns.len() < self.capacity()
            && self.refusals_allow_another()
    }

    /// Queues a transaction. Gives it back when the session cannot take it now.
    pub fn push(&mut self, message: Message, user: T) -> Result<(), (Message, T)> {
        if !self.wants_transaction() {
            return Err((message, user));
        }
        self.started += 1;
        if self.started >= self.config.max_messages {
            // The last this session takes: its QUIT can go with it (`pipeline_quit`).
            self.quit_requested = true;
        }
        if let Some(err) = self.local_refusal(&message) {
            // Decided here, not by the server: nothing to wait for.
            self.events.push_back(Event::Done(Completed {
                user,
                message,
                result: TxnResult::NotAttempted(err),
                rejected: Vec::new(),
                at: self.output_at,
            }));
            self.maybe_quit();
            return Ok(());
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        self.txns.push_back(Txn {
            seq,
            user,
            message,
            step: Step::Mail,
            outstanding: 0,
            mail_ok: false,
            rcpts_answered: 0,
            rcpts_ok: 0,
            rejected: Vec::new(),
            result: None,
            reset: false,
            content_sent: false,
        });
        Ok(())
    }

    /// Asks for a clean QUIT: with the last content of the transactions in flight if the
    /// server pipelines (`pipeline_quit`), else once they are done.
    pub fn close(&mut self) {
        self.quit_requested = true;
        self.maybe_quit();
    }

    /// Ends the session now (the caller is shutting down): every transaction in flight is
    /// reported aborted. Nothing more is written.
    pub fn abandon(&mut self, reason: &'static str) {
        if self.phase != Phase::Closed {
            self.fail(SessionError::Abandoned(reason));
        }
    }

    pub fn poll_event(&mut self) -> Option<Event<T>> {
        self.events.pop_front()
    }

    /// How long each transaction command waited for its reply (MAIL, RCPT, DATA, end of data,
    /// BDAT), since the last call.
    pub fn take_latencies(&mut self) -> std::vec::Drain<'_, (Command, Duration)> {
        self.latencies.drain(..)
    }

    /// The bytes to write next, if any. `now` starts the reply timers of what it contains.
    pub fn poll_transmit(&mut self, now: Instant) -> Option<Transmit> {
        let was_waiting = !self.expect.is_empty();
        self.output_at = now;
        self.fill();
        self.out.close_own();
        if self.out.is_empty() {
            return None;
        }
        if !was_waiting && !self.expect.is_empty() {
            self.head_since = now;
        }
        let next = self.spare.take().unwrap_or_default();
        Some(std::mem::replace(&mut self.out, next))
    }

    /// Returns a written transmit so its buffers are reused.
    pub fn recycle(&mut self, mut transmit: Transmit) {
        transmit.clear();
        self.spare = Some(transmit);
    }

    /// When [`handle_timeout`](Self::handle_timeout) should next be called (and, once a
    /// checkpoint falls due by age, [`poll_transmit`](Self::poll_transmit), which sends it).
    pub fn poll_timeout(&self) -> Option<Instant> {
        match (self.reply_deadline(), self.checkpoint_due()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// The deadline of the reply waited for, of the close after `221`, or of idleness.
    fn reply_deadline(&self) -> Option<Instant> {
        match self.expect.front() {
            Some(head) => Some(self.head_since + self.config.timeouts.for_reply_to(head.command)),
            None => match self.phase {
                Phase::Linger { until } => Some(until),
                Phase::Ready if self.txns.is_empty() => Some(self.idle_since + self.config.timeouts.idle),
                _ => None,
            },
        }
    }

    /// When a checkpoint EHLO falls due by age ([`Checkpoints::due`]).
    fn checkpoint_due(&self) -> Option<Instant> {
        self.checkpoints.due(self.phase == Phase::Ready, || self.between_transactions())
    }

    /// No transaction is between DATA and its reply: a checkpoint EHLO may go out.
    fn between_transactions(&self) -> bool {
        self.txns.iter().all(|t| matches!(t.step, Step::Mail | Step::Done))
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        // A checkpoint due by age needs nothing here: the next poll_transmit sends it.
        let Some(deadline) = self.reply_deadline() else { return };
        if now < deadline {
            return;
        }
        match self.expect.front() {
            Some(head) => {
                let waited = now.saturating_duration_since(self.head_since);
                let command = head.command.unwrap_or(Command::Noop);
                self.fail(SessionError::Timeout { command, waited });
            }
            // The server said 221 and nothing after it: as in step as a session can be shown.
            None if matches!(self.phase, Phase::Linger { .. }) => self.close_cleanly(),
            None => {
                self.quit_requested = true;
                self.maybe_quit();
            }
        }
    }

    /// Feeds bytes read from the server. Returns how many were consumed; the caller keeps the
    /// rest (a partial reply) at the front of its buffer and passes it again with more.
    pub fn handle_input(&mut self, now: Instant, buf: &[u8]) -> usize {
        self.input_at = now;
        let mut consumed = 0;
        while self.phase != Phase::Closed {
            match self.parser.parse(&buf[consumed..]) {
                Ok(None) => return consumed,
                Ok(Some((reply, len))) => {
                    consumed += len;
                    self.checkpoints.count_reply();
                    let Some(expect) = self.expect.pop_front() else {
                        self.unsolicited(&reply);
                        break;
                    };
                    if !self.expect.is_empty() {
                        self.head_since = now;
                    }
                    if let Err(e) = self.on_reply(expect, &reply) {
                        self.fail(e);
                        break;
                    }
                    if self.phase == Phase::TlsHandshake {
                        // Whatever follows the 220 in the same stream was sent before TLS and
                        // would be read as if it came over it.
                        let extra = buf.len() - consumed;
                        if extra > 0 {
                            self.fail(SessionError::TlsInjection(extra));
                            break;
                        }
                        self.events.push_back(Event::StartTls);
                        return consumed;
                    }
                    if self.expect.is_empty() && self.phase == Phase::Ready && self.txns.is_empty() {
                        self.idle_since = now;
                    }
                }
                Err(error) => {
                    let command = self.expect.front().and_then(|e| e.command).unwrap_or(Command::Noop);
                    self.fail(SessionError::Malformed { command, error });
                    break;
                }
            }
        }
        buf.len()
    }

    /// The server closed its side of the connection.
    pub fn handle_eof(&mut self) {
        self.connection_ended(|command| SessionError::Closed { command });
    }

    /// Reading or writing failed.
    pub fn handle_transport_error(&mut self, message: &str) {
        self.connection_ended(|command| SessionError::Transport { command, message: message.to_owned() });
    }

    fn connection_ended(&mut self, error: impl FnOnce(Option<Command>) -> SessionError) {
        match self.phase {
            Phase::Closed => {}
            // A QUIT pipelined behind transactions (`pipeline_quit`) says nothing of them.
            Phase::Quit | Phase::SendQuit | Phase::Linger { .. } if self.txns.is_empty() => {
                self.close_cleanly()
            }
            Phase::Ready if self.expect.is_empty() && self.txns.is_empty() => self.close_cleanly(),
            _ => {
                let command = self.expect.front().and_then(|e| e.command);
                self.fail(error(command));
            }
        }
    }

    fn unsolicited(&mut self, reply: &ReplyRef<'_>) {
        // A server may say 421 and hang up on an idle session. Anything else, or a 421 while
        // outcomes await a checkpoint, means replies and commands no longer line up.
        if reply.code == 421 && self.phase == Phase::Ready && self.checkpoints.held() == 0 {
            if self.txns.is_empty() {
                self.close_cleanly();
            } else {
                // Messages handed over whose commands have not gone out (nothing is awaited):
                // reported as never sent, to be sent again.
                self.fail(SessionError::ServiceClosing { command: None, reply: reply.to_owned() });
            }
        } else {
            self.fail(SessionError::Unsolicited(reply.to_owned()));
        }
    }

    fn on_reply(&mut self, expect: Expect, reply: &ReplyRef<'_>) -> Result<(), SessionError> {
        let class = reply.class();
        let Some(command) = expect.command else {
            return match reply.code {
                220 => {
                    if let Phase::Greeting { opened } = self.phase {
                        self.opening.greeting = self.input_at.saturating_duration_since(opened);
                    }
                    self.phase = Phase::SendEhlo;
                    Ok(())
                }
                _ if class == ReplyClass::Transient || class == ReplyClass::Permanent => {
                    Err(SessionError::Greeting(reply.to_owned()))
                }
                _ => Err(unexpected(Command::Noop, reply, "not a greeting")),
            };
        };
        if reply.code == 421 && command != Command::Quit {
            return Err(SessionError::ServiceClosing { command: Some(command), reply: reply.to_owned() });
        }
        if command == Command::Ehlo && self.phase == Phase::Ready {
            return self.on_sync_reply(reply);
        }
        let enhanced = self.caps.as_ref().is_some_and(|c| c.enhanced_status_codes);
        fit::fits(command, reply, enhanced).map_err(|why| unexpected(command, reply, why))?;
        match command {
            Command::Ehlo => match class {
                ReplyClass::Positive => {
                    self.opening.ehlo = self.since_ehlo();
                    self.checkpoints.set_ehlo_marks(reply.is_multiline());
                    self.caps = Some(Capabilities::from_ehlo(reply));
                    self.proceed()?;
                }
                // Not an ESMTP server (500/502) or EHLO refused: try HELO once.
                ReplyClass::Permanent => self.phase = Phase::SendHelo,
                _ => return Err(SessionError::Handshake { command, reply: reply.to_owned() }),
            },
            Command::Helo => match class {
                ReplyClass::Positive => {
                    self.opening.ehlo = self.since_ehlo();
                    let domain = reply.lines().next().unwrap_or("");
                    let domain = domain.split_ascii_whitespace().next().unwrap_or("");
                    self.caps = Some(Capabilities::helo_only(domain));
                    self.proceed()?;
                }
                _ => return Err(SessionError::Handshake { command, reply: reply.to_owned() }),
            },
            Command::Rset | Command::Noop => {}
            // 221 (the only reply that fits): the server will close, and anything it says
            // before that is one reply too many.
            Command::Quit => {
                self.phase =
                    Phase::Linger { until: self.input_at + QUIT_LINGER.min(self.config.timeouts.command) };
            }
            Command::MailFrom | Command::RcptTo | Command::Data | Command::EndOfData | Command::Bdat => {
                self.on_transaction_reply(command, expect, reply)?;
            }
            Command::StartTls => match class {
                // The driver is told once the 220 is known to end the input (`handle_input`).
                ReplyClass::Positive => self.phase = Phase::TlsHandshake,
                _ if self.config.starttls == StartTls::Required => {
                    return Err(SessionError::TlsUnavailable { reply: Some(reply.to_owned()) });
                }
                // Opportunistic: go on in plaintext, on this same session.
                _ => {
                    self.tls_declined = true;
                    self.proceed()?;
                }
            },
            Command::Auth => self.on_auth_reply(reply)?,
        }
        Ok(())
    }

    /// How long the EHLO (or HELO) being answered waited.
    fn since_ehlo(&self) -> Duration {
        match self.phase {
            Phase::Ehlo { sent } | Phase::Helo { sent } => self.input_at.saturating_duration_since(sent),
            _ => Duration::ZERO,
        }
    }

    /// The reply to a checkpoint EHLO. Only EHLO gets a multi-line 250; a shifted reply to any
    /// other command would be single-line.
    fn on_sync_reply(&mut self, reply: &ReplyRef<'_>) -> Result<(), SessionError> {
        self.checkpoints.sync_answered();
        match reply.class() {
            ReplyClass::Positive if reply.code == 250 && reply.is_multiline() => {
                // EHLO resets the server's transaction state, as RSET does.
                self.needs_rset = false;
                self.release();
                // The last transaction may have ended while this was awaited.
                self.maybe_quit();
                Ok(())
            }
            // RFC 5321 §4.1.4 lets a server refuse a repeated EHLO (and stay as it was). This
            // could also be a shifted refusal: either way no checkpoint; QUIT will be one.
            ReplyClass::Transient | ReplyClass::Permanent => {
                self.checkpoints.set_ehlo_marks(false);
                self.close();
                Ok(())
            }
            _ => Err(unexpected(Command::Ehlo, reply, "only EHLO's multi-line 250 answers EHLO")),
        }
    }

    /// A checkpoint: every outcome held so far was decided by replies now proven in step.
    fn release(&mut self) {
        self.checkpoints.release(&mut self.events);
    }

    /// With PIPELINING, a QUIT asked for while transactions are in flight ends the group that
    /// sends the last of their content (RFC 2920 §3.1 lets QUIT close a group), as Postfix's
    /// client does: the session saves the round trip a QUIT after the replies costs, and the
    /// checkpoint EHLO it would otherwise need, since `221` and the close prove the replies
    /// before them in step. Replies still awaited are read in `Phase::Quit`; a session that
    /// ends before they come fails as it would in `Phase::Ready`.
    fn pipeline_quit(&mut self) {
        if self.quit_requested
            && self.pipelining
            && self.phase == Phase::Ready
            && !self.checkpoints.syncing()
            && !self.txns.is_empty()
            && self.txns.iter().all(|t| t.step == Step::Done)
        {
            command::quit(self.out.commands());
            self.expect(Command::Quit, NO_TXN, 0);
            self.phase = Phase::Quit;
        }
    }

    fn maybe_quit(&mut self) {
        if self.quit_requested
            && self.phase == Phase::Ready
            && self.txns.is_empty()
            && !self.checkpoints.syncing()
        {
            self.phase = Phase::SendQuit;
        }
    }

    /// The session ended without proof that it was out of step: held outcomes stand.
    fn close_cleanly(&mut self) {
        self.phase = Phase::Closed;
        self.expect.clear();
        self.release();
        // Every path here has no transaction left; should one be, it is reported, never dropped.
        let closed = SessionError::Closed { command: None };
        while let Some(t) = self.txns.pop_front() {
            self.complete(t, Some(&closed));
        }
        self.events.push_back(Event::Closed(None));
    }

    /// Fails the session: every unfinished transaction is reported, nothing more is written.
    fn fail(&mut self, error: SessionError) {
        self.phase = Phase::Closed;
        self.expect.clear();
        self.out.clear();
        if error.is_violation() {
            self.checkpoints.distrust_all(&error, &mut self.events);
        } else {
            self.release();
        }
        while let Some(t) = self.txns.pop_front() {
            self.complete(t, Some(&error));
        }
        self.events.push_back(Event::Closed(Some(error)));
    }

    fn expect(&mut self, command: Command, seq: u64, rcpt: usize) {
        self.expect.push_back(Expect { command: Some(command), seq, rcpt, sent: self.output_at });
    }

    /// Whether held outcomes call for a checkpoint now ([`Checkpoints::wanted`]).
    fn wants_checkpoint(&self) -> bool {
        let idle = self.txns.is_empty() && self.expect.is_empty();
        self.checkpoints.wanted(self.output_at, idle, || self.between_transactions())
    }

    /// Writes whatever the current state allows into `out`.
    fn fill(&mut self) {
        match self.phase {
            Phase::SendEhlo => {
                command::ehlo(self.out.commands(), &self.config.helo_domain);
                self.expect(Command::Ehlo, NO_TXN, 0);
                self.phase = Phase::Ehlo { sent: self.output_at };
            }
            Phase::SendHelo => {
                command::helo(self.out.commands(), &self.config.helo_domain);
                self.expect(Command::Helo, NO_TXN, 0);
                self.phase = Phase::Helo { sent: self.output_at };
            }
            Phase::Ready if self.checkpoints.ehlo_marks() && self.wants_checkpoint() => {
                command::ehlo(self.out.commands(), &self.config.helo_domain);
                self.expect(Command::Ehlo, NO_TXN, 0);
                self.checkpoints.start_sync();
            }
            Phase::Ready if !self.checkpoints.syncing() => {
                if self.wants_checkpoint() {
                    // No second EHLO to rely on (a HELO-only server, or one that refused a
                    // repeat): QUIT, whose 221 and close are the checkpoint; the caller reconnects.
                    self.close();
                }
                if self.phase == Phase::SendQuit {
                    self.fill();
                } else {
                    self.fill_transactions();
                    self.pipeline_quit();
                }
            }
            Phase::SendStartTls => {
                command::starttls(self.out.commands());
                self.expect(Command::StartTls, NO_TXN, 0);
                self.phase = Phase::StartTls;
            }
            Phase::SendAuth { mechanism, exchange } => {
                // Only credentials lead here (`proceed`).
                let Some(credentials) = self.config.auth.clone() else {
                    return self.fail(SessionError::Abandoned("AUTH without credentials"));
                };
                let exchange = match exchange {
                    Some(mut x) => {
                        x.step = auth::respond(self.out.commands(), &credentials, mechanism, x.step);
                        x
                    }
                    None => AuthExchange {
                        step: auth::start(self.out.commands(), &credentials, mechanism),
                        started: self.output_at,
                    },
                };
                self.expect(Command::Auth, NO_TXN, 0);
                self.phase = Phase::Auth { mechanism, exchange };
            }
            Phase::SendQuit => {
                command::quit(self.out.commands());
                self.expect(Command::Quit, NO_TXN, 0);
                self.phase = Phase::Quit;
            }
            Phase::Greeting { .. }
            | Phase::Ehlo { .. }
            | Phase::Helo { .. }
            | Phase::StartTls
            | Phase::TlsHandshake
            | Phase::Auth { .. }
            | Phase::Ready
            | Phase::Quit
            | Phase::Linger { .. }
            | Phase::Closed => {}
        }
    }
}

fn unexpected(command: Command, reply: &ReplyRef<'_>, why: &'static str) -> SessionError {
    SessionError::Unexpected { command, reply: reply.to_owned(), why }
}

#[cfg(test)]
mod tests;

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

mod outcome;
mod transmit;

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub use outcome::{Completed, Disposition, LocalError, SessionError, TxnResult, classify, classify_reply};
pub use transmit::{Segment, Transmit};

use super::address::{Address, Domain};
use super::body::Body;
use super::command::{self, BodyType, Command, MailParams};
use super::ehlo::Capabilities;
use super::reply::{Reply, ReplyClass, ReplyParser, ReplyRef};

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
    pub body: Body,
}

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

    fn for_reply_to(&self, command: Option<Command>) -> Duration {
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
    pub timeouts: Timeouts,
}

impl ClientConfig {
    pub fn new(helo_domain: Domain) -> Self {
        ClientConfig {
            helo_domain,
            depth: 32,
            max_messages: u64::MAX,
            pipelining: true,
            chunking: true,
            timeouts: Timeouts::default(),
        }
    }
}

/// How long the session's opening took.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Handshake {
    /// From the connection to the greeting.
    pub greeting: Duration,
    /// From sending EHLO (or HELO) to its positive reply.
    pub ehlo: Duration,
}

#[derive(Debug)]
pub enum Event<T> {
    /// Greeting and EHLO/HELO done: transactions can be pushed.
    Ready(Handshake),
    Done(Completed<T>),
    /// The session is over: `None` after a clean QUIT or a server closing an idle session.
    Closed(Option<SessionError>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Greeting,
    SendEhlo,
    Ehlo,
    SendHelo,
    Helo,
    Ready,
    SendQuit,
    Quit,
    Closed,
}

/// The next thing a transaction has to send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    Mail,
    Rcpt(usize),
    Data,
    /// DATA sent; nothing more until its reply says whether the body follows.
    AwaitData,
    Body,
    Done,
}

struct Txn<T> {
    seq: u64,
    user: T,
    message: Message,
    step: Step,
    /// Replies still to come for commands already sent.
    outstanding: u32,
    mail_ok: bool,
    rcpts_answered: usize,
    rcpts_ok: usize,
    rejected: Vec<(usize, Reply)>,
    result: Option<TxnResult>,
    /// A RSET went out ahead of this transaction's MAIL.
    reset: bool,
}

/// A reply we are waiting for. `seq` names the transaction, if any.
#[derive(Debug, Clone, Copy)]
struct Expect {
    command: Option<Command>, // None: the greeting
    seq: u64,
    rcpt: usize,
}

const NO_TXN: u64 = u64::MAX;

pub struct Client<T> {
    config: ClientConfig,
    phase: Phase,
    caps: Option<Capabilities>,
    pipelining: bool,
    chunking: bool,
    parser: ReplyParser,
    expect: VecDeque<Expect>,
    /// When the reply at the front of `expect` started being waited for.
    head_since: Instant,
    /// When the session last became idle (Ready, nothing queued or expected).
    idle_since: Instant,
    txns: VecDeque<Txn<T>>,
    next_seq: u64,
    started: u64,
    needs_rset: bool,
    quit_requested: bool,
    opened: Instant,
    greeting_took: Duration,
    ehlo_sent: Instant,
    /// The `now` of the input being handled.
    input_at: Instant,
    out: Transmit,
    spare: Option<Transmit>,
    events: VecDeque<Event<T>>,
}

impl<T> Client<T> {
    /// A session on a connection established at `now`; the greeting is awaited first.
    pub fn new(config: ClientConfig, now: Instant) -> Self {
        let mut expect = VecDeque::with_capacity(64);
        expect.push_back(Expect { command: None, seq: NO_TXN, rcpt: 0 });
        Client {
            config,
            phase: Phase::Greeting,
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
            opened: now,
            greeting_took: Duration::ZERO,
            ehlo_sent: now,
            input_at: now,
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

    /// Whether a reply is owed by the server (so the driver should read).
    pub fn awaiting_reply(&self) -> bool {
        !self.expect.is_empty()
    }

    /// Transactions pushed and not yet completed.
    pub fn in_flight(&self) -> usize {
        self.txns.len()
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
    }

    /// Queues a transaction. Gives it back when the session cannot take it now.
    pub fn push(&mut self, message: Message, user: T) -> Result<(), (Message, T)> {
        if !self.wants_transaction() {
            return Err((message, user));
        }
        self.started += 1;
        if let Some(err) = self.local_refusal(&message) {
            self.events.push_back(Event::Done(Completed {
                user,
                message,
                result: TxnResult::NotAttempted(err),
                rejected: Vec::new(),
            }));
            self.after_completion();
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
        });
        Ok(())
    }

    fn local_refusal(&self, message: &Message) -> Option<LocalError> {
        if message.envelope.recipients.is_empty() {
            return Some(LocalError::NoRecipients);
        }
        let caps = self.caps.as_ref()?;
        if let Some(limit) = caps.size.filter(|&l| l > 0) {
            let size = message.body.len() as u64;
            if size > limit {
                return Some(LocalError::TooLarge { size, limit });
            }
        }
        if !caps.smtputf8 && message.envelope.needs_smtputf8() {
            return Some(LocalError::Utf8NotSupported);
        }
        None
    }

    /// Asks for a clean QUIT once the transactions in flight are done.
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

    /// The bytes to write next, if any. `now` starts the reply timers of what it contains.
    pub fn poll_transmit(&mut self, now: Instant) -> Option<Transmit> {
        let was_waiting = !self.expect.is_empty();
        if matches!(self.phase, Phase::SendEhlo | Phase::SendHelo) {
            self.ehlo_sent = now;
        }
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

    /// When [`handle_timeout`](Self::handle_timeout) should next be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.expect.front() {
            Some(head) => Some(self.head_since + self.config.timeouts.for_reply_to(head.command)),
            None if self.phase == Phase::Ready && self.txns.is_empty() => {
                Some(self.idle_since + self.config.timeouts.idle)
            }
            None => None,
        }
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        let Some(deadline) = self.poll_timeout() else { return };
        if now < deadline {
            return;
        }
        match self.expect.front() {
            Some(head) => {
                let waited = now.saturating_duration_since(self.head_since);
                let command = head.command.unwrap_or(Command::Noop);
                self.fail(SessionError::Timeout { command, waited });
            }
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
            Phase::Quit | Phase::SendQuit => self.close_cleanly(),
            Phase::Ready if self.expect.is_empty() && self.txns.is_empty() => self.close_cleanly(),
            _ => {
                let command = self.expect.front().and_then(|e| e.command);
                self.fail(error(command));
            }
        }
    }

    fn unsolicited(&mut self, reply: &ReplyRef<'_>) {
        // A server may say 421 and hang up on an idle session; anything else is a broken peer.
        self.fail(SessionError::Unsolicited(reply.to_owned()));
    }

    fn on_reply(&mut self, expect: Expect, reply: &ReplyRef<'_>) -> Result<(), SessionError> {
        let class = reply.class();
        let Some(command) = expect.command else {
            return match reply.code {
                220 => {
                    self.greeting_took = self.input_at.saturating_duration_since(self.opened);
                    self.phase = Phase::SendEhlo;
                    Ok(())
                }
                _ if class == ReplyClass::Transient || class == ReplyClass::Permanent => {
                    Err(SessionError::Greeting(reply.to_owned()))
                }
                _ => Err(unexpected(Command::Noop, reply)),
            };
        };
        if reply.code == 421 && command != Command::Quit {
            return Err(SessionError::ServiceClosing { command, reply: reply.to_owned() });
        }
        match command {
            Command::Ehlo => match class {
                ReplyClass::Positive => self.ready(Capabilities::from_ehlo(reply)),
                // Not an ESMTP server (500/502) or EHLO refused: try HELO once.
                ReplyClass::Permanent => self.phase = Phase::SendHelo,
                ReplyClass::Transient => {
                    return Err(SessionError::Handshake { command, reply: reply.to_owned() });
                }
                ReplyClass::Intermediate => return Err(unexpected(command, reply)),
            },
            Command::Helo => match class {
                ReplyClass::Positive => {
                    let domain = reply.lines().next().unwrap_or("");
                    let domain = domain.split_ascii_whitespace().next().unwrap_or("");
                    self.ready(Capabilities::helo_only(domain));
                }
                ReplyClass::Transient | ReplyClass::Permanent => {
                    return Err(SessionError::Handshake { command, reply: reply.to_owned() });
                }
                ReplyClass::Intermediate => return Err(unexpected(command, reply)),
            },
            Command::Rset | Command::Noop => {
                if class != ReplyClass::Positive {
                    return Err(unexpected(command, reply));
                }
            }
            Command::Quit => {
                self.close_cleanly();
            }
            Command::MailFrom | Command::RcptTo | Command::Data | Command::EndOfData | Command::Bdat => {
                self.on_transaction_reply(command, expect, reply)?;
            }
            Command::StartTls | Command::Auth => return Err(unexpected(command, reply)),
        }
        Ok(())
    }

    fn on_transaction_reply(
        &mut self,
        command: Command,
        expect: Expect,
        reply: &ReplyRef<'_>,
    ) -> Result<(), SessionError> {
        let class = reply.class();
        let sequential = !self.pipelining;
        let Some(index) = self.txns.iter().position(|t| t.seq == expect.seq) else {
            return Err(SessionError::Abandoned("reply matched to a transaction no longer tracked"));
        };
        let t = &mut self.txns[index];
        t.outstanding -= 1;
        let negative = matches!(class, ReplyClass::Transient | ReplyClass::Permanent);
        match (command, class) {
            (Command::MailFrom, ReplyClass::Positive) => t.mail_ok = true,
            (Command::MailFrom, _) if negative => {
                t.result = Some(TxnResult::Rejected { command, reply: reply.to_owned() });
                if sequential {
                    t.step = Step::Done;
                }
            }
            // Accepting a recipient after refusing MAIL: the server is adding to some other
            // transaction. Continuing could deliver this message with a stale envelope.
            (Command::RcptTo, ReplyClass::Positive) if !t.mail_ok => return Err(unexpected(command, reply)),
            (Command::RcptTo, ReplyClass::Positive) => {
                t.rcpts_answered += 1;
                t.rcpts_ok += 1;
            }
            (Command::RcptTo, _) if negative => {
                t.rcpts_answered += 1;
                t.rejected.push((expect.rcpt, reply.to_owned()));
            }
            // 354 after a refused MAIL: any content we sent now would land in a stale transaction.
            (Command::Data, ReplyClass::Intermediate) if reply.code == 354 && !t.mail_ok => {
                return Err(unexpected(command, reply));
            }
            (Command::Data, ReplyClass::Intermediate) if reply.code == 354 => t.step = Step::Body,
            (Command::Data, _) if negative => {
                t.result.get_or_insert_with(|| TxnResult::Rejected { command, reply: reply.to_owned() });
                t.step = Step::Done;
                self.needs_rset |= t.mail_ok;
            }
            (Command::EndOfData | Command::Bdat, ReplyClass::Positive) => {
                t.result.get_or_insert_with(|| TxnResult::Accepted(reply.to_owned()));
            }
            (Command::EndOfData | Command::Bdat, _) if negative => {
                t.result.get_or_insert_with(|| TxnResult::Rejected { command, reply: reply.to_owned() });
                // RFC 3030 §2: after a failed BDAT the transaction should be reset.
                self.needs_rset |= command == Command::Bdat && t.mail_ok;
            }
            _ => return Err(unexpected(command, reply)),
        }
        if command == Command::RcptTo
            && t.rcpts_answered == t.message.envelope.recipients.len()
            && t.rcpts_ok == 0
        {
            t.result.get_or_insert(TxnResult::NoValidRecipients);
            self.needs_rset |= t.mail_ok;
            if sequential {
                t.step = Step::Done;
            }
        }
        if t.outstanding == 0 && t.step == Step::Done {
            if let Some(t) = self.txns.remove(index) {
                self.complete(t, None);
            }
        }
        Ok(())
    }

    fn ready(&mut self, caps: Capabilities) {
        self.pipelining = caps.pipelining && self.config.pipelining;
        self.chunking = caps.chunking && self.config.chunking;
        self.caps = Some(caps);
        self.phase = Phase::Ready;
        let ehlo = self.input_at.saturating_duration_since(self.ehlo_sent);
        self.events.push_back(Event::Ready(Handshake { greeting: self.greeting_took, ehlo }));
        self.maybe_quit();
    }

    fn complete(&mut self, t: Txn<T>, aborted: Option<&SessionError>) {
        let result = match (t.result, aborted) {
            (Some(result), _) => result,
            (None, Some(err)) => TxnResult::Aborted(err.clone()),
            // Every path that finishes sending sets a result before the last reply; if one did
            // not, the message must not count as delivered.
            (None, None) => {
                TxnResult::Aborted(SessionError::Abandoned("transaction ended without a final reply"))
            }
        };
        self.events.push_back(Event::Done(Completed {
            user: t.user,
            message: t.message,
            result,
            rejected: t.rejected,
        }));
        self.after_completion();
    }

    fn after_completion(&mut self) {
        if self.started >= self.config.max_messages {
            self.quit_requested = true;
        }
        self.maybe_quit();
    }

    fn maybe_quit(&mut self) {
        if self.quit_requested && self.phase == Phase::Ready && self.txns.is_empty() {
            self.phase = Phase::SendQuit;
        }
    }

    fn close_cleanly(&mut self) {
        self.phase = Phase::Closed;
        self.expect.clear();
        self.events.push_back(Event::Closed(None));
    }

    /// Fails the session: every unfinished transaction is reported, nothing more is written.
    fn fail(&mut self, error: SessionError) {
        self.phase = Phase::Closed;
        self.expect.clear();
        self.out.clear();
        while let Some(t) = self.txns.pop_front() {
            self.complete(t, Some(&error));
        }
        self.events.push_back(Event::Closed(Some(error)));
    }

    fn expect(&mut self, command: Command, seq: u64, rcpt: usize) {
        self.expect.push_back(Expect { command: Some(command), seq, rcpt });
    }

    /// Writes whatever the current state allows into `out`.
    fn fill(&mut self) {
        match self.phase {
            Phase::SendEhlo => {
                command::ehlo(self.out.commands(), &self.config.helo_domain);
                self.expect(Command::Ehlo, NO_TXN, 0);
                self.phase = Phase::Ehlo;
            }
            Phase::SendHelo => {
                command::helo(self.out.commands(), &self.config.helo_domain);
                self.expect(Command::Helo, NO_TXN, 0);
                self.phase = Phase::Helo;
            }
            Phase::Ready => self.fill_transactions(),
            Phase::SendQuit => {
                command::quit(self.out.commands());
                self.expect(Command::Quit, NO_TXN, 0);
                self.phase = Phase::Quit;
            }
            Phase::Greeting | Phase::Ehlo | Phase::Helo | Phase::Quit | Phase::Closed => {}
        }
    }

    fn fill_transactions(&mut self) {
        loop {
            if !self.pipelining && !self.expect.is_empty() {
                return;
            }
            let Some(i) = self.txns.iter().position(|t| t.step != Step::Done) else { return };
            let pipelining = self.pipelining;
            match self.txns[i].step {
                Step::AwaitData | Step::Done => return,
                // With BDAT in flight, an earlier transaction may fail in a way that leaves the
                // server's transaction open (every RCPT refused): a MAIL behind it would get 503
                // and its RCPT and BDAT would join the stale transaction. RSET first.
                Step::Mail
                    if !self.txns[i].reset && (self.needs_rset || (self.chunking && pipelining && i > 0)) =>
                {
                    self.needs_rset = false;
                    self.txns[i].reset = true;
                    command::rset(self.out.commands());
                    self.expect(Command::Rset, NO_TXN, 0);
                    continue;
                }
                Step::Mail => {
                    let params = self.mail_params(&self.txns[i].message);
                    let t = &mut self.txns[i];
                    command::mail_from(self.out.commands(), t.message.envelope.sender.as_ref(), &params);
                    t.step = Step::Rcpt(0);
                    t.outstanding += 1;
                    let seq = t.seq;
                    self.expect(Command::MailFrom, seq, 0);
                }
                Step::Rcpt(k) => {
                    let t = &mut self.txns[i];
                    command::rcpt_to(self.out.commands(), &t.message.envelope.recipients[k]);
                    t.step = if k + 1 < t.message.envelope.recipients.len() {
                        Step::Rcpt(k + 1)
                    } else {
                        Step::Data
                    };
                    t.outstanding += 1;
                    let seq = t.seq;
                    self.expect(Command::RcptTo, seq, k);
                }
                Step::Data if self.chunking => {
                    let t = &mut self.txns[i];
                    let body = t.message.body.bytes();
                    // Cannot fail: LAST is set.
                    let _ = command::bdat(self.out.commands(), body.len() as u64, true);
                    self.out.push_shared(body);
                    t.step = Step::Done;
                    t.outstanding += 1;
                    let seq = t.seq;
                    self.expect(Command::Bdat, seq, 0);
                }
                Step::Data => {
                    let t = &mut self.txns[i];
                    command::data(self.out.commands());
                    t.step = Step::AwaitData;
                    t.outstanding += 1;
                    let seq = t.seq;
                    self.expect(Command::Data, seq, 0);
                }
                Step::Body => {
                    let t = &mut self.txns[i];
                    if t.rcpts_ok > 0 {
                        match t.message.body.stuffed() {
                            Some(stuffed) => self.out.push_shared(stuffed),
                            None => {
                                self.out.push_shared(t.message.body.bytes());
                                self.out.commands().extend_from_slice(b".\r\n");
                            }
                        }
                    } else {
                        // 354 with no valid recipient: RFC 2920 §3.1 says send an empty message.
                        self.out.commands().extend_from_slice(b".\r\n");
                    }
                    t.step = Step::Done;
                    t.outstanding += 1;
                    let seq = t.seq;
                    self.expect(Command::EndOfData, seq, 0);
                }
            }
            if !pipelining {
                return;
            }
        }
    }

    fn mail_params(&self, message: &Message) -> MailParams {
        let Some(caps) = &self.caps else { return MailParams::default() };
        MailParams {
            size: caps.size.map(|_| message.body.len() as u64),
            body: (message.body.is_eight_bit() && caps.eight_bit_mime).then_some(BodyType::EightBitMime),
            smtputf8: caps.smtputf8 && message.envelope.needs_smtputf8(),
        }
    }
}

fn unexpected(command: Command, reply: &ReplyRef<'_>) -> SessionError {
    SessionError::Unexpected { command, reply: reply.to_owned() }
}

#[cfg(test)]
mod tests;

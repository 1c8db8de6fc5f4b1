//! One sink connection's protocol logic, without I/O: fed the client's bytes, it appends replies
//! to an output buffer and tells the driver what to do next. Everything about the sink's
//! behaviour (replies, limits, faults, counters, dumps) is decided here and tested in memory.

use std::io::Write as _;
use std::path::Path;
use std::time::Duration;

use memchr::memchr;

use super::auth;
use super::faults::{Stage, Verdict, failure_reply};
use super::store::{Stored, Submission};
use super::{Core, SinkConfig};
use crate::proto::Address;
use crate::proto::server::{DataReceiver, Line, MAX_COMMAND_LINE, ServerCommand, next_line, parse_command};

/// Most recipients in one transaction; more get 452 (RFC 5321 §4.5.3.1.8 requires 100).
pub const MAX_RECIPIENTS: usize = 1000;

/// What the driver does after [`Session::process`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Write the output, read more.
    Continue,
    /// Write `out[..at]`, wait, then go on: the reply at `at` is delayed.
    Delay { at: usize, by: Duration },
    /// Write the output and close.
    Close,
    /// Write the output (the 220 to STARTTLS), discard any input left unread, run the TLS
    /// handshake, then call [`Session::tls_started`].
    StartTls,
    /// Write the output; a message is complete: hand [`Session::take_submission`] to the
    /// configured store, give its answer to [`Session::stored`], then go on with the input.
    Store,
}

#[derive(Debug)]
enum Reading {
    Commands,
    /// Discarding an overlong command line up to its LF.
    Overlong,
    Data(DataReceiver),
    Bdat {
        remaining: u64,
        last: bool,
    },
    /// An AUTH exchange: the next line answers our 334.
    Auth(auth::Exchange),
}

#[derive(Debug, Default)]
struct Txn {
    sender: Option<Option<Address>>,
    recipients: Vec<Address>,
    size: u64,
    /// BDAT content has started (DATA is then out of sequence).
    chunked: bool,
    /// The content is kept only when dumping.
    body: Vec<u8>,
    /// An octet of the content had its high bit set (tracked only without 8BITMIME).
    eight_bit: bool,
}

impl Txn {
    /// Content is kept only to dump it, and only while it may still be accepted: past the SIZE
    /// limit the message will get 552, so a hostile client cannot make the sink buffer gigabytes.
    fn keeps_content(&self, config: &SinkConfig) -> bool {
        (config.dump.is_some() || config.store.is_some()) && self.body.len() as u64 <= config.max_size
    }
}

pub struct Session {
    conn: u64,
    reading: Reading,
    greeted: bool,
    txn: Txn,
    messages: u64,
    /// Encrypted: implicit TLS, or after STARTTLS.
    secure: bool,
    /// The user it authenticated as.
    user: Option<String>,
    /// The peer, and whether it may send without AUTH (see `SinkConfig::trusted`).
    peer: std::net::IpAddr,
    trusted: bool,
    /// The name given in EHLO or HELO.
    helo: String,
}

impl Session {
    /// A session on a new connection; `secure` when it is TLS from the start.
    pub fn new(conn: u64, secure: bool) -> Self {
        Session {
            conn,
            reading: Reading::Commands,
            greeted: false,
            txn: Txn::default(),
            messages: 0,
            secure,
            user: None,
            peer: std::net::IpAddr::from([0, 0, 0, 0]),
            trusted: false,
            helo: String::new(),
        }
    }

    /// Who is connected, and whether that peer may send without AUTH.
    pub fn set_peer(&mut self, peer: std::net::IpAddr, trusted: bool) {
        self.peer = peer;
        self.trusted = trusted;
    }

    /// The STARTTLS handshake succeeded: the session starts over (RFC 3207 §4.2), encrypted.
    pub fn tls_started(&mut self) {
        self.secure = true;
        self.greeted = false;
        self.user = None;
        self.txn = Txn::default();
        self.reading = Reading::Commands;
    }

    /// Whether a transaction is open (the client vanishing now aborts it).
    pub fn in_transaction(&self) -> bool {
        self.txn.sender.is_some()
    }

    /// The greeting. `active` is the number of connections open, this one included.
    pub fn greet(&mut self, core: &mut Core, active: usize, out: &mut Vec<u8>) -> Action {
        core.counters.connections += 1;
        let host = &core.config.hostname;
        if core.config.max_connections.is_some_and(|max| active > max) {
            core.counters.connections_refused += 1;
            reply(core, out, 421, &format!("4.7.0 {host} Too many connections, try later"));
            return Action::Close;
        }
        let at = out.len();
        match core.config.faults.decide(Stage::Greeting, &mut core.rng) {
            Verdict::Disconnect => {
                core.counters.injected_disconnects += 1;
                return Action::Close;
            }
            Verdict::Fail(code) => {
                raw_reply(core, out, code, &failure_reply(code, Stage::Greeting));
                return Action::Close;
            }
            Verdict::Normal => {}
        }
        let text = format!("{host} ESMTP volley sink");
        reply(core, out, 220, &text);
        self.delayed(core, Stage::Greeting, at)
    }

    /// Consumes as much of `input` as it can, appending replies to `out`. Returns the bytes
    /// consumed and what to do; on `Delay` call again with the rest of the input.
    pub fn process(&mut self, core: &mut Core, input: &[u8], out: &mut Vec<u8>) -> (usize, Action) {
        let mut pos = 0;
        while pos < input.len() {
            let rest = &input[pos..];
            match &mut self.reading {
                // Commands and the lines of an AUTH exchange share the framing and its limit.
                Reading::Commands | Reading::Auth(_) => match next_line(rest) {
                    Line::Incomplete => break,
                    Line::TooLong => {
                        core.counters.protocol_errors += 1;
                        reply(core, out, 500, "5.5.2 Line too long");
                        self.reading = Reading::Overlong;
                        // Only the scanned part: its LF may be in this same read.
                        pos += MAX_COMMAND_LINE;
                    }
                    Line::Complete { len, text_len } => {
                        pos += len;
                        let line = &rest[..text_len];
                        let action = match std::mem::replace(&mut self.reading, Reading::Commands) {
                            Reading::Auth(exchange) => self.auth_response(core, exchange, line, out),
                            _ => self.command(core, line, out),
                        };
                        if action != Action::Continue {
                            return (pos, action);
                        }
                    }
                },
                Reading::Overlong => match memchr(b'\n', rest) {
                    Some(lf) => {
                        pos += lf + 1;
                        self.reading = Reading::Commands;
                    }
                    None => pos += rest.len(),
                },
                Reading::Data(receiver) => {
                    let keep = self.txn.keeps_content(&core.config).then_some(&mut self.txn.body);
                    let end = receiver.feed(rest, keep);
                    if !core.config.eight_bit_mime {
                        self.txn.eight_bit |= !rest[..end.unwrap_or(rest.len())].is_ascii();
                    }
                    let Some(n) = end else {
                        pos += rest.len();
                        continue;
                    };
                    pos += n;
                    let (size, bare_lf, bare_cr) = (receiver.size(), receiver.bare_lf(), receiver.bare_cr());
                    self.reading = Reading::Commands;
                    core.counters.bare_lf += bare_lf;
                    core.counters.bare_cr += bare_cr;
                    self.txn.size = size;
                    let action = self.end_of_message(core, out);
                    if action != Action::Continue {
                        return (pos, action);
                    }
                }
                Reading::Bdat { remaining, last } => {
                    let take = (*remaining).min(rest.len() as u64) as usize;
                    *remaining -= take as u64;
                    let (done, last) = (*remaining == 0, *last);
                    let valid = self.txn.sender.is_some() && !self.txn.recipients.is_empty();
                    if valid && self.txn.keeps_content(&core.config) {
                        self.txn.body.extend_from_slice(&rest[..take]);
                    }
                    if !core.config.eight_bit_mime {
                        self.txn.eight_bit |= !rest[..take].is_ascii();
                    }
                    self.txn.size += take as u64;
                    pos += take;
                    if done {
                        self.reading = Reading::Commands;
                        let action = self.chunk_done(core, last, valid, out);
                        if action != Action::Continue {
                            return (pos, action);
                        }
                    }
                }
            }
        }
        (pos, Action::Continue)
    }

    fn command(&mut self, core: &mut Core, line: &[u8], out: &mut Vec<u8>) -> Action {
        let cmd = match parse_command(line) {
            Ok(cmd) => cmd,
            Err(e) => {
                core.counters.protocol_errors += 1;
                raw_reply(core, out, e.code(), &format!("{e}\r\n"));
                return Action::Continue;
            }
        };
        match cmd {
            ServerCommand::Ehlo(name) | ServerCommand::Helo(name) => {
                self.txn = Txn::default();
                self.helo.clear();
                self.helo.push_str(name);
                let at = out.len();
                if let Some(action) = self.fault(core, Stage::Ehlo, out) {
                    return action;
                }
                self.greeted = true;
                if matches!(cmd, ServerCommand::Helo(_)) {
                    let text = core.config.hostname.clone();
                    reply(core, out, 250, &text);
                } else {
                    let ehlo = ehlo_reply(core, self);
                    raw_reply(core, out, 250, &ehlo);
                }
                self.delayed(core, Stage::Ehlo, at)
            }
            ServerCommand::Mail { from, params } => {
                if !self.greeted {
                    return self.bad_sequence(core, out, "5.5.1 Send EHLO or HELO first");
                }
                if core.config.require_tls && !self.secure {
                    reply(core, out, 530, "5.7.0 Must issue a STARTTLS command first");
                    return Action::Continue;
                }
                if core.stopping() {
                    reply(core, out, 421, "4.3.2 Service shutting down, try later");
                    return Action::Close;
                }
                if (core.config.auth.is_some() || core.config.store.is_some())
                    && self.user.is_none()
                    && !self.trusted
                {
                    // Keeping mail for strangers, from strangers, is an open relay.
                    match core.config.auth {
                        Some(_) => reply(core, out, 530, "5.7.0 Authentication required"),
                        None => reply(core, out, 554, "5.7.1 Relay access denied"),
                    }
                    return Action::Continue;
                }
                if self.txn.sender.is_some() {
                    return self.bad_sequence(core, out, "5.5.1 Nested MAIL command");
                }
                if core.config.max_messages_per_connection.is_some_and(|max| self.messages >= max) {
                    reply(core, out, 421, "4.7.0 Too many messages on this connection, closing");
                    return Action::Close;
                }
                if params.size.is_some_and(|s| s > core.config.max_size) {
                    reply(core, out, 552, "5.3.4 Message size exceeds fixed maximum message size");
                    return Action::Continue;
                }
                let eight_bit = params.body == Some(crate::proto::command::BodyType::EightBitMime);
                if (eight_bit && !core.config.eight_bit_mime) || (params.smtputf8 && !core.config.smtputf8) {
                    reply(core, out, 555, "5.5.4 MAIL parameter not recognised");
                    return Action::Continue;
                }
                if from.as_ref().is_some_and(Address::needs_smtputf8) && !core.config.smtputf8 {
                    reply(core, out, 553, "5.6.7 Non-ASCII addresses are not permitted");
                    return Action::Continue;
                }
                let at = out.len();
                if let Some(action) = self.fault(core, Stage::Mail, out) {
                    return action;
                }
                self.txn.sender = Some(from);
                core.counters.transactions += 1;
                reply(core, out, 250, "2.1.0 Ok");
                self.delayed(core, Stage::Mail, at)
            }
            ServerCommand::Rcpt { to } => {
                if self.txn.sender.is_none() {
                    return self.bad_sequence(core, out, "5.5.1 Need MAIL before RCPT");
                }
                if self.txn.recipients.len() >= MAX_RECIPIENTS {
                    reply(core, out, 452, "4.5.3 Too many recipients");
                    return Action::Continue;
                }
                let at = out.len();
                if let Some(action) = self.fault(core, Stage::Rcpt, out) {
                    return action;
                }
                if to.needs_smtputf8() && !core.config.smtputf8 {
                    reply(core, out, 553, "5.6.7 Non-ASCII addresses are not permitted");
                    return Action::Continue;
                }
                if core.greylists(to.as_str()) {
                    reply(core, out, 451, "4.7.1 Greylisted, please try again later");
                    return Action::Continue;
                }
                self.txn.recipients.push(to);
                reply(core, out, 250, "2.1.5 Ok");
                self.delayed(core, Stage::Rcpt, at)
            }
            ServerCommand::Data => {
                if self.txn.sender.is_none() || self.txn.chunked {
                    return self.bad_sequence(core, out, "5.5.1 Need MAIL before DATA");
                }
                if self.txn.recipients.is_empty() {
                    reply(core, out, 554, "5.5.1 No valid recipients");
                    return Action::Continue;
                }
                self.reading = Reading::Data(DataReceiver::new());
                reply(core, out, 354, "End data with <CR><LF>.<CR><LF>");
                Action::Continue
            }
            ServerCommand::Bdat { size, last } => {
                // The chunk is read whatever happens: it is not a command.
                self.reading = Reading::Bdat { remaining: size, last };
                if self.txn.sender.is_some() {
                    self.txn.chunked = true;
                }
                if size == 0 {
                    self.reading = Reading::Commands;
                    let valid = self.txn.sender.is_some() && !self.txn.recipients.is_empty();
                    return self.chunk_done(core, last, valid, out);
                }
                Action::Continue
            }
            ServerCommand::Rset => {
                self.txn = Txn::default();
                let at = out.len();
                if let Some(action) = self.fault(core, Stage::Rset, out) {
                    return action;
                }
                reply(core, out, 250, "2.0.0 Ok");
                self.delayed(core, Stage::Rset, at)
            }
            ServerCommand::Noop => {
                reply(core, out, 250, "2.0.0 Ok");
                Action::Continue
            }
            ServerCommand::Vrfy => {
                reply(core, out, 252, "2.5.2 Cannot VRFY user, but will accept message");
                Action::Continue
            }
            ServerCommand::Help => {
                reply(core, out, 214, "2.0.0 volley sink: see RFC 5321");
                Action::Continue
            }
            ServerCommand::StartTls => {
                if !self.offers_starttls(core) {
                    reply(core, out, 502, "5.5.1 STARTTLS not offered");
                    return Action::Continue;
                }
                if self.txn.sender.is_some() {
                    return self.bad_sequence(core, out, "5.5.1 STARTTLS inside a transaction");
                }
                reply(core, out, 220, "2.0.0 Ready to start TLS");
                Action::StartTls
            }
            ServerCommand::Auth { mechanism, initial } => {
                let Some(users) = core.config.auth.clone() else {
                    reply(core, out, 502, "5.5.1 AUTH not offered");
                    return Action::Continue;
                };
                if !self.greeted {
                    return self.bad_sequence(core, out, "5.5.1 Send EHLO first");
                }
                if self.user.is_some() || self.txn.sender.is_some() {
                    return self.bad_sequence(core, out, "5.5.1 Already authenticated or in a transaction");
                }
                if (core.config.require_tls || core.config.auth_needs_tls) && !self.secure {
                    reply(core, out, 530, "5.7.0 Must issue a STARTTLS command first");
                    return Action::Continue;
                }
                let step = auth::start(&users, mechanism, initial);
                self.auth_step(core, step, out);
                Action::Continue
            }
            ServerCommand::NotImplemented(_) => {
                reply(core, out, 502, "5.5.1 Command not implemented");
                Action::Continue
            }
            ServerCommand::Quit => {
                if let Some(action) = self.fault(core, Stage::Quit, out) {
                    return action;
                }
                reply(core, out, 221, "2.0.0 Bye");
                Action::Close
            }
        }
    }

    fn offers_starttls(&self, core: &Core) -> bool {
        core.config.starttls && core.config.tls.is_some() && !self.secure
    }

    /// The client's answer to our 334.
    fn auth_response(
        &mut self,
        core: &mut Core,
        exchange: auth::Exchange,
        line: &[u8],
        out: &mut Vec<u8>,
    ) -> Action {
        let line = String::from_utf8_lossy(line);
        let step = match &core.config.auth {
            Some(users) => auth::respond(users, exchange, &line),
            None => auth::Step::Failure(502, "5.5.1 AUTH not offered", None),
        };
        self.auth_step(core, step, out);
        Action::Continue
    }

    /// Answers one step of an AUTH exchange.
    fn auth_step(&mut self, core: &mut Core, step: auth::Step, out: &mut Vec<u8>) {
        match step {
            auth::Step::Challenge(exchange, challenge) => {
                self.reading = Reading::Auth(exchange);
                reply(core, out, 334, challenge);
            }
            auth::Step::Success(user) => {
                self.user = Some(user.clone());
                core.counters.auth_successes += 1;
                *core.counters.auth_users.entry(user).or_default() += 1;
                reply(core, out, 235, "2.7.0 Authentication successful");
            }
            auth::Step::Failure(code, text, _user) => {
                core.counters.auth_failures += 1;
                reply(core, out, code, text);
            }
        }
    }

    fn bad_sequence(&mut self, core: &mut Core, out: &mut Vec<u8>, text: &str) -> Action {
        core.counters.protocol_errors += 1;
        reply(core, out, 503, text);
        Action::Continue
    }

    /// Applies a failure or disconnect fault: `Some` means the stage's normal reply is replaced.
    fn fault(&mut self, core: &mut Core, stage: Stage, out: &mut Vec<u8>) -> Option<Action> {
        match core.config.faults.decide(stage, &mut core.rng) {
            Verdict::Normal => None,
            Verdict::Disconnect => {
                core.counters.injected_disconnects += 1;
                Some(Action::Close)
            }
            Verdict::Fail(code) => {
                raw_reply(core, out, code, &failure_reply(code, stage));
                // 421 closes the connection, as real servers do.
                Some(if code == 421 { Action::Close } else { Action::Continue })
            }
        }
    }

    fn delayed(&self, core: &mut Core, stage: Stage, at: usize) -> Action {
        match core.config.faults.delay(stage, &mut core.rng) {
            Some(by) if !by.is_zero() => Action::Delay { at, by },
            _ => Action::Continue,
        }
    }

    fn chunk_done(&mut self, core: &mut Core, last: bool, valid: bool, out: &mut Vec<u8>) -> Action {
        if !valid {
            self.txn.body.clear();
            return self.bad_sequence(core, out, "5.5.1 No valid transaction for BDAT");
        }
        if !last {
            if let Some(action) = self.over_size(core, out) {
                return action;
            }
            let text = format!("2.0.0 {} octets received", self.txn.size);
            reply(core, out, 250, &text);
            return Action::Continue;
        }
        self.end_of_message(core, out)
    }

    fn end_of_message(&mut self, core: &mut Core, out: &mut Vec<u8>) -> Action {
        core.counters.bytes += self.txn.size;
        if let Some(action) = self.over_size(core, out) {
            return action;
        }
        if self.txn.eight_bit {
            return self.reject_message(core, out, 554, "5.6.0 8-bit content, and 8BITMIME was not offered");
        }
        let at = out.len();
        match core.config.faults.decide(Stage::Data, &mut core.rng) {
            Verdict::Normal => {}
            Verdict::Disconnect => {
                core.counters.injected_disconnects += 1;
                core.counters.transactions_aborted += 1;
                self.txn = Txn::default();
                return Action::Close;
            }
            Verdict::Fail(code) => {
                let text = failure_reply(code, Stage::Data);
                core.counters.messages_rejected += 1;
                raw_reply(core, out, code, &text);
                self.txn = Txn::default();
                return if code == 421 { Action::Close } else { Action::Continue };
            }
        }
        if core.config.store.is_some() {
            return Action::Store;
        }
        let id = core.next_message_id();
        if let Some(dir) = core.config.dump.clone() {
            if let Err(e) = self.dump(&dir, id) {
                core.counters.dump_errors += 1;
                let text = format!("4.3.0 Could not store message: {}", e.kind());
                return self.reject_message(core, out, 451, &text);
            }
        }
        self.txn = Txn::default();
        self.messages += 1;
        core.counters.messages_accepted += 1;
        core.message_accepted();
        let text = format!("2.0.0 Ok: queued as {id:X}");
        reply(core, out, 250, &text);
        self.delayed(core, Stage::Data, at)
    }

    /// The complete message, for the store (after [`Action::Store`]).
    pub fn take_submission(&mut self) -> Submission {
        let txn = std::mem::take(&mut self.txn);
        Submission {
            sender: txn.sender.flatten(),
            recipients: txn.recipients,
            content: txn.body,
            user: self.user.clone(),
            helo: self.helo.clone(),
            peer: self.peer,
            secure: self.secure,
        }
    }

    /// Answers the end of data with what the store said.
    pub fn stored(&mut self, core: &mut Core, stored: Stored, out: &mut Vec<u8>) -> Action {
        match stored {
            Stored::Queued(id) => {
                self.messages += 1;
                core.counters.messages_accepted += 1;
                core.message_accepted();
                reply(core, out, 250, &format!("2.0.0 Ok: queued as {id}"));
                Action::Continue
            }
            Stored::Refused { code, text } => {
                core.counters.messages_rejected += 1;
                reply(core, out, code, &text);
                if code == 421 { Action::Close } else { Action::Continue }
            }
        }
    }

    /// 552 once the content has outgrown the advertised SIZE.
    fn over_size(&mut self, core: &mut Core, out: &mut Vec<u8>) -> Option<Action> {
        (self.txn.size > core.config.max_size).then(|| {
            self.reject_message(core, out, 552, "5.3.4 Message size exceeds fixed maximum message size")
        })
    }

    fn reject_message(&mut self, core: &mut Core, out: &mut Vec<u8>, code: u16, text: &str) -> Action {
        core.counters.messages_rejected += 1;
        self.txn = Txn::default();
        reply(core, out, code, text);
        Action::Continue
    }

    /// Writes the envelope, a blank line, and the content exactly as received.
    fn dump(&self, dir: &Path, id: u64) -> std::io::Result<()> {
        let mut data = Vec::with_capacity(self.txn.body.len() + 256);
        let sender = self.txn.sender.as_ref().and_then(|s| s.as_ref()).map_or("", |a| a.as_str());
        write!(data, "MAIL FROM:<{sender}>\r\n")?;
        for r in &self.txn.recipients {
            write!(data, "RCPT TO:<{r}>\r\n")?;
        }
        data.extend_from_slice(b"\r\n");
        data.extend_from_slice(&self.txn.body);
        let name = dir.join(format!("{:016X}-{}.msg", id, self.conn));
        let tmp = name.with_extension("tmp");
        std::fs::write(&tmp, &data)?;
        // Rename so a reader never sees a half-written message.
        std::fs::rename(&tmp, &name)
    }

    /// The client went away: an open transaction is aborted.
    pub fn closed(&mut self, core: &mut Core) {
        if self.in_transaction() {
            core.counters.transactions_aborted += 1;
            self.txn = Txn::default();
        }
    }
}

fn ehlo_reply(core: &Core, session: &Session) -> String {
    let c = &core.config;
    let mut lines = vec![c.hostname.clone()];
    if session.offers_starttls(core) {
        lines.push("STARTTLS".into());
    }
    if c.auth.is_some() && session.user.is_none() && (session.secure || !(c.require_tls || c.auth_needs_tls))
    {
        lines.push("AUTH PLAIN LOGIN".into());
    }
    if c.pipelining {
        lines.push("PIPELINING".into());
    }
    if c.chunking {
        lines.push("CHUNKING".into());
    }
    lines.push(format!("SIZE {}", c.max_size));
    if c.eight_bit_mime {
        lines.push("8BITMIME".into());
    }
    if c.smtputf8 {
        lines.push("SMTPUTF8".into());
    }
    lines.push("ENHANCEDSTATUSCODES".into());
    let mut s = String::new();
    for (i, l) in lines.iter().enumerate() {
        let sep = if i + 1 == lines.len() { ' ' } else { '-' };
        s.push_str(&format!("250{sep}{l}\r\n"));
    }
    s
}

fn reply(core: &mut Core, out: &mut Vec<u8>, code: u16, text: &str) {
    core.counters.reply(code);
    crate::proto::command::push_decimal(out, u64::from(code));
    out.push(b' ');
    out.extend_from_slice(text.as_bytes());
    out.extend_from_slice(b"\r\n");
}

fn raw_reply(core: &mut Core, out: &mut Vec<u8>, code: u16, text: &str) {
    core.counters.reply(code);
    out.extend_from_slice(text.as_bytes());
}

#[cfg(test)]
#[path = "session_tests.rs"]
mod tests;

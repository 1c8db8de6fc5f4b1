//! Transactions in a session: what each has left to send (MAIL, its RCPTs, DATA or BDAT, the
//! content), how each reply moves it on, and when its outcome is decided. Pipelined groups
//! follow RFC 2920; BDAT RFC 3030; the checks that keep a reply from being credited to the
//! wrong transaction are here and in [`super::fit`].

use super::*;
use crate::proto::command::{self, BodyType, Command, MailParams};
use crate::proto::reply::{ReplyClass, ReplyRef};

/// The next thing a transaction has to send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Step {
    Mail,
    Rcpt(usize),
    Data,
    /// DATA sent; nothing more until its reply says whether the body follows.
    AwaitData,
    Body,
    Done,
}

pub(super) struct Txn<T> {
    /// Names the transaction in `Expect`.
    pub(super) seq: u64,
    pub(super) user: T,
    pub(super) message: Message,
    pub(super) step: Step,
    /// Replies still to come for commands already sent.
    pub(super) outstanding: u32,
    pub(super) mail_ok: bool,
    pub(super) rcpts_answered: usize,
    pub(super) rcpts_ok: usize,
    pub(super) rejected: Vec<Refusal>,
    pub(super) result: Option<TxnResult>,
    /// A RSET went out ahead of this transaction's MAIL.
    pub(super) reset: bool,
    /// The content went out (BDAT LAST, or the body and its dot): the server may have it.
    pub(super) content_sent: bool,
}

impl<T> Client<T> {
    /// Under [`ClientConfig::refusals`]: one transaction at a time once a recipient was
    /// refused, and never so many in flight that their refusals could pass `at_most`. Each
    /// in-flight transaction could still bring one refusal per unanswered recipient and one for
    /// its content (Postfix refuses the BDAT or DATA behind refused recipients too); a new one
    /// is counted at two, its recipient and its content (`send` sends one recipient each).
    pub(super) fn refusals_allow_another(&self) -> bool {
        let Some(limit) = self.config.refusals else { return true };
        if self.txns.is_empty() {
            return true; // nothing in flight: something must go, or the session would stall
        }
        if self.hold_content {
            return false;
        }
        let at_risk: usize =
            self.txns.iter().map(|t| t.message.envelope.recipients.len() - t.rcpts_answered + 1).sum();
        self.refusals as usize + at_risk + 2 <= limit.at_most as usize
    }

    pub(super) fn local_refusal(&self, message: &Message) -> Option<LocalError> {
        if message.envelope.recipients.is_empty() {
            return Some(LocalError::NoRecipients);
        }
        let caps = self.caps.as_ref()?;
        if let Some(limit) = caps.size.filter(|&l| l > 0) {
            let size = message.len() as u64;
            if size > limit {
                return Some(LocalError::TooLarge { size, limit });
            }
        }
        if !caps.smtputf8 && message.envelope.needs_smtputf8() {
            return Some(LocalError::Utf8NotSupported);
        }
        // RFC 6152: 8-bit content only to a server that offers 8BITMIME (a HELO-only one
        // offers nothing). `send` encodes what it can (quoted-printable) before it gets here.
        if !caps.eight_bit_mime && message.is_eight_bit() {
            return Some(LocalError::EightBitNotSupported);
        }
        None
    }

    pub(super) fn on_transaction_reply(
        &mut self,
        command: Command,
        expect: Expect,
        reply: &ReplyRef<'_>,
    ) -> Result<(), SessionError> {
        self.latencies.push((command, self.input_at.saturating_duration_since(expect.sent)));
        let class = reply.class();
        let sequential = !self.pipelining;
        let Some(index) = self.txns.iter().position(|t| t.seq == expect.seq) else {
            return Err(SessionError::Abandoned("reply matched to a transaction no longer tracked"));
        };
        let mut checkpoint = false;
        let negative = matches!(class, ReplyClass::Transient | ReplyClass::Permanent);
        if negative && let Some(limit) = self.config.refusals {
            self.refusals += 1;
            self.hold_content |= command == Command::RcptTo;
            if self.refusals >= limit.quit_after {
                // No new transaction; QUIT once those in flight are done (`maybe_quit`).
                self.quit_requested = true;
            }
        }
        // Content waits for the recipients' replies: none accepted, and it never goes.
        let held = self.hold_content;
        let t = &mut self.txns[index];
        t.outstanding -= 1;
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
            (Command::RcptTo, ReplyClass::Positive) if !t.mail_ok => {
                return Err(unexpected(command, reply, "recipient accepted after MAIL was refused"));
            }
            (Command::RcptTo, ReplyClass::Positive) => {
                t.rcpts_answered += 1;
                t.rcpts_ok += 1;
            }
            (Command::RcptTo, _) if negative => {
                t.rcpts_answered += 1;
                t.rejected.push(Refusal {
                    rcpt: expect.rcpt,
                    reply: reply.to_owned(),
                    nth_reply: self.checkpoints.replies(),
                });
            }
            // 354 after a refused MAIL: any content we sent now would land in a stale transaction.
            (Command::Data, ReplyClass::Intermediate) if !t.mail_ok => {
                return Err(unexpected(command, reply, "354 after MAIL was refused"));
            }
            (Command::Data, ReplyClass::Intermediate) => {
                t.step = Step::Body;
                // Only DATA gets 354: every reply before it was matched to its own command.
                checkpoint = true;
            }
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
            _ => return Err(unexpected(command, reply, "does not fit the transaction's state")),
        }
        if command == Command::RcptTo
            && t.rcpts_answered == t.message.envelope.recipients.len()
            && t.rcpts_ok == 0
        {
            t.result.get_or_insert(TxnResult::NoValidRecipients);
            self.needs_rset |= t.mail_ok;
            if sequential || (held && t.step == Step::Data) {
                t.step = Step::Done;
            }
        }
        if checkpoint {
            self.release();
        }
        if t_done(&self.txns[index]) {
            if let Some(t) = self.txns.remove(index) {
                self.complete(t, None);
            }
        }
        Ok(())
    }

    /// A transaction is over. Outcomes the server decided wait for a checkpoint; outcomes of a
    /// failed session are reported at once.
    pub(super) fn complete(&mut self, mut t: Txn<T>, failed: Option<&SessionError>) {
        if failed.is_some_and(SessionError::is_violation) {
            // What the stream said of this transaction so far is not to be believed.
            t.result = None;
        }
        // Every path that finishes sending sets a result before the last reply; if one did not,
        // the message must not count as delivered.
        let result = t.result.unwrap_or_else(|| {
            TxnResult::Aborted(
                failed.cloned().unwrap_or(SessionError::Abandoned("transaction ended without a final reply")),
            )
        });
        let done =
            Completed { user: t.user, message: t.message, result, rejected: t.rejected, at: self.input_at };
        match failed {
            None => self.checkpoints.hold(done, t.content_sent),
            Some(error) if error.is_violation() => {
                let done = self.checkpoints.distrust(done, t.content_sent, error);
                self.events.push_back(Event::Done(done));
            }
            Some(_) => self.events.push_back(Event::Done(done)),
        }
        self.maybe_quit();
    }

    pub(super) fn fill_transactions(&mut self) {
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
                // After a refusal, the content waits for every recipient's reply.
                Step::Data
                    if self.hold_content
                        && self.txns[i].rcpts_answered < self.txns[i].message.envelope.recipients.len() =>
                {
                    return;
                }
                Step::Data if self.chunking => {
                    let t = &mut self.txns[i];
                    // Cannot fail: LAST is set.
                    let _ = command::bdat(self.out.commands(), t.message.len() as u64, true);
                    if let Some(head) = &t.message.head {
                        self.out.commands().extend_from_slice(head.bytes());
                    }
                    self.out.push_shared(t.message.body.bytes());
                    t.step = Step::Done;
                    t.outstanding += 1;
                    t.content_sent = true;
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
                        if let Some(head) = &t.message.head {
                            // No line of a head starts with a dot: sent as is in both framings.
                            self.out.commands().extend_from_slice(head.bytes());
                        }
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
                    t.content_sent = true;
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
            size: caps.size.map(|_| message.len() as u64),
            body: (message.is_eight_bit() && caps.eight_bit_mime).then_some(BodyType::EightBitMime),
            smtputf8: caps.smtputf8 && message.envelope.needs_smtputf8(),
        }
    }
}

/// Whether a transaction has nothing more to send or hear.
fn t_done<T>(t: &Txn<T>) -> bool {
    t.outstanding == 0 && t.step == Step::Done
}

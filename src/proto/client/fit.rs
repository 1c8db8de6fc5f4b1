//! Which replies can answer which command: the rules that catch a server out of step.
//!
//! A server that sends one reply too many (a duplicated line, a stray `250`) shifts every later
//! reply onto the wrong command. Most shifts land a reply where it cannot belong: a `250` where
//! DATA needs `354`, a `554` where RSET needs `250`, a recipient's `2.1.5` as the answer to the
//! end of data. Positive replies are held to the one code RFC 5321 allows for each command;
//! negative ones fit anywhere (servers refuse anything with any 4xx/5xx). Enhanced status codes
//! (RFC 3463), when the server advertised ENHANCEDSTATUSCODES, narrow positive replies further,
//! by subject only and only where real servers agree:
//!
//! | command     | positive replies seen in the wild                  | refused subject      |
//! | ----------- | -------------------------------------------------- | -------------------- |
//! | MAIL        | 2.1.0 (Postfix, Exchange, Gmail, sendmail), 2.0.0  | X.1.5, X.6.*         |
//! | RCPT        | 2.1.5 (all of them), rarely 2.1.0 or 2.0.0          | X.6.*                |
//! | end of data | 2.0.0 (Postfix, Gmail), 2.6.0 (Exchange)           | X.1.* (address)      |
//! | RSET        | 2.0.0, but Gmail says 2.1.5                        | none                 |
//!
//! These rules only ever *reject* a reply: a reply that passes proves nothing by itself. What
//! proves the stream in step is a marker that only its own command gets (see `Client`'s
//! checkpoints).

use crate::proto::command::Command;
use crate::proto::reply::{ReplyClass, ReplyRef};

/// Whether `reply` can be the answer to `command`; the error says why not. `enhanced`: the
/// server advertised ENHANCEDSTATUSCODES. 421 fits everything but QUIT (a server may close at
/// any time, but QUIT's answer is 221 whatever the server's state).
pub(super) fn fits(command: Command, reply: &ReplyRef<'_>, enhanced: bool) -> Result<(), &'static str> {
    let class = reply.class();
    if matches!(class, ReplyClass::Transient | ReplyClass::Permanent) {
        // RSET and NOOP cannot fail on an in-step session, and QUIT gets 221 whatever the
        // server's state; everything else may be refused.
        return match command {
            Command::Quit => Err("only 221 answers QUIT"),
            Command::Rset | Command::Noop if reply.code != 421 => Err("a reset cannot be refused"),
            _ => Ok(()),
        };
    }
    let expected = match command {
        Command::Data => 354,
        Command::StartTls => 220,
        Command::Auth if reply.code == 334 => 334,
        Command::Auth => 235,
        Command::RcptTo if reply.code == 251 => 251,
        Command::Quit => 221,
        _ => 250,
    };
    if reply.code != expected {
        return Err(match expected {
            354 => "only 354 or a refusal answers DATA",
            220 => "only 220 or a refusal answers STARTTLS",
            235 => "only 235, 334 or a refusal answers AUTH",
            221 => "only 221 answers QUIT",
            _ => "wrong positive code for this command",
        });
    }
    let Some(code) = reply.enhanced.filter(|_| enhanced && class == ReplyClass::Positive) else {
        return Ok(());
    };
    let refused = match command {
        Command::MailFrom => (code.subject == 1 && code.detail == 5) || code.subject == 6,
        Command::RcptTo => code.subject == 6,
        Command::EndOfData | Command::Bdat => code.subject == 1,
        _ => false,
    };
    if refused {
        return Err("enhanced status code belongs to another command");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::reply::ReplyParser;

    fn check(command: Command, line: &str, enhanced: bool) -> bool {
        let bytes = format!("{line}\r\n");
        let mut parser = ReplyParser::new();
        let (reply, _) = parser.parse(bytes.as_bytes()).unwrap().unwrap();
        fits(command, &reply, enhanced).is_ok()
    }

    #[test]
    fn fit_table() {
        use Command::*;
        let cases: &[(Command, &str, bool, bool)] = &[
            // Real servers' positive replies fit.
            (MailFrom, "250 2.1.0 Ok", true, true),
            (MailFrom, "250 2.0.0 Ok", true, true),
            (RcptTo, "250 2.1.5 Ok", true, true),
            (RcptTo, "250 2.1.0 Recipient ok", true, true),
            (RcptTo, "251 2.1.5 will forward", true, true),
            (EndOfData, "250 2.0.0 Ok: queued as 4Xz", true, true),
            (EndOfData, "250 2.6.0 <id> Queued mail for delivery", true, true),
            (Bdat, "250 2.0.0 Ok", true, true),
            (Rset, "250 2.1.5 Flushed", true, true),
            (Rset, "250 2.0.0 Ok", true, true),
            (Data, "354 End data with <CR><LF>.<CR><LF>", true, true),
            (Quit, "221 2.0.0 Bye", true, true),
            (Ehlo, "250 mx.test", false, true),
            // Refusals fit any transaction command, whatever their enhanced code.
            (MailFrom, "550 5.1.5 odd but a refusal", true, true),
            (EndOfData, "554 5.1.1 no", true, true),
            (Data, "554 5.5.1 no valid recipients", true, true),
            (RcptTo, "421 4.7.0 closing", true, true),
            (Rset, "421 4.4.2 closing", true, true),
            // Shifted replies do not.
            (EndOfData, "250 2.1.5 Ok", true, false),
            (Bdat, "250 2.1.0 Ok", true, false),
            (MailFrom, "250 2.1.5 Ok", true, false),
            (MailFrom, "250 2.6.0 queued", true, false),
            (RcptTo, "250 2.6.0 queued", true, false),
            (Data, "250 Ok", false, false),
            (MailFrom, "354 go ahead", false, false),
            (EndOfData, "354 go ahead", false, false),
            (RcptTo, "220 hello again", false, false),
            (MailFrom, "221 bye", false, false),
            (Ehlo, "220 mx.test ESMTP", false, false),
            (Quit, "250 Ok", false, false),
            (Quit, "450 4.2.0 busy", false, false),
            (Quit, "421 4.3.2 closing", false, false),
            (Rset, "554 5.5.1 no", false, false),
            (Noop, "451 later", false, false),
            // Without ENHANCEDSTATUSCODES advertised, the enhanced code is not judged.
            (EndOfData, "250 2.1.5 Ok", false, true),
        ];
        for &(command, line, enhanced, want) in cases {
            assert_eq!(check(command, line, enhanced), want, "{command} <- {line:?}");
        }
    }
}

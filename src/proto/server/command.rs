//! Command lines on the receiving side: framing with a length limit, and parsing.

use memchr::memchr;
use thiserror::Error;

use crate::proto::address::Address;
use crate::proto::command::{BodyType, MailParams};

/// RFC 5321 §4.5.3.1.4: a command line is at most 512 octets, CRLF included.
pub const MAX_COMMAND_LINE: usize = 512;

/// The next command line in `buf`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Line {
    /// A line of `len` octets terminator included; `text_len` excludes CRLF (or a lone LF).
    Complete {
        len: usize,
        text_len: usize,
    },
    Incomplete,
    /// No LF within the limit: the caller discards through the next LF and replies 500 5.5.2.
    TooLong,
}

pub fn next_line(buf: &[u8]) -> Line {
    match memchr(b'\n', &buf[..buf.len().min(MAX_COMMAND_LINE)]) {
        Some(lf) => {
            let text_len = if lf > 0 && buf[lf - 1] == b'\r' { lf - 1 } else { lf };
            Line::Complete { len: lf + 1, text_len }
        }
        None if buf.len() >= MAX_COMMAND_LINE => Line::TooLong,
        None => Line::Incomplete,
    }
}

/// A parsed client command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerCommand<'a> {
    Ehlo(&'a str),
    Helo(&'a str),
    /// `None` is the null reverse-path.
    Mail {
        from: Option<Address>,
        params: MailParams,
    },
    Rcpt {
        to: Address,
    },
    Data,
    Bdat {
        size: u64,
        last: bool,
    },
    Rset,
    Noop,
    Quit,
    Vrfy,
    Help,
    StartTls,
    /// `AUTH mechanism [initial-response]` (RFC 4954).
    Auth {
        mechanism: &'a str,
        initial: Option<&'a str>,
    },
    /// Known commands this server does not offer (EXPN, ETRN, TURN).
    NotImplemented(&'a str),
}

/// Why a command line was refused; each maps to one reply.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum CommandError {
    #[error("500 5.5.2 Syntax error, command unrecognized")]
    Unrecognized,
    #[error("501 5.5.4 Syntax error in parameters or arguments")]
    BadArguments,
    #[error("501 5.1.7 Bad sender address syntax")]
    BadSender,
    #[error("501 5.1.3 Bad recipient address syntax")]
    BadRecipient,
    #[error("555 5.5.4 MAIL FROM parameters not recognized or not implemented")]
    UnknownParameter,
}

impl CommandError {
    pub fn code(&self) -> u16 {
        match self {
            CommandError::Unrecognized => 500,
            CommandError::BadArguments | CommandError::BadSender | CommandError::BadRecipient => 501,
            CommandError::UnknownParameter => 555,
        }
    }
}

/// Parses one command line (without its CRLF).
pub fn parse_command(line: &[u8]) -> Result<ServerCommand<'_>, CommandError> {
    let line = std::str::from_utf8(line).map_err(|_| CommandError::Unrecognized)?;
    let (verb, args) = match line.find(' ') {
        Some(sp) => (&line[..sp], line[sp + 1..].trim_matches(' ')),
        None => (line, ""),
    };
    let is = |v: &str| verb.eq_ignore_ascii_case(v);
    let no_args = |cmd| if args.is_empty() { Ok(cmd) } else { Err(CommandError::BadArguments) };
    if is("EHLO") || is("HELO") {
        if args.is_empty() || args.contains(' ') {
            return Err(CommandError::BadArguments);
        }
        return Ok(if is("EHLO") { ServerCommand::Ehlo(args) } else { ServerCommand::Helo(args) });
    }
    if is("MAIL") {
        let rest = strip_prefix_ci(args, "FROM:").ok_or(CommandError::BadArguments)?;
        let (path, params) = split_path(rest).ok_or(CommandError::BadSender)?;
        let from = if path.is_empty() {
            None
        } else {
            Some(Address::new(path).map_err(|_| CommandError::BadSender)?)
        };
        return Ok(ServerCommand::Mail { from, params: parse_mail_params(params)? });
    }
    if is("RCPT") {
        let rest = strip_prefix_ci(args, "TO:").ok_or(CommandError::BadArguments)?;
        let (path, params) = split_path(rest).ok_or(CommandError::BadRecipient)?;
        if !params.trim().is_empty() {
            return Err(CommandError::UnknownParameter);
        }
        let to = Address::new(path).map_err(|_| CommandError::BadRecipient)?;
        return Ok(ServerCommand::Rcpt { to });
    }
    if is("BDAT") {
        let mut words = args.split(' ').filter(|w| !w.is_empty());
        let size = words
            .next()
            .filter(|w| w.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|w| w.parse().ok())
            .ok_or(CommandError::BadArguments)?;
        let last = match words.next() {
            None => false,
            Some(w) if w.eq_ignore_ascii_case("LAST") => true,
            Some(_) => return Err(CommandError::BadArguments),
        };
        if words.next().is_some() {
            return Err(CommandError::BadArguments);
        }
        return Ok(ServerCommand::Bdat { size, last });
    }
    if is("DATA") {
        return no_args(ServerCommand::Data);
    }
    if is("RSET") {
        return no_args(ServerCommand::Rset);
    }
    if is("QUIT") {
        return no_args(ServerCommand::Quit);
    }
    if is("NOOP") {
        return Ok(ServerCommand::Noop);
    }
    if is("VRFY") {
        return if args.is_empty() { Err(CommandError::BadArguments) } else { Ok(ServerCommand::Vrfy) };
    }
    if is("HELP") {
        return Ok(ServerCommand::Help);
    }
    if is("STARTTLS") {
        return no_args(ServerCommand::StartTls);
    }
    if is("AUTH") {
        let mut words = args.split(' ').filter(|w| !w.is_empty());
        let mechanism = words.next().ok_or(CommandError::BadArguments)?;
        let initial = words.next();
        if words.next().is_some() {
            return Err(CommandError::BadArguments);
        }
        return Ok(ServerCommand::Auth { mechanism, initial });
    }
    for known in ["EXPN", "ETRN", "TURN"] {
        if is(known) {
            return Ok(ServerCommand::NotImplemented(known));
        }
    }
    Err(CommandError::Unrecognized)
}

fn strip_prefix_ci<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let head = s.get(..prefix.len())?;
    // Some clients put a space after the colon; accept it.
    head.eq_ignore_ascii_case(prefix).then(|| s[prefix.len()..].trim_start_matches(' '))
}

/// Splits `<path> params` into the path's inside and the parameters.
fn split_path(s: &str) -> Option<(&str, &str)> {
    let rest = s.strip_prefix('<')?;
    let close = rest.find('>')?;
    Some((&rest[..close], &rest[close + 1..]))
}

fn parse_mail_params(params: &str) -> Result<MailParams, CommandError> {
    let mut out = MailParams::default();
    for p in params.split(' ').filter(|p| !p.is_empty()) {
        let (key, value) = p.split_once('=').unwrap_or((p, ""));
        if key.eq_ignore_ascii_case("SIZE") {
            out.size = Some(value.parse().map_err(|_| CommandError::BadArguments)?);
        } else if key.eq_ignore_ascii_case("BODY") {
            out.body = Some(match value.to_ascii_uppercase().as_str() {
                "7BIT" => BodyType::SevenBit,
                "8BITMIME" => BodyType::EightBitMime,
                "BINARYMIME" => BodyType::BinaryMime,
                _ => return Err(CommandError::BadArguments),
            });
        } else if key.eq_ignore_ascii_case("SMTPUTF8") && value.is_empty() {
            out.smtputf8 = true;
        } else {
            return Err(CommandError::UnknownParameter);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(s: &str) -> Address {
        Address::new(s).unwrap()
    }

    #[test]
    fn framing() {
        assert_eq!(next_line(b"NOOP\r\nQUIT"), Line::Complete { len: 6, text_len: 4 });
        assert_eq!(next_line(b"NOOP\nQUIT"), Line::Complete { len: 5, text_len: 4 });
        assert_eq!(next_line(b"NOOP"), Line::Incomplete);
        assert_eq!(next_line(b"\r\n"), Line::Complete { len: 2, text_len: 0 });
        let mut long = vec![b'x'; MAX_COMMAND_LINE - 2];
        long.extend_from_slice(b"\r\n");
        assert_eq!(
            next_line(&long),
            Line::Complete { len: MAX_COMMAND_LINE, text_len: MAX_COMMAND_LINE - 2 }
        );
        assert_eq!(next_line(&vec![b'x'; MAX_COMMAND_LINE]), Line::TooLong);
        assert_eq!(next_line(&vec![b'x'; MAX_COMMAND_LINE - 1]), Line::Incomplete);
    }

    #[test]
    fn parses_commands() {
        let cases: Vec<(&str, Result<ServerCommand<'_>, CommandError>)> = vec![
            ("EHLO client.example", Ok(ServerCommand::Ehlo("client.example"))),
            ("ehlo x", Ok(ServerCommand::Ehlo("x"))),
            ("HELO x", Ok(ServerCommand::Helo("x"))),
            ("EHLO", Err(CommandError::BadArguments)),
            (
                "MAIL FROM:<a@b>",
                Ok(ServerCommand::Mail { from: Some(a("a@b")), params: MailParams::default() }),
            ),
            (
                "mail from: <a@b>",
                Ok(ServerCommand::Mail { from: Some(a("a@b")), params: MailParams::default() }),
            ),
            ("MAIL FROM:<>", Ok(ServerCommand::Mail { from: None, params: MailParams::default() })),
            (
                "MAIL FROM:<a@b> SIZE=100 BODY=8BITMIME SMTPUTF8",
                Ok(ServerCommand::Mail {
                    from: Some(a("a@b")),
                    params: MailParams {
                        size: Some(100),
                        body: Some(BodyType::EightBitMime),
                        smtputf8: true,
                    },
                }),
            ),
            ("MAIL FROM:<a@b> SIZE=x", Err(CommandError::BadArguments)),
            ("MAIL FROM:<a@b> FOO=1", Err(CommandError::UnknownParameter)),
            ("MAIL FROM:a@b", Err(CommandError::BadSender)),
            ("MAIL FROM:<a b@c>", Err(CommandError::BadSender)),
            ("MAIL TO:<a@b>", Err(CommandError::BadArguments)),
            ("RCPT TO:<c@d>", Ok(ServerCommand::Rcpt { to: a("c@d") })),
            ("RCPT TO:<>", Err(CommandError::BadRecipient)),
            ("RCPT TO:<c@d> NOTIFY=NEVER", Err(CommandError::UnknownParameter)),
            ("DATA", Ok(ServerCommand::Data)),
            ("DATA x", Err(CommandError::BadArguments)),
            ("BDAT 100", Ok(ServerCommand::Bdat { size: 100, last: false })),
            ("BDAT 0 LAST", Ok(ServerCommand::Bdat { size: 0, last: true })),
            ("bdat 7 last", Ok(ServerCommand::Bdat { size: 7, last: true })),
            ("BDAT", Err(CommandError::BadArguments)),
            ("BDAT -1", Err(CommandError::BadArguments)),
            ("BDAT 1 FIRST", Err(CommandError::BadArguments)),
            ("BDAT 1 LAST x", Err(CommandError::BadArguments)),
            ("BDAT 99999999999999999999999", Err(CommandError::BadArguments)),
            ("RSET", Ok(ServerCommand::Rset)),
            ("NOOP anything", Ok(ServerCommand::Noop)),
            ("QUIT", Ok(ServerCommand::Quit)),
            ("VRFY user", Ok(ServerCommand::Vrfy)),
            ("HELP", Ok(ServerCommand::Help)),
            ("STARTTLS", Ok(ServerCommand::StartTls)),
            ("STARTTLS now", Err(CommandError::BadArguments)),
            (
                "AUTH PLAIN AGEAYg==",
                Ok(ServerCommand::Auth { mechanism: "PLAIN", initial: Some("AGEAYg==") }),
            ),
            ("auth login", Ok(ServerCommand::Auth { mechanism: "login", initial: None })),
            ("AUTH", Err(CommandError::BadArguments)),
            ("ETRN x", Ok(ServerCommand::NotImplemented("ETRN"))),
            ("FOO", Err(CommandError::Unrecognized)),
            ("", Err(CommandError::Unrecognized)),
        ];
        for (line, want) in cases {
            assert_eq!(parse_command(line.as_bytes()), want, "{line:?}");
        }
        assert_eq!(parse_command(b"\xff\xfe"), Err(CommandError::Unrecognized));
    }
}

//! Client command encoding into a caller's buffer. Arguments are typed ([`Address`], [`Domain`])
//! and so already validated: nothing written here can contain a stray CR or LF.

use std::fmt;

use thiserror::Error;

use super::address::{Address, Domain};

/// The commands volley sends, named in errors and timeouts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Command {
    Ehlo,
    Helo,
    MailFrom,
    RcptTo,
    Data,
    /// The message content and its terminating dot, answered like a command.
    EndOfData,
    Bdat,
    Rset,
    Noop,
    Quit,
    StartTls,
    Auth,
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Command::Ehlo => "EHLO",
            Command::Helo => "HELO",
            Command::MailFrom => "MAIL FROM",
            Command::RcptTo => "RCPT TO",
            Command::Data => "DATA",
            Command::EndOfData => "end of data",
            Command::Bdat => "BDAT",
            Command::Rset => "RSET",
            Command::Noop => "NOOP",
            Command::Quit => "QUIT",
            Command::StartTls => "STARTTLS",
            Command::Auth => "AUTH",
        })
    }
}

/// `BODY=` parameter of MAIL FROM (RFC 6152, RFC 3030).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyType {
    SevenBit,
    EightBitMime,
    BinaryMime,
}

/// ESMTP parameters of MAIL FROM, chosen by the client from the server's capabilities.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MailParams {
    pub size: Option<u64>,
    pub body: Option<BodyType>,
    pub smtputf8: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum EncodeError {
    #[error("BDAT chunk of zero octets must be the LAST one")]
    EmptyChunk,
    #[error("AUTH mechanism {0:?} is not a SASL mechanism name")]
    BadMechanism(String),
    #[error("AUTH initial response is not base64")]
    BadInitialResponse,
}

pub fn ehlo(out: &mut Vec<u8>, domain: &Domain) {
    line2(out, b"EHLO ", domain.as_str().as_bytes());
}

pub fn helo(out: &mut Vec<u8>, domain: &Domain) {
    line2(out, b"HELO ", domain.as_str().as_bytes());
}

/// `MAIL FROM:<sender>`; `None` is the null reverse-path `<>` used for bounces.
pub fn mail_from(out: &mut Vec<u8>, sender: Option<&Address>, params: &MailParams) {
    out.extend_from_slice(b"MAIL FROM:<");
    if let Some(a) = sender {
        out.extend_from_slice(a.as_str().as_bytes());
    }
    out.push(b'>');
    if let Some(size) = params.size {
        out.extend_from_slice(b" SIZE=");
        push_decimal(out, size);
    }
    match params.body {
        None => {}
        Some(BodyType::SevenBit) => out.extend_from_slice(b" BODY=7BIT"),
        Some(BodyType::EightBitMime) => out.extend_from_slice(b" BODY=8BITMIME"),
        Some(BodyType::BinaryMime) => out.extend_from_slice(b" BODY=BINARYMIME"),
    }
    if params.smtputf8 {
        out.extend_from_slice(b" SMTPUTF8");
    }
    out.extend_from_slice(b"\r\n");
}

pub fn rcpt_to(out: &mut Vec<u8>, recipient: &Address) {
    out.extend_from_slice(b"RCPT TO:<");
    out.extend_from_slice(recipient.as_str().as_bytes());
    out.extend_from_slice(b">\r\n");
}

pub fn data(out: &mut Vec<u8>) {
    out.extend_from_slice(b"DATA\r\n");
}

/// `BDAT <len> [LAST]`; the chunk's octets follow the command with no terminator.
pub fn bdat(out: &mut Vec<u8>, len: u64, last: bool) -> Result<(), EncodeError> {
    if len == 0 && !last {
        return Err(EncodeError::EmptyChunk);
    }
    out.extend_from_slice(b"BDAT ");
    push_decimal(out, len);
    out.extend_from_slice(if last { b" LAST\r\n" } else { b"\r\n" });
    Ok(())
}

pub fn rset(out: &mut Vec<u8>) {
    out.extend_from_slice(b"RSET\r\n");
}

pub fn noop(out: &mut Vec<u8>) {
    out.extend_from_slice(b"NOOP\r\n");
}

pub fn quit(out: &mut Vec<u8>) {
    out.extend_from_slice(b"QUIT\r\n");
}

pub fn starttls(out: &mut Vec<u8>) {
    out.extend_from_slice(b"STARTTLS\r\n");
}

/// `AUTH <mechanism> [initial-response]` (RFC 4954); an empty initial response is sent as `=`.
pub fn auth(out: &mut Vec<u8>, mechanism: &str, initial: Option<&str>) -> Result<(), EncodeError> {
    let valid_mech = !mechanism.is_empty()
        && mechanism.len() <= 20
        && mechanism.bytes().all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
    if !valid_mech {
        return Err(EncodeError::BadMechanism(mechanism.to_owned()));
    }
    if let Some(ir) = initial {
        if !ir.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'=')) {
            return Err(EncodeError::BadInitialResponse);
        }
    }
    out.extend_from_slice(b"AUTH ");
    out.extend_from_slice(mechanism.as_bytes());
    match initial {
        Some("") => out.extend_from_slice(b" ="),
        Some(ir) => {
            out.push(b' ');
            out.extend_from_slice(ir.as_bytes());
        }
        None => {}
    }
    out.extend_from_slice(b"\r\n");
    Ok(())
}

fn line2(out: &mut Vec<u8>, verb: &[u8], arg: &[u8]) {
    out.extend_from_slice(verb);
    out.extend_from_slice(arg);
    out.extend_from_slice(b"\r\n");
}

/// Appends `n` in decimal without going through `fmt` (this is on the per-message path).
pub fn push_decimal(out: &mut Vec<u8>, n: u64) {
    out.extend_from_slice(decimal_bytes(n, &mut [0; 20]));
}

/// `n` in decimal, written into `buf`, without going through `fmt`.
pub fn decimal(n: u64, buf: &mut [u8; 20]) -> &str {
    // Only ASCII digits were written.
    std::str::from_utf8(decimal_bytes(n, buf)).unwrap_or_default()
}

/// `n`'s decimal digits, written into the end of `buf` two at a time.
pub fn decimal_bytes(mut n: u64, buf: &mut [u8; 20]) -> &[u8] {
    const PAIRS: &[u8; 200] = b"0001020304050607080910111213141516171819202122232425262728293031323334353637383940414243444546474849\
        5051525354555657585960616263646566676869707172737475767778798081828384858687888990919293949596979899";
    let mut at = buf.len();
    while n >= 100 {
        let pair = (n % 100) as usize * 2;
        n /= 100;
        at -= 2;
        buf[at..at + 2].copy_from_slice(&PAIRS[pair..pair + 2]);
    }
    if n >= 10 {
        let pair = n as usize * 2;
        at -= 2;
        buf[at..at + 2].copy_from_slice(&PAIRS[pair..pair + 2]);
    } else {
        at -= 1;
        buf[at] = b'0' + n as u8;
    }
    &buf[at..]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enc(f: impl FnOnce(&mut Vec<u8>)) -> String {
        let mut out = Vec::new();
        f(&mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn encodes_every_command() {
        let a = Address::new("a@example.com").unwrap();
        let d = Domain::new("client.example").unwrap();
        let full = MailParams { size: Some(1234), body: Some(BodyType::EightBitMime), smtputf8: true };
        let cases: Vec<(String, &str)> = vec![
            (enc(|o| ehlo(o, &d)), "EHLO client.example\r\n"),
            (enc(|o| helo(o, &d)), "HELO client.example\r\n"),
            (enc(|o| mail_from(o, Some(&a), &MailParams::default())), "MAIL FROM:<a@example.com>\r\n"),
            (enc(|o| mail_from(o, None, &MailParams::default())), "MAIL FROM:<>\r\n"),
            (
                enc(|o| mail_from(o, Some(&a), &full)),
                "MAIL FROM:<a@example.com> SIZE=1234 BODY=8BITMIME SMTPUTF8\r\n",
            ),
            (
                enc(|o| {
                    mail_from(o, None, &MailParams { body: Some(BodyType::BinaryMime), ..Default::default() })
                }),
                "MAIL FROM:<> BODY=BINARYMIME\r\n",
            ),
            (
                enc(|o| {
                    mail_from(
                        o,
                        None,
                        &MailParams { body: Some(BodyType::SevenBit), size: Some(0), ..Default::default() },
                    )
                }),
                "MAIL FROM:<> SIZE=0 BODY=7BIT\r\n",
            ),
            (enc(|o| rcpt_to(o, &a)), "RCPT TO:<a@example.com>\r\n"),
            (enc(data), "DATA\r\n"),
            (enc(|o| bdat(o, 1000, true).unwrap()), "BDAT 1000 LAST\r\n"),
            (enc(|o| bdat(o, 0, true).unwrap()), "BDAT 0 LAST\r\n"),
            (enc(|o| bdat(o, 18446744073709551615, false).unwrap()), "BDAT 18446744073709551615\r\n"),
            (enc(rset), "RSET\r\n"),
            (enc(noop), "NOOP\r\n"),
            (enc(quit), "QUIT\r\n"),
            (enc(starttls), "STARTTLS\r\n"),
            (enc(|o| auth(o, "PLAIN", Some("AGEAYg==")).unwrap()), "AUTH PLAIN AGEAYg==\r\n"),
            (enc(|o| auth(o, "PLAIN", Some("")).unwrap()), "AUTH PLAIN =\r\n"),
            (enc(|o| auth(o, "LOGIN", None).unwrap()), "AUTH LOGIN\r\n"),
        ];
        for (got, want) in cases {
            assert_eq!(got, want);
        }
    }

    #[test]
    fn rejects_bad_arguments() {
        let mut out = Vec::new();
        assert_eq!(bdat(&mut out, 0, false), Err(EncodeError::EmptyChunk));
        assert!(matches!(auth(&mut out, "PLAIN\r\nQUIT", None), Err(EncodeError::BadMechanism(_))));
        assert!(matches!(auth(&mut out, "", None), Err(EncodeError::BadMechanism(_))));
        assert_eq!(auth(&mut out, "PLAIN", Some("a b")), Err(EncodeError::BadInitialResponse));
        assert_eq!(auth(&mut out, "PLAIN", Some("x\r\n")), Err(EncodeError::BadInitialResponse));
        assert!(out.is_empty(), "nothing written on error");
    }

    #[test]
    fn decimal() {
        let edges = [0u64, 7, 9, 10, 11, 99, 100, 101, 999, 1000, 65_535, 1_000_000, u64::MAX - 1, u64::MAX];
        for n in edges.into_iter().chain(0..1000).chain((1..20).map(|e| 10u64.pow(e) - 1)) {
            let mut out = Vec::new();
            push_decimal(&mut out, n);
            assert_eq!(out, n.to_string().into_bytes());
            assert_eq!(super::decimal(n, &mut [0; 20]), n.to_string());
        }
    }
}

//! SMTP reply parsing (RFC 5321 §4.2), incremental over arbitrary read boundaries.
//!
//! The parser does not own a buffer: the caller appends what it reads to its own buffer and
//! calls [`ReplyParser::parse`] with the whole unconsumed region each time. The parser remembers
//! how far it has validated, so feeding one byte at a time stays linear, and it never allocates:
//! a complete reply is returned as a [`ReplyRef`] borrowing the caller's bytes.

use std::fmt;

use memchr::memchr;
use thiserror::Error;

/// Longest reply line we accept, CRLF included. RFC 5321 §4.5.3.1.5 sets 512; real servers
/// exceed that with long EHLO keywords and verbose rejections, so we allow 4 KiB.
pub const MAX_LINE: usize = 4096;
/// Most lines in one multi-line reply.
pub const MAX_LINES: usize = 64;
/// Most bytes in one multi-line reply.
pub const MAX_REPLY: usize = 64 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum ReplyError {
    #[error("reply line longer than {MAX_LINE} bytes")]
    LineTooLong,
    #[error("reply has more than {MAX_LINES} lines or {MAX_REPLY} bytes")]
    ReplyTooLong,
    #[error("bare LF in reply (line {line})")]
    BareLf { line: usize },
    #[error("bare CR in reply (line {line})")]
    BareCr { line: usize },
    #[error("invalid reply code on line {line}")]
    InvalidCode { line: usize },
    #[error("invalid separator after reply code on line {line}")]
    InvalidSeparator { line: usize },
    #[error("reply code {found} on line {line} differs from {first} on the first line")]
    InconsistentCode { line: usize, first: u16, found: u16 },
    #[error("control character or invalid UTF-8 in reply text (line {line})")]
    InvalidText { line: usize },
}

/// The four reply classes of RFC 5321 §4.2.1, keyed by the first digit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ReplyClass {
    /// 2yz: the requested action completed.
    Positive,
    /// 3yz: accepted, more input expected (354 to DATA).
    Intermediate,
    /// 4yz: not done, may succeed if retried.
    Transient,
    /// 5yz: not done, do not retry as is.
    Permanent,
}

impl ReplyClass {
    /// Class of a code already validated by the parser (first digit 2..=5).
    pub fn of(code: u16) -> ReplyClass {
        match code / 100 {
            2 => ReplyClass::Positive,
            3 => ReplyClass::Intermediate,
            4 => ReplyClass::Transient,
            _ => ReplyClass::Permanent,
        }
    }
}

/// An RFC 3463 enhanced status code: `class.subject.detail`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct EnhancedCode {
    pub class: u8,
    pub subject: u16,
    pub detail: u16,
}

impl EnhancedCode {
    pub const fn new(class: u8, subject: u16, detail: u16) -> Self {
        EnhancedCode { class, subject, detail }
    }

    /// Parses an enhanced code at the start of `text`, which must be followed by a space or the
    /// end of the text. Returns the code and the number of bytes it took (separator included).
    pub fn parse_prefix(text: &[u8]) -> Option<(EnhancedCode, usize)> {
        let class = match text.first() {
            Some(c @ (b'2' | b'4' | b'5')) => c - b'0',
            _ => return None,
        };
        if text.get(1) != Some(&b'.') {
            return None;
        }
        let (subject, n1) = parse_1to3_digits(&text[2..])?;
        let at = 2 + n1;
        if text.get(at) != Some(&b'.') {
            return None;
        }
        let (detail, n2) = parse_1to3_digits(&text[at + 1..])?;
        let end = at + 1 + n2;
        match text.get(end) {
            None => Some((EnhancedCode::new(class, subject, detail), end)),
            Some(b' ') => Some((EnhancedCode::new(class, subject, detail), end + 1)),
            Some(_) => None,
        }
    }
}

fn parse_1to3_digits(s: &[u8]) -> Option<(u16, usize)> {
    let n = s.iter().take(4).take_while(|b| b.is_ascii_digit()).count();
    if n == 0 || n > 3 {
        return None;
    }
    let v = s[..n].iter().fold(0u16, |acc, b| acc * 10 + u16::from(b - b'0'));
    Some((v, n))
}

impl fmt::Display for EnhancedCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.class, self.subject, self.detail)
    }
}

/// A complete reply, borrowing the bytes it was parsed from (every line, CRLFs included).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplyRef<'a> {
    pub code: u16,
    /// Present when the first line's text starts with an enhanced code whose class matches `code`.
    pub enhanced: Option<EnhancedCode>,
    raw: &'a [u8],
}

impl<'a> ReplyRef<'a> {
    pub fn class(&self) -> ReplyClass {
        ReplyClass::of(self.code)
    }

    /// The raw reply, every line with its CRLF.
    pub fn raw(&self) -> &'a [u8] {
        self.raw
    }

    /// Whether the reply has more than one line (its first separator is `-`).
    pub fn is_multiline(&self) -> bool {
        self.raw.get(3) == Some(&b'-')
    }

    /// Text of each line: after the code and separator, with the enhanced code stripped where a
    /// line carries the same one as the first line. The parser has checked it is UTF-8.
    pub fn lines(&self) -> impl Iterator<Item = &'a str> + 'a {
        let enhanced = self.enhanced;
        self.raw.split(|&b| b == b'\n').filter(|l| !l.is_empty()).map(move |line| {
            let line = &line[..line.len() - 1]; // the parser guarantees "\r\n" endings
            let mut text = line.get(4..).unwrap_or(&[]);
            if let Some((code, n)) = EnhancedCode::parse_prefix(text) {
                if Some(code) == enhanced {
                    text = &text[n..];
                }
            }
            std::str::from_utf8(text).unwrap_or("")
        })
    }

    /// Copies the reply into an owned [`Reply`], lines joined with `\n`.
    pub fn to_owned(&self) -> Reply {
        // One exact allocation: every message's final reply is copied into its outcome, and
        // nearly all are one line.
        let text: Box<str> = if self.is_multiline() {
            let len = self.lines().map(|l| l.len() + 1).sum::<usize>().saturating_sub(1);
            let mut text = String::with_capacity(len);
            for (i, line) in self.lines().enumerate() {
                if i > 0 {
                    text.push('\n');
                }
                text.push_str(line);
            }
            text.into_boxed_str()
        } else {
            self.lines().next().unwrap_or("").into()
        };
        Reply { code: self.code, enhanced: self.enhanced, text }
    }
}

/// An owned reply, as kept in outcomes and the delivery log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub code: u16,
    pub enhanced: Option<EnhancedCode>,
    pub text: Box<str>,
}

impl Reply {
    pub fn new(code: u16, enhanced: Option<EnhancedCode>, text: &str) -> Reply {
        Reply { code, enhanced, text: text.into() }
    }

    pub fn class(&self) -> ReplyClass {
        ReplyClass::of(self.code)
    }
}

impl fmt::Display for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.code)?;
        if let Some(e) = self.enhanced {
            write!(f, " {e}")?;
        }
        if !self.text.is_empty() {
            write!(f, " {}", self.text.replace('\n', " / "))?;
        }
        Ok(())
    }
}

/// Incremental reply parser. See the module documentation for the buffer contract: the caller
/// passes the same growing buffer until a reply completes, then drops the consumed bytes.
///
/// ```
/// use mailvolley::proto::{ReplyClass, ReplyParser};
///
/// let mut parser = ReplyParser::new();
/// let mut buf = b"250-mx.example\r\n250 PIPE".to_vec();
/// assert!(parser.parse(&buf).unwrap().is_none()); // needs more data
/// buf.extend_from_slice(b"LINING\r\n550 5.1.1 no such user\r\n");
/// let (reply, used) = parser.parse(&buf).unwrap().unwrap();
/// assert_eq!((reply.code, reply.lines().count()), (250, 2));
/// buf.drain(..used);
/// let (reply, _) = parser.parse(&buf).unwrap().unwrap();
/// assert_eq!(reply.class(), ReplyClass::Permanent);
/// assert_eq!(reply.enhanced.unwrap().to_string(), "5.1.1");
/// ```
#[derive(Debug, Default, Clone)]
pub struct ReplyParser {
    /// Bytes of the current reply already validated (always at a line start).
    scanned: usize,
    lines: usize,
    first_code: u16,
    enhanced: Option<EnhancedCode>,
}

impl ReplyParser {
    pub fn new() -> Self {
        Self::default()
    }

    /// Forgets a partly parsed reply, for when the caller discards its buffer.
    pub fn reset(&mut self) {
        *self = Self::default();
    }

    /// Parses the next reply from `buf`. `Ok(None)` means more data is needed; `Ok(Some((r, n)))`
    /// is a complete reply occupying the first `n` bytes of `buf`. After an error the stream is
    /// unusable (the reply boundaries are lost) and the connection should be failed.
    pub fn parse<'a>(&mut self, buf: &'a [u8]) -> Result<Option<(ReplyRef<'a>, usize)>, ReplyError> {
        loop {
            let start = self.scanned;
            let rest = &buf[start..];
            let Some(lf) = memchr(b'\n', rest) else {
                if rest.len() >= MAX_LINE {
                    return Err(ReplyError::LineTooLong);
                }
                return Ok(None);
            };
            let line_no = self.lines + 1;
            if lf + 1 > MAX_LINE {
                return Err(ReplyError::LineTooLong);
            }
            if lf == 0 || rest[lf - 1] != b'\r' {
                return Err(ReplyError::BareLf { line: line_no });
            }
            let line = &rest[..lf - 1];
            if memchr(b'\r', line).is_some() {
                return Err(ReplyError::BareCr { line: line_no });
            }
            let code = parse_code(line).ok_or(ReplyError::InvalidCode { line: line_no })?;
            let last = match line.get(3) {
                None | Some(b' ') => true,
                Some(b'-') => false,
                Some(_) => return Err(ReplyError::InvalidSeparator { line: line_no }),
            };
            let text = line.get(4..).unwrap_or(&[]);
            validate_text(text).map_err(|()| ReplyError::InvalidText { line: line_no })?;
            if self.lines == 0 {
                self.first_code = code;
                self.enhanced = EnhancedCode::parse_prefix(text)
                    .map(|(e, _)| e)
                    .filter(|e| u16::from(e.class) == code / 100);
            } else if code != self.first_code {
                return Err(ReplyError::InconsistentCode {
                    line: line_no,
                    first: self.first_code,
                    found: code,
                });
            }
            self.lines = line_no;
            self.scanned = start + lf + 1;
            if last {
                let reply = ReplyRef { code, enhanced: self.enhanced, raw: &buf[..self.scanned] };
                let len = self.scanned;
                self.reset();
                return Ok(Some((reply, len)));
            }
            if self.lines >= MAX_LINES || self.scanned >= MAX_REPLY {
                return Err(ReplyError::ReplyTooLong);
            }
        }
    }
}

fn parse_code(line: &[u8]) -> Option<u16> {
    match line {
        [a @ b'2'..=b'5', b @ b'0'..=b'5', c @ b'0'..=b'9', ..] => {
            Some(u16::from(a - b'0') * 100 + u16::from(b - b'0') * 10 + u16::from(c - b'0'))
        }
        _ => None,
    }
}

/// Reply text is printable ASCII or HTAB (RFC 5321 textstring), or UTF-8 (RFC 6531 lets
/// SMTPUTF8 servers send it). Control characters and invalid UTF-8 are garbage.
fn validate_text(text: &[u8]) -> Result<(), ()> {
    let mut ascii = true;
    for &b in text {
        if (b < 0x20 && b != b'\t') || b == 0x7f {
            return Err(());
        }
        ascii &= b < 0x80;
    }
    if !ascii && std::str::from_utf8(text).is_err() {
        return Err(());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_all(input: &[u8]) -> Result<Option<(Reply, usize)>, ReplyError> {
        let mut p = ReplyParser::new();
        p.parse(input).map(|o| o.map(|(r, n)| (r.to_owned(), n)))
    }

    #[test]
    fn complete_replies() {
        let e = |c, s, d| Some(EnhancedCode::new(c, s, d));
        let cases: &[(&[u8], u16, Option<EnhancedCode>, &str)] = &[
            (b"250 OK\r\n", 250, None, "OK"),
            (b"250\r\n", 250, None, ""),
            (b"220 mx.example ESMTP\r\n", 220, None, "mx.example ESMTP"),
            (b"250 2.1.5 Ok\r\n", 250, e(2, 1, 5), "Ok"),
            (b"451 4.7.0 Try later\r\n", 451, e(4, 7, 0), "Try later"),
            (b"550 5.1.10 No such user\r\n", 550, e(5, 1, 10), "No such user"),
            (b"550 5.100.999\r\n", 550, e(5, 100, 999), ""),
            // Class mismatch: not an enhanced code, kept as text.
            (b"250 5.1.1 odd\r\n", 250, None, "5.1.1 odd"),
            // Four digits in a field: not an enhanced code.
            (b"550 5.1000.1 x\r\n", 550, None, "5.1000.1 x"),
            (b"250-mx\r\n250-PIPELINING\r\n250 SIZE 100\r\n", 250, None, "mx\nPIPELINING\nSIZE 100"),
            (b"250-2.0.0 a\r\n250 2.0.0 b\r\n", 250, e(2, 0, 0), "a\nb"),
            (b"250-\r\n250 x\r\n", 250, None, "\nx"),
            (b"554 5.7.1 caf\xc3\xa9\r\n", 554, e(5, 7, 1), "caf\u{e9}"),
            (b"250 tab\there\r\n", 250, None, "tab\there"),
        ];
        for (input, code, enhanced, text) in cases {
            let (reply, n) = parse_all(input).unwrap().unwrap();
            assert_eq!(n, input.len(), "{input:?}");
            assert_eq!(reply.code, *code, "{input:?}");
            assert_eq!(reply.enhanced, *enhanced, "{input:?}");
            assert_eq!(&*reply.text, *text, "{input:?}");
        }
    }

    #[test]
    fn incomplete_input_needs_more() {
        for input in [&b""[..], b"2", b"250", b"250 OK", b"250 OK\r", b"250-a\r\n", b"250-a\r\n250 b"] {
            assert_eq!(parse_all(input), Ok(None), "{input:?}");
        }
    }

    #[test]
    fn malformed_replies_are_typed_errors() {
        let cases: &[(&[u8], ReplyError)] = &[
            (b"250 OK\n", ReplyError::BareLf { line: 1 }),
            (b"\n", ReplyError::BareLf { line: 1 }),
            (b"250-a\r\n250 b\n", ReplyError::BareLf { line: 2 }),
            (b"250 O\rK\r\n", ReplyError::BareCr { line: 1 }),
            (b"25 OK\r\n", ReplyError::InvalidCode { line: 1 }),
            (b"abc OK\r\n", ReplyError::InvalidCode { line: 1 }),
            (b"650 OK\r\n", ReplyError::InvalidCode { line: 1 }),
            (b"160 OK\r\n", ReplyError::InvalidCode { line: 1 }),
            (b"290 OK\r\n", ReplyError::InvalidCode { line: 1 }),
            (b"\r\n", ReplyError::InvalidCode { line: 1 }),
            (b"250xOK\r\n", ReplyError::InvalidSeparator { line: 1 }),
            (b"2500 OK\r\n", ReplyError::InvalidSeparator { line: 1 }),
            (b"250-a\r\n550 b\r\n", ReplyError::InconsistentCode { line: 2, first: 250, found: 550 }),
            (b"250 a\x00b\r\n", ReplyError::InvalidText { line: 1 }),
            (b"250 a\x1bb\r\n", ReplyError::InvalidText { line: 1 }),
            (b"250 \xff\xfe\r\n", ReplyError::InvalidText { line: 1 }),
        ];
        for (input, err) in cases {
            assert_eq!(parse_all(input), Err(*err), "{input:?}");
        }
    }

    #[test]
    fn limits_are_enforced() {
        let mut long = b"250 ".to_vec();
        long.resize(MAX_LINE, b'x');
        assert_eq!(parse_all(&long), Err(ReplyError::LineTooLong), "unterminated long line");
        long.extend_from_slice(b"\r\n");
        assert_eq!(parse_all(&long), Err(ReplyError::LineTooLong), "terminated long line");

        let mut ok = b"250 ".to_vec();
        ok.resize(MAX_LINE - 2, b'x');
        ok.extend_from_slice(b"\r\n");
        assert!(parse_all(&ok).unwrap().is_some(), "a line of exactly MAX_LINE is accepted");

        let many: Vec<u8> = b"250-x\r\n".repeat(MAX_LINES);
        assert_eq!(parse_all(&many), Err(ReplyError::ReplyTooLong));
        let mut max_lines = b"250-x\r\n".repeat(MAX_LINES - 1);
        max_lines.extend_from_slice(b"250 x\r\n");
        assert!(parse_all(&max_lines).unwrap().is_some());

        let mut big_line = b"250-".to_vec();
        big_line.resize(MAX_LINE - 2, b'y');
        big_line.extend_from_slice(b"\r\n");
        let big = big_line.repeat(MAX_REPLY / MAX_LINE + 1);
        assert_eq!(parse_all(&big), Err(ReplyError::ReplyTooLong));
    }

    #[test]
    fn parses_consecutive_replies_and_byte_at_a_time() {
        let stream = b"220 hi\r\n250-mx\r\n250 8BITMIME\r\n354 go\r\n";
        let mut buf = Vec::new();
        let mut p = ReplyParser::new();
        let mut codes = Vec::new();
        for &b in stream {
            buf.push(b);
            while let Some((r, n)) = p.parse(&buf).unwrap() {
                codes.push((r.code, r.lines().count()));
                buf.drain(..n);
            }
        }
        assert_eq!(codes, vec![(220, 1), (250, 2), (354, 1)]);
        assert!(buf.is_empty());
    }

    #[test]
    fn classes() {
        for (code, class) in [
            (250, ReplyClass::Positive),
            (354, ReplyClass::Intermediate),
            (421, ReplyClass::Transient),
            (554, ReplyClass::Permanent),
        ] {
            assert_eq!(ReplyClass::of(code), class);
        }
    }

    /// Parses `stream` delivered in pieces split at `cuts`: the replies (code, enhanced code,
    /// text) and whether it ended in an error.
    fn parse_split(stream: &[u8], cuts: &[usize]) -> (Vec<Reply>, Option<ReplyError>) {
        let mut p = ReplyParser::new();
        let mut buf = Vec::new();
        let mut out = Vec::new();
        let mut start = 0;
        for end in cuts.iter().copied().chain([stream.len()]) {
            let end = end.clamp(start, stream.len());
            buf.extend_from_slice(&stream[start..end]);
            start = end;
            loop {
                match p.parse(&buf) {
                    Ok(Some((r, n))) => {
                        out.push(r.to_owned());
                        buf.drain(..n);
                    }
                    Ok(None) => break,
                    Err(e) => return (out, Some(e)),
                }
            }
        }
        (out, None)
    }

    fn reply_line() -> impl Strategy<Value = Vec<u8>> {
        let code = prop_oneof![
            Just(b"250".to_vec()),
            Just(b"354".to_vec()),
            Just(b"451".to_vec()),
            Just(b"550".to_vec())
        ];
        let text = prop_oneof![
            Just(b"Ok".to_vec()),
            Just(b"2.1.5 Ok".to_vec()),
            Just(b"5.1.1 no such user".to_vec()),
            prop::collection::vec(0x20u8..0x7f, 0..40),
            // Occasionally garbage, so error paths are split too.
            prop::collection::vec(any::<u8>(), 0..8),
        ];
        (code, prop::collection::vec(text, 1..4)).prop_map(|(code, lines)| {
            let mut v = Vec::new();
            for (i, t) in lines.iter().enumerate() {
                v.extend_from_slice(&code);
                v.push(if i + 1 == lines.len() { b' ' } else { b'-' });
                v.extend_from_slice(t);
                v.extend_from_slice(b"\r\n");
            }
            v
        })
    }

    use proptest::prelude::*;

    proptest! {
        #[test]
        fn same_result_whatever_the_read_boundaries(
            replies in prop::collection::vec(reply_line(), 1..10),
            mut cuts in prop::collection::vec(0usize..2000, 0..12),
        ) {
            let stream = replies.concat();
            cuts.sort_unstable();
            prop_assert_eq!(parse_split(&stream, &cuts), parse_split(&stream, &[]));
        }
    }

    #[test]
    fn display() {
        let r = Reply::new(550, Some(EnhancedCode::new(5, 1, 1)), "no\nsuch user");
        assert_eq!(r.to_string(), "550 5.1.1 no / such user");
    }
}

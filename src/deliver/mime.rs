//! What `send` and `serve` change in a user's message so that any server takes it, and why.
//!
//! - **Header text in UTF-8** (a template's own `Subject: Grüße`, a value rendered into a
//!   header) becomes RFC 2047 encoded-words: a header is 7-bit unless the whole path speaks
//!   SMTPUTF8, and a raw 8-bit header is what servers mangle first.
//! - **A body line over 998 octets** (RFC 5322 §2.1.1) or **8-bit text with no MIME declaration
//!   saying so** (RFC 2045: no `Content-Transfer-Encoding` means 7bit) is re-encoded as
//!   quoted-printable, with `MIME-Version` and `Content-Type: text/plain; charset=utf-8` added
//!   where absent. This happens before DKIM signing, so the signature covers what is sent and no
//!   relay needs to re-encode (which would break it).
//! - What stays 8-bit (a body that declares `Content-Transfer-Encoding: 8bit`) goes only to a
//!   server that offers 8BITMIME (`proto::client`'s local refusal).
//!
//! A multipart body, or one whose declared encoding its content contradicts, is not rewritten
//! (its parts carry their own headers): a line too long there rejects the row (or the submitted
//! message) with the reason.

use std::borrow::Cow;

use base64::Engine as _;
use memchr::memchr_iter;

use crate::proto::Body;

/// RFC 5322 §2.1.1: a line is at most 998 octets, CRLF excluded.
pub const MAX_LINE: usize = 998;

/// Base64 input per encoded-word: 45 octets make 60 characters, 72 with `=?utf-8?B?` and
/// `?=`, under RFC 2047's 75.
const WORD_INPUT: usize = 45;

/// Appends `text` as RFC 2047 encoded-words (UTF-8, base64), folded one word per line after
/// the first so that no word and no line outgrows the limits. `text` must hold no line break.
pub fn encoded_words(text: &str, out: &mut String) {
    let mut rest = text;
    let mut first = true;
    while !rest.is_empty() {
        let mut cut = rest.len().min(WORD_INPUT);
        while !rest.is_char_boundary(cut) {
            cut -= 1;
        }
        let (word, tail) = rest.split_at(cut);
        if !first {
            // Folding white space between encoded-words is not part of the text (§6.2).
            out.push_str("\r\n ");
        }
        out.push_str("=?utf-8?B?");
        base64::engine::general_purpose::STANDARD.encode_string(word.as_bytes(), out);
        out.push_str("?=");
        rest = tail;
        first = false;
    }
}

/// A template's header section with the non-ASCII text it holds itself (outside `{{ }}`,
/// `{% %}` and `{# #}` tags: values are encoded when rendered) as encoded-words. A run of
/// words holding non-ASCII becomes one encoded text; a quoted display name (`"Jürgen Müller"`)
/// loses its quotes, which an encoded-word may not stand in.
pub fn encode_header_literals(head: &str) -> Cow<'_, str> {
    if head.is_ascii() {
        return Cow::Borrowed(head);
    }
    let mut out = String::with_capacity(head.len() * 2);
    let mut rest = head;
    while !rest.is_empty() {
        // The next tag, copied as it is.
        let tag = ["{{", "{%", "{#"].iter().filter_map(|open| rest.find(open).map(|at| (at, *open))).min();
        let (literal, after) = match tag {
            Some((at, open)) => {
                let close = match open {
                    "{{" => "}}",
                    "{%" => "%}",
                    _ => "#}",
                };
                let end = rest[at..].find(close).map_or(rest.len(), |e| at + e + 2);
                (&rest[..at], Some(&rest[at..end]))
            }
            None => (rest, None),
        };
        encode_literal(literal, &mut out);
        match after {
            Some(tag) => {
                out.push_str(tag);
                rest = &rest[literal.len() + tag.len()..];
            }
            None => rest = "",
        }
    }
    Cow::Owned(out)
}

/// Literal header text: runs of words holding non-ASCII become encoded-words; line breaks,
/// white space and ASCII words stay.
fn encode_literal(text: &str, out: &mut String) {
    let mut words = text.split_inclusive([' ', '\t', '\n']).peekable();
    while let Some(word) = words.next() {
        if word.is_ascii() {
            out.push_str(word);
            continue;
        }
        // Join the following non-ASCII words into one text (the spaces between them are text).
        let mut run = String::from(word);
        while let Some(next) = words.peek().filter(|w| !w.is_ascii() && !run.ends_with('\n')) {
            run.push_str(next);
            words.next();
        }
        let trailing = run.len() - run.trim_end_matches([' ', '\t', '\r', '\n']).len();
        let (body, space) = run.split_at(run.len() - trailing);
        let quoted = body.len() >= 2 && body.starts_with('"') && body.ends_with('"');
        encoded_words(if quoted { &body[1..body.len() - 1] } else { body }, out);
        out.push_str(space);
    }
}

/// Whether a line of `bytes` (CRLF- or LF-separated) is longer than [`MAX_LINE`] octets.
pub fn has_long_line(bytes: &[u8]) -> bool {
    if bytes.len() <= MAX_LINE {
        return false;
    }
    let mut start = 0;
    for lf in memchr_iter(b'\n', bytes) {
        let end = if lf > start && bytes[lf - 1] == b'\r' { lf - 1 } else { lf };
        if end - start > MAX_LINE {
            return true;
        }
        start = lf + 1;
    }
    bytes.len() - start > MAX_LINE
}

/// `body` (a whole CRLF-normalised message) fit for any server: unchanged when it already is
/// (the common case costs one scan for long lines, and none when it is short and 7-bit);
/// re-encoded as the module says otherwise. `Err` is the reason the row is rejected.
pub fn fit_for_any_server(body: Body) -> Result<Body, String> {
    let bytes = body.bytes();
    if !body.is_eight_bit() && !has_long_line(bytes) {
        return Ok(body);
    }
    let split = memchr::memmem::find(bytes, b"\r\n\r\n");
    let (head, content) = match split {
        Some(at) => (&bytes[..at + 2], &bytes[at + 4..]),
        // No body at all: only header lines can be at fault.
        None => (&bytes[..], &b""[..]),
    };
    if has_long_line(head) {
        return Err(format!("a header line is longer than {MAX_LINE} octets (RFC 5322 §2.1.1)"));
    }
    let fields = Fields::of(head);
    let declared_8bit = matches!(fields.transfer_encoding.as_deref(), Some("8bit" | "binary"));
    let long = has_long_line(content);
    if !long && (content.is_ascii() || declared_8bit) {
        return Ok(body); // 8-bit only in the header section, or declared: 8BITMIME decides
    }
    let why =
        if long { format!("a body line is longer than {MAX_LINE} octets") } else { "8-bit text".into() };
    if fields
        .content_type
        .as_deref()
        .is_some_and(|t| t.starts_with("multipart/") || t.starts_with("message/"))
    {
        return Err(format!(
            "{why} in a multipart message: volley re-encodes single-part messages only; give each part \
             a Content-Transfer-Encoding (quoted-printable or base64)"
        ));
    }
    if matches!(fields.transfer_encoding.as_deref(), Some("quoted-printable" | "base64")) {
        return Err(format!(
            "{why} although the message declares Content-Transfer-Encoding: {}",
            fields.transfer_encoding.as_deref().unwrap_or_default()
        ));
    }
    let mut out = Vec::with_capacity(bytes.len() + bytes.len() / 8 + 128);
    out.extend_from_slice(&fields.without_transfer_encoding);
    if !fields.mime_version {
        out.extend_from_slice(b"MIME-Version: 1.0\r\n");
    }
    if fields.content_type.is_none() {
        out.extend_from_slice(b"Content-Type: text/plain; charset=utf-8\r\n");
    }
    out.extend_from_slice(b"Content-Transfer-Encoding: quoted-printable\r\n\r\n");
    encodify::qp::BODY.encode_append(content, &mut out);
    Ok(Body::new(&out))
}

/// The MIME fields of a header section, and the section without its
/// `Content-Transfer-Encoding` field (which re-encoding replaces).
struct Fields {
    mime_version: bool,
    /// Lower-cased, parameters included.
    content_type: Option<String>,
    /// Lower-cased, trimmed.
    transfer_encoding: Option<String>,
    without_transfer_encoding: Vec<u8>,
}

impl Fields {
    fn of(head: &[u8]) -> Fields {
        let mut f = Fields {
            mime_version: false,
            content_type: None,
            transfer_encoding: None,
            without_transfer_encoding: Vec::new(),
        };
        let text = String::from_utf8_lossy(head);
        // Each field with its continuation lines.
        let mut field = String::new();
        let flush = |field: &mut String, f: &mut Fields| {
            if field.is_empty() {
                return;
            }
            let (name, value) = field.split_once(':').unwrap_or((field.as_str(), ""));
            let value = value.split_whitespace().collect::<Vec<_>>().join(" ").to_ascii_lowercase();
            match name.trim().to_ascii_lowercase().as_str() {
                "mime-version" => f.mime_version = true,
                "content-type" => f.content_type = Some(value),
                "content-transfer-encoding" => {
                    f.transfer_encoding = Some(value);
                    field.clear();
                    return;
                }
                _ => {}
            }
            f.without_transfer_encoding.extend_from_slice(field.as_bytes());
            field.clear();
        };
        for line in text.split_inclusive('\n') {
            if !line.starts_with([' ', '\t']) {
                flush(&mut field, &mut f);
            }
            field.push_str(line);
        }
        flush(&mut field, &mut f);
        f
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fit(message: &str) -> Result<String, String> {
        fit_for_any_server(Body::new(message.as_bytes()))
            .map(|b| String::from_utf8(b.bytes().to_vec()).unwrap())
    }

    fn decoded_words(header: &str) -> String {
        header
            .split_whitespace()
            .filter_map(|w| w.strip_prefix("=?utf-8?B?")?.strip_suffix("?="))
            .map(|b| String::from_utf8(base64::engine::general_purpose::STANDARD.decode(b).unwrap()).unwrap())
            .collect()
    }

    #[test]
    fn a_7bit_message_with_short_lines_is_left_as_it_is() {
        let m = "From: a@x.test\r\nSubject: hi\r\n\r\nhello\r\n";
        let body = Body::new(m.as_bytes());
        let same = fit_for_any_server(body.clone()).unwrap();
        assert!(std::sync::Arc::ptr_eq(body.bytes(), same.bytes()), "not even copied");
    }

    #[test]
    fn long_lines_and_undeclared_8bit_become_quoted_printable_with_mime_headers() {
        let long = "x".repeat(5000);
        for body in [format!("{long}\r\n"), "Grüße aus Köln\r\n".to_owned()] {
            let out = fit(&format!("From: a@x.test\r\nSubject: hi\r\n\r\n{body}")).unwrap();
            assert!(out.starts_with("From: a@x.test\r\nSubject: hi\r\nMIME-Version: 1.0\r\n"), "{out}");
            assert!(out.contains("Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n"));
            assert!(out.is_ascii(), "7-bit now");
            assert!(!has_long_line(out.as_bytes()), "no line over 998");
            let content = out.split_once("\r\n\r\n").unwrap().1;
            let decoded = encodify::qp::BODY.decode(content.as_bytes()).unwrap();
            assert_eq!(String::from_utf8_lossy(&decoded), body, "the text survives");
        }
    }

    #[test]
    fn a_declared_type_is_kept_and_a_wrong_declared_encoding_replaced() {
        let out = fit("Content-Type: text/html; charset=utf-8\r\nContent-Transfer-Encoding: 7bit\r\nMIME-Version: 1.0\r\n\r\n<p>Zoë</p>\r\n").unwrap();
        assert!(out.starts_with("Content-Type: text/html; charset=utf-8\r\nMIME-Version: 1.0\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n<p>Zo=C3=AB</p>"), "{out}");
        assert_eq!(out.matches("Content-Transfer-Encoding").count(), 1);
    }

    #[test]
    fn declared_8bit_stays_and_what_cannot_be_fixed_is_refused() {
        let m = "Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\nZoë\r\n";
        assert_eq!(fit(m).unwrap(), m, "8BITMIME decides where it may go");
        let long = "y".repeat(1200);
        let multipart =
            format!("Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\n\r\n{long}\r\n--b--\r\n");
        assert!(fit(&multipart).unwrap_err().contains("multipart"));
        let qp = format!("Content-Transfer-Encoding: quoted-printable\r\n\r\n{long}\r\n");
        assert!(fit(&qp).unwrap_err().contains("declares Content-Transfer-Encoding: quoted-printable"));
        assert!(fit(&format!("Subject: {long}\r\n\r\nx\r\n")).unwrap_err().contains("header line"));
    }

    #[test]
    fn header_literals_become_encoded_words_and_tags_are_left_alone() {
        let head = "From: \"Jürgen Müller\" <j@x.test>\nSubject: Grüße an {{ name }}, schön!\nX-Plain: ascii {{ v }}\n";
        let out = encode_header_literals(head);
        assert!(out.is_ascii(), "{out}");
        let lines: Vec<&str> = out.lines().collect();
        assert!(lines[0].starts_with("From: =?utf-8?B?") && lines[0].ends_with("?= <j@x.test>"), "{out}");
        assert_eq!(decoded_words(lines[0]), "Jürgen Müller");
        assert!(lines[1].contains("?= an {{ name }}, =?utf-8?B?"), "{out}");
        assert_eq!(decoded_words(lines[1]), "Grüßeschön!");
        assert_eq!(lines[2], "X-Plain: ascii {{ v }}");
        assert!(matches!(encode_header_literals("Subject: {{ s }}\n"), Cow::Borrowed(_)));
    }

    #[test]
    fn long_text_is_split_into_words_of_at_most_75_characters() {
        let text = "ä".repeat(100);
        let mut out = String::new();
        encoded_words(&text, &mut out);
        assert!(out.split("\r\n ").all(|w| w.len() <= 75), "{out}");
        assert_eq!(decoded_words(&out), text, "no character split across words");
    }
}

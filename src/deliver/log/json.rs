//! A record as one JSON line, written by hand: the log thread writes one per recipient, and
//! going through serde's machinery cost more than everything else that thread does. The output
//! is what `serde_json` makes of the derived `Serialize` (same fields, order, omissions and
//! escapes); a property test holds the two to the same JSON.

use std::io::Write as _;
use std::net::IpAddr;

use super::Record;
use crate::proto::command::decimal_bytes;

/// `,"name":`: a key after the first, made at compile time (one copy per field, not four).
macro_rules! key {
    ($name:literal) => {
        concat!(",\"", $name, "\":").as_bytes()
    };
}

/// Appends `r` as JSON (no newline) to `out`.
pub fn write(r: &Record, out: &mut Vec<u8>) {
    // Room for a typical record up front, so the pushes below rarely grow the buffer.
    out.reserve(512);
    out.extend_from_slice(b"{\"time\":\"");
    escape(&r.time, out);
    out.push(b'"');
    let w = &mut Object { out };
    w.raw_string(key!("status"), r.status.name());
    w.number(key!("line"), r.id);
    if let Some(rcpt) = &r.rcpt {
        w.string(key!("rcpt"), rcpt);
    }
    if r.attempts != 0 {
        w.number(key!("attempts"), r.attempts.into());
    }
    if let Some(mx) = &r.mx {
        w.string(key!("mx"), mx);
    }
    if let Some(ip) = r.ip {
        w.out.extend_from_slice(key!("ip"));
        w.out.push(b'"');
        match ip {
            IpAddr::V4(v4) => {
                for (i, octet) in v4.octets().into_iter().enumerate() {
                    if i > 0 {
                        w.out.push(b'.');
                    }
                    w.out.extend_from_slice(decimal_bytes(octet.into(), &mut [0; 20]));
                }
            }
            // Rare on the MX path, and its text form has rules (zero runs) best left to std.
            IpAddr::V6(v6) => {
                let _ = write!(w.out, "{v6}");
            }
        }
        w.out.push(b'"');
    }
    if let Some(code) = r.code {
        w.number(key!("code"), code.into());
    }
    if let Some(e) = r.enhanced {
        w.out.extend_from_slice(key!("enhanced"));
        let mut buf = [0; 20];
        for (i, part) in [u64::from(e.class), e.subject.into(), e.detail.into()].into_iter().enumerate() {
            w.out.push(if i == 0 { b'"' } else { b'.' });
            w.out.extend_from_slice(decimal_bytes(part, &mut buf));
        }
        w.out.push(b'"');
    }
    if let Some(reply) = &r.reply {
        w.string(key!("reply"), reply);
    }
    if let Some(reason) = &r.reason {
        w.string(key!("reason"), reason);
    }
    if let Some(category) = r.category {
        w.raw_string(key!("category"), category.as_str());
    }
    if let Some(tls) = r.tls {
        w.string(key!("tls"), tls);
    }
    for (name, n) in [
        (key!("size"), r.size.map(|s| s as u64)),
        (key!("queue_ms"), r.queue_ms),
        (key!("retry_in_s"), r.retry_in_s),
    ] {
        if let Some(n) = n {
            w.number(name, n);
        }
    }
    if let Some(campaign) = &r.campaign {
        w.string(key!("campaign"), campaign);
    }
    if let Some(input) = &r.input {
        w.string(key!("input"), input);
    }
    if let Some(digest) = &r.input_digest {
        w.string(key!("input_digest"), digest);
    }
    for (name, value) in [
        (key!("destination"), r.destination.as_deref()),
        (key!("rule"), r.rule.as_deref()),
        (key!("action"), r.action.as_deref()),
        (key!("until"), r.until.as_deref()),
    ] {
        if let Some(value) = value {
            w.string(name, value);
        }
    }
    if let Some(message) = r.message {
        w.number(key!("message"), message);
    }
    if let Some(sender) = &r.sender {
        w.string(key!("sender"), sender);
    }
    if let Some(n) = r.recipients {
        w.number(key!("recipients"), n);
    }
    for (name, value) in
        [(key!("origin"), r.origin.as_deref()), (key!("idempotency_key"), r.idempotency_key.as_deref())]
    {
        if let Some(value) = value {
            w.string(name, value);
        }
    }
    w.out.push(b'}');
}

/// The fields after the first (`time`, which every record has); each key comes from [`key!`].
struct Object<'a> {
    out: &'a mut Vec<u8>,
}

impl Object<'_> {
    fn number(&mut self, key: &[u8], n: u64) {
        self.out.extend_from_slice(key);
        self.out.extend_from_slice(decimal_bytes(n, &mut [0; 20]));
    }

    /// A value known to need no escaping.
    fn raw_string(&mut self, key: &[u8], value: &str) {
        self.out.extend_from_slice(key);
        self.out.push(b'"');
        self.out.extend_from_slice(value.as_bytes());
        self.out.push(b'"');
    }

    fn string(&mut self, key: &[u8], value: &str) {
        self.out.extend_from_slice(key);
        self.out.push(b'"');
        escape(value, self.out);
        self.out.push(b'"');
    }
}

/// JSON string escaping as serde_json does it: `"` and `\`, the short forms for BS, FF, LF,
/// CR and TAB, `\u00XX` for the other control characters; everything else (DEL and non-ASCII
/// included) as it is.
fn escape(s: &str, out: &mut Vec<u8>) {
    let bytes = s.as_bytes();
    // Nearly every value needs none: one pass without early exit (so it vectorises) says so.
    let special = |b: u8| b < 0x20 || b == b'"' || b == b'\\';
    if !bytes.iter().fold(false, |any, &b| any | special(b)) {
        out.extend_from_slice(bytes);
        return;
    }
    let mut run = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let short = match b {
            b'"' => b'"',
            b'\\' => b'\\',
            0x08 => b'b',
            0x0c => b'f',
            b'\n' => b'n',
            b'\r' => b'r',
            b'\t' => b't',
            0..0x20 => 0,
            _ => continue,
        };
        out.extend_from_slice(&bytes[run..i]);
        run = i + 1;
        if short != 0 {
            out.extend_from_slice(&[b'\\', short]);
        } else {
            const HEX: &[u8; 16] = b"0123456789abcdef";
            out.extend_from_slice(&[
                b'\\',
                b'u',
                b'0',
                b'0',
                HEX[usize::from(b >> 4)],
                HEX[usize::from(b & 15)],
            ]);
        }
    }
    out.extend_from_slice(&bytes[run..]);
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use proptest::prelude::*;

    use super::*;
    use crate::deliver::bounce::Category;
    use crate::deliver::log::Status;
    use crate::proto::EnhancedCode;

    fn json(r: &Record) -> serde_json::Value {
        let mut out = Vec::new();
        write(r, &mut out);
        serde_json::from_slice(&out).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out)))
    }

    #[test]
    fn a_typical_record_is_the_line_serde_writes() {
        let mut r = Record::at(Status::Delivered, 7, "2026-11-23T12:00:00.123Z".into()).rcpt("a@x.test");
        (r.attempts, r.code, r.size, r.queue_ms) = (1, Some(250), Some(900), Some(12));
        (r.mx, r.ip, r.tls) = (Some("mx.x.test".into()), Some([127, 0, 0, 2].into()), Some("TLSv1.3"));
        r.enhanced = Some(EnhancedCode::new(2, 0, 0));
        r.reply = Some("2.0.0 Ok: queued \"as\" 1\\2".into());
        let mut out = Vec::new();
        write(&r, &mut out);
        assert_eq!(String::from_utf8(out).unwrap(), serde_json::to_string(&r).unwrap());
    }

    fn text() -> impl Strategy<Value = String> {
        "[a-z\"\\\\\u{0}-\u{1f}\u{7f}é€😀 /]{0,12}"
    }

    fn status() -> impl Strategy<Value = Status> {
        prop::sample::select(Status::ALL.to_vec())
    }

    proptest! {
        #[test]
        fn every_record_is_the_json_serde_writes(
            status in status(),
            line in any::<u64>(),
            texts in prop::collection::vec(prop::option::of(text()), 6),
            numbers in prop::collection::vec(prop::option::of(any::<u64>()), 3),
            attempts in any::<u32>(),
            code in prop::option::of(any::<u16>()),
            enhanced in prop::option::of((any::<u8>(), any::<u16>(), any::<u16>())),
            ip in prop::option::of(any::<IpAddr>()),
            category in prop::option::of(prop::sample::select(Category::ALL.to_vec())),
        ) {
            let mut r = Record::at(status, line, texts[0].clone().unwrap_or_default().into());
            r.rcpt = texts[1].as_deref().map(Arc::from);
            r.mx = texts[2].as_deref().map(Arc::from);
            r.reply = texts[3].as_deref().map(Box::from);
            r.reason = texts[4].clone();
            r.category = category;
            r.campaign = texts[5].clone();
            r.input = texts[5].as_ref().map(|t| format!("{t}.csv"));
            r.input_digest = texts[4].as_ref().map(|t| format!("{t}:0"));
            r.destination = texts[2].as_deref().map(Arc::from);
            r.rule = texts[1].as_deref().map(Arc::from);
            r.action = texts[3].clone();
            r.until = texts[0].clone();
            r.message = numbers[2];
            r.sender = texts[4].as_deref().map(Arc::from);
            r.recipients = numbers[0];
            r.origin = texts[5].as_deref().map(Arc::from);
            r.idempotency_key = texts[3].as_deref().map(Arc::from);
            r.tls = code.map(|_| "TLSv1.3");
            (r.attempts, r.code, r.ip) = (attempts, code, ip);
            r.enhanced = enhanced.map(|(c, s, d)| EnhancedCode::new(c, s, d));
            r.size = numbers[0].map(|n| n as usize);
            (r.queue_ms, r.retry_in_s) = (numbers[1], numbers[2]);
            prop_assert_eq!(json(&r), serde_json::to_value(&r).unwrap());
            // And byte for byte: the same escapes, the same order.
            let mut out = Vec::new();
            write(&r, &mut out);
            prop_assert_eq!(String::from_utf8(out).unwrap(), serde_json::to_string(&r).unwrap());
        }
    }
}

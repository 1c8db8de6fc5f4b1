//! What `bench` sends: the envelope of each message (a sender, recipients from a list, a file
//! or a pattern) and its content (a generated message of a size or a size range, or a user's
//! RFC 5322 file), with a unique Message-ID and a Date per message.

use std::fmt;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use thiserror::Error;

use crate::proto::{Address, AddressError, Body, Envelope, Head, Message};
use crate::rng::Rng;

#[derive(Debug, Error)]
pub enum ContentError {
    #[error("{0:?}: {1}")]
    Address(String, AddressError),
    #[error("recipient pattern {0:?}: {1}")]
    Pattern(String, &'static str),
    #[error("no recipients given")]
    NoRecipients,
    #[error("size range {0:?}: {1}")]
    Size(String, &'static str),
    #[error("message file: {0}")]
    MessageFile(&'static str),
}

/// Where each message's recipients come from, taken in order and cycled.
#[derive(Debug, Clone)]
pub enum Recipients {
    List(Vec<Address>),
    /// `prefix{lo..hi}suffix`: addresses made on the fly, `lo` to `hi` inclusive.
    Pattern {
        prefix: String,
        suffix: String,
        lo: u64,
        hi: u64,
    },
}

impl Recipients {
    /// An address, or a pattern such as `user{1..1000}@example.test`.
    pub fn parse(spec: &str) -> Result<Recipients, ContentError> {
        let Some(open) = spec.find('{') else {
            let a = Address::new(spec).map_err(|e| ContentError::Address(spec.to_owned(), e))?;
            return Ok(Recipients::List(vec![a]));
        };
        let bad = |why| ContentError::Pattern(spec.to_owned(), why);
        let close = spec[open..].find('}').map(|c| open + c).ok_or(bad("no closing }"))?;
        let (lo, hi) = spec[open + 1..close].split_once("..").ok_or(bad("expected {FIRST..LAST}"))?;
        let lo: u64 = lo.trim().parse().map_err(|_| bad("FIRST is not a number"))?;
        let hi: u64 = hi.trim().parse().map_err(|_| bad("LAST is not a number"))?;
        if lo > hi {
            return Err(bad("FIRST is greater than LAST"));
        }
        let r = Recipients::Pattern {
            prefix: spec[..open].to_owned(),
            suffix: spec[close + 1..].to_owned(),
            lo,
            hi,
        };
        // Both ends must make valid addresses (the widest numbers are at the ends).
        for n in [lo, hi] {
            let a = r.make(n);
            Address::new(&a).map_err(|e| ContentError::Address(a, e))?;
        }
        Ok(r)
    }

    /// One address per line; blank lines and `#` comments skipped.
    pub fn from_lines(text: &str) -> Result<Recipients, ContentError> {
        let mut list = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let a = Address::new(line)
                .map_err(|e| ContentError::Address(format!("line {}: {line}", i + 1), e))?;
            list.push(a);
        }
        if list.is_empty() {
            return Err(ContentError::NoRecipients);
        }
        Ok(Recipients::List(list))
    }

    fn make(&self, n: u64) -> String {
        match self {
            Recipients::List(_) => String::new(),
            Recipients::Pattern { prefix, suffix, .. } => format!("{prefix}{n}{suffix}"),
        }
    }

    fn len(&self) -> u64 {
        match self {
            Recipients::List(l) => l.len() as u64,
            Recipients::Pattern { lo, hi, .. } => hi - lo + 1,
        }
    }

    /// The `i`-th address of the cycle.
    fn nth(&self, i: u64) -> Address {
        match self {
            Recipients::List(l) => l[(i % l.len() as u64) as usize].clone(),
            Recipients::Pattern { lo, .. } => {
                // Validated at both ends when parsed, and digits in between are no longer.
                Address::new(&self.make(lo + i % self.len())).expect("pattern addresses were validated")
            }
        }
    }
}

/// Message sizes: one, or a uniform range (`1k..100k`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sizes {
    pub min: usize,
    pub max: usize,
}

impl Sizes {
    /// `1000`, `10k`, `2m`, or a range `1k..100k`. k and m are 1000 and 1000000 (octets on the
    /// wire, as SIZE counts them).
    pub fn parse(spec: &str) -> Result<Sizes, ContentError> {
        let one = |s: &str| -> Result<usize, ContentError> {
            let s = s.trim();
            let (digits, unit) = match s.char_indices().last() {
                Some((i, 'k' | 'K')) => (&s[..i], 1000),
                Some((i, 'm' | 'M')) => (&s[..i], 1_000_000),
                _ => (s, 1),
            };
            let n: usize = digits.parse().map_err(|_| ContentError::Size(spec.to_owned(), "not a number"))?;
            n.checked_mul(unit).ok_or(ContentError::Size(spec.to_owned(), "too large"))
        };
        let sizes = match spec.split_once("..") {
            Some((a, b)) => Sizes { min: one(a)?, max: one(b)? },
            None => {
                let n = one(spec)?;
                Sizes { min: n, max: n }
            }
        };
        if sizes.min > sizes.max {
            return Err(ContentError::Size(spec.to_owned(), "the first size is larger than the second"));
        }
        Ok(sizes)
    }
}

impl fmt::Display for Sizes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.min == self.max { write!(f, "{}", self.min) } else { write!(f, "{}..{}", self.min, self.max) }
    }
}

/// Bodies drawn per message when sizes vary: enough for a smooth spread, few enough to build
/// once at start.
const SIZE_VARIANTS: usize = 64;

/// The Message-ID and Date lines are the same length for every message (fixed-width fields),
/// so `--size` is exact.
const HEAD_LEN: usize = "Message-ID: <0000000000000000.0000000000000000@>\r\n".len()
    + "Date: Mon, 01 Jan 2024 00:00:00 +0000\r\n".len();

/// Makes each message of a bench run.
pub struct Content {
    sender: Option<Address>,
    recipients: Recipients,
    per_message: usize,
    /// Shared by every message when the recipients do not change.
    fixed: Option<Arc<Envelope>>,
    bodies: Vec<Body>,
    /// Per-message Message-ID and Date, and their length.
    unique: bool,
    head_len: usize,
    next: u64,
    rng: Rng,
    heads: HeadTemplate,
}

/// How bench messages are made.
#[derive(Debug, Clone)]
pub struct ContentSpec {
    pub sender: Option<Address>,
    pub recipients: Recipients,
    pub per_message: usize,
    pub body: BodySpec,
    /// A unique Message-ID and a Date per message (otherwise one shared body, as is).
    pub unique: bool,
    pub seed: u64,
}

#[derive(Debug, Clone)]
pub enum BodySpec {
    /// A generated text message of these sizes (headers included).
    Generated(Sizes),
    /// A user's RFC 5322 message, sent as is (its Message-ID and Date replaced when unique).
    File(Vec<u8>),
}

/// The smallest generated message: its headers, with a Message-ID and a Date (a long sender
/// domain needs more; `Content::new` says so).
pub const MIN_SIZE: usize = 300;

impl Content {
    pub fn new(spec: ContentSpec) -> Result<Content, ContentError> {
        if spec.recipients.len() == 0 {
            return Err(ContentError::NoRecipients);
        }
        let per_message = spec.per_message.max(1);
        let id_domain = spec.sender.as_ref().map_or("volley.invalid", |a| a.domain()).to_owned();
        let head_len = if spec.unique { HEAD_LEN + id_domain.len() } else { 0 };
        let mut rng = Rng::new(spec.seed);
        let bodies = match &spec.body {
            BodySpec::Generated(sizes) => {
                if sizes.min < MIN_SIZE {
                    return Err(ContentError::Size(sizes.to_string(), "messages are at least 300 octets"));
                }
                let count = if sizes.min == sizes.max { 1 } else { SIZE_VARIANTS };
                (0..count)
                    .map(|i| {
                        let size = if count == 1 {
                            sizes.min
                        } else {
                            // Evenly spread over the range, so the mean is the range's middle.
                            sizes.min + (sizes.max - sizes.min) * i / (count - 1)
                        };
                        generated_body(size.saturating_sub(head_len), spec.sender.as_ref(), !spec.unique)
                    })
                    .collect()
            }
            BodySpec::File(raw) => vec![file_body(raw, spec.unique)?],
        };
        if let BodySpec::Generated(sizes) = &spec.body {
            if bodies.first().is_some_and(|b| b.len() + head_len != sizes.min) {
                return Err(ContentError::Size(sizes.to_string(), "too small for the message's headers"));
            }
        }
        let fixed = (spec.recipients.len() == per_message as u64
            || matches!(&spec.recipients, Recipients::List(l) if l.len() == 1))
        .then(|| {
            let recipients = (0..per_message as u64).map(|i| spec.recipients.nth(i)).collect();
            Arc::new(Envelope { sender: spec.sender.clone(), recipients })
        });
        let heads = HeadTemplate::new(rng.next_u64(), &id_domain);
        Ok(Content {
            sender: spec.sender,
            recipients: spec.recipients,
            per_message,
            fixed,
            bodies,
            unique: spec.unique,
            head_len,
            next: 0,
            rng,
            heads,
        })
    }

    /// The next message.
    pub fn next_message(&mut self) -> Message {
        let n = self.next;
        self.next += 1;
        let envelope = match &self.fixed {
            Some(e) => Arc::clone(e),
            None => {
                let first = n * self.per_message as u64;
                let recipients =
                    (first..first + self.per_message as u64).map(|i| self.recipients.nth(i)).collect();
                Arc::new(Envelope { sender: self.sender.clone(), recipients })
            }
        };
        let body = if self.bodies.len() == 1 {
            self.bodies[0].clone()
        } else {
            self.bodies[(self.rng.next_u64() % self.bodies.len() as u64) as usize].clone()
        };
        let head = self.unique.then(|| self.heads.make(n));
        Message { envelope, head, body }
    }

    /// Octets per message: (smallest, largest).
    pub fn sizes(&self) -> (usize, usize) {
        let lens = self.bodies.iter().map(|b| b.len() + self.head_len);
        (lens.clone().min().unwrap_or(0), lens.max().unwrap_or(0))
    }
}

/// A plain-text message of `size` octets (headers included).
fn generated_body(size: usize, sender: Option<&Address>, with_id: bool) -> Body {
    let from = sender.map_or_else(|| "bench@volley.invalid".to_owned(), |a| a.to_string());
    let mut text = format!(
        "From: <{from}>\r\nTo: <rcpt0@sink.invalid>\r\nSubject: volley bench\r\n{}MIME-Version: 1.0\r\n\
         Content-Type: text/plain\r\n\r\n",
        if with_id { "Message-ID: <bench@volley.invalid>\r\n" } else { "" }
    );
    const LINE: &str = "The quick brown fox jumps over the lazy dog, again and again, for volley.";
    // Whole lines while they leave room for nothing or for a line of filler (3 octets or more).
    while text.len() + LINE.len() + 2 <= size && !matches!(size - (text.len() + LINE.len() + 2), 1 | 2) {
        text.push_str(LINE);
        text.push_str("\r\n");
    }
    let missing = size.saturating_sub(text.len());
    if missing >= 3 {
        text.push_str(&"x".repeat(missing - 2));
        text.push_str("\r\n");
    }
    Body::new(text.as_bytes())
}

/// A user's message, CRLF-normalised; with `unique`, its own Message-ID and Date fields (and
/// their folded continuation lines) are dropped, as each message gets new ones.
fn file_body(raw: &[u8], unique: bool) -> Result<Body, ContentError> {
    let normalised = Body::new(raw);
    let bytes = normalised.bytes();
    let Some(end) = bytes.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 2) else {
        return Err(ContentError::MessageFile("no blank line ends the header section"));
    };
    if !bytes[..end].split(|&b| b == b'\n').next().is_some_and(|l| l.contains(&b':')) {
        return Err(ContentError::MessageFile("it does not start with a header field"));
    }
    if !unique {
        return Ok(normalised);
    }
    let mut out = Vec::with_capacity(bytes.len());
    let mut dropping = false;
    for line in bytes[..end].split_inclusive(|&b| b == b'\n') {
        let continuation = line.first().is_some_and(|&b| b == b' ' || b == b'\t');
        if !continuation {
            let name = line.split(|&b| b == b':').next().unwrap_or(b"");
            dropping = name.eq_ignore_ascii_case(b"message-id") || name.eq_ignore_ascii_case(b"date");
        }
        if !dropping {
            out.extend_from_slice(line);
        }
    }
    out.extend_from_slice(&bytes[end..]);
    Ok(Body::new(&out))
}

/// The Message-ID and Date lines, made for each message by overwriting the message number's
/// hex digits (and the date, when the second changes) in place: this runs for every message,
/// on the producer thread, and `format!` cost more than the rest of the producer.
struct HeadTemplate {
    bytes: Vec<u8>,
    /// Where the 16 hex digits of the message number start, and where the date starts.
    number_at: usize,
    date_at: usize,
    second: u64,
}

impl HeadTemplate {
    fn new(run_id: u64, domain: &str) -> Self {
        let mut bytes = format!("Message-ID: <{run_id:016x}.").into_bytes();
        let number_at = bytes.len();
        bytes.extend_from_slice(format!("{:016x}@{domain}>\r\nDate: ", 0).as_bytes());
        let date_at = bytes.len();
        bytes.extend_from_slice(rfc5322_date(0).as_bytes());
        bytes.extend_from_slice(b"\r\n");
        HeadTemplate { bytes, number_at, date_at, second: 0 }
    }

    fn make(&mut self, n: u64) -> Head {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        for (i, b) in self.bytes[self.number_at..self.number_at + 16].iter_mut().enumerate() {
            *b = HEX[((n >> (60 - 4 * i)) & 0xf) as usize];
        }
        let secs = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        if secs != self.second {
            self.second = secs;
            let date = rfc5322_date(secs);
            self.bytes[self.date_at..self.date_at + date.len()].copy_from_slice(date.as_bytes());
        }
        Head::new(&self.bytes).expect("generated header lines are well-formed")
    }
}

/// `Mon, 01 Jan 2024 00:00:00 +0000` for seconds since the Unix epoch.
pub fn rfc5322_date(secs: u64) -> String {
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] =
        ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
    let days = secs / 86_400;
    let (h, m, s) = (secs % 86_400 / 3600, secs % 3600 / 60, secs % 60);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let weekday = DAYS[(days % 7) as usize];
    format!("{weekday}, {day:02} {} {year:04} {h:02}:{m:02}:{s:02} +0000", MONTHS[(month - 1) as usize])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(recipients: Recipients, per_message: usize, body: BodySpec) -> ContentSpec {
        ContentSpec {
            sender: Some(Address::new("bench@volley.test").unwrap()),
            recipients,
            per_message,
            body,
            unique: true,
            seed: 1,
        }
    }

    #[test]
    fn dates() {
        assert_eq!(rfc5322_date(0), "Thu, 01 Jan 1970 00:00:00 +0000");
        assert_eq!(rfc5322_date(951_782_400), "Tue, 29 Feb 2000 00:00:00 +0000");
        assert_eq!(rfc5322_date(1_795_417_199), "Mon, 23 Nov 2026 06:59:59 +0000");
    }

    #[test]
    fn recipient_specs() {
        let p = Recipients::parse("user{1..3}@example.test").unwrap();
        let got: Vec<String> = (0..4).map(|i| p.nth(i).to_string()).collect();
        assert_eq!(
            got,
            ["user1@example.test", "user2@example.test", "user3@example.test", "user1@example.test"]
        );
        assert!(Recipients::parse("a@b.test").is_ok());
        for bad in
            ["user{3..1}@x.test", "user{1..}@x.test", "user{a..b}@x", "user{1..2@x", "no-at-sign", "a b@x"]
        {
            assert!(Recipients::parse(bad).is_err(), "{bad}");
        }
        let list = Recipients::from_lines("# list\na@x.test\n\n b@x.test \n").unwrap();
        assert_eq!(list.len(), 2);
        assert!(Recipients::from_lines("# nothing\n").is_err());
        let err = Recipients::from_lines("a@x.test\nnot an address\n").unwrap_err().to_string();
        assert!(err.contains("line 2"), "{err}");
    }

    #[test]
    fn sizes() {
        assert_eq!(Sizes::parse("1000").unwrap(), Sizes { min: 1000, max: 1000 });
        assert_eq!(Sizes::parse("1k..100k").unwrap(), Sizes { min: 1000, max: 100_000 });
        assert_eq!(Sizes::parse("2M").unwrap(), Sizes { min: 2_000_000, max: 2_000_000 });
        for bad in ["", "k", "10x", "5k..1k", "1..2..3"] {
            assert!(Sizes::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn every_message_has_its_own_id_and_the_exact_size() {
        let mut c = Content::new(spec(
            Recipients::List(vec![Address::new("r@x.test").unwrap()]),
            1,
            BodySpec::Generated(Sizes { min: 1000, max: 1000 }),
        ))
        .unwrap();
        let a = c.next_message();
        let b = c.next_message();
        assert_eq!((a.len(), b.len()), (1000, 1000));
        assert_ne!(a.head, b.head);
        let head = String::from_utf8(a.head.unwrap().bytes().to_vec()).unwrap();
        assert!(head.starts_with("Message-ID: <") && head.contains("@volley.test>\r\nDate: "), "{head}");
        assert!(Arc::ptr_eq(&a.envelope, &b.envelope), "fixed recipients share one envelope");
    }

    #[test]
    fn size_ranges_spread_over_the_range() {
        let mut c = Content::new(spec(
            Recipients::parse("u{1..10}@x.test").unwrap(),
            2,
            BodySpec::Generated(Sizes::parse("1k..5k").unwrap()),
        ))
        .unwrap();
        assert_eq!(c.sizes(), (1000, 5000));
        let lens: Vec<usize> = (0..200).map(|_| c.next_message().len()).collect();
        assert!(lens.iter().all(|&l| (1000..=5000).contains(&l)));
        let mean = lens.iter().sum::<usize>() / lens.len();
        assert!((2500..3500).contains(&mean), "{mean}");
        let m = c.next_message();
        assert_eq!(m.envelope.recipients.len(), 2);
    }

    #[test]
    fn recipients_cycle_through_the_pattern() {
        let mut c = Content::new(spec(
            Recipients::parse("u{1..3}@x.test").unwrap(),
            2,
            BodySpec::Generated(Sizes { min: 300, max: 300 }),
        ))
        .unwrap();
        let rcpts: Vec<String> = (0..3)
            .flat_map(|_| c.next_message().envelope.recipients.clone())
            .map(|a| a.to_string())
            .collect();
        assert_eq!(rcpts, ["u1@x.test", "u2@x.test", "u3@x.test", "u1@x.test", "u2@x.test", "u3@x.test"]);
    }

    #[test]
    fn message_files_keep_everything_but_id_and_date() {
        let file = b"From: a@x.test\nMessage-ID: <old@x>\nDate: Mon,\n 1 Jan 2024 00:00:00 +0000\nSubject: hi\n\nbody\n.dot\n";
        let mut c = Content::new(spec(
            Recipients::List(vec![Address::new("r@x.test").unwrap()]),
            1,
            BodySpec::File(file.to_vec()),
        ))
        .unwrap();
        let m = c.next_message();
        let body = String::from_utf8(m.body.bytes().to_vec()).unwrap();
        assert_eq!(body, "From: a@x.test\r\nSubject: hi\r\n\r\nbody\r\n.dot\r\n");
        assert!(m.body.needs_dot_stuffing());
        for bad in [&b"no header section"[..], b"\r\n\r\nbody", b"just text\n\nbody\n"] {
            assert!(file_body(bad, true).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
    }
}

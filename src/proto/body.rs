//! Message content encoding: CRLF normalisation, dot-stuffing and the DATA terminator.
//!
//! Every line ending becomes CRLF (a bare LF or bare CR is never sent: that is what SMTP
//! smuggling exploits), a final CRLF is ensured, and for DATA a leading `.` is doubled and
//! `.<CRLF>` appended. The encoder accepts input in chunks split anywhere, even between CR and
//! LF, and copies clean input in runs found with `memchr2` rather than byte by byte.

use std::sync::Arc;

use memchr::memchr2;

/// Pieces up to this long skip the general loop, scanned a word at a time (see [`scan_short`]).
const SHORT: usize = 32;

/// What [`scan_short`] finds in a piece.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Scan {
    /// A CR or LF.
    breaks: bool,
    /// An octet outside 7-bit ASCII.
    eight_bit: bool,
}

/// Looks for line breaks and 8-bit octets eight at a time: a byte-by-byte loop cost more than
/// the rest of encoding a short value (a name, an address, a date).
fn scan_short(input: &[u8]) -> Scan {
    const ONES: u64 = u64::from_ne_bytes([0x01; 8]);
    const HIGH: u64 = u64::from_ne_bytes([0x80; 8]);
    // Whether any byte of `v` is zero (exact for "any": a borrow only ever follows a zero).
    let has_zero = |v: u64| v.wrapping_sub(ONES) & !v & HIGH != 0;
    let (mut breaks, mut high) = (false, 0u64);
    let mut check = |v: u64| {
        high |= v;
        breaks |= has_zero(v ^ (ONES * u64::from(b'\r'))) || has_zero(v ^ (ONES * u64::from(b'\n')));
    };
    // Fixed-size loads only (a variable-length copy would be a call to `memcpy`). Octets may be
    // looked at twice (overlapping loads) or not at all (NUL padding): neither changes the
    // answer, which is whether any octet is a break or 8-bit.
    let n = input.len();
    let word =
        |at: usize| input.get(at..at + 8).and_then(|w| w.try_into().ok()).map_or(0, u64::from_ne_bytes);
    let half =
        |at: usize| input.get(at..at + 4).and_then(|w| w.try_into().ok()).map_or(0, u32::from_ne_bytes);
    if n >= 8 {
        let mut at = 0;
        while at + 8 <= n {
            check(word(at));
            at += 8;
        }
        if at < n {
            check(word(n - 8));
        }
    } else if n >= 4 {
        check(u64::from(half(0)) | u64::from(half(n - 4)) << 32);
    } else if n > 0 {
        check(u64::from(input[0]) | u64::from(input[n / 2]) << 8 | u64::from(input[n - 1]) << 16);
    }
    Scan { breaks, eight_bit: high & HIGH != 0 }
}

/// How the content is framed on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// For DATA: dot-stuffed and terminated by `.<CRLF>`.
    Data,
    /// For BDAT: CRLF-normalised only; its length travels in the command.
    Raw,
}

/// A streaming encoder. Feed chunks with [`push`](Self::push), end with [`finish`](Self::finish).
#[derive(Debug, Clone)]
pub struct BodyEncoder {
    framing: Framing,
    line_start: bool,
    pending_cr: bool,
    dot_lines: bool,
    eight_bit: bool,
}

impl BodyEncoder {
    pub fn new(framing: Framing) -> Self {
        BodyEncoder { framing, line_start: true, pending_cr: false, dot_lines: false, eight_bit: false }
    }

    /// Encodes `input`, appending to `out`.
    pub fn push(&mut self, input: &[u8], out: &mut Vec<u8>) {
        // A message made per recipient comes in many short pieces without line breaks (values,
        // words of a template): those skip the general loop, whose set-up (the vectorised
        // search) costs more than copying them.
        let short = (input.len() <= SHORT && !self.pending_cr).then(|| scan_short(input));
        if let Some(Scan { breaks: false, eight_bit }) = short {
            self.eight_bit |= eight_bit;
            return self.append_unbroken(input, out);
        }
        let len = input.len();
        let mut i = 0;
        if self.pending_cr && len > 0 {
            // The previous chunk ended in CR: this one decides whether it was CRLF or a bare CR.
            self.pending_cr = false;
            out.extend_from_slice(b"\r\n");
            if input[0] == b'\n' {
                i = 1;
            }
            self.line_start = true;
        }
        if !self.eight_bit {
            self.eight_bit = !input.is_ascii();
        }
        let stuff = self.framing == Framing::Data;
        // input[run..i] is verbatim output not yet copied.
        let mut run = i;
        loop {
            if self.line_start {
                if i == len {
                    break;
                }
                if input[i] == b'.' {
                    self.dot_lines = true;
                    if stuff {
                        out.extend_from_slice(&input[run..i]);
                        out.push(b'.');
                        run = i;
                    }
                }
                self.line_start = false;
            }
            let Some(off) = memchr2(b'\r', b'\n', &input[i..]) else { break };
            let p = i + off;
            if input[p] == b'\n' {
                out.extend_from_slice(&input[run..p]);
                out.extend_from_slice(b"\r\n");
                i = p + 1;
                run = i;
            } else if p + 1 == len {
                out.extend_from_slice(&input[run..p]);
                self.pending_cr = true;
                return;
            } else if input[p + 1] == b'\n' {
                i = p + 2;
            } else {
                out.extend_from_slice(&input[run..p]);
                out.extend_from_slice(b"\r\n");
                i = p + 1;
                run = i;
            }
            self.line_start = true;
        }
        out.extend_from_slice(&input[run..]);
    }

    /// Appends a piece known to hold no line break and no 8-bit octet (see
    /// [`BodyWriter::push_plain`]).
    fn push_plain(&mut self, input: &[u8], out: &mut Vec<u8>) {
        if self.pending_cr {
            return self.push(input, out);
        }
        self.append_unbroken(input, out);
    }

    /// Appends a piece with no line break, no CR pending before it, and its 8-bit octets
    /// already noted: only a dot starting a line needs care.
    fn append_unbroken(&mut self, input: &[u8], out: &mut Vec<u8>) {
        let Some(&first) = input.first() else { return };
        if self.line_start {
            self.line_start = false;
            if first == b'.' {
                self.dot_lines = true;
                if self.framing == Framing::Data {
                    out.push(b'.');
                }
            }
        }
        out.extend_from_slice(input);
    }

    /// Encodes a piece prepared ahead of time: its encoding is copied, not worked out again,
    /// unless the state of the encoder makes it differ (a CR pending from the previous piece,
    /// DATA framing).
    pub fn push_prepared(&mut self, piece: &Prepared, out: &mut Vec<u8>) {
        if self.pending_cr || piece.ends_cr || self.framing == Framing::Data {
            return self.push(&piece.raw, out);
        }
        let Some(ends_line) = piece.ends_line else { return };
        self.dot_lines |= piece.inner_dot || (self.line_start && piece.starts_dot);
        self.eight_bit |= piece.eight_bit;
        self.line_start = ends_line;
        out.extend_from_slice(&piece.encoded);
    }

    /// Ends the content: the final line gets its CRLF, and DATA framing its terminator.
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        if self.pending_cr || !self.line_start {
            out.extend_from_slice(b"\r\n");
        }
        if self.framing == Framing::Data {
            out.extend_from_slice(b".\r\n");
        }
        self.pending_cr = false;
        self.line_start = true;
    }

    /// Whether any line seen so far starts with a dot.
    pub fn saw_dot_lines(&self) -> bool {
        self.dot_lines
    }

    /// Whether any octet seen so far is outside 7-bit ASCII.
    pub fn saw_eight_bit(&self) -> bool {
        self.eight_bit
    }
}

/// A fixed piece of content (the text of a template between its values) encoded once, for
/// content assembled from it many times over: see [`BodyEncoder::push_prepared`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prepared {
    raw: Box<[u8]>,
    /// Its BDAT encoding, when it follows anything but a pending CR.
    encoded: Box<[u8]>,
    starts_dot: bool,
    /// A line after its first starts with a dot.
    inner_dot: bool,
    /// Whether it ends at the start of a line; `None`: it is empty.
    ends_line: Option<bool>,
    /// It ends in CR, whose meaning the next piece decides: never copied.
    ends_cr: bool,
    eight_bit: bool,
}

impl Prepared {
    pub fn new(raw: &[u8]) -> Prepared {
        let mut encoded = Vec::with_capacity(raw.len() + raw.len() / 32 + 2);
        BodyEncoder::new(Framing::Raw).push(raw, &mut encoded);
        let breaks = |b: u8| b == b'\r' || b == b'\n';
        Prepared {
            raw: raw.into(),
            encoded: encoded.into(),
            starts_dot: raw.first() == Some(&b'.'),
            inner_dot: raw.windows(2).any(|w| breaks(w[0]) && w[1] == b'.'),
            ends_line: raw.last().map(|&b| breaks(b)),
            ends_cr: raw.last() == Some(&b'\r'),
            eight_bit: !raw.is_ascii(),
        }
    }
}

/// Encodes a whole body at once.
///
/// ```
/// use mailvolley::proto::body::{Framing, encode};
///
/// // Bare LF and CR become CRLF, a leading dot is doubled, the terminator is appended.
/// assert_eq!(encode(Framing::Data, b"hi\n.hidden\rend"), b"hi\r\n..hidden\r\nend\r\n.\r\n");
/// assert_eq!(encode(Framing::Raw, b"hi\n.x"), b"hi\r\n.x\r\n");
/// ```
pub fn encode(framing: Framing, input: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(input.len() + input.len() / 64 + 8);
    let mut enc = BodyEncoder::new(framing);
    enc.push(input, &mut out);
    enc.finish(&mut out);
    out
}

/// What [`Body::build`] hands its writer: pieces in, encoded content out.
pub struct BodyWriter {
    enc: BodyEncoder,
    out: Vec<u8>,
}

impl BodyWriter {
    pub fn push(&mut self, piece: &[u8]) {
        self.enc.push(piece, &mut self.out);
    }

    pub fn push_prepared(&mut self, piece: &Prepared) {
        self.enc.push_prepared(piece, &mut self.out);
    }

    /// Appends `piece`, which the caller knows is printable ASCII (no line break, no 8-bit
    /// octet): it is copied without being looked at, save its first octet (a dot starting a
    /// line).
    pub fn push_plain(&mut self, piece: &[u8]) {
        debug_assert!(piece.iter().all(|b| (0x20..0x7f).contains(b)), "not plain: {piece:?}");
        self.enc.push_plain(piece, &mut self.out);
    }
}

/// The largest scratch buffer [`Body::build`] keeps for the thread's next body.
const SCRATCH_KEEP: usize = 1 << 20;

/// A message body prepared once and shared by every send of it: CRLF-normalised, ending in CRLF.
///
/// The DATA form is the same bytes followed by `.<CRLF>` unless a line starts with a dot, so in
/// the common case both framings send the shared bytes without copying them.
#[derive(Clone, PartialEq, Eq)]
pub struct Body {
    bytes: Arc<[u8]>,
    /// The DATA form, kept only when it is not `bytes` + `.<CRLF>` (a line starts with a dot).
    stuffed: Option<Arc<[u8]>>,
    eight_bit: bool,
}

/// Bodies can be megabytes: show their shape, not their bytes.
impl std::fmt::Debug for Body {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Body")
            .field("len", &self.bytes.len())
            .field("dot_stuffed", &self.stuffed.is_some())
            .field("eight_bit", &self.eight_bit)
            .finish()
    }
}

impl Body {
    pub fn new(raw: &[u8]) -> Body {
        Body::from_chunks(&[raw])
    }

    /// A body whose content comes in pieces (a header section, added headers, the text),
    /// encoded in one pass: the pieces are never joined into a copy first.
    pub fn from_chunks(chunks: &[&[u8]]) -> Body {
        let built = Body::build(|w| {
            chunks.iter().for_each(|c| w.push(c));
            Some(())
        });
        let Some((body, ())) = built else { unreachable!("this writer never abandons the body") };
        body
    }

    /// A body whose content `write` gives piece by piece (a piece may end anywhere, even
    /// between CR and LF), for content made per message: encoded into a scratch buffer each
    /// thread reuses, then copied once into an exactly sized shared buffer, so making a body
    /// costs one allocation whatever the number of pieces. `write` answering `None` abandons it.
    pub fn build<R>(write: impl FnOnce(&mut BodyWriter) -> Option<R>) -> Option<(Body, R)> {
        thread_local! {
            static SCRATCH: std::cell::Cell<Vec<u8>> = const { std::cell::Cell::new(Vec::new()) };
        }
        // Taken, not borrowed: a `write` that builds another body meanwhile gets a fresh buffer.
        let mut out = SCRATCH.take();
        out.clear();
        let mut w = BodyWriter { enc: BodyEncoder::new(Framing::Raw), out };
        let built = write(&mut w).map(|r| {
            w.enc.finish(&mut w.out);
            (Body::from_encoded(&w.out, w.enc.saw_dot_lines(), w.enc.saw_eight_bit()), r)
        });
        // One huge message must not pin its size in every thread for the rest of the run.
        if w.out.capacity() <= SCRATCH_KEEP {
            SCRATCH.set(w.out);
        }
        built
    }

    /// `bytes` already CRLF-normalised and ending in CRLF, with what the encoder saw of it.
    fn from_encoded(bytes: &[u8], dot_lines: bool, eight_bit: bool) -> Body {
        let stuffed = dot_lines.then(|| encode(Framing::Data, bytes).into());
        Body { bytes: bytes.into(), stuffed, eight_bit }
    }

    /// The CRLF-normalised content: what BDAT sends and what the receiver stores.
    pub fn bytes(&self) -> &Arc<[u8]> {
        &self.bytes
    }

    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    pub fn needs_dot_stuffing(&self) -> bool {
        self.stuffed.is_some()
    }

    pub fn is_eight_bit(&self) -> bool {
        self.eight_bit
    }

    /// The DATA wire form, terminator included, when it differs from `bytes()` + `.<CRLF>`.
    pub fn stuffed(&self) -> Option<&Arc<[u8]>> {
        self.stuffed.as_ref()
    }
}

/// Header lines sent ahead of a shared [`Body`], different for each message (a unique
/// Message-ID, a Date): complete CRLF-terminated lines, none empty (that would end the header
/// section) and none starting with a dot, so DATA and BDAT both send them unchanged.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Head(Arc<[u8]>);

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HeadError {
    #[error("header lines must each end with CRLF, with no bare CR or LF")]
    LineEnding,
    #[error("an empty line would end the header section")]
    EmptyLine,
    #[error("a header line cannot start with a dot")]
    Dot,
}

impl Head {
    pub fn new(lines: &[u8]) -> Result<Head, HeadError> {
        let mut rest = lines;
        while !rest.is_empty() {
            let Some(lf) = memchr::memchr(b'\n', rest) else { return Err(HeadError::LineEnding) };
            let line = &rest[..lf];
            if !line.ends_with(b"\r") || memchr::memchr2(b'\r', b'\n', &line[..line.len() - 1]).is_some() {
                return Err(HeadError::LineEnding);
            }
            match line.first() {
                Some(b'\r') => return Err(HeadError::EmptyLine),
                Some(b'.') => return Err(HeadError::Dot),
                _ => {}
            }
            rest = &rest[lf + 1..];
        }
        Ok(Head(lines.into()))
    }

    pub fn bytes(&self) -> &Arc<[u8]> {
        &self.0
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn is_eight_bit(&self) -> bool {
        // Asked per send (for BODY=8BITMIME) of heads of ~400 octets (DKIM signatures):
        // `is_ascii` goes a word at a time where an early-exit byte loop would not.
        !self.0.is_ascii()
    }
}

/// What is sent as a message's content: optional per-message header lines, then the body.
pub(crate) fn content_len(head: Option<&Head>, body: &Body) -> usize {
    head.map_or(0, Head::len) + body.len()
}

pub(crate) fn content_is_eight_bit(head: Option<&Head>, body: &Body) -> bool {
    body.is_eight_bit() || head.is_some_and(Head::is_eight_bit)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Reference normalisation, byte at a time: the obviously-correct version of what the fast
    /// encoder does for Raw framing.
    fn normalise(input: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut i = 0;
        while i < input.len() {
            match input[i] {
                b'\r' if input.get(i + 1) == Some(&b'\n') => {
                    out.extend_from_slice(b"\r\n");
                    i += 1;
                }
                b'\r' | b'\n' => out.extend_from_slice(b"\r\n"),
                b => out.push(b),
            }
            i += 1;
        }
        if !out.is_empty() && !out.ends_with(b"\r\n") {
            out.extend_from_slice(b"\r\n");
        }
        out
    }

    /// Reference decoding of DATA framing, as a receiver does it.
    fn unstuff(wire: &[u8]) -> Vec<u8> {
        let body = wire.strip_suffix(b".\r\n").expect("terminator");
        let mut out = Vec::new();
        for line in body.split_inclusive(|&b| b == b'\n') {
            out.extend_from_slice(line.strip_prefix(b".").unwrap_or(line));
        }
        out
    }

    fn encode_chunked(framing: Framing, input: &[u8], cuts: &[usize]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut enc = BodyEncoder::new(framing);
        let mut start = 0;
        for &c in cuts {
            let c = c.clamp(start, input.len());
            enc.push(&input[start..c], &mut out);
            start = c;
        }
        enc.push(&input[start..], &mut out);
        enc.finish(&mut out);
        out
    }

    #[test]
    fn data_framing_table() {
        let cases: &[(&[u8], &[u8])] = &[
            (b"", b".\r\n"),
            (b"a", b"a\r\n.\r\n"),
            (b"a\r\n", b"a\r\n.\r\n"),
            (b"a\nb\n", b"a\r\nb\r\n.\r\n"),
            (b"a\rb\r", b"a\r\nb\r\n.\r\n"),
            (b"a\r\r\nb", b"a\r\n\r\nb\r\n.\r\n"),
            (b"a\n\rb", b"a\r\n\r\nb\r\n.\r\n"),
            (b".", b"..\r\n.\r\n"),
            (b".\r\n", b"..\r\n.\r\n"),
            (b"a\r\n.\r\nb", b"a\r\n..\r\nb\r\n.\r\n"),
            (b"a\n.\nb", b"a\r\n..\r\nb\r\n.\r\n"),
            (b"a\r.\rb", b"a\r\n..\r\nb\r\n.\r\n"),
            (b"..x\r\n", b"...x\r\n.\r\n"),
            (b"x.y\r\n", b"x.y\r\n.\r\n"),
            (b"\r\n", b"\r\n.\r\n"),
            (b"\n", b"\r\n.\r\n"),
        ];
        for (input, want) in cases {
            assert_eq!(encode(Framing::Data, input), *want, "{:?}", String::from_utf8_lossy(input));
            // Every split point gives the same bytes.
            for cut in 0..=input.len() {
                assert_eq!(encode_chunked(Framing::Data, input, &[cut]), *want, "cut at {cut}");
            }
        }
    }

    #[test]
    fn raw_framing_table() {
        let cases: &[(&[u8], &[u8])] =
            &[(b"", b""), (b"a", b"a\r\n"), (b".\n", b".\r\n"), (b"a\rb", b"a\r\nb\r\n"), (b"a\r", b"a\r\n")];
        for (input, want) in cases {
            assert_eq!(encode(Framing::Raw, input), *want);
        }
    }

    #[test]
    fn prepared_body() {
        let b = Body::new(b"Subject: x\n\nhello\n");
        assert_eq!(&b.bytes()[..], b"Subject: x\r\n\r\nhello\r\n");
        assert!(!b.needs_dot_stuffing() && !b.is_eight_bit());
        assert_eq!(b.stuffed(), None);

        let b = Body::new(b"a\n.b\n\xc3\xa9\n");
        assert!(b.needs_dot_stuffing() && b.is_eight_bit());
        assert_eq!(&b.stuffed().unwrap()[..], b"a\r\n..b\r\n\xc3\xa9\r\n.\r\n");
    }

    /// Short pieces, where line starts and dots at a piece's edges come up often.
    fn piece_bytes() -> impl Strategy<Value = Vec<u8>> {
        prop::collection::vec(prop_oneof![Just(b'\r'), Just(b'\n'), Just(b'.'), Just(b'a'), Just(0xc3)], 0..6)
    }

    fn body_bytes() -> impl Strategy<Value = Vec<u8>> {
        // Bias towards the interesting octets so line-structure cases come up often.
        prop::collection::vec(
            prop_oneof![Just(b'\r'), Just(b'\n'), Just(b'.'), Just(b'a'), any::<u8>()],
            0..300,
        )
    }

    #[test]
    fn short_scan_table() {
        let cases: [(&[u8], bool, bool); 9] = [
            (b"", false, false),
            (b"Name7", false, false),
            (b"a\rb", true, false),
            (b"abcdefg\n", true, false),
            (b"abcdefgh\n", true, false),
            (b"\x0c\x0b\x0e\x09", false, false),
            (b"caf\xc3\xa9", false, true),
            (b"0123456789abcdef0123456789abcde\x7f", false, false),
            (b"0123456789abcdef0123456789abcde\x80", false, true),
        ];
        for (input, breaks, eight_bit) in cases {
            assert_eq!(
                scan_short(input),
                Scan { breaks, eight_bit },
                "{:?}",
                input.escape_ascii().to_string()
            );
        }
    }

    proptest! {
        #[test]
        fn short_scan_matches_bytewise(input in prop::collection::vec(any::<u8>(), 0..=SHORT)) {
            let expected = Scan {
                breaks: input.iter().any(|&b| b == b'\r' || b == b'\n'),
                eight_bit: !input.is_ascii(),
            };
            prop_assert_eq!(scan_short(&input), expected);
        }

        #[test]
        fn data_decodes_to_normalised_input(input in body_bytes()) {
            prop_assert_eq!(unstuff(&encode(Framing::Data, &input)), normalise(&input));
        }

        #[test]
        fn raw_is_normalised_input(input in body_bytes()) {
            prop_assert_eq!(encode(Framing::Raw, &input), normalise(&input));
        }

        #[test]
        fn terminator_appears_only_at_the_end(input in body_bytes()) {
            let wire = encode(Framing::Data, &input);
            // The receiver is at a line start when DATA content begins.
            let mut framed = b"\r\n".to_vec();
            framed.extend_from_slice(&wire);
            let first = memchr::memmem::find(&framed, b"\r\n.\r\n");
            prop_assert_eq!(first, Some(framed.len() - 5));
        }

        #[test]
        fn no_bare_cr_or_lf(input in body_bytes()) {
            let wire = encode(Framing::Data, &input);
            for (i, &b) in wire.iter().enumerate() {
                if b == b'\r' { prop_assert_eq!(wire.get(i + 1), Some(&b'\n')); }
                if b == b'\n' { prop_assert!(i > 0 && wire[i - 1] == b'\r'); }
            }
        }

        #[test]
        fn chunk_boundaries_do_not_matter(
            input in body_bytes(),
            mut cuts in prop::collection::vec(0usize..300, 0..8),
        ) {
            cuts.sort_unstable();
            for framing in [Framing::Data, Framing::Raw] {
                prop_assert_eq!(encode_chunked(framing, &input, &cuts), encode(framing, &input));
            }
        }

        #[test]
        fn prepared_pieces_encode_as_their_raw_bytes_would(
            pieces in prop::collection::vec((piece_bytes(), any::<bool>()), 0..8),
            data in any::<bool>(),
        ) {
            let framing = if data { Framing::Data } else { Framing::Raw };
            let (mut plain, mut fast) = (BodyEncoder::new(framing), BodyEncoder::new(framing));
            let (mut want, mut got) = (Vec::new(), Vec::new());
            for (piece, prepare) in &pieces {
                plain.push(piece, &mut want);
                if *prepare {
                    fast.push_prepared(&Prepared::new(piece), &mut got);
                } else {
                    fast.push(piece, &mut got);
                }
                // After every piece, not only at the end: a flag set late hides one missed.
                prop_assert_eq!(
                    (fast.saw_dot_lines(), fast.saw_eight_bit()),
                    (plain.saw_dot_lines(), plain.saw_eight_bit())
                );
            }
            plain.finish(&mut want);
            fast.finish(&mut got);
            prop_assert_eq!(&got, &want);
        }

        #[test]
        fn prepared_body_matches_streaming(input in body_bytes()) {
            let body = Body::new(&input);
            let mut data_form = body.bytes().to_vec();
            data_form.extend_from_slice(b".\r\n");
            let data_form = body.stuffed().map(|s| s.to_vec()).unwrap_or(data_form);
            prop_assert_eq!(data_form, encode(Framing::Data, &input));
        }

        #[test]
        fn a_body_from_chunks_is_the_body_of_their_concatenation(
            input in body_bytes(),
            mut cuts in prop::collection::vec(0usize..300, 0..8),
        ) {
            cuts.sort_unstable();
            let mut chunks = Vec::new();
            let mut start = 0;
            for cut in cuts.into_iter().map(|c| c.min(input.len())) {
                chunks.push(&input[start..cut.max(start)]);
                start = cut.max(start);
            }
            chunks.push(&input[start..]);
            prop_assert_eq!(Body::from_chunks(&chunks), Body::new(&input));
        }
    }

    #[test]
    fn an_abandoned_body_leaves_nothing_behind_and_bodies_may_nest() {
        let abandoned = Body::build(|w| {
            w.push(b"half a message\n");
            None::<()>
        });
        assert!(abandoned.is_none());
        let (outer, inner) = Body::build(|w| {
            w.push(b"outer\n");
            let inner = Body::new(b".inner");
            w.push(b"more");
            Some(inner)
        })
        .unwrap();
        assert_eq!(&outer.bytes()[..], b"outer\r\nmore\r\n");
        assert_eq!((&inner.bytes()[..], inner.needs_dot_stuffing()), (&b".inner\r\n"[..], true));
    }

    #[test]
    fn heads_are_checked() {
        assert!(Head::new(b"Message-ID: <1@x>\r\nDate: Mon, 23 Nov 2026 07:00:00 +0000\r\n").is_ok());
        assert!(Head::new(b"").is_ok());
        let cases: [(&[u8], HeadError); 6] = [
            (b"X: 1\n", HeadError::LineEnding),
            (b"X: 1\r\nY: 2", HeadError::LineEnding),
            (b"X: 1\rY: 2\r\n", HeadError::LineEnding),
            (b"X: 1\r\n\r\n", HeadError::EmptyLine),
            (b".X: 1\r\n", HeadError::Dot),
            (b"X: 1\r\n.\r\n", HeadError::Dot),
        ];
        for (input, want) in cases {
            assert_eq!(Head::new(input), Err(want), "{:?}", String::from_utf8_lossy(input));
        }
        let ascii = Head::new(b"X: caf\x7f\r\n").unwrap();
        let utf8 = Head::new("X: caf\u{e9}\r\n".as_bytes()).unwrap();
        let body = Body::new(b"x\r\n");
        assert!(!content_is_eight_bit(Some(&ascii), &body) && content_is_eight_bit(Some(&utf8), &body));
    }
}

//! DATA content on the receiving side: end-of-data detection and dot-unstuffing, incremental
//! over arbitrary read boundaries.
//!
//! Only `<CRLF>.<CRLF>` ends the content. Bare-LF or bare-CR variants (`\n.\n`, `\r.\r`,
//! `\n.\r\n`) are content: treating them as the end is what SMTP smuggling exploits. Bare LFs are
//! counted so a sink can report them.

use memchr::memchr2;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// At the start of a line (after CRLF, or at the start of the content).
    LineStart,
    /// A `.` at line start, not yet known to be stuffing or the terminator.
    Dot,
    /// `.` CR at line start.
    DotCr,
    Mid,
    /// CR inside a line.
    Cr,
}

/// Receives one message's DATA content.
#[derive(Debug, Clone)]
pub struct DataReceiver {
    state: State,
    /// Content octets after unstuffing, terminator excluded.
    size: u64,
    bare_lf: u64,
    bare_cr: u64,
}

impl Default for DataReceiver {
    fn default() -> Self {
        Self::new()
    }
}

impl DataReceiver {
    pub fn new() -> Self {
        DataReceiver { state: State::LineStart, size: 0, bare_lf: 0, bare_cr: 0 }
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    pub fn bare_lf(&self) -> u64 {
        self.bare_lf
    }

    pub fn bare_cr(&self) -> u64 {
        self.bare_cr
    }

    /// Consumes content from `input`, appending the unstuffed octets to `out` when given.
    /// Returns `Some(n)` when the terminator ends within `input` at offset `n` (the rest is the
    /// next command), `None` when all of `input` was content.
    pub fn feed(&mut self, input: &[u8], mut out: Option<&mut Vec<u8>>) -> Option<usize> {
        let len = input.len();
        let mut i = 0;
        // input[run..i] is content not yet appended to `out`.
        let mut run = 0;
        macro_rules! emit {
            ($bytes:expr) => {{
                let b: &[u8] = $bytes;
                self.size += b.len() as u64;
                if let Some(o) = out.as_deref_mut() {
                    o.extend_from_slice(b);
                }
            }};
        }
        while i < len {
            match self.state {
                State::LineStart => {
                    if input[i] == b'.' {
                        emit!(&input[run..i]);
                        i += 1;
                        run = i;
                        self.state = State::Dot;
                    } else {
                        self.state = State::Mid;
                    }
                }
                State::Dot => {
                    if input[i] == b'\r' {
                        i += 1;
                        self.state = State::DotCr;
                    } else {
                        // A stuffed dot: dropped, the rest of the line is content.
                        run = i;
                        self.state = State::Mid;
                    }
                }
                State::DotCr => {
                    if input[i] == b'\n' {
                        self.state = State::LineStart;
                        return Some(i + 1);
                    }
                    // ".\r" then something else: the dot was stuffing, the CR is bare.
                    emit!(b"\r");
                    self.bare_cr += 1;
                    run = i;
                    self.state = State::Mid;
                }
                State::Mid => match memchr2(b'\r', b'\n', &input[i..]) {
                    None => i = len,
                    Some(off) => {
                        i += off;
                        if input[i] == b'\n' {
                            self.bare_lf += 1;
                        } else {
                            self.state = State::Cr;
                        }
                        i += 1;
                    }
                },
                State::Cr => {
                    if input[i] == b'\n' {
                        i += 1;
                        self.state = State::LineStart;
                    } else {
                        self.bare_cr += 1;
                        self.state = State::Mid;
                    }
                }
            }
        }
        // A CR at the very end of `input` still belongs to the content; only a pending dot
        // (which may be the terminator) is held back.
        let end = match self.state {
            State::Dot | State::DotCr => run.min(len),
            _ => len,
        };
        if run < end {
            emit!(&input[run..end]);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::body::{Framing, encode};
    use proptest::prelude::*;

    fn receive(wire: &[u8]) -> (Option<usize>, Vec<u8>, u64) {
        let mut r = DataReceiver::new();
        let mut out = Vec::new();
        let end = r.feed(wire, Some(&mut out));
        assert_eq!(r.size(), out.len() as u64);
        (end, out, r.bare_lf())
    }

    #[test]
    fn end_detection_and_unstuffing() {
        // (wire, end offset, content, bare LFs)
        type Case<'a> = (&'a [u8], Option<usize>, &'a [u8], u64);
        let cases: &[Case<'_>] = &[
            (b".\r\n", Some(3), b"", 0),
            (b"a\r\n.\r\n", Some(6), b"a\r\n", 0),
            (b"a\r\n.\r\nMAIL", Some(6), b"a\r\n", 0),
            (b"..a\r\n.\r\n", Some(8), b".a\r\n", 0),
            (b"a\r\n..\r\n.\r\n", Some(10), b"a\r\n.\r\n", 0),
            (b"a\r\n.b\r\n.\r\n", Some(10), b"a\r\nb\r\n", 0),
            // Smuggling attempts: none of these end the content.
            (b"a\n.\nb", None, b"a\n.\nb", 2),
            (b"a\r.\rb", None, b"a\r.\rb", 0),
            (b"a\n.\r\nb", None, b"a\n.\r\nb", 1),
            (b"a\r\n.\nb", None, b"a\r\n\nb", 1),
            (b"a\r\n.\rb", None, b"a\r\n\rb", 0),
            (b"a\r\n.", None, b"a\r\n", 0),
            (b"a\r\n.\r", None, b"a\r\n", 0),
        ];
        for (wire, end, content, bare_lf) in cases {
            let (e, out, lf) = receive(wire);
            assert_eq!(
                (e, out.as_slice(), lf),
                (*end, *content, *bare_lf),
                "{:?}",
                String::from_utf8_lossy(wire)
            );
        }
    }

    #[test]
    fn split_anywhere() {
        let wire = b"x\r\n..y\r\n.z\r\n\r\n.\r\nNEXT";
        let (end, whole, _) = receive(wire);
        assert_eq!(end, Some(wire.len() - 4));
        for cut in 0..wire.len() {
            let mut r = DataReceiver::new();
            let mut out = Vec::new();
            let first = r.feed(&wire[..cut], Some(&mut out));
            let got = match first {
                Some(n) => n,
                None => cut + r.feed(&wire[cut..], Some(&mut out)).expect("end found"),
            };
            assert_eq!(got, wire.len() - 4, "cut {cut}");
            assert_eq!(out, whole, "cut {cut}");
        }
    }

    proptest! {
        /// What the client's encoder sends, the receiver gives back exactly, wherever reads split.
        #[test]
        fn decodes_what_the_encoder_sends(
            input in prop::collection::vec(prop_oneof![Just(b'\r'), Just(b'\n'), Just(b'.'), any::<u8>()], 0..200),
            cuts in prop::collection::vec(0usize..220, 0..6),
        ) {
            let wire = encode(Framing::Data, &input);
            let normalised = encode(Framing::Raw, &input);
            let mut cuts = cuts;
            cuts.sort_unstable();
            let mut r = DataReceiver::new();
            let mut out = Vec::new();
            let mut start = 0;
            let mut end = None;
            for c in cuts.into_iter().chain([wire.len()]) {
                let c = c.clamp(start, wire.len());
                if let Some(n) = r.feed(&wire[start..c], Some(&mut out)) {
                    end = Some(start + n);
                    break;
                }
                start = c;
            }
            prop_assert_eq!(end, Some(wire.len()));
            prop_assert_eq!(out, normalised);
            prop_assert_eq!(r.bare_lf(), 0);
        }
    }
}

//! One DKIM signature for one message, relaxed/relaxed, assembled from mail-auth's parts (its
//! canonicalisation, its `DKIM-Signature` writer, its keys; its header reader is crate-private,
//! so [`Fields`] mirrors it) in the order its `DkimSigner::sign` uses them, so the output is
//! byte for byte what that would give (the tests hold us to it).
//!
//! Why not call `DkimSigner::sign`: it clones its template signature for every message, the
//! 17 names of `h=` included, and allocates those names once more while picking the header
//! fields: some 40 small allocations a message, with their copies ~0.7 µs (criterion) of the
//! ~3 µs that a message cost beyond the raw signature. Here each thread keeps the signature it made last
//! ([`Scratch`]) and changes only what differs: `bh=`, `t=`, `b=`, and `h=` only when a
//! message's header fields differ from the last one's (with one template, they rarely do). Its
//! input also reaches SHA-256 in large pieces (see [`Chunks`]).

use std::cell::RefCell;

use mail_auth::common::crypto::{HashContext, HashImpl, HashOutput, SigningKey};
use mail_auth::common::headers::{HeaderWriter, Writable, Writer};
use mail_auth::dkim::{Canonicalization, Signature};

/// This thread's signatures in the making: those of one [`super::Dkim`] (the last one used on
/// the thread), one per key, and the buffer the signed data is gathered in.
#[derive(Default)]
pub(super) struct Scratch {
    owner: u64,
    pub(super) signatures: Vec<Signature>,
    pub(super) data: Vec<u8>,
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
}

/// Runs `f` with this thread's scratch for the `Dkim` numbered `owner`, starting it from
/// `templates` when it held another one's.
pub(super) fn with_scratch<R>(
    owner: u64,
    templates: impl Fn() -> Vec<Signature>,
    f: impl FnOnce(&mut Scratch) -> R,
) -> R {
    SCRATCH.with_borrow_mut(|scratch| {
        if scratch.owner != owner {
            scratch.owner = owner;
            scratch.signatures = templates();
        }
        f(scratch)
    })
}

/// The template of a key's signatures: what every one of them carries.
pub(super) fn template(key: &impl SigningKey, domain: &str, selector: &str, headers: &[&str]) -> Signature {
    Signature {
        v: 1,
        a: key.algorithm(),
        d: domain.to_owned(),
        s: selector.to_owned(),
        h: headers.iter().map(|h| (*h).to_owned()).collect(),
        ch: Canonicalization::Relaxed,
        cb: Canonicalization::Relaxed,
        ..Signature::default()
    }
}

/// Signs `message` (CRLF header section and body) with `key` at `now` (Unix seconds), `sig`
/// being the last signature made with this key on this thread (or its template), and appends
/// the `DKIM-Signature` field to `out`. `configured` are the names to sign when present (and
/// to list in `h=` when absent), at most 32.
pub(super) fn sign(
    key: &impl SigningKey,
    sig: &mut Signature,
    configured: &[&str],
    message: &[u8],
    now: u64,
    data: &mut Vec<u8>,
    out: &mut Vec<u8>,
) -> mail_auth::Result<()> {
    debug_assert!(configured.len() <= 32, "a u32 of flags");
    let mut reader = Fields::new(message);
    let mut fields = Vec::with_capacity(configured.len());
    let mut present = 0u32;
    for (name, value) in reader.by_ref() {
        if let Some(pos) = configured.iter().position(|h| name.eq_ignore_ascii_case(h.as_bytes())) {
            fields.push((name, value));
            present |= 1 << pos;
        }
    }
    let body = reader.body();
    // h=: the fields signed, bottom-up as they are hashed, then every configured name absent
    // from the message (so one added on the way breaks the signature).
    let names = fields
        .iter()
        .rev()
        // A name that matched a configured (ASCII) one is ASCII.
        .map(|(name, _)| std::str::from_utf8(name).unwrap_or_default())
        .chain(configured.iter().enumerate().filter(|(i, _)| present & (1 << i) == 0).map(|(_, h)| *h));
    if !names.clone().eq(sig.h.iter().map(String::as_str)) {
        sig.h = names.map(str::to_owned).collect();
    }
    if sig.h.is_empty() {
        return Err(mail_auth::Error::NoHeadersFound);
    }
    let body_hash = hash(key, Canonicalization::Relaxed.canonical_body(body, u64::MAX));
    sig.bh.clear();
    sig.bh.extend_from_slice(body_hash.as_ref());
    sig.t = now;
    // The signed data: the fields, then this signature's own field with an empty b=.
    sig.b.clear();
    data.clear();
    Canonicalization::Relaxed.canonicalize_headers(fields.iter().rev().copied(), data);
    sig.write(data, false);
    sig.b = key.sign(Whole(data))?;
    sig.write_header(out);
    Ok(())
}

/// `data` hashed with the key's digest, in [`HASH_CHUNK`] pieces: mail-auth's relaxed body
/// canonicalisation writes ~90 small pieces for a 1 KB body, and ring's digest pays a call and
/// a partial-block copy for each.
fn hash<K: SigningKey>(_key: &K, data: impl Writable) -> HashOutput {
    // (The key only names the digest.)
    let mut chunks = Chunks { out: <K::Hasher as HashImpl>::hasher(), buf: [0; HASH_CHUNK], len: 0 };
    data.write(&mut chunks);
    chunks.flush();
    chunks.out.complete()
}

/// 16 SHA-256 blocks: the per-update cost vanishes, and zeroing the buffer costs next to nothing.
const HASH_CHUNK: usize = 1024;

/// Bytes written as one piece.
struct Whole<'a>(&'a [u8]);

impl Writable for Whole<'_> {
    fn write(self, writer: &mut impl Writer) {
        writer.write(self.0);
    }
}

/// A writer that hands its output on in pieces of [`HASH_CHUNK`] bytes (larger writes pass
/// straight through).
struct Chunks<W> {
    out: W,
    buf: [u8; HASH_CHUNK],
    len: usize,
}

impl<W: Writer> Chunks<W> {
    fn flush(&mut self) {
        if self.len > 0 {
            self.out.write(&self.buf[..self.len]);
            self.len = 0;
        }
    }
}

impl<W: Writer> Writer for Chunks<W> {
    fn write(&mut self, data: &[u8]) {
        if self.len + data.len() > HASH_CHUNK {
            self.flush();
            if data.len() >= HASH_CHUNK {
                self.out.write(data);
                return;
            }
        }
        self.buf[self.len..self.len + data.len()].copy_from_slice(data);
        self.len += data.len();
    }
}

/// The header fields of a message as mail-auth's (crate-private) header reader finds them, then
/// its body: a field runs from its name to the LF that no space or tab follows; a line with no
/// colon is a field of its own with an empty value, unless it ends in CRLF or is empty, which
/// ends the header section; no blank line means no body. The tests hold the two to the same
/// signatures on odd header sections.
struct Fields<'a> {
    message: &'a [u8],
    start: usize,
    pos: usize,
}

impl<'a> Fields<'a> {
    fn new(message: &'a [u8]) -> Self {
        Fields { message, start: 0, pos: 0 }
    }

    fn body(&self) -> &'a [u8] {
        self.message.get(self.pos..).unwrap_or_default()
    }
}

impl<'a> Iterator for Fields<'a> {
    type Item = (&'a [u8], &'a [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        let m = self.message;
        let mut cur = self.pos;
        loop {
            let rest = m.get(cur..)?;
            let Some(off) = memchr::memchr2(b':', b'\n', rest) else {
                self.pos = m.len();
                return None;
            };
            let at = cur + off;
            if m[at] == b':' {
                let colon = at;
                let mut c = colon + 1;
                loop {
                    let Some(lf) = m.get(c..).and_then(|r| memchr::memchr(b'\n', r)) else {
                        self.pos = m.len();
                        return None;
                    };
                    let end = c + lf + 1;
                    if matches!(m.get(end), Some(b' ' | b'\t')) {
                        c = end;
                        continue;
                    }
                    let item = (&m[self.start..colon], &m[colon + 1..end]);
                    self.start = end;
                    self.pos = end;
                    return Some(item);
                }
            }
            if (at > 0 && m[at - 1] == b'\r') || at == self.start {
                self.pos = at + 1;
                return None;
            }
            if matches!(m.get(at + 1), Some(b' ' | b'\t')) {
                cur = at + 1;
                continue;
            }
            let item = (&m[self.start..at + 1], &b""[..]);
            self.start = at + 1;
            self.pos = at + 1;
            return Some(item);
        }
    }
}

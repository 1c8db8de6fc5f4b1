//! What a node tells the finish script (`scripts/finish.lua`) of a batch of final rows: their
//! bits of the campaign's `done` bitmap as runs of bytes, the node's counts with the rows
//! counted, and the results text. Made on the worker's thread, once per call.

use std::sync::Arc;

use crate::deliver::log::Status;

/// One final row for the finish script: line, status, address.
pub(super) struct Final(pub u64, pub Status, pub Option<Arc<str>>);

impl Final {
    /// The recipient's domain, as the counts key it (lower case); empty without an address.
    fn domain(&self) -> std::borrow::Cow<'_, str> {
        match self.2.as_deref().and_then(|r| r.rsplit_once('@')) {
            Some((_, domain)) => crate::deliver::lowercase(domain),
            None => "".into(),
        }
    }
}

/// The finish script's arguments for a batch of final rows (see `finish.lua`): their bits of
/// the campaign's bitmap, and the counts and results text they make, summed here so the script
/// only writes them. Each line once: a row twice in a batch is counted once.
#[derive(Debug, Default, PartialEq)]
pub(super) struct FinishArgs {
    /// The rows' lines, ascending.
    pub lines: Vec<u64>,
    /// Byte offsets into the bitmap, and the bytes to set there.
    segments: Vec<(u64, Vec<u8>)>,
    counts: Vec<(String, u64)>,
    text: String,
}

/// A node's counts as its hash in Redis holds them (see `finish.lua`).
pub(super) type Totals = crate::hash::FxMap<String, u64>;

/// A bitmap segment runs over fewer bytes than this of no row's bits rather than start another:
/// a segment costs the script two calls (a read and a write), a zero byte nearly nothing.
const SEGMENT_GAP: u64 = 16;

impl FinishArgs {
    pub fn of<'a>(rows: impl IntoIterator<Item = &'a Final>) -> FinishArgs {
        let mut rows: Vec<&Final> = rows.into_iter().collect();
        rows.sort_unstable_by_key(|f| f.0);
        rows.dedup_by_key(|f| f.0);
        let mut args = FinishArgs { lines: Vec::with_capacity(rows.len()), ..FinishArgs::default() };
        // Per row only a lookup and a line of text (no `format!`: it cost more than the rest of
        // the row): the counts are made per kind.
        let mut kinds: crate::hash::FxMap<(&'static str, std::borrow::Cow<'_, str>), u64> =
            crate::hash::FxMap::with_capacity_and_hasher(256, Default::default());
        args.text.reserve(rows.len() * 32);
        let mut digits = [0; 20];
        for f in &rows {
            let status = f.1.name();
            let domain = f.domain();
            if !args.text.is_empty() {
                args.text.push('\n');
            }
            args.text.push_str(crate::proto::command::decimal(f.0, &mut digits));
            args.text.push(' ');
            args.text.push_str(status);
            args.text.push(' ');
            args.text.push_str(&domain);
            *kinds.entry((status, domain)).or_default() += 1;
            args.lines.push(f.0);
        }
        let mut counts: crate::hash::FxMap<String, u64> =
            crate::hash::FxMap::with_capacity_and_hasher(kinds.len() + 16, Default::default());
        for ((status, domain), n) in kinds {
            *counts.entry(format!("s:{status}")).or_default() += n;
            if !domain.is_empty() {
                *counts.entry(format!("d:{domain}:{status}")).or_default() += n;
            }
        }
        args.counts = counts.into_iter().collect();
        args.counts.sort();
        args.segments = segments(&args.lines);
        args
    }

    /// After the group, the node and its token: S, C, the segments, the counts' new values
    /// (`totals`: the node's counts so far), the text.
    pub fn push(&self, call: &mut redis::ScriptInvocation<'_>, totals: &Totals) {
        call.arg(self.segments.len()).arg(self.counts.len());
        for (at, bytes) in &self.segments {
            call.arg(*at).arg(&bytes[..]);
        }
        for (field, value) in self.values(totals) {
            call.arg(field).arg(value);
        }
        call.arg(&self.text);
    }

    /// The counts this call changes, and their values with its rows counted.
    fn values<'a>(&'a self, totals: &'a Totals) -> impl Iterator<Item = (&'a str, u64)> {
        self.counts.iter().map(|(field, n)| (field.as_str(), totals.get(field).copied().unwrap_or(0) + n))
    }

    /// The node's counts once the call has recorded these rows.
    pub fn add_to(&self, totals: &mut Totals) {
        for (field, n) in &self.counts {
            match totals.get_mut(field) {
                Some(total) => *total += n,
                None => {
                    totals.insert(field.clone(), *n);
                }
            }
        }
    }
}

/// The bitmap's bytes that set the bits of `lines` (ascending, each once): runs of bytes, each
/// with its offset, bit 0 of the bitmap the first byte's most significant (as Redis numbers them).
fn segments(lines: &[u64]) -> Vec<(u64, Vec<u8>)> {
    let mut out: Vec<(u64, Vec<u8>)> = Vec::new();
    for &line in lines {
        let (at, bit) = (line / 8, 0x80u8 >> (line % 8));
        match out.last_mut() {
            Some((start, bytes)) if at < *start + bytes.len() as u64 + SEGMENT_GAP => {
                let i = (at - *start) as usize;
                if i >= bytes.len() {
                    bytes.resize(i + 1, 0);
                }
                bytes[i] |= bit;
            }
            _ => out.push((at, vec![bit])),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finish_arguments_sum_the_rows_by_kind() {
        let rcpt = |s: &str| Some(Arc::from(s));
        let rows = [
            Final(4, Status::Delivered, rcpt("c@x.test")),
            Final(2, Status::Delivered, rcpt("a@X.test")),
            Final(3, Status::Bounced, rcpt("b@x.test")),
            Final(5, Status::Rejected, None),
            // The same row twice (it never should be) is counted once.
            Final(2, Status::Delivered, rcpt("a@X.test")),
        ];
        let args = FinishArgs::of(&rows);
        assert_eq!(args.lines, vec![2, 3, 4, 5]);
        assert_eq!(args.segments, vec![(0, vec![0b0011_1100])]);
        let counts: Vec<(&str, u64)> = args.counts.iter().map(|(k, n)| (k.as_str(), *n)).collect();
        assert_eq!(
            counts,
            vec![
                ("d:x.test:bounced", 1),
                ("d:x.test:delivered", 2),
                ("s:bounced", 1),
                ("s:delivered", 2),
                ("s:rejected", 1),
            ]
        );
        assert_eq!(args.text, "2 delivered x.test\n3 bounced x.test\n4 delivered x.test\n5 rejected ");
        // The script is sent whole values: the node's counts so far plus this call's.
        let mut totals: Totals =
            [("s:delivered".to_owned(), 10), ("s:expired".to_owned(), 1)].into_iter().collect();
        let values: Vec<(&str, u64)> = args.values(&totals).filter(|(f, _)| f.starts_with("s:")).collect();
        assert_eq!(values, vec![("s:bounced", 1), ("s:delivered", 12), ("s:rejected", 1)]);
        args.add_to(&mut totals);
        assert_eq!((totals["s:delivered"], totals["s:expired"], totals["d:x.test:bounced"]), (12, 1, 1));
    }

    #[test]
    fn rows_bits_go_in_runs_of_bytes() {
        assert_eq!(segments(&[]), vec![]);
        // Bit 0 is the first byte's most significant, as Redis numbers a bitmap's bits.
        assert_eq!(segments(&[0, 7, 8, 23]), vec![(0, vec![0x81, 0x80, 0x01])]);
        // Bytes of no row are run over while the gap is short, else a run starts anew.
        let near = 8 * SEGMENT_GAP;
        let far = 8 * (1 + SEGMENT_GAP);
        let mut within = vec![0x80];
        within.resize(SEGMENT_GAP as usize, 0);
        within.push(0x80);
        assert_eq!(segments(&[0, near]), vec![(0, within)]);
        assert_eq!(segments(&[0, far, far + 9]), vec![(0, vec![0x80]), (far / 8, vec![0x80, 0x40])]);
    }
}

//! CSV records with their line numbers, read a line at a time where it can be.
//!
//! Most recipient lists have no quotes: such a line is one record, split at its commas, which
//! costs a fraction of running the general CSV state machine over it. Any line with a quote or
//! a bare CR, and any line longer than the buffer, goes to `csv_core` (the `csv` crate's
//! parser, with the same settings), so records and fields are the `csv` crate's.
//!
//! Line numbers are counted here rather than taken from the `csv` crate, whose positions give a
//! record after a blank line the blank line's number, a CRLF file's records the number of the
//! line before, and every record of a CR-only file the number 1. A row's line is its identity in
//! the delivery log (`--resume` skips by it), so here it is the physical line its first octet
//! is on, counting CR, LF and CRLF each as one line end: unique per record, and what an editor
//! shows.

use std::io::{self, Read};

use csv_core::ReadRecordResult;

/// Octets read from the input at a time; a line longer than this goes to the general parser.
const BUFFER: usize = 64 * 1024;
/// The longest record kept; longer ones are read to their end and reported, not held.
pub const MAX_RECORD: usize = 1 << 20;

/// A record: its fields, and the line it starts on.
#[derive(Debug, Default)]
pub struct Record {
    pub line: u64,
    /// The fields' octets, one separator octet between each two (a plain line is copied as
    /// it is); `ends[i]` is where field `i` ends, and the next starts one octet later.
    text: Vec<u8>,
    ends: Vec<usize>,
    /// Longer than [`MAX_RECORD`]: its fields were not kept.
    pub too_long: bool,
}

impl Record {
    pub fn len(&self) -> usize {
        self.ends.len()
    }

    pub fn fields(&self) -> impl Iterator<Item = &[u8]> {
        spans(&self.ends).map(|(s, e)| &self.text[s..e])
    }

    fn clear(&mut self) {
        self.text.clear();
        self.ends.clear();
        self.too_long = false;
    }
}

/// Where each field of a record whose `ends` these are starts and ends (fields are one octet
/// apart).
fn spans(ends: &[usize]) -> impl Iterator<Item = (usize, usize)> + '_ {
    let starts = std::iter::once(0).chain(ends.iter().map(|e| e + 1));
    starts.zip(ends.iter().copied())
}

/// Puts one separator octet between the fields the parser wrote one after another.
fn separate(record: &mut Record) {
    if record.ends.len() < 2 {
        return;
    }
    let mut text = Vec::with_capacity(record.text.len() + record.ends.len());
    let mut start = 0;
    for (i, end) in record.ends.iter_mut().enumerate() {
        if i > 0 {
            text.push(b',');
        }
        text.extend_from_slice(&record.text[start..*end]);
        start = *end;
        *end += i;
    }
    record.text = text;
}

/// What [`scan_plain`] found at the start of the buffer.
#[derive(Debug, PartialEq, Eq)]
enum Plain {
    /// A line without quotes or bare CRs: its content is `..content`, the next line starts at
    /// `next` (after its LF or CRLF). The commas' offsets were pushed to `ends`.
    Line { content: usize, next: usize },
    /// No line end in the buffer, and no quote or CR before its end.
    Unended,
    /// A quote or a bare CR: the general parser's work.
    No,
}

/// Looks for the octets that matter to a plain line (comma, LF, CR, quote) eight at a time:
/// a search per kind of octet cost more, in set-up, than a recipient's line is long.
fn scan_plain(window: &[u8], ends: &mut Vec<usize>, delimiter: u8) -> Plain {
    const ONES: u64 = u64::from_ne_bytes([0x01; 8]);
    const LOW7: u64 = u64::from_ne_bytes([0x7f; 8]);
    // The high bit of each octet of `v` that is zero, exactly (no borrow between octets).
    let zeros = |v: u64| !(((v & LOW7).wrapping_add(LOW7)) | v | LOW7);
    let special = |w: u64| {
        zeros(w ^ (ONES * u64::from(delimiter)))
            | zeros(w ^ (ONES * u64::from(b'\n')))
            | zeros(w ^ (ONES * u64::from(b'\r')))
            | zeros(w ^ (ONES * u64::from(b'"')))
    };
    let mut at = |p: usize| -> Option<Plain> {
        match window[p] {
            b if b == delimiter => {
                ends.push(p);
                None
            }
            b'\n' => Some(Plain::Line { content: p, next: p + 1 }),
            b'\r' if window.get(p + 1) == Some(&b'\n') => Some(Plain::Line { content: p, next: p + 2 }),
            b'\r' | b'"' => Some(Plain::No),
            _ => None,
        }
    };
    let mut i = 0;
    while let Some(word) = window.get(i..i + 8) {
        let mut found = special(u64::from_le_bytes(word.try_into().unwrap_or([0; 8])));
        while found != 0 {
            if let Some(plain) = at(i + (found.trailing_zeros() / 8) as usize) {
                return plain;
            }
            found &= found - 1;
        }
        i += 8;
    }
    for p in i..window.len() {
        if let Some(plain) = at(p) {
            return plain;
        }
    }
    Plain::Unended
}

/// A CSV row's fields as text, in one allocation (two when it has more than
/// [`Fields::INLINE`] fields).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fields {
    text: Box<str>,
    ends: Ends,
    /// Every octet is printable ASCII (no control, no line break, no 8-bit): the values can be
    /// copied into a message as they are.
    plain: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Ends {
    Inline { ends: [u32; Fields::INLINE], len: u8 },
    Heap(Box<[u32]>),
}

impl Fields {
    const INLINE: usize = 8;

    /// The record's fields; `Err` names the first field that is not UTF-8.
    pub fn new(record: &Record) -> Result<Fields, usize> {
        // The separators are ASCII, so the text is UTF-8 exactly when every field is.
        let text = std::str::from_utf8(&record.text)
            .map_err(|e| record.ends.partition_point(|&end| end < e.valid_up_to()))?;
        // Records are at most MAX_RECORD octets: offsets fit in 32 bits.
        let ends = record.ends.iter().map(|&e| e as u32);
        let ends = if record.ends.len() <= Self::INLINE {
            let mut inline = [0; Self::INLINE];
            inline.iter_mut().zip(ends).for_each(|(slot, e)| *slot = e);
            Ends::Inline { ends: inline, len: record.ends.len() as u8 }
        } else {
            Ends::Heap(ends.collect())
        };
        // One pass without early exit, so it vectorises.
        let plain = !text.bytes().fold(false, |odd, b| odd | !(0x20..0x7f).contains(&b));
        Ok(Fields { text: text.into(), ends, plain })
    }

    /// Whether every value is printable ASCII (see [`crate::proto::body::BodyWriter::push_plain`]).
    pub fn is_plain(&self) -> bool {
        self.plain
    }

    fn ends(&self) -> &[u32] {
        match &self.ends {
            Ends::Inline { ends, len } => &ends[..usize::from(*len)],
            Ends::Heap(ends) => ends,
        }
    }

    pub fn len(&self) -> usize {
        self.ends().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Field `i`.
    pub fn get(&self, i: usize) -> Option<&str> {
        let ends = self.ends();
        let end = *ends.get(i)? as usize;
        let start = if i == 0 { 0 } else { ends[i - 1] as usize + 1 };
        self.text.get(start..end)
    }
}

/// Fields from their values (tests and the like; rows are read with [`Fields::new`]).
impl From<&[&str]> for Fields {
    fn from(values: &[&str]) -> Fields {
        let mut record = Record::default();
        for (i, v) in values.iter().enumerate() {
            if i > 0 {
                record.text.push(b',');
            }
            record.text.extend_from_slice(v.as_bytes());
            record.ends.push(record.text.len());
        }
        match Fields::new(&record) {
            Ok(fields) => fields,
            Err(_) => unreachable!("built from UTF-8 values"),
        }
    }
}

pub struct CsvReader {
    input: Box<dyn Read + Send>,
    buf: Vec<u8>,
    /// `buf[pos..end]` is read and not yet consumed.
    pos: usize,
    end: usize,
    eof: bool,
    /// Line ends consumed so far, and whether the last octet consumed was a CR (so an LF
    /// right after it ends no further line).
    lines: u64,
    after_cr: bool,
    /// Octets consumed so far.
    consumed: u64,
    /// At the very start (a byte-order mark is skipped there).
    start: bool,
    delimiter: u8,
    parser: csv_core::Reader,
}

impl CsvReader {
    #[cfg(test)]
    pub fn new(input: Box<dyn Read + Send>) -> CsvReader {
        CsvReader::with_delimiter(input, b',')
    }

    /// A reader of fields separated by `delimiter` (`;` and tab are what spreadsheets write
    /// besides `,`); a quote or a line end cannot be one.
    pub fn with_delimiter(input: Box<dyn Read + Send>, delimiter: u8) -> CsvReader {
        debug_assert!(!b"\"\r\n".contains(&delimiter));
        CsvReader {
            input,
            buf: vec![0; BUFFER],
            pos: 0,
            end: 0,
            eof: false,
            lines: 0,
            after_cr: false,
            consumed: 0,
            start: true,
            delimiter,
            parser: csv_core::ReaderBuilder::new().delimiter(delimiter).build(),
        }
    }

    /// Octets of the input consumed so far.
    pub fn position(&self) -> u64 {
        self.consumed
    }

    /// Reads the next record into `record`; false at the end of the input.
    pub fn read(&mut self, record: &mut Record) -> io::Result<bool> {
        record.clear();
        if self.start {
            self.start = false;
            self.fill_at_least(3)?;
            if self.buf[self.pos..self.end].starts_with(b"\xEF\xBB\xBF") {
                self.consume(3);
            }
        }
        // Blank lines between records are skipped, as the `csv` crate does.
        loop {
            if self.pos == self.end && !self.refill()? {
                return Ok(false);
            }
            match self.buf[self.pos] {
                b'\r' | b'\n' => self.consume(1),
                _ => break,
            }
        }
        record.line = self.lines + 1;
        let window = &self.buf[self.pos..self.end];
        let plain = match scan_plain(window, &mut record.ends, self.delimiter) {
            Plain::Line { content, next } => Some((content, next)),
            Plain::Unended if self.eof => Some((window.len(), window.len())),
            Plain::Unended | Plain::No => None,
        };
        if let Some((content, next)) = plain {
            record.text.extend_from_slice(&window[..content]);
            record.ends.push(content);
            // The line's only CR, if any, is the one before its LF: one line end at most.
            self.pos += next;
            self.consumed += next as u64;
            self.lines += u64::from(next > content);
            self.after_cr = false;
            return Ok(true);
        }
        record.ends.clear();
        // A line end was not found in the buffer (a long line, or one waiting for more input),
        // or the line has quotes or a bare CR: the general parser reads this record.
        if self.buf[self.pos..self.end].len() < BUFFER / 2 && !self.eof {
            // Give the parser a whole line where there is one: fewer rounds.
            self.compact();
            self.fill()?;
        }
        self.parse(record)
    }

    /// Runs `csv_core` from here to the end of one record.
    fn parse(&mut self, record: &mut Record) -> io::Result<bool> {
        self.parser.reset();
        record.text.resize(256, 0);
        record.ends.resize(16, 0);
        let (mut out, mut ends) = (0, 0);
        loop {
            let (result, read, wrote, ended) = self.parser.read_record(
                &self.buf[self.pos..self.end],
                &mut record.text[out..],
                &mut record.ends[ends..],
            );
            self.consume(read);
            // `ends` are offsets into the whole record's text (the parser keeps count).
            out += wrote;
            ends += ended;
            match result {
                ReadRecordResult::InputEmpty => {
                    self.compact();
                    self.fill()?;
                }
                ReadRecordResult::OutputFull if out >= MAX_RECORD => {
                    // Too long to keep: read on to its end, keeping nothing.
                    record.too_long = true;
                    out = 0;
                    ends = 0;
                }
                ReadRecordResult::OutputFull => record.text.resize(record.text.len() * 2, 0),
                ReadRecordResult::OutputEndsFull if ends >= MAX_RECORD / 2 => {
                    record.too_long = true;
                    out = 0;
                    ends = 0;
                }
                ReadRecordResult::OutputEndsFull => record.ends.resize(record.ends.len() * 2, 0),
                ReadRecordResult::Record => {
                    record.text.truncate(out);
                    record.ends.truncate(ends);
                    if record.too_long {
                        record.text.clear();
                        record.ends.clear();
                    } else {
                        separate(record);
                    }
                    return Ok(true);
                }
                ReadRecordResult::End => {
                    record.clear();
                    return Ok(false);
                }
            }
        }
    }

    /// Consumes `n` octets, counting the line ends among them.
    fn consume(&mut self, n: usize) {
        for &b in &self.buf[self.pos..self.pos + n] {
            match b {
                b'\r' => {
                    self.lines += 1;
                    self.after_cr = true;
                }
                b'\n' => {
                    if !self.after_cr {
                        self.lines += 1;
                    }
                    self.after_cr = false;
                }
                _ => self.after_cr = false,
            }
        }
        self.pos += n;
        self.consumed += n as u64;
    }

    /// Moves what is not consumed to the front of the buffer.
    fn compact(&mut self) {
        if self.pos > 0 {
            self.buf.copy_within(self.pos..self.end, 0);
            self.end -= self.pos;
            self.pos = 0;
        }
    }

    /// Reads more into the buffer's free space; false at the end of the input.
    fn fill(&mut self) -> io::Result<bool> {
        if self.eof || self.end == self.buf.len() {
            return Ok(!self.eof);
        }
        loop {
            match self.input.read(&mut self.buf[self.end..]) {
                Ok(0) => {
                    self.eof = true;
                    return Ok(false);
                }
                Ok(n) => {
                    self.end += n;
                    return Ok(true);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// Refills an empty buffer; false at the end of the input.
    fn refill(&mut self) -> io::Result<bool> {
        self.compact();
        while self.pos == self.end {
            if !self.fill()? {
                return Ok(false);
            }
        }
        Ok(true)
    }

    fn fill_at_least(&mut self, n: usize) -> io::Result<()> {
        while self.end - self.pos < n && self.fill()? {}
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Gives its input a few octets per read, so records straddle every refill.
    struct Trickle(Vec<u8>, usize, usize);

    impl Read for Trickle {
        fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
            let n = self.2.min(out.len()).min(self.0.len() - self.1);
            out[..n].copy_from_slice(&self.0[self.1..self.1 + n]);
            self.1 += n;
            Ok(n)
        }
    }

    /// Records as (line, fields).
    type Lines = Vec<(u64, Vec<Vec<u8>>)>;

    fn ours(input: &[u8], chunk: usize) -> Lines {
        ours_with(input, chunk, b',')
    }

    fn ours_with(input: &[u8], chunk: usize, delimiter: u8) -> Lines {
        let mut reader = CsvReader::with_delimiter(Box::new(Trickle(input.to_vec(), 0, chunk)), delimiter);
        let mut record = Record::default();
        let mut out = Vec::new();
        while reader.read(&mut record).expect("in memory") {
            out.push((record.line, record.fields().map(<[u8]>::to_vec).collect()));
        }
        assert_eq!(reader.position(), input.len() as u64, "everything consumed");
        out
    }

    fn theirs(input: &[u8], delimiter: u8) -> Vec<Vec<Vec<u8>>> {
        let mut reader = csv::ReaderBuilder::new()
            .has_headers(false)
            .flexible(true)
            .delimiter(delimiter)
            .from_reader(input);
        reader.byte_records().map(|r| r.expect("in memory").iter().map(<[u8]>::to_vec).collect()).collect()
    }

    #[test]
    fn records_and_their_lines() {
        let f = |s: &[&str]| s.iter().map(|f| f.as_bytes().to_vec()).collect::<Vec<_>>();
        let cases: &[(&[u8], Lines)] = &[
            (b"", vec![]),
            (b"email,name\nx@y.z,Ann\n", vec![(1, f(&["email", "name"])), (2, f(&["x@y.z", "Ann"]))]),
            (b"e\n\nx\n", vec![(1, f(&["e"])), (3, f(&["x"]))]),
            (b"e\r\nx\r\n\r\ny\r\n", vec![(1, f(&["e"])), (2, f(&["x"])), (4, f(&["y"]))]),
            (b"e\rx\ry", vec![(1, f(&["e"])), (2, f(&["x"])), (3, f(&["y"]))]),
            (b"\xEF\xBB\xBFe\nx", vec![(1, f(&["e"])), (2, f(&["x"]))]),
            (b"e\n\"a\nb\",c\nd\n", vec![(1, f(&["e"])), (2, f(&["a\nb", "c"])), (4, f(&["d"]))]),
            (b"e\na,\n,\n \n", vec![(1, f(&["e"])), (2, f(&["a", ""])), (3, f(&["", ""])), (4, f(&[" "]))]),
            (b"e\n\"x\"\"y\",z\n", vec![(1, f(&["e"])), (2, f(&["x\"y", "z"]))]),
            (b"e\nx\"y\n", vec![(1, f(&["e"])), (2, f(&["x\"y"]))]),
        ];
        for (input, want) in cases {
            for chunk in [1, 2, 7, BUFFER] {
                assert_eq!(
                    &ours(input, chunk),
                    want,
                    "{:?} read {chunk} at a time",
                    String::from_utf8_lossy(input)
                );
            }
        }
    }

    #[test]
    fn fields_know_whether_they_are_plain_and_name_the_first_that_is_not_utf8() {
        let cases: &[(&[&str], bool)] = &[
            (&["a@b.test", "Ann", "Oslo, Norway ~!"], true),
            (&["a@b.test", ""], true),
            (&["a@b.test", "tab\there"], false),
            (&["a@b.test", "Zoë"], false),
            (&["a@b.test", "del\x7f"], false),
            (&["a@b.test", "two\nlines"], false),
        ];
        for (values, plain) in cases {
            let fields = Fields::from(*values);
            assert_eq!(fields.is_plain(), *plain, "{values:?}");
            assert_eq!((0..values.len()).map(|i| fields.get(i).unwrap()).collect::<Vec<_>>(), *values);
            assert_eq!(fields.get(values.len()), None);
        }
        let mut reader = CsvReader::new(Box::new(Trickle(b"a,\xC3,\xA9\n".to_vec(), 0, 64)));
        let mut record = Record::default();
        assert!(reader.read(&mut record).unwrap());
        assert_eq!(Fields::new(&record), Err(1), "a split character is in no field whole");
    }

    #[test]
    fn a_record_too_long_to_keep_is_read_to_its_end_and_flagged() {
        let mut input = b"e\n\"".to_vec();
        input.extend(std::iter::repeat_n(b'x', MAX_RECORD + 10));
        input.extend_from_slice(b"\",y\nnext\n");
        let mut reader = CsvReader::new(Box::new(Trickle(input, 0, BUFFER)));
        let mut record = Record::default();
        assert!(reader.read(&mut record).unwrap() && !record.too_long);
        assert!(reader.read(&mut record).unwrap() && record.too_long && record.len() == 0);
        assert_eq!(record.line, 2);
        assert!(reader.read(&mut record).unwrap() && !record.too_long);
        assert_eq!((record.line, record.fields().collect::<Vec<_>>()), (3, vec![&b"next"[..]]));
    }

    proptest! {
        /// The same records and fields as the `csv` crate, however the input is split into
        /// reads; lines rise strictly, and without quotes each is the record's physical line.
        #[test]
        fn the_same_records_as_the_csv_crate(
            body in proptest::collection::vec(prop_oneof![
                Just(b'a'), Just(b'b'), Just(b','), Just(b';'), Just(b'\t'), Just(b'"'), Just(b'\r'),
                Just(b'\n'), Just(b' ')
            ], 0..120),
            bom in any::<bool>(),
            chunk in 1usize..9,
            delimiter in prop_oneof![Just(b','), Just(b';'), Just(b'\t')],
        ) {
            let mut input = if bom { b"\xEF\xBB\xBF".to_vec() } else { Vec::new() };
            input.extend_from_slice(&body);
            let got = ours_with(&input, chunk, delimiter);
            let fields: Vec<_> = got.iter().map(|(_, f)| f.clone()).collect();
            prop_assert_eq!(&fields, &theirs(&input, delimiter));
            prop_assert!(got.windows(2).all(|w| w[0].0 < w[1].0));
            prop_assert!(got.first().is_none_or(|r| r.0 >= 1));
            if !body.contains(&b'"') {
                let text = String::from_utf8(body.clone()).unwrap().replace("\r\n", "\n").replace('\r', "\n");
                let lines: Vec<u64> = text
                    .split('\n')
                    .enumerate()
                    .filter(|(_, l)| !l.is_empty())
                    .map(|(i, _)| i as u64 + 1)
                    .collect();
                prop_assert_eq!(got.iter().map(|r| r.0).collect::<Vec<_>>(), lines);
            }
        }
    }
}

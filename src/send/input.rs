//! Recipient rows, streamed from CSV (a header row, an `email` column) or JSONL (one object per
//! line, an `email` key). Every other column or key is a template variable. One row at a time:
//! memory does not grow with the file.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::path::Path;
use std::sync::Arc;

use serde_json::{Map, Value};

use crate::proto::Address;

mod csv_reader;
pub use csv_reader::Fields;
use csv_reader::{CsvReader, MAX_RECORD};

/// The longest JSONL line read; longer ones are rejected without being held in memory.
const MAX_LINE: usize = 1 << 20;

/// One recipient and its variables.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// 1-based line of the input where the row starts: the recipient's identity in the log.
    pub line: u64,
    pub email: Address,
    pub vars: Vars,
}

/// A row's variables, as read: a CSV row stays one piece of text with its fields' ends (one
/// allocation up to eight columns) beside the header's names, shared by every row; a JSON
/// object keeps its types.
#[derive(Debug, Clone, PartialEq)]
pub enum Vars {
    Csv { names: Arc<[String]>, fields: Fields },
    Json(Map<String, Value>),
}

impl Vars {
    /// The variable `name`, as text (CSV) or as JSON.
    pub fn get(&self, name: &str) -> Option<Var<'_>> {
        match self {
            Vars::Csv { names, fields } => {
                names.iter().position(|n| n == name).and_then(|i| fields.get(i)).map(Var::Text)
            }
            Vars::Json(map) => map.get(name).map(Var::Json),
        }
    }

    /// Every variable's name.
    pub fn names(&self) -> Vec<&str> {
        match self {
            Vars::Csv { names, .. } => names.iter().map(String::as_str).collect(),
            Vars::Json(map) => map.keys().map(String::as_str).collect(),
        }
    }
}

/// One variable's value.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Var<'a> {
    Text(&'a str),
    Json(&'a Value),
}

/// A row that cannot be sent, and why: logged as `rejected`, never stopping the run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadRow {
    pub line: u64,
    /// The address, when one could be read.
    pub email: Option<String>,
    pub reason: String,
}

/// The input's format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Csv,
    Jsonl,
}

/// What the input gives next.
pub type Item = Result<Row, BadRow>;

/// The input line an item came from, good row or bad: its recipient's id.
pub fn line_of(item: &Item) -> u64 {
    match item {
        Ok(row) => row.line,
        Err(bad) => bad.line,
    }
}

/// A stream of rows.
pub struct Rows {
    inner: Inner,
    /// The input's size, when it is a file.
    size: Option<u64>,
}

enum Inner {
    /// The reader is boxed: the parser's tables make it large.
    Csv {
        reader: Box<CsvReader>,
        headers: Arc<[String]>,
        email: usize,
        record: csv_reader::Record,
    },
    Jsonl {
        reader: BufReader<Box<dyn Read + Send>>,
        line: u64,
        bytes: u64,
        buf: Vec<u8>,
    },
}

impl Rows {
    /// Opens `path` (`-` is stdin). The format follows the extension (`.csv`; `.jsonl`,
    /// `.ndjson`, `.json`), else the first byte: `{` is JSONL.
    pub fn open(path: &Path) -> io::Result<Rows> {
        let reader: Box<dyn Read + Send> =
            if path == Path::new("-") { Box::new(io::stdin()) } else { Box::new(File::open(path)?) };
        let by_extension = match path.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase) {
            Some(e) if e == "csv" => Some(Format::Csv),
            Some(e) if e == "jsonl" || e == "ndjson" || e == "json" => Some(Format::Jsonl),
            _ => None,
        };
        let size = std::fs::metadata(path).ok().filter(|m| m.is_file()).map(|m| m.len());
        if size == Some(0) {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "the recipients file is empty"));
        }
        Ok(Rows { size, ..Rows::new(reader, by_extension)? })
    }

    /// Reads rows from `reader`, in `format` or sniffed from the first byte.
    pub fn new(reader: Box<dyn Read + Send>, format: Option<Format>) -> io::Result<Rows> {
        let mut reader = BufReader::with_capacity(64 * 1024, reader);
        let format = match format {
            Some(f) => f,
            None => {
                let head = reader.fill_buf()?;
                match head.iter().find(|b| !b.is_ascii_whitespace()) {
                    Some(b'{') => Format::Jsonl,
                    _ => Format::Csv,
                }
            }
        };
        let inner = match format {
            Format::Jsonl => {
                Inner::Jsonl { reader: BufReader::new(Box::new(reader)), line: 0, bytes: 0, buf: Vec::new() }
            }
            Format::Csv => {
                let delimiter = sniff_delimiter(reader.fill_buf()?);
                let mut reader = Box::new(CsvReader::with_delimiter(Box::new(reader), delimiter));
                let mut record = csv_reader::Record::default();
                if !reader.read(&mut record)? {
                    return Err(io::Error::new(io::ErrorKind::InvalidData, "the recipients file is empty"));
                }
                let headers: Arc<[String]> = record
                    .fields()
                    .map(|h| std::str::from_utf8(h).map(|h| h.trim().to_owned()))
                    .collect::<Result<_, _>>()
                    .map_err(|e| {
                        io::Error::new(io::ErrorKind::InvalidData, format!("CSV header row: {e}"))
                    })?;
                let email = headers.iter().position(|h| is_address_name(h)).ok_or_else(|| {
                    let found = headers.iter().map(|h| format!("`{h}`")).collect::<Vec<_>>().join(", ");
                    let separated = match delimiter {
                        b'\t' => "tabs".to_owned(),
                        d => format!("`{}`", d as char),
                    };
                    io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!(
                            "the CSV header row has no address column (`email`, `e-mail`, `e_mail`, `mail` or \
                             `email address`, any case); it has {found} (separated by {separated})"
                        ),
                    )
                })?;
                Inner::Csv { reader, headers, email, record }
            }
        };
        Ok(Rows { inner, size: None })
    }

    /// How many rows the whole input holds, estimated from the size of the file and the rows
    /// read so far; `None` for a stream, or before any row.
    pub fn estimated_rows(&self, rows_read: u64) -> Option<u64> {
        let consumed = match &self.inner {
            Inner::Csv { reader, .. } => reader.position(),
            Inner::Jsonl { bytes, .. } => *bytes,
        };
        let size = self.size.filter(|_| consumed > 0 && rows_read > 0)?;
        Some((u128::from(size) * u128::from(rows_read) / u128::from(consumed)) as u64)
    }

    /// A CSV input's column names, shared by its rows; `None` for JSONL.
    pub fn columns(&self) -> Option<&Arc<[String]>> {
        match &self.inner {
            Inner::Csv { headers, .. } => Some(headers),
            Inner::Jsonl { .. } => None,
        }
    }

    /// The next row, `None` at the end. An `Err` from the reader itself (not a bad row) ends
    /// the input.
    pub fn next_row(&mut self) -> io::Result<Option<Item>> {
        match &mut self.inner {
            Inner::Csv { reader, headers, email, record } => next_csv(reader, headers, *email, record),
            Inner::Jsonl { reader, line, bytes, buf } => next_jsonl(reader, line, bytes, buf),
        }
    }
}

/// Whether a column or key names the recipient's address: `email`, `e-mail`, `e_mail`, `mail`,
/// `email address` (any case, and any of `-`, `_`, space between the words).
pub fn is_address_name(name: &str) -> bool {
    let mut squeezed = name.trim().bytes().filter(|b| !b"-_ ".contains(b)).map(|b| b.to_ascii_lowercase());
    let word: Vec<u8> = squeezed.by_ref().take(16).collect();
    squeezed.next().is_none() && matches!(word.as_slice(), b"email" | b"mail" | b"emailaddress")
}

/// The field separator of a CSV file, from its first line: whichever of `,`, `;` and tab
/// occurs most outside quotes (spreadsheets in much of Europe write `;`, since `,` is their
/// decimal mark), `,` when none does or on a tie.
fn sniff_delimiter(head: &[u8]) -> u8 {
    let head = head.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(head);
    let line = head.split(|&b| b == b'\n' || b == b'\r').next().unwrap_or_default();
    let mut counts = [(b',', 0usize), (b';', 0), (b'\t', 0)];
    let mut quoted = false;
    for &b in line {
        if b == b'"' {
            quoted = !quoted;
        } else if !quoted {
            counts.iter_mut().filter(|(d, _)| *d == b).for_each(|(_, n)| *n += 1);
        }
    }
    // The first of the most frequent, so a tie keeps `,`.
    counts.iter().fold((b',', 0), |best, &(d, n)| if n > best.1 { (d, n) } else { best }).0
}

/// What identifies the recipients file's content: its size and a 64-bit hash of its bytes, as
/// `size:hash`. `--resume` compares it with the first run's, because rows are known by their line:
/// in a changed file a line may be someone else. `None` for stdin and other streams, which
/// cannot be read twice. Costs one pass over the file (a few hundred MB/s).
pub fn digest(path: &Path) -> io::Result<Option<String>> {
    if path == Path::new("-") || !std::fs::metadata(path)?.is_file() {
        return Ok(None);
    }
    let mut file = File::open(path)?;
    let mut hasher = crate::hash::Fx::default();
    let mut buf = vec![0u8; 256 * 1024];
    let mut size = 0u64;
    loop {
        // Whole buffers (only the last is short): the hash must not depend on how reads split.
        let mut filled = 0;
        while filled < buf.len() {
            match file.read(&mut buf[filled..]) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        std::hash::Hasher::write(&mut hasher, &buf[..filled]);
        size += filled as u64;
        if filled < buf.len() {
            break;
        }
    }
    Ok(Some(format!("{size}:{:016x}", std::hash::Hasher::finish(&hasher))))
}

fn next_csv(
    reader: &mut CsvReader,
    headers: &Arc<[String]>,
    email: usize,
    record: &mut csv_reader::Record,
) -> io::Result<Option<Item>> {
    if !reader.read(record)? {
        return Ok(None);
    }
    let line = record.line;
    if record.too_long {
        let reason = format!("row longer than {MAX_RECORD} octets");
        return Ok(Some(Err(BadRow { line, email: None, reason })));
    }
    if record.len() != headers.len() {
        let reason = format!("{} fields where the header has {}", record.len(), headers.len());
        return Ok(Some(Err(BadRow { line, email: readable_address(record, email), reason })));
    }
    // The reader's record is reused for the next row; this row keeps a copy of its own.
    let fields = match Fields::new(record) {
        Ok(fields) => fields,
        Err(field) => {
            let name = headers.get(field).map_or("?", String::as_str);
            let reason = format!("column `{name}` is not UTF-8");
            return Ok(Some(Err(BadRow { line, email: readable_address(record, email), reason })));
        }
    };
    let address = check_address(line, fields.get(email).unwrap_or_default());
    Ok(Some(address.map(|email| Row { line, email, vars: Vars::Csv { names: Arc::clone(headers), fields } })))
}

/// A bad row's address, if its column is there and readable, so its record says whose row it was.
fn readable_address(record: &csv_reader::Record, column: usize) -> Option<String> {
    let text = std::str::from_utf8(record.fields().nth(column)?).ok()?.trim();
    (!text.is_empty()).then(|| text.to_owned())
}

fn next_jsonl(
    reader: &mut BufReader<Box<dyn Read + Send>>,
    line: &mut u64,
    bytes: &mut u64,
    buf: &mut Vec<u8>,
) -> io::Result<Option<Item>> {
    loop {
        buf.clear();
        let read = (&mut *reader).take(MAX_LINE as u64 + 1).read_until(b'\n', buf)?;
        *bytes += read as u64;
        if read == 0 {
            return Ok(None);
        }
        *line += 1;
        let at = *line;
        if buf.len() > MAX_LINE && buf.last() != Some(&b'\n') {
            // Skip the rest of the line without holding it.
            let mut skipped = Vec::new();
            loop {
                skipped.clear();
                let n = (&mut *reader).take(MAX_LINE as u64).read_until(b'\n', &mut skipped)?;
                if n == 0 || skipped.last() == Some(&b'\n') {
                    break;
                }
            }
            let reason = format!("line longer than {MAX_LINE} octets");
            return Ok(Some(Err(BadRow { line: at, email: None, reason })));
        }
        if buf.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let vars = match serde_json::from_slice::<Value>(buf) {
            Ok(Value::Object(map)) => map,
            Ok(_) => {
                return Ok(Some(Err(BadRow { line: at, email: None, reason: "not a JSON object".into() })));
            }
            Err(e) => {
                return Ok(Some(Err(BadRow { line: at, email: None, reason: format!("invalid JSON: {e}") })));
            }
        };
        let key = match vars.contains_key("email") {
            true => Some("email"),
            false => vars.keys().map(String::as_str).find(|k| is_address_name(k)),
        };
        let email = match key.and_then(|k| vars.get(k)) {
            Some(Value::String(s)) => check_address(at, s),
            Some(_) => {
                return Ok(Some(Err(BadRow {
                    line: at,
                    email: None,
                    reason: "`email` is not a string".into(),
                })));
            }
            None => return Ok(Some(Err(BadRow { line: at, email: None, reason: "no `email` key".into() }))),
        };
        return Ok(Some(email.map(|email| Row { line: at, email, vars: Vars::Json(vars) })));
    }
}

/// The row's address, checked: one that cannot be routed makes the row bad.
pub fn check_address(line: u64, email: &str) -> Result<Address, BadRow> {
    let text = email.trim();
    let bad = |reason: String| BadRow { line, email: Some(text.to_owned()), reason };
    if text.is_empty() {
        return Err(BadRow { line, email: None, reason: "no email address".into() });
    }
    let address = Address::new(text).map_err(|e| bad(format!("invalid address: {e}")))?;
    let address = match a_label(address.domain()) {
        Ok(std::borrow::Cow::Borrowed(_)) => address,
        Ok(std::borrow::Cow::Owned(ascii)) => Address::new(&format!("{}@{ascii}", address.local_part()))
            .map_err(|e| bad(format!("invalid address: {e}")))?,
        Err(why) => return Err(bad(format!("invalid address: {why}"))),
    };
    check_domain(address.domain()).map_err(|why| bad(format!("invalid address: {why}")))?;
    Ok(address)
}

/// A domain as it goes on the wire and into DNS: an internationalised one (`bücher.test`) as its
/// A-label (`xn--bcher-kva.test`, UTS #46 processing of IDNA 2008, which also lower-cases it),
/// so that any server takes it without SMTPUTF8 and `ann@bücher.test`, `ann@BÜCHER.test` and
/// `ann@xn--bcher-kva.test` are one recipient of one domain. ASCII domains are left as they are
/// (compared case-insensitively wherever domains are compared), without a copy.
pub fn a_label(domain: &str) -> Result<std::borrow::Cow<'_, str>, String> {
    if domain.is_ascii() {
        return Ok(std::borrow::Cow::Borrowed(domain));
    }
    idna::domain_to_ascii(domain)
        .map(std::borrow::Cow::Owned)
        .map_err(|_| format!("domain `{domain}` is not a valid internationalised domain name (IDNA 2008)"))
}

/// A domain mail can be routed to: dot-separated labels of letters, digits and hyphens (or
/// non-ASCII, though rows' domains reach here as A-labels), none empty, none longer than 63, none starting or ending with `-`.
pub fn check_domain(domain: &str) -> Result<(), String> {
    let domain = domain.strip_suffix('.').unwrap_or(domain);
    if domain.starts_with('[') {
        return Err("address literals are not routed".into());
    }
    if !domain.contains('.') {
        return Err(format!("domain `{domain}` has a single label"));
    }
    // One pass over the bytes through a table (every row's domain is checked): a label ends at
    // each dot and at the end.
    const CHAR: u8 = 0;
    const DOT: u8 = 1;
    const OTHER: u8 = 2;
    const CLASS: [u8; 256] = {
        let mut class = [OTHER; 256];
        let mut b = 0;
        while b < 256 {
            let c = b as u8;
            if c.is_ascii_alphanumeric() || c == b'-' || !c.is_ascii() {
                class[b] = CHAR;
            } else if c == b'.' {
                class[b] = DOT;
            }
            b += 1;
        }
        class
    };
    let bytes = domain.as_bytes();
    let bad_label = |start: usize, end: usize| {
        let label = &bytes[start..end];
        label.is_empty() || label.len() > 63 || label[0] == b'-' || label[label.len() - 1] == b'-'
    };
    let (mut start, mut other) = (0, false);
    for (i, &b) in bytes.iter().enumerate() {
        match CLASS[usize::from(b)] {
            DOT => {
                if other || bad_label(start, i) {
                    return Err(invalid_label(domain, start, i));
                }
                start = i + 1;
            }
            class => other |= class == OTHER,
        }
    }
    if other || bad_label(start, bytes.len()) {
        return Err(invalid_label(domain, start, bytes.len()));
    }
    Ok(())
}

fn invalid_label(domain: &str, start: usize, end: usize) -> String {
    // Dots are ASCII, so the label's ends are character boundaries.
    let label = domain.get(start..end).unwrap_or(domain);
    format!("domain `{domain}` has an invalid label `{label}`")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(text: &str, format: Option<Format>) -> Vec<Item> {
        let mut rows = Rows::new(Box::new(io::Cursor::new(text.as_bytes().to_vec())), format).unwrap();
        std::iter::from_fn(|| rows.next_row().unwrap()).collect()
    }

    fn reasons(items: &[Item]) -> Vec<(u64, String)> {
        items.iter().filter_map(|i| i.as_ref().err().map(|b| (b.line, b.reason.clone()))).collect()
    }

    #[test]
    fn csv_rows_carry_every_column_and_their_line() {
        let items = rows(
            "email,name,city\na@x.test,Ann,Oslo\n\"b@y.test\",\"Bob, Jr.\",\"multi\nline\"\nc@z.test,Cy,Rome\n",
            None,
        );
        let ok: Vec<&Row> = items.iter().filter_map(|i| i.as_ref().ok()).collect();
        assert_eq!(ok.len(), 3);
        assert_eq!((ok[0].line, ok[0].email.as_str()), (2, "a@x.test"));
        assert_eq!(ok[1].vars.get("name"), Some(Var::Text("Bob, Jr.")));
        assert_eq!(ok[1].vars.get("city"), Some(Var::Text("multi\nline")));
        assert_eq!(ok[1].vars.get("nope"), None);
        assert_eq!(ok[2].line, 5, "the quoted newline counts as a line");
    }

    #[test]
    fn bad_rows_are_reported_with_their_line_and_the_rest_goes_on() {
        let text = "Email,name\nnot-an-address,A\n,B\nx@y.test\nq@nodots,C\nq@-bad.test,D\nok@fine.test,E\n";
        let items = rows(text, Some(Format::Csv));
        let bad = reasons(&items);
        let lines: Vec<u64> = bad.iter().map(|b| b.0).collect();
        assert_eq!(lines, vec![2, 3, 4, 5, 6], "{bad:?}");
        assert!(bad[0].1.contains("no '@'"), "{bad:?}");
        assert!(bad[1].1.contains("no email"), "{bad:?}");
        assert!(bad[2].1.contains("1 fields where the header has 2"), "{bad:?}");
        assert!(bad[3].1.contains("single label"), "{bad:?}");
        assert!(items.last().unwrap().is_ok());
    }

    /// Regression: rows were numbered by the `csv` crate, which gave a row after a blank line
    /// the blank line's number, a CRLF file's rows the line before theirs, and every row of a
    /// CR-only file line 1, so `--resume` (which knows rows by line) conflated them.
    #[test]
    fn rows_are_numbered_by_their_physical_line_whatever_the_line_ends() {
        let cases = [
            ("email,n\nbad,1\n\nx@y.test,2\n", vec![2, 4]),
            ("email,n\r\nbad,1\r\n\r\nx@y.test,2\r\n", vec![2, 4]),
            ("email,n\rbad,1\rx@y.test,2\r", vec![2, 3]),
            ("email,n\n\"bad\",\"two\nlines\"\nx@y.test,3\n", vec![2, 4]),
        ];
        for (text, want) in cases {
            let items = rows(text, Some(Format::Csv));
            let lines: Vec<u64> =
                items.iter().map(|i| i.as_ref().map_or_else(|b| b.line, |r| r.line)).collect();
            assert_eq!(lines, want, "{text:?}");
        }
    }

    #[test]
    fn csv_without_an_address_column_is_refused_up_front_listing_the_columns() {
        let err =
            Rows::new(Box::new(io::Cursor::new(b"name;emails;town\nx;y;z\n".to_vec())), None).err().unwrap();
        let text = err.to_string();
        assert!(text.contains("no address column"), "{text}");
        assert!(text.contains("it has `name`, `emails`, `town` (separated by `;`)"), "{text}");
    }

    #[test]
    fn the_usual_spellings_of_the_address_column_work() {
        for name in
            ["email", "E-Mail", "e_mail", "MAIL", "Email Address", "e-mail address", " email_address "]
        {
            assert!(is_address_name(name), "{name}");
            let items = rows(&format!("first,{name}\nAnn,a@x.test\n"), Some(Format::Csv));
            assert_eq!(items[0].as_ref().unwrap().email.as_str(), "a@x.test", "{name}");
        }
        for name in ["emails", "email2", "mailing", "e", "", "address", "mail-merge"] {
            assert!(!is_address_name(name), "{name}");
        }
        let items = rows("{\"E-Mail\":\"b@x.test\",\"n\":1}\n", None);
        assert_eq!(items[0].as_ref().unwrap().email.as_str(), "b@x.test", "JSONL keys too");
    }

    #[test]
    fn semicolon_and_tab_separated_files_are_read_as_such() {
        for (text, d) in [
            ("name;email;note\nAnn;a@x.test;\"1,5; two\"\nBo;b@x.test;x\n", ';'),
            ("name\temail\tnote\nAnn\ta@x.test\t1,5; two\nBo\tb@x.test\tx\n", '\t'),
            ("\u{feff}name,email,note\nAnn,a@x.test,\"1,5; two\"\nBo,b@x.test,x\n", ','),
            // A comma inside a quoted header does not outvote the semicolons.
            ("\"last, first\";email;note\nAnn;a@x.test;\"1,5; two\"\nBo;b@x.test;x\n", ';'),
        ] {
            let items = rows(text, None);
            let ok: Vec<&Row> = items.iter().filter_map(|i| i.as_ref().ok()).collect();
            assert_eq!(ok.len(), 2, "{d:?}: {items:?}");
            assert_eq!(ok[0].email.as_str(), "a@x.test");
            assert_eq!(ok[1].vars.get("note"), Some(Var::Text("x")), "{d:?}");
        }
        assert_eq!(sniff_delimiter(b"email\nx@y.test\n"), b',', "one column: the default");
        assert_eq!(sniff_delimiter(b"a;b,c\n"), b',', "a tie keeps the comma");
    }

    #[test]
    fn an_empty_file_is_an_error_and_a_header_row_alone_has_no_rows() {
        for text in ["", "\n\n"] {
            let err = Rows::new(Box::new(io::Cursor::new(text.as_bytes().to_vec())), Some(Format::Csv)).err();
            assert!(err.unwrap().to_string().contains("the recipients file is empty"), "{text:?}");
        }
        assert!(rows("email,name\n", None).is_empty());
    }

    #[test]
    fn a_rejected_row_carries_its_address_when_it_can_be_read() {
        let text = b"name,email\nAnn,a@x.test,extra\nBo\n\xff,c@x.test\n".to_vec();
        let mut rows = Rows::new(Box::new(io::Cursor::new(text)), Some(Format::Csv)).unwrap();
        let items: Vec<Item> = std::iter::from_fn(|| rows.next_row().unwrap()).collect();
        let bad: Vec<&BadRow> = items.iter().filter_map(|i| i.as_ref().err()).collect();
        assert_eq!(bad[0].email.as_deref(), Some("a@x.test"), "{bad:?}");
        assert_eq!(bad[1].email, None, "no address column in the row");
        assert!(bad[2].reason.contains("`name` is not UTF-8"), "{bad:?}");
        assert_eq!(bad[2].email.as_deref(), Some("c@x.test"), "{bad:?}");
    }

    #[test]
    fn jsonl_rows_keep_typed_values_and_report_bad_lines() {
        let text = "{\"email\":\"a@x.test\",\"n\":3,\"tags\":[\"a\"]}\n\n{broken\n[1]\n{\"address\":\"b@x.test\"}\n{\"email\":7}\n{\"email\":\"c@x.test\"}";
        let items = rows(text, None);
        let ok: Vec<&Row> = items.iter().filter_map(|i| i.as_ref().ok()).collect();
        assert_eq!(ok.len(), 2);
        assert_eq!(ok[0].vars.get("n"), Some(Var::Json(&Value::from(3))));
        assert_eq!(ok[1].line, 7, "blank lines count");
        let bad = reasons(&items);
        assert_eq!(bad.iter().map(|b| b.0).collect::<Vec<_>>(), vec![3, 4, 5, 6]);
        assert!(bad[0].1.starts_with("invalid JSON"));
        assert_eq!(bad[1].1, "not a JSON object");
        assert_eq!(bad[2].1, "no `email` key");
    }

    #[test]
    fn an_overlong_jsonl_line_is_skipped_not_held() {
        let mut text = format!("{{\"email\":\"a@x.test\",\"pad\":\"{}\"}}\n", "x".repeat(MAX_LINE + 10));
        text.push_str("{\"email\":\"b@x.test\"}\n");
        let items = rows(&text, Some(Format::Jsonl));
        assert_eq!(reasons(&items), vec![(1, format!("line longer than {MAX_LINE} octets"))]);
        assert_eq!(items[1].as_ref().unwrap().line, 2);
    }

    #[test]
    fn a_digest_names_the_content_and_streams_have_none() {
        let dir = std::env::temp_dir().join(format!("volley-digest-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let big: Vec<u8> = (0..600_000u32).map(|i| (i % 251) as u8).collect();
        let mut changed = big.clone();
        changed[400_000] ^= 1;
        let mut digests = Vec::new();
        for (name, content) in [("a", &big), ("b", &big), ("c", &changed), ("d", &big[..599_999].to_vec())] {
            let path = dir.join(name);
            std::fs::write(&path, content).unwrap();
            digests.push(digest(&path).unwrap().unwrap());
        }
        assert_eq!(digests[0], digests[1], "the same bytes");
        assert!(digests[0].starts_with("600000:"));
        assert_ne!(digests[0], digests[2], "one bit past the first buffer");
        assert_ne!(digests[0], digests[3]);
        assert_eq!(digest(Path::new("-")).unwrap(), None);
        assert!(digest(&dir.join("missing")).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_rows_of_a_file_are_estimated_from_its_first_ones_and_streams_are_not() {
        let dir = std::env::temp_dir().join(format!("volley-estimate-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut csv = String::from("email,n\n");
        let mut jsonl = String::new();
        for i in 0..10_000 {
            csv.push_str(&format!("user{i}@x.test,{i}\n"));
            jsonl.push_str(&format!("{{\"email\":\"user{i}@x.test\",\"n\":{i}}}\n"));
        }
        for (name, text) in [("list.csv", &csv), ("list.jsonl", &jsonl)] {
            let path = dir.join(name);
            std::fs::write(&path, text).unwrap();
            let mut rows = Rows::open(&path).unwrap();
            assert_eq!(rows.estimated_rows(0), None);
            for _ in 0..100 {
                rows.next_row().unwrap().unwrap().unwrap();
            }
            let estimate = rows.estimated_rows(100).unwrap();
            // Early rows are shorter here (user0, user1, ...): an estimate, within a third.
            assert!((7_000..=13_400).contains(&estimate), "{name}: {estimate}");
        }
        let stream = Rows::new(Box::new(io::Cursor::new(csv.into_bytes())), None).unwrap();
        assert_eq!(stream.estimated_rows(100), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn domains() {
        let longest = format!("{}.com", "a".repeat(63));
        for ok in [
            "example.com",
            "a-b.example.co.uk",
            "xn--bcher-kva.example",
            "bücher.example",
            "x.test.",
            &longest,
        ] {
            assert!(check_domain(ok).is_ok(), "{ok}");
        }
        for bad in [
            "localhost",
            "a..b",
            "-a.b",
            "a-.b",
            "[127.0.0.1]",
            "a_b.c",
            &format!("{}.com", "a".repeat(64)),
            ".a.b",
            "a.b..",
            "a.b-",
            "a.-b",
            "a b.c",
            "a.b.c/",
        ] {
            assert!(check_domain(bad).is_err(), "{bad}");
        }
        // The error names the label at fault, wherever it is.
        for (bad, label) in [("a.b_c.d", "b_c"), ("x.y.-z", "-z"), ("-a.b", "-a"), ("a..b", "")] {
            let err = check_domain(bad).unwrap_err();
            assert!(err.ends_with(&format!("invalid label `{label}`")), "{bad}: {err}");
        }
    }
}

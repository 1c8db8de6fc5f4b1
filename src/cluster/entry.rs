//! Rows as stream entries, and back: what the loader writes and every node reads.
//!
//! One entry holds a chunk of up to [`CHUNK`] consecutive rows, so that Redis does per chunk
//! what it would otherwise do per row (an XADD, a pending entry, an XACK: ~11 µs of its CPU a
//! row when each row was an entry, which on one core capped a fleet near 90,000 rows a second).
//! Its id is `0-FIRST` (its first row's line); its fields are `last` (its last row's line),
//! `upto` (rows in the stream up to and including it: how far the readers are, for `volley
//! status`) and `rows`, the rows one after the other:
//!
//! ```text
//! line: u64 LE | kind: u8 (0 CSV row, 1 JSON row, 2 bad row) | address: str
//!   CSV:  count: u32 LE, then count values: str     (in the header's order, which the meta holds)
//!   JSON: the row's object as JSON text: str
//!   bad:  why: str
//! str = len: u32 LE | UTF-8 octets
//! ```
//!
//! The receiving node checks each address again, as reading the file would, so every node
//! sends exactly what one reading the file would have sent.

use std::sync::Arc;

use serde_json::Value;

use crate::send::input::{BadRow, Fields, Item, Row, Vars};

/// Rows per entry at most.
pub const CHUNK: usize = 100;

const CSV: u8 = 0;
const JSON: u8 = 1;
const BAD: u8 = 2;

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u32).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

/// Appends one row to a chunk's `rows`.
pub fn encode_row(out: &mut Vec<u8>, item: &Item) {
    match item {
        Ok(row) => {
            out.extend_from_slice(&row.line.to_le_bytes());
            match &row.vars {
                Vars::Csv { fields, .. } => {
                    out.push(CSV);
                    put_str(out, row.email.as_str());
                    let values: Vec<&str> = (0..fields.len()).filter_map(|i| fields.get(i)).collect();
                    out.extend_from_slice(&(values.len() as u32).to_le_bytes());
                    values.iter().for_each(|v| put_str(out, v));
                }
                Vars::Json(map) => {
                    out.push(JSON);
                    put_str(out, row.email.as_str());
                    put_str(out, &serde_json::to_string(map).unwrap_or_default());
                }
            }
        }
        Err(bad) => {
            out.extend_from_slice(&bad.line.to_le_bytes());
            out.push(BAD);
            put_str(out, bad.email.as_deref().unwrap_or(""));
            put_str(out, &bad.reason);
        }
    }
}

/// A reader of a chunk's `rows`.
struct Cursor<'a>(&'a [u8]);

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        if self.0.len() < n {
            return Err("cut short".into());
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn u32(&mut self) -> Result<u32, String> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u64(&mut self) -> Result<u64, String> {
        let b = self.take(8)?;
        let mut a = [0; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }

    fn str(&mut self) -> Result<&'a str, String> {
        let n = self.u32()? as usize;
        std::str::from_utf8(self.take(n)?).map_err(|_| "not UTF-8".to_owned())
    }
}

/// The rows of a chunk's `rows`; `columns`: the CSV header (`None` for JSONL). A row that
/// cannot be made a recipient is a bad row (it still gets a final record); rows that cannot be
/// read at all (not written by volley's loader) are an error: their lines are unknown.
pub fn decode_rows(rows: &[u8], columns: Option<&Arc<[String]>>) -> Result<Vec<Item>, String> {
    let mut c = Cursor(rows);
    let mut out = Vec::with_capacity(CHUNK);
    // One vector for every row's values: they are copied into the row's `Fields`.
    let mut values: Vec<&str> = Vec::new();
    while !c.0.is_empty() {
        let line = c.u64()?;
        let kind = c.take(1)?[0];
        let email = c.str()?;
        let email_of = || Some(email.to_owned()).filter(|e| !e.is_empty());
        let bad = |reason: &str| BadRow {
            line,
            email: email_of(),
            reason: format!("campaign stream entry: {reason}"),
        };
        let vars = match kind {
            CSV => {
                let n = c.u32()? as usize;
                values.clear();
                for _ in 0..n {
                    values.push(c.str()?);
                }
                match columns {
                    Some(names) if names.len() == values.len() => {
                        Ok(Vars::Csv { names: Arc::clone(names), fields: Fields::from(values.as_slice()) })
                    }
                    _ => Err(bad("values do not fit the header")),
                }
            }
            JSON => match serde_json::from_str::<Value>(c.str()?) {
                Ok(Value::Object(map)) => Ok(Vars::Json(map)),
                _ => Err(bad("variables unreadable")),
            },
            BAD => {
                let reason = c.str()?;
                Err(BadRow { line, email: email_of(), reason: reason.to_owned() })
            }
            other => return Err(format!("row kind {other}")),
        };
        out.push(vars.and_then(|vars| {
            if email.is_empty() {
                return Err(bad("no address"));
            }
            let email = crate::send::input::check_address(line, email)?;
            Ok(Row { line, email, vars })
        }));
    }
    Ok(out)
}

/// A chunk as read: its first and last lines and its rows.
#[derive(Debug)]
pub struct Chunk {
    pub first: u64,
    pub last: u64,
    pub items: Vec<Item>,
}

impl Chunk {
    /// The chunk an entry holds.
    pub fn of(entry: &Entry, columns: Option<&Arc<[String]>>) -> Result<Chunk, String> {
        let what = |why: String| format!("campaign stream entry 0-{}: {why}", entry.line);
        let last = entry
            .field("last")
            .and_then(|v| std::str::from_utf8(v).ok()?.parse().ok())
            .ok_or_else(|| what("no last line".into()))?;
        let rows = entry.field("rows").ok_or_else(|| what("no rows".into()))?;
        let items = decode_rows(rows, columns).map_err(what)?;
        Ok(Chunk { first: entry.line, last, items })
    }
}

/// The line an entry id (`0-LINE`) names.
pub fn line_of(id: &str) -> Option<u64> {
    id.strip_prefix("0-")?.parse().ok()
}

/// A stream entry as read: its first row's line and its fields, taken out of the reply without a
/// copy (a node reads every row of its share, so this is on its hot path).
#[derive(Debug, Default)]
pub struct Entry {
    pub line: u64,
    fields: Vec<(Vec<u8>, Vec<u8>)>,
}

impl Entry {
    pub fn new(line: u64, fields: Vec<(Vec<u8>, Vec<u8>)>) -> Entry {
        Entry { line, fields }
    }

    pub fn field(&self, name: &str) -> Option<&[u8]> {
        let (_, value) = self.fields.iter().find(|(n, _)| n == name.as_bytes())?;
        Some(value)
    }

    /// An entry of a reply (`[id, [field, value, ...]]`); `None` for one that is not a row's
    /// (an id not `0-LINE`, or deleted).
    fn of(value: redis::Value) -> Option<Entry> {
        let redis::Value::Array(mut parts) = value else { return None };
        let (Some(redis::Value::Array(flat)), Some(id)) = (parts.pop(), parts.pop()) else { return None };
        let line = match id {
            redis::Value::BulkString(id) => line_of(std::str::from_utf8(&id).ok()?)?,
            _ => return None,
        };
        let mut fields = Vec::with_capacity(flat.len() / 2);
        let mut flat = flat.into_iter();
        while let (Some(redis::Value::BulkString(name)), Some(redis::Value::BulkString(value))) =
            (flat.next(), flat.next())
        {
            fields.push((name, value));
        }
        Some(Entry { line, fields })
    }
}

/// The entries of an XREADGROUP reply (`[[stream, [entry, ...]]]`, or nil when there are
/// none).
pub fn read_reply(reply: redis::Value) -> Vec<Entry> {
    let redis::Value::Array(streams) = reply else { return Vec::new() };
    let mut out = Vec::new();
    for stream in streams {
        let redis::Value::Array(mut pair) = stream else { continue };
        if let Some(redis::Value::Array(entries)) = pair.pop() {
            out.extend(entries.into_iter().filter_map(Entry::of));
        }
    }
    out
}

/// The entries of an XRANGE reply (`[entry, ...]`).
pub fn read_range(reply: redis::Value) -> Vec<Entry> {
    match reply {
        redis::Value::Array(entries) => entries.into_iter().filter_map(Entry::of).collect(),
        _ => Vec::new(),
    }
}

/// The next cursor and the entries of an XAUTOCLAIM reply (`[cursor, [entry, ...], deleted]`).
pub fn claim_reply(reply: redis::Value) -> (String, Vec<Entry>) {
    let redis::Value::Array(parts) = reply else { return ("0-0".into(), Vec::new()) };
    let mut parts = parts.into_iter();
    let cursor = match parts.next() {
        Some(redis::Value::BulkString(c)) => String::from_utf8(c).unwrap_or_else(|_| "0-0".into()),
        _ => "0-0".into(),
    };
    let entries = match parts.next() {
        Some(redis::Value::Array(entries)) => entries.into_iter().filter_map(Entry::of).collect(),
        _ => Vec::new(),
    };
    (cursor, entries)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::send::input::Rows;

    fn entry(line: u64, fields: &[(&str, &[u8])]) -> Entry {
        Entry::new(line, fields.iter().map(|(n, v)| (n.as_bytes().to_vec(), v.to_vec())).collect())
    }

    fn round_trip(input: &str) {
        let mut rows = Rows::new(Box::new(std::io::Cursor::new(input.as_bytes().to_vec())), None).unwrap();
        let columns = rows.columns().cloned();
        let (mut items, mut payload) = (Vec::new(), Vec::new());
        while let Some(item) = rows.next_row().unwrap() {
            encode_row(&mut payload, &item);
            items.push(item);
        }
        let line = |i: &Item| match i {
            Ok(r) => r.line,
            Err(b) => b.line,
        };
        let last = line(items.last().unwrap()).to_string();
        let e = entry(line(&items[0]), &[("last", last.as_bytes()), ("upto", b"9"), ("rows", &payload)]);
        let chunk = Chunk::of(&e, columns.as_ref()).unwrap();
        assert_eq!(chunk.items, items, "{input}");
        assert_eq!((chunk.first, chunk.last), (line(&items[0]), line(items.last().unwrap())));
    }

    #[test]
    fn rows_come_back_as_read() {
        round_trip(
            "email,name,note\nann@example.com,Ann,\"a, b \"\"q\"\"\"\nbad-address,Bob,x\nc@x.test,Ç\n",
        );
        round_trip("{\"email\":\"ann@bücher.test\",\"n\":1,\"tags\":[\"a\"]}\n{\"mail\":5}\nnot json\n");
    }

    #[test]
    fn rows_that_do_not_fit_are_bad_rows_and_unreadable_chunks_errors() {
        let two: Arc<[String]> = Arc::from(vec!["email".to_owned(), "name".to_owned()]);
        let one: Arc<[String]> = Arc::from(vec!["email".to_owned()]);
        let mut rows =
            Rows::new(Box::new(std::io::Cursor::new(b"email,name\nann@example.com,Ann\n".to_vec())), None)
                .unwrap();
        let mut payload = Vec::new();
        encode_row(&mut payload, &rows.next_row().unwrap().unwrap());
        assert!(decode_rows(&payload, Some(&two)).unwrap()[0].is_ok());
        let bad = decode_rows(&payload, Some(&one)).unwrap().remove(0).unwrap_err();
        assert_eq!((bad.line, bad.email.as_deref()), (2, Some("ann@example.com")));
        for cut in 1..payload.len() {
            assert!(decode_rows(&payload[..cut], Some(&two)).is_err(), "cut at {cut}");
        }
        let no_last = entry(2, &[("rows", &payload)]);
        assert!(Chunk::of(&no_last, Some(&two)).unwrap_err().contains("no last line"));
        assert_eq!(line_of("0-42"), Some(42));
        assert_eq!(line_of("1-42"), None);
    }

    #[test]
    fn replies_are_taken_apart() {
        use redis::Value::{Array, BulkString, Nil};
        let b = |s: &str| BulkString(s.as_bytes().to_vec());
        let e = |id: &str| Array(vec![b(id), Array(vec![b("last"), b("9"), b("rows"), b("")])]);
        let read = Array(vec![Array(vec![b("volley:{c}:rows"), Array(vec![e("0-2"), e("5-1"), e("0-3")])])]);
        let lines: Vec<u64> = read_reply(read).iter().map(|e| e.line).collect();
        assert_eq!(lines, vec![2, 3], "ids not 0-LINE are not chunks");
        assert!(read_reply(Nil).is_empty());
        let (cursor, claimed) = claim_reply(Array(vec![b("0-9"), Array(vec![e("0-4")]), Array(vec![])]));
        assert_eq!((cursor.as_str(), claimed.len(), claimed[0].field("last")), ("0-9", 1, Some(&b"9"[..])));
    }
}

//! A row as a stream entry, and back: what the loader writes and every node reads.
//!
//! An entry's id is `0-LINE`. A good row has `e` (its address, as the input gave it) and `v`
//! (its variables: a CSV row's values as a JSON array, in the header's order, which the
//! campaign's meta holds; a JSONL row's object as it was); a bad row has `bad` (why) and `e` if
//! an address could be read. The receiving node checks the address again, as reading the file
//! would, so every node sends exactly what one reading the file would have sent.

use std::sync::Arc;

use serde_json::Value;

use crate::send::input::{BadRow, Fields, Item, Row, Vars};

/// The arguments of one row for the load script: line, address, payload, reason.
pub fn encode(item: &Item) -> [String; 4] {
    match item {
        Ok(row) => {
            let payload = match &row.vars {
                Vars::Csv { fields, .. } => {
                    let values: Vec<&str> = (0..fields.len()).filter_map(|i| fields.get(i)).collect();
                    serde_json::to_string(&values).unwrap_or_default()
                }
                Vars::Json(map) => serde_json::to_string(map).unwrap_or_default(),
            };
            [row.line.to_string(), row.email.to_string(), payload, String::new()]
        }
        Err(bad) => {
            [bad.line.to_string(), bad.email.clone().unwrap_or_default(), String::new(), bad.reason.clone()]
        }
    }
}

/// The line an entry id (`0-LINE`) names.
pub fn line_of(id: &str) -> Option<u64> {
    id.strip_prefix("0-")?.parse().ok()
}

/// A stream entry as read: its row's line and its fields, taken out of the reply without a
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

    fn field(&self, name: &str) -> Option<&str> {
        let (_, value) = self.fields.iter().find(|(n, _)| n == name.as_bytes())?;
        std::str::from_utf8(value).ok()
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

/// A row from its entry; `columns`: the CSV header (`None` for JSONL). An entry that cannot
/// be read (written by something else) is a bad row, so it still gets a final record.
pub fn decode(entry: &Entry, columns: Option<&Arc<[String]>>) -> Item {
    let line = entry.line;
    let email = entry.field("e").filter(|e| !e.is_empty());
    if let Some(reason) = entry.field("bad") {
        return Err(BadRow { line, email: email.map(str::to_owned), reason: reason.to_owned() });
    }
    let bad = |reason: &str| BadRow {
        line,
        email: email.map(str::to_owned),
        reason: format!("campaign stream entry: {reason}"),
    };
    let Some(text) = email else { return Err(bad("no address")) };
    let payload = entry.field("v").ok_or_else(|| bad("no variables"))?;
    let vars = match columns {
        Some(names) => {
            // Borrowed when no value has an escape (the usual case), owned otherwise.
            let fields = match serde_json::from_str::<Vec<&str>>(payload) {
                Ok(values) if values.len() == names.len() => Fields::from(values.as_slice()),
                _ => match serde_json::from_str::<Vec<String>>(payload) {
                    Ok(values) if values.len() == names.len() => {
                        let values: Vec<&str> = values.iter().map(String::as_str).collect();
                        Fields::from(values.as_slice())
                    }
                    _ => return Err(bad("values do not fit the header")),
                },
            };
            Vars::Csv { names: Arc::clone(names), fields }
        }
        None => match serde_json::from_str::<Value>(payload) {
            Ok(Value::Object(map)) => Vars::Json(map),
            _ => return Err(bad("variables unreadable")),
        },
    };
    let email = crate::send::input::check_address(line, text)?;
    Ok(Row { line, email, vars })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::send::input::Rows;

    fn entry(line: u64, fields: &[(&str, &str)]) -> Entry {
        Entry::new(line, fields.iter().map(|(n, v)| (n.as_bytes().to_vec(), v.as_bytes().to_vec())).collect())
    }

    fn round_trip(input: &str) {
        let mut rows = Rows::new(Box::new(std::io::Cursor::new(input.as_bytes().to_vec())), None).unwrap();
        let columns = rows.columns().cloned();
        while let Some(item) = rows.next_row().unwrap() {
            let [line, email, payload, reason] = encode(&item);
            let fields: Vec<(&str, &str)> = match reason.is_empty() {
                true => vec![("e", &email), ("v", &payload)],
                false => vec![("e", &email), ("bad", &reason)],
            };
            let back = decode(&entry(line.parse().unwrap(), &fields), columns.as_ref());
            assert_eq!(back, item, "{input}");
        }
    }

    #[test]
    fn rows_come_back_as_read() {
        round_trip(
            "email,name,note\nann@example.com,Ann,\"a, b \"\"q\"\"\"\nbad-address,Bob,x\nc@x.test,Ç\n",
        );
        round_trip("{\"email\":\"ann@bücher.test\",\"n\":1,\"tags\":[\"a\"]}\n{\"mail\":5}\nnot json\n");
    }

    #[test]
    fn unreadable_entries_are_bad_rows() {
        let columns: Arc<[String]> = Arc::from(vec!["email".to_owned(), "name".to_owned()]);
        for v in ["[\"only one\"]", "{}", "nonsense", "[1, 2]"] {
            let bad = decode(&entry(7, &[("e", "ann@example.com"), ("v", v)]), Some(&columns)).unwrap_err();
            assert_eq!((bad.line, bad.email.as_deref()), (7, Some("ann@example.com")), "{v}");
        }
        assert!(
            decode(
                &entry(7, &[("e", "ann@example.com"), ("v", "[\"ann@example.com\", \"Ann\"]")]),
                Some(&columns)
            )
            .is_ok()
        );
        assert_eq!(line_of("0-42"), Some(42));
        assert_eq!(line_of("1-42"), None);
    }

    #[test]
    fn replies_are_taken_apart() {
        use redis::Value::{Array, BulkString, Nil};
        let b = |s: &str| BulkString(s.as_bytes().to_vec());
        let e = |id: &str| Array(vec![b(id), Array(vec![b("e"), b("a@x.test"), b("v"), b("{}")])]);
        let read = Array(vec![Array(vec![b("volley:{c}:rows"), Array(vec![e("0-2"), e("5-1"), e("0-3")])])]);
        let lines: Vec<u64> = read_reply(read).iter().map(|e| e.line).collect();
        assert_eq!(lines, vec![2, 3], "ids not 0-LINE are not rows");
        assert!(read_reply(Nil).is_empty());
        let (cursor, claimed) = claim_reply(Array(vec![b("0-9"), Array(vec![e("0-4")]), Array(vec![])]));
        assert_eq!((cursor.as_str(), claimed.len(), claimed[0].field("e")), ("0-9", 1, Some("a@x.test")));
    }
}

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

/// A row from its entry's fields; `columns`: the CSV header (`None` for JSONL). An entry that
/// cannot be read (written by something else) is a bad row, so it still gets a final record.
pub fn decode(line: u64, field: impl Fn(&str) -> Option<String>, columns: Option<&Arc<[String]>>) -> Item {
    let email = field("e").filter(|e| !e.is_empty());
    if let Some(reason) = field("bad") {
        return Err(BadRow { line, email, reason });
    }
    let bad = |reason: &str| BadRow {
        line,
        email: email.clone(),
        reason: format!("campaign stream entry: {reason}"),
    };
    let Some(text) = &email else { return Err(bad("no address")) };
    let payload = field("v").ok_or_else(|| bad("no variables"))?;
    let vars = match (columns, serde_json::from_str::<Value>(&payload)) {
        (Some(names), Ok(Value::Array(values))) => {
            let values: Option<Vec<&str>> = values.iter().map(Value::as_str).collect();
            let values = values
                .filter(|v| v.len() == names.len())
                .ok_or_else(|| bad("values do not fit the header"))?;
            Vars::Csv { names: Arc::clone(names), fields: Fields::from(values.as_slice()) }
        }
        (None, Ok(Value::Object(map))) => Vars::Json(map),
        _ => return Err(bad("variables unreadable")),
    };
    let email = crate::send::input::check_address(line, text)?;
    Ok(Row { line, email, vars })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::send::input::Rows;

    fn round_trip(input: &str) {
        let mut rows = Rows::new(Box::new(std::io::Cursor::new(input.as_bytes().to_vec())), None).unwrap();
        let columns = rows.columns().cloned();
        while let Some(item) = rows.next_row().unwrap() {
            let [line, email, payload, reason] = encode(&item);
            let field = |name: &str| -> Option<String> {
                let v = match name {
                    "e" => &email,
                    "v" if reason.is_empty() => &payload,
                    "bad" if !reason.is_empty() => &reason,
                    _ => return None,
                };
                Some(v.clone())
            };
            let back = decode(line.parse().unwrap(), field, columns.as_ref());
            assert_eq!(back, item, "{input}");
        }
    }

    #[test]
    fn rows_come_back_as_read() {
        round_trip("email,name,note\nann@example.com,Ann,\"a, b\"\nbad-address,Bob,x\nc@x.test,Ç\n");
        round_trip("{\"email\":\"ann@bücher.test\",\"n\":1,\"tags\":[\"a\"]}\n{\"mail\":5}\nnot json\n");
    }

    #[test]
    fn unreadable_entries_are_bad_rows() {
        let columns: Arc<[String]> = Arc::from(vec!["email".to_owned(), "name".to_owned()]);
        let entry = |v: &'static str| {
            move |name: &str| match name {
                "e" => Some("ann@example.com".to_owned()),
                "v" => Some(v.to_owned()),
                _ => None,
            }
        };
        for v in ["[\"only one\"]", "{}", "nonsense", "[1, 2]"] {
            let bad = decode(7, entry(v), Some(&columns)).unwrap_err();
            assert_eq!((bad.line, bad.email.as_deref()), (7, Some("ann@example.com")), "{v}");
        }
        assert!(decode(7, entry("[\"ann@example.com\", \"Ann\"]"), Some(&columns)).is_ok());
        assert_eq!(line_of("0-42"), Some(42));
        assert_eq!(line_of("1-42"), None);
    }
}

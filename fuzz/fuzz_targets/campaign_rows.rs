//! `send`'s input and templating on arbitrary recipients files and message templates: reading
//! rows and rendering each must never panic, and whatever renders must be a message that
//! cannot smuggle or inject: CRLF line endings only, and a header section of `Name: value`
//! lines (and their continuations) ended by an empty line, whatever the values held; and that
//! any server can take: no line over 998 octets, and from our (ASCII) templates, 7-bit only.
#![no_main]

use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use libfuzzer_sys::fuzz_target;
use mailvolley::send::input::{Format, Rows};
use mailvolley::send::template::{MessageSpec, MessageTemplate};

/// `known`: the template is one of ours, whose header fields are known: a value can add none.
fn check_message(bytes: &[u8], known: bool) {
    for (i, &b) in bytes.iter().enumerate() {
        match b {
            b'\r' => assert_eq!(bytes.get(i + 1), Some(&b'\n'), "bare CR at {i}"),
            b'\n' => assert!(i > 0 && bytes[i - 1] == b'\r', "bare LF at {i}"),
            _ => {}
        }
    }
    assert!(bytes.ends_with(b"\r\n"));
    let longest = bytes.split(|&b| b == b'\n').map(|l| l.len().saturating_sub(1)).max().unwrap_or(0);
    assert!(longest <= 998, "a line of {longest} octets");
    if known {
        assert!(bytes.is_ascii(), "8-bit from an ASCII template: values are encoded");
    }
    let end = bytes.windows(4).position(|w| w == b"\r\n\r\n").expect("a header section");
    let head = &bytes[..end + 2];
    let mut names = Vec::new();
    for (n, line) in head.split(|&b| b == b'\n').filter(|l| !l.is_empty()).enumerate() {
        let line = &line[..line.len() - 1];
        if n > 0 && matches!(line.first(), Some(b' ' | b'\t')) {
            continue;
        }
        let colon = line.iter().position(|&b| b == b':').expect("a header field");
        assert!(colon > 0 && line[..colon].iter().all(|b| b.is_ascii_graphic()), "{line:?}");
        names.push(String::from_utf8_lossy(&line[..colon]).to_ascii_lowercase());
    }
    if known {
        for name in &names {
            // The MIME fields are volley's own when it re-encodes an 8-bit body.
            let once = ["from", "subject", "to", "date", "message-id", "mime-version", "content-type", "content-transfer-encoding"]
                .contains(&name.as_str());
            assert!(once || name.starts_with("x-"), "a value added the field {name}");
            assert!(!once || names.iter().filter(|n| *n == name).count() == 1, "{name} twice");
        }
    }
}

/// Templates that take the fast path, the general path and minijinja; the last is the input's own.
const TEMPLATES: [&str; 3] = [
    "From: News <news@example.com>\nSubject: Hi {{ first }} of {{ city }}\n\nDear {{ first }},\n{{ code }}\n.\n",
    "Subject: {{ first }}\nX-{{ code }}: {{ city }}\n {{ city }}\n\n{{ first }}{{ city }}\r",
    "Subject: {{ first|upper }}\n\n{% if city %}{{ city }}{% endif %}\n{{ code|length }}\n",
];

fuzz_target!(|data: &[u8]| {
    let Some((&selector, data)) = data.split_first() else { return };
    // The values of one row, split at 0xff: arbitrary text, line breaks and controls included.
    let mut values = data.split(|&b| b == 0xff).map(|v| String::from_utf8_lossy(v).into_owned());
    let (first, city, code) = (values.next().unwrap_or_default(), values.next().unwrap_or_default(), values.next().unwrap_or_default());
    let template = match usize::from(selector & 3) {
        i @ 0..=2 => TEMPLATES[i].to_owned(),
        _ => values.next().unwrap_or_default(),
    };
    let spec = MessageSpec {
        message: Some(template),
        from: (selector & 4 != 0).then(|| "News <news@example.com>".to_owned()),
        mail_from: (selector & 8 != 0).then(|| "bounces+{{ line }}@example.com".to_owned()),
        ..MessageSpec::default()
    };
    // A template that does not compile is a start-up error, not a row's.
    let Ok(template) = MessageTemplate::new(&spec, "fuzz") else { return };
    let (format, input) = if selector & 16 != 0 {
        let row = serde_json::json!({ "email": "r@x.test", "first": first, "city": city, "code": code });
        (Format::Jsonl, format!("{row}\n"))
    } else {
        let quote = |v: &str| format!("\"{}\"", v.replace('"', "\"\""));
        (Format::Csv, format!("email,first,city,code\nr@x.test,{},{},{}\n", quote(&first), quote(&city), quote(&code)))
    };
    let Ok(mut rows) = Rows::new(Box::new(std::io::Cursor::new(input.into_bytes())), Some(format)) else { return };
    let now = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    while let Ok(Some(item)) = rows.next_row() {
        let Ok(row) = item else { continue };
        if let Ok(rendered) = template.render(&Arc::new(row), now) {
            check_message(rendered.body.bytes(), selector & 3 != 3);
        }
    }
});

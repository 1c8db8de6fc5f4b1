//! Small helpers for machine-readable output (kept dependency-free: the shapes are simple).

/// A JSON object from keys and already-encoded JSON values.
pub fn json_object<K: AsRef<str>, V: AsRef<str>>(fields: impl IntoIterator<Item = (K, V)>) -> String {
    let mut s = String::from("{");
    for (i, (k, v)) in fields.into_iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        s.push_str(&json_string(k.as_ref()));
        s.push(':');
        s.push_str(v.as_ref());
    }
    s.push('}');
    s
}

/// A JSON string literal.
pub fn json_string(text: &str) -> String {
    let mut s = String::with_capacity(text.len() + 2);
    s.push('"');
    for c in text.chars() {
        match c {
            '"' => s.push_str("\\\""),
            '\\' => s.push_str("\\\\"),
            '\n' => s.push_str("\\n"),
            '\r' => s.push_str("\\r"),
            '\t' => s.push_str("\\t"),
            c if (c as u32) < 0x20 => s.push_str(&format!("\\u{:04x}", c as u32)),
            c => s.push(c),
        }
    }
    s.push('"');
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes() {
        assert_eq!(json_string("a\"b\\c\n\u{1}"), r#""a\"b\\c\n\u0001""#);
        assert_eq!(json_object([("a", "1"), ("b", "\"x\"")]), r#"{"a":1,"b":"x"}"#);
        assert_eq!(json_object(Vec::<(&str, &str)>::new()), "{}");
    }
}

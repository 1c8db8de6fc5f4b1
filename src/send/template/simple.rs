//! The fast path for the commonest templates: text with `{{ name }}` substitutions and nothing
//! else. Such a template is rendered by concatenation, without minijinja's machinery, which
//! costs more than all the rest of composing a message.
//!
//! It must give exactly what minijinja gives, so it only ever answers when that is certain:
//! a template with anything more (tags, comments, filters, attributes, whitespace control,
//! literals) is never simple, and a render that meets a value it does not handle as minijinja
//! would (a variable the row lacks, a JSON number or list, a header value that must be
//! refused) answers `None` and minijinja renders it, errors included. A property test holds
//! the two to the same output.

use minijinja::Value;

use super::header_text;
use crate::send::input::{Row, Var};

/// A template that is only text and variables.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Simple {
    parts: Vec<Part>,
    /// Octets of text, to size the output.
    text_len: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Part {
    Text(String),
    Var(String),
}

/// Names minijinja reads as literals or operators, not variables.
const KEYWORDS: [&str; 13] =
    ["true", "false", "none", "True", "False", "None", "not", "and", "or", "in", "is", "if", "else"];

impl Simple {
    /// The template as text and variables, if that is all it is.
    pub fn parse(source: &str) -> Option<Simple> {
        if source.contains("{%") || source.contains("{#") {
            return None;
        }
        let mut parts = Vec::new();
        let mut rest = source;
        while let Some(open) = rest.find("{{") {
            let close = rest[open + 2..].find("}}")? + open + 2;
            let name = rest[open + 2..close].trim_matches([' ', '\t', '\r', '\n']);
            if !is_identifier(name) || KEYWORDS.contains(&name) {
                return None;
            }
            if open > 0 {
                parts.push(Part::Text(rest[..open].to_owned()));
            }
            parts.push(Part::Var(name.to_owned()));
            rest = &rest[close + 2..];
        }
        if !rest.is_empty() {
            parts.push(Part::Text(rest.to_owned()));
        }
        let text_len = parts.iter().map(|p| if let Part::Text(t) = p { t.len() } else { 0 }).sum();
        Some(Simple { parts, text_len })
    }

    /// Renders for `row` (`campaign`: the value of `{{ campaign }}`); `header`: values get the
    /// header formatter. `None`: leave it to minijinja.
    pub fn render(&self, row: &Row, campaign: &Value, header: bool) -> Option<String> {
        let mut out = String::with_capacity(self.text_len + 64);
        for part in &self.parts {
            match part {
                Part::Text(text) => out.push_str(text),
                Part::Var(name) => {
                    let mut digits = [0u8; 20];
                    let value = lookup(row, campaign, name, &mut digits)?;
                    if header {
                        out.push_str(&header_text(value).ok()?);
                    } else {
                        out.push_str(value);
                    }
                }
            }
        }
        Some(out)
    }

    /// Whether, as a header section, every line of the template is checkable before
    /// rendering: no variable starts a line or stands in a field's name, so values (which can
    /// never hold a line break) only ever add to field values, and the rendered section has
    /// the template's lines with the template's names. `skeleton`: the template with every
    /// variable as `x`, to check as the rendered section would be.
    pub fn header_lines_fixed(&self, skeleton: &mut String) -> bool {
        let (mut line_start, mut in_name) = (true, true);
        for part in &self.parts {
            match part {
                Part::Text(text) => {
                    skeleton.push_str(text);
                    for c in text.chars() {
                        if line_start {
                            // A continuation line has no name.
                            in_name = !matches!(c, ' ' | '\t');
                        }
                        line_start = c == '\n';
                        if line_start {
                            in_name = true;
                        } else if c == ':' {
                            in_name = false;
                        }
                    }
                }
                Part::Var(_) if line_start || in_name => return false,
                Part::Var(_) => {
                    skeleton.push('x');
                }
            }
        }
        true
    }

    pub(super) fn parts(&self) -> &[Part] {
        &self.parts
    }

    /// Whether the rendered text always ends with a line break (the last part is text that
    /// does), or is always empty.
    pub fn ends_lines(&self) -> bool {
        self.parts.last().is_none_or(|p| matches!(p, Part::Text(t) if t.ends_with('\n')))
    }
}

/// What minijinja's lookup in the template context gives, as text, for the values whose text
/// form is certain.
pub(super) fn lookup<'a>(
    row: &'a Row,
    campaign: &'a Value,
    name: &str,
    digits: &'a mut [u8; 20],
) -> Option<&'a str> {
    if name == "email" {
        return Some(row.email.as_str());
    }
    match row.vars.get(name) {
        Some(Var::Text(text)) => Some(text),
        Some(Var::Json(serde_json::Value::String(text))) => Some(text),
        Some(Var::Json(_)) => None,
        None if name == "line" => Some(super::decimal(row.line, digits)),
        None if name == "campaign" => campaign.as_str(),
        None => None,
    }
}

fn is_identifier(name: &str) -> bool {
    let mut bytes = name.bytes();
    bytes.next().is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_text_and_variables_are_simple() {
        let s = Simple::parse("Hi {{ first }},\n{{email}} {{\tcode\n}}!\n").unwrap();
        assert_eq!(
            s.parts,
            vec![
                Part::Text("Hi ".into()),
                Part::Var("first".into()),
                Part::Text(",\n".into()),
                Part::Var("email".into()),
                Part::Text(" ".into()),
                Part::Var("code".into()),
                Part::Text("!\n".into()),
            ]
        );
        assert_eq!(Simple::parse("no variables").unwrap().parts, vec![Part::Text("no variables".into())]);
        for not_simple in [
            "{% if x %}y{% endif %}",
            "{# note #}",
            "{{ x|upper }}",
            "{{ x.y }}",
            "{{ x[0] }}",
            "{{- x }}",
            "{{ x -}}",
            "{{ 'lit' }}",
            "{{ 1 }}",
            "{{ none }}",
            "{{ true }}",
            "{{ f() }}",
            "{{ a ~ b }}",
            "{{ x",
            "{{ }}",
        ] {
            assert_eq!(Simple::parse(not_simple), None, "{not_simple}");
        }
    }
}

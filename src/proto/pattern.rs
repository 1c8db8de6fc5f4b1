//! Patterns over replies: a basic code, an enhanced code (or its prefix) and text fragments.
//! Bounce classification and reactive traffic shaping both decide by them, from rules files
//! users can extend, so they are data, matched without regular expressions: a fragment matches
//! case-insensitively anywhere in the reply text.

use serde::Deserialize;

use super::reply::EnhancedCode;

/// What a reply must have to match; every part given must hold (a missing part holds always).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplyPattern {
    /// The basic code (`421`), or its first digits (`4`, `45`).
    #[serde(default, deserialize_with = "code_prefix")]
    pub code: Option<String>,
    /// The enhanced code (`4.7.0`) or a prefix of its parts (`4.7`, `5`).
    #[serde(default, deserialize_with = "enhanced_prefix")]
    pub enhanced: Option<Vec<u16>>,
    /// Fragments of the reply text, any of which matches (lower-cased when loaded).
    #[serde(default)]
    pub text: Vec<String>,
}

impl ReplyPattern {
    /// Lower-cases the text fragments once, so matching does not.
    pub fn normalise(mut self) -> Self {
        for t in &mut self.text {
            *t = t.to_lowercase();
        }
        self
    }

    /// Whether a reply (`text_lower`: its text, lower-cased by the caller once for all
    /// patterns) matches.
    pub fn matches(&self, code: Option<u16>, enhanced: Option<EnhancedCode>, text_lower: &str) -> bool {
        if let Some(prefix) = &self.code {
            let Some(code) = code else { return false };
            if !code.to_string().starts_with(prefix.as_str()) {
                return false;
            }
        }
        if let Some(parts) = &self.enhanced {
            let Some(e) = enhanced else { return false };
            let have = [u16::from(e.class), e.subject, e.detail];
            if !parts.iter().zip(have).all(|(want, have)| *want == have) {
                return false;
            }
        }
        self.text.is_empty() || self.text.iter().any(|t| text_lower.contains(t.as_str()))
    }
}

fn code_prefix<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    let v = toml_like_number_or_string(d)?;
    if v.is_empty() || v.len() > 3 || !v.bytes().all(|b| b.is_ascii_digit()) {
        return Err(serde::de::Error::custom(format!("code `{v}`: 1 to 3 digits (`421`, `4`)")));
    }
    Ok(Some(v))
}

fn enhanced_prefix<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Vec<u16>>, D::Error> {
    let v = toml_like_number_or_string(d)?;
    let parts: Result<Vec<u16>, _> = v.split('.').map(str::parse).collect();
    match parts {
        Ok(p) if (1..=3).contains(&p.len()) && matches!(p[0], 2 | 4 | 5) => Ok(Some(p)),
        _ => Err(serde::de::Error::custom(format!("enhanced code `{v}`: like `5.7.1`, `4.7` or `5`"))),
    }
}

/// A code written as a number (`421`) or a string (`"4.7.0"`).
fn toml_like_number_or_string<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum NumOrStr {
        Num(u64),
        Float(f64),
        Str(String),
    }
    Ok(match NumOrStr::deserialize(d)? {
        NumOrStr::Num(n) => n.to_string(),
        // `5.7` written bare in TOML is a float: read it back as written.
        NumOrStr::Float(f) => f.to_string(),
        NumOrStr::Str(s) => s.trim().to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pattern(code: Option<&str>, enhanced: Option<&[u16]>, text: &[&str]) -> ReplyPattern {
        ReplyPattern {
            code: code.map(str::to_owned),
            enhanced: enhanced.map(<[u16]>::to_vec),
            text: text.iter().map(|t| t.to_string()).collect(),
        }
        .normalise()
    }

    #[test]
    fn every_part_given_must_hold() {
        let e = |c, s, d| Some(EnhancedCode::new(c, s, d));
        let cases = [
            (pattern(Some("421"), None, &[]), Some(421), None, "", true),
            (pattern(Some("4"), None, &[]), Some(451), None, "", true),
            (pattern(Some("4"), None, &[]), Some(550), None, "", false),
            (pattern(Some("4"), None, &[]), None, None, "", false),
            (pattern(None, Some(&[4, 7]), &[]), Some(421), e(4, 7, 28), "", true),
            (pattern(None, Some(&[4, 7, 0]), &[]), Some(421), e(4, 7, 28), "", false),
            (pattern(None, Some(&[5]), &[]), Some(550), None, "", false),
            (pattern(None, None, &["TSS04"]), Some(421), None, "[ts04] ... tss04 messages from x", true),
            (pattern(Some("421"), None, &["tss04", "rate"]), Some(421), None, "rate limited", true),
            (pattern(Some("421"), None, &["tss04"]), Some(451), None, "tss04", false),
        ];
        for (i, (p, code, enhanced, text, want)) in cases.into_iter().enumerate() {
            assert_eq!(p.matches(code, enhanced, text), want, "case {i}: {p:?}");
        }
    }
}

//! The rules files users edit (bounce categories, traffic shaping): one load order and one
//! error for both. A user's files come first, in the order given, so their rules win over the
//! shipped ones, which come last.

use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum RulesError {
    #[error("{kind} {path}: {error}")]
    Read { kind: &'static str, path: String, error: std::io::Error },
    #[error("{kind} {path}: {error}")]
    Parse { kind: &'static str, path: String, error: String },
}

/// Hands the text of each file in `extra`, then `shipped` if given, to `add`, which says what
/// is wrong with a text; `kind` names the rules in errors (`bounce rules`).
pub fn load(
    kind: &'static str,
    extra: &[impl AsRef<Path>],
    shipped: Option<&str>,
    mut add: impl FnMut(&str) -> Result<(), String>,
) -> Result<(), RulesError> {
    for path in extra {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|error| RulesError::Read {
            kind,
            path: path.display().to_string(),
            error,
        })?;
        parsed(kind, path, add(&text))?;
    }
    if let Some(text) = shipped {
        parsed(kind, Path::new("(shipped)"), add(text))?;
    }
    Ok(())
}

/// A parse result as a [`RulesError`] naming `path`.
pub fn parsed(kind: &'static str, path: &Path, result: Result<(), String>) -> Result<(), RulesError> {
    result.map_err(|error| RulesError::Parse { kind, path: path.display().to_string(), error })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_come_in_order_before_the_shipped_text_and_errors_name_the_file() {
        let dir = std::env::temp_dir().join(format!("volley-rules-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (a, b) = (dir.join("a.toml"), dir.join("b.toml"));
        std::fs::write(&a, "first").unwrap();
        std::fs::write(&b, "second").unwrap();
        let mut seen = Vec::new();
        load("test rules", &[&a, &b], Some("shipped"), |t| {
            seen.push(t.to_owned());
            Ok(())
        })
        .unwrap();
        assert_eq!(seen, ["first", "second", "shipped"]);
        let e =
            load(
                "test rules",
                &[&b],
                None,
                |t| if t == "second" { Err("bad line 1".into()) } else { Ok(()) },
            );
        assert_eq!(e.unwrap_err().to_string(), format!("test rules {}: bad line 1", b.display()));
        let e = load("test rules", &[dir.join("missing.toml")], None, |_| Ok(())).unwrap_err();
        assert!(matches!(e, RulesError::Read { .. }) && e.to_string().starts_with("test rules "));
        let e = load("test rules", &[] as &[&Path], Some("x"), |_| Err("broken".into())).unwrap_err();
        assert_eq!(e.to_string(), "test rules (shipped): broken");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

//! The HTTP API's keys (`--api-keys FILE`): one per line, `name:KEY` or `name:sha256:HEX` (the
//! key's SHA-256, so the file need not hold the key itself); blank lines and `#` comments
//! skipped. Only digests are kept in memory, and a presented key is compared with every one in
//! constant time, so neither timing nor order tells an attacker anything.

use std::path::Path;
use std::sync::Arc;

use ring::digest::{SHA256, digest};

use crate::sink::auth::constant_time_eq;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeysError {
    #[error("{path}: {error}")]
    Read { path: String, error: String },
    #[error("line {line}: {reason}")]
    Line { line: usize, reason: &'static str },
    #[error("no key in it")]
    Empty,
}

/// The keys that may use the API, by name. They can be replaced while requests are checked
/// against them (serve's SIGHUP), without a lock.
pub struct ApiKeys(arc_swap::ArcSwap<Vec<(Arc<str>, [u8; 32])>>);

impl std::fmt::Debug for ApiKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Names only: a digest of a weak key is as good as the key.
        f.debug_list().entries(self.0.load().iter().map(|(name, _)| name.clone())).finish()
    }
}

impl ApiKeys {
    pub fn load(path: &Path) -> Result<ApiKeys, KeysError> {
        let read = |error: String| KeysError::Read { path: path.display().to_string(), error };
        let text = std::fs::read_to_string(path).map_err(|e| read(e.to_string()))?;
        ApiKeys::parse(&text).map_err(|e| read(e.to_string()))
    }

    pub fn parse(text: &str) -> Result<ApiKeys, KeysError> {
        let mut keys = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let bad = |reason| KeysError::Line { line: n + 1, reason };
            // Never the key in an error.
            let (name, key) = line.split_once(':').ok_or(bad("expected name:KEY or name:sha256:HEX"))?;
            if name.is_empty() {
                return Err(bad("empty name"));
            }
            let hash = match key.strip_prefix("sha256:") {
                Some(hex) => from_hex(hex).ok_or(bad("sha256: must be followed by 64 hex digits"))?,
                None if key.len() < 16 => return Err(bad("a key must have at least 16 characters")),
                None => sha256(key.as_bytes()),
            };
            keys.push((Arc::from(name), hash));
        }
        if keys.is_empty() {
            return Err(KeysError::Empty);
        }
        Ok(ApiKeys(arc_swap::ArcSwap::from_pointee(keys)))
    }

    /// From now on, `with`'s keys instead.
    pub fn replace(&self, with: ApiKeys) {
        self.0.store(with.0.load_full());
    }

    /// The keys' names.
    pub fn names(&self) -> Vec<Arc<str>> {
        self.0.load().iter().map(|(name, _)| Arc::clone(name)).collect()
    }

    /// How many keys there are.
    pub fn len(&self) -> usize {
        self.0.load().len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.load().is_empty()
    }

    /// The name of the key `presented` is, if it is one.
    pub fn check(&self, presented: &[u8]) -> Option<Arc<str>> {
        let hash = sha256(presented);
        let mut found = None;
        // Every key is compared, whether or not one matched already.
        for (name, known) in self.0.load().iter() {
            if constant_time_eq(known, &hash) && found.is_none() {
                found = Some(Arc::clone(name));
            }
        }
        found
    }
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    let mut out = [0; 32];
    out.copy_from_slice(digest(&SHA256, bytes).as_ref());
    out
}

fn from_hex(hex: &str) -> Option<[u8; 32]> {
    let hex = hex.as_bytes();
    if hex.len() != 64 {
        return None;
    }
    let mut out = [0; 32];
    for (i, pair) in hex.chunks(2).enumerate() {
        let digit = |c: u8| (c as char).to_digit(16);
        out[i] = (digit(pair[0])? * 16 + digit(pair[1])?) as u8;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_known_by_value_or_by_digest_and_never_echoed() {
        // sha256("another-key-0123456789")
        let hex: String = sha256(b"another-key-0123456789").iter().map(|b| format!("{b:02x}")).collect();
        let keys = ApiKeys::parse(&format!("# keys\napp:app-key-0123456789\n\nops:sha256:{hex}\n")).unwrap();
        assert_eq!(keys.check(b"app-key-0123456789").as_deref(), Some("app"));
        assert_eq!(keys.check(b"another-key-0123456789").as_deref(), Some("ops"));
        keys.replace(ApiKeys::parse("new:new-key-0123456789\n").unwrap());
        assert_eq!(keys.check(b"app-key-0123456789"), None, "replaced");
        assert_eq!(keys.check(b"new-key-0123456789").as_deref(), Some("new"));
        assert_eq!(keys.check(b"app-key-012345678"), None);
        assert_eq!(keys.check(b""), None);
        assert!(!format!("{keys:?}").contains("0123456789"));
        for (text, line) in
            [("app\n", 1), ("x:short\n", 1), ("\n:abcdefabcdefabcdef\n", 2), ("a:sha256:zz\n", 1)]
        {
            assert!(
                matches!(ApiKeys::parse(text), Err(KeysError::Line { line: l, .. }) if l == line),
                "{text:?}"
            );
        }
        assert_eq!(ApiKeys::parse("# none\n").unwrap_err(), KeysError::Empty);
        let err = ApiKeys::parse("app:secret-value-123\nbad line").unwrap_err().to_string();
        assert!(!err.contains("secret-value"), "{err}");
    }
}

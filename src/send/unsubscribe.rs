//! One-click unsubscribe (RFC 8058, with RFC 2369's `List-Unsubscribe`).
//!
//! Every message gets `List-Unsubscribe: <https://…/TOKEN>, <mailto:…?subject=unsubscribe%20TOKEN>`
//! and, with an HTTPS URL, `List-Unsubscribe-Post: List-Unsubscribe=One-Click`. The token names
//! the campaign and the recipient and carries an HMAC-SHA256 of both under the sender's secret,
//! so the web handler (or `volley token verify`) learns whom to unsubscribe from the token alone
//! and nobody can unsubscribe an address they only guessed:
//!
//! ```text
//! base64url("campaign" LF "recipient") "." base64url(HMAC-SHA256(secret, "volley-unsubscribe-v1" LF campaign LF recipient))
//! ```
//!
//! The secret comes from a file or the environment, never the command line (it would show in
//! `ps`), and never appears in a log, a report or a `Debug` print.

use std::path::Path;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::hmac;
use thiserror::Error;

use crate::proto::Address;

/// The environment variable the secret is read from when no file is given.
pub const SECRET_ENV: &str = "VOLLEY_UNSUBSCRIBE_SECRET";
/// Where the token goes in `--unsubscribe-url`.
const TOKEN_MARK: &str = "{{ token }}";
/// Shortest secret accepted: 128 bits, as a MAC key should have at least.
const MIN_SECRET: usize = 16;
/// Longest secret file read (a key, not a document).
const MAX_SECRET_FILE: u64 = 4096;
/// Separates the MAC's inputs from any other use of the same secret.
const CONTEXT: &[u8] = b"volley-unsubscribe-v1\n";

#[derive(Debug, Error, PartialEq, Eq)]
pub enum UnsubscribeError {
    #[error(
        "--unsubscribe-url/--unsubscribe-mailto need a secret: --unsubscribe-secret-file FILE or the \
         {SECRET_ENV} environment variable"
    )]
    NoSecret,
    #[error("unsubscribe secret {0}")]
    Secret(String),
    #[error("--unsubscribe-url {0}")]
    Url(String),
    #[error("--unsubscribe-mailto {0}")]
    Mailto(String),
}

/// Why a token is not valid.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum TokenError {
    #[error("not a volley unsubscribe token (expected PAYLOAD.MAC in base64url)")]
    Malformed,
    #[error("the token's MAC does not match: forged, altered, or made with another secret")]
    BadMac,
}

/// The HMAC key. Its `Debug` shows nothing of it.
#[derive(Clone)]
pub struct Secret(hmac::Key);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(…)")
    }
}

impl Secret {
    pub fn new(bytes: &[u8]) -> Result<Secret, UnsubscribeError> {
        if bytes.len() < MIN_SECRET {
            return Err(UnsubscribeError::Secret(format!(
                "is {} bytes: use at least {MIN_SECRET} random bytes (e.g. `openssl rand -hex 32`)",
                bytes.len()
            )));
        }
        Ok(Secret(hmac::Key::new(hmac::HMAC_SHA256, bytes)))
    }

    /// The secret from `file` (its content, a final line break left out) or, without a file,
    /// from the environment. `None`: neither was given.
    pub fn load(file: Option<&Path>) -> Result<Option<Secret>, UnsubscribeError> {
        let bytes = match file {
            Some(path) => {
                let error =
                    |what: String| UnsubscribeError::Secret(format!("file {}: {what}", path.display()));
                let meta = std::fs::metadata(path).map_err(|e| error(e.to_string()))?;
                if !meta.is_file() || meta.len() > MAX_SECRET_FILE {
                    return Err(error(format!("not a regular file of at most {MAX_SECRET_FILE} bytes")));
                }
                std::fs::read(path).map_err(|e| error(e.to_string()))?
            }
            None => match std::env::var_os(SECRET_ENV) {
                Some(value) => value.into_encoded_bytes(),
                None => return Ok(None),
            },
        };
        let trimmed = bytes.strip_suffix(b"\n").unwrap_or(&bytes);
        let trimmed = trimmed.strip_suffix(b"\r").unwrap_or(trimmed);
        Secret::new(trimmed).map(Some)
    }

    fn mac(&self, campaign: &str, recipient: &str) -> hmac::Tag {
        let mut ctx = hmac::Context::with_key(&self.0);
        for part in [CONTEXT, campaign.as_bytes(), b"\n", recipient.as_bytes()] {
            ctx.update(part);
        }
        ctx.sign()
    }

    /// The token for `recipient` of `campaign`.
    pub fn token(&self, campaign: &str, recipient: &str) -> String {
        let mut out = String::with_capacity((campaign.len() + recipient.len() + 1) * 4 / 3 + 48);
        self.write_token(campaign, recipient, &mut out);
        out
    }

    fn write_token(&self, campaign: &str, recipient: &str, out: &mut String) {
        let payload = [campaign, "\n", recipient].concat();
        URL_SAFE_NO_PAD.encode_string(payload.as_bytes(), out);
        out.push('.');
        URL_SAFE_NO_PAD.encode_string(self.mac(campaign, recipient).as_ref(), out);
    }

    /// The campaign and recipient a token names, if this secret made it. The MAC is compared
    /// in constant time.
    pub fn verify(&self, token: &str) -> Result<(String, String), TokenError> {
        let (payload, mac) = token.trim().split_once('.').ok_or(TokenError::Malformed)?;
        let payload = URL_SAFE_NO_PAD.decode(payload).map_err(|_| TokenError::Malformed)?;
        let mac = URL_SAFE_NO_PAD.decode(mac).map_err(|_| TokenError::Malformed)?;
        let payload = String::from_utf8(payload).map_err(|_| TokenError::Malformed)?;
        let (campaign, recipient) = payload.split_once('\n').ok_or(TokenError::Malformed)?;
        let mut ctx = Vec::with_capacity(CONTEXT.len() + payload.len());
        ctx.extend_from_slice(CONTEXT);
        ctx.extend_from_slice(payload.as_bytes());
        hmac::verify(&self.0, &ctx, &mac).map_err(|_| TokenError::BadMac)?;
        Ok((campaign.to_owned(), recipient.to_owned()))
    }
}

/// What a campaign's messages offer for unsubscribing, with the key that signs their tokens.
#[derive(Debug, Clone)]
pub struct Unsubscribe {
    /// Each URI of `List-Unsubscribe` as the text before and after its token: the HTTPS URL
    /// first (when given), then `mailto:ADDRESS?subject=unsubscribe%20`.
    uris: Vec<(String, String)>,
    /// The first URI is an HTTPS URL.
    one_click: bool,
    secret: Secret,
}

impl Unsubscribe {
    /// Each URI of `List-Unsubscribe` as the text before and after its token.
    pub fn uri_parts(&self) -> &[(String, String)] {
        &self.uris
    }

    /// `url` must be HTTPS (RFC 8058 §3.1) with `{{ token }}` in it once; `mailto` an address.
    pub fn new(
        url: Option<&str>,
        mailto: Option<&str>,
        secret: Secret,
    ) -> Result<Unsubscribe, UnsubscribeError> {
        let mut uris: Vec<(String, String)> = url.map(parse_url).transpose()?.into_iter().collect();
        let one_click = !uris.is_empty();
        if let Some(m) = mailto {
            let m = m.trim();
            let m = m.strip_prefix("mailto:").unwrap_or(m);
            let address = Address::new(m).map_err(|e| UnsubscribeError::Mailto(format!("`{m}`: {e}")))?;
            uris.push((format!("mailto:{address}?subject=unsubscribe%20"), String::new()));
        }
        Ok(Unsubscribe { uris, one_click, secret })
    }

    pub fn secret(&self) -> &Secret {
        &self.secret
    }

    /// Whether the messages offer one-click (an HTTPS URL): then `List-Unsubscribe-Post` goes
    /// with `List-Unsubscribe`.
    pub fn one_click(&self) -> bool {
        self.one_click
    }

    /// The recipient's unsubscribe URL (for `{{ unsubscribe_url }}` in the body).
    pub fn url(&self, campaign: &str, recipient: &str) -> Option<String> {
        let (before, after) = self.uris.first().filter(|_| self.one_click)?;
        Some([before, self.secret.token(campaign, recipient).as_str(), after].concat())
    }

    /// The URIs of the recipient's `List-Unsubscribe`, HTTPS first (without the angle brackets).
    pub fn uris(&self, campaign: &str, recipient: &str) -> Vec<String> {
        let token = self.secret.token(campaign, recipient);
        self.uris.iter().map(|(before, after)| [before, token.as_str(), after].concat()).collect()
    }

    /// The `List-Unsubscribe` value (`<uri>, <uri>`, the URIs of [`Unsubscribe::uris`]),
    /// appended to `out`. Runs for every message: the token is made once.
    pub fn write_header_value(&self, campaign: &str, recipient: &str, out: &mut String) {
        let token = self.secret.token(campaign, recipient);
        for (i, (before, after)) in self.uris.iter().enumerate() {
            if i > 0 {
                out.push_str(", ");
            }
            for part in ["<", before, &token, after, ">"] {
                out.push_str(part);
            }
        }
    }
}

/// `https://host/path{{ token }}rest` split at its token.
fn parse_url(url: &str) -> Result<(String, String), UnsubscribeError> {
    let url = url.trim();
    let error = |why: &str| UnsubscribeError::Url(format!("`{url}`: {why}"));
    if !url.get(..8).is_some_and(|s| s.eq_ignore_ascii_case("https://")) {
        return Err(error("one-click unsubscribe needs an https:// URL (RFC 8058)"));
    }
    let normalised = url.replace("{{token}}", TOKEN_MARK);
    let (before, after) = normalised
        .split_once(TOKEN_MARK)
        .ok_or_else(|| error("has no {{ token }}: the URL must tell the recipients apart"))?;
    if after.contains(TOKEN_MARK) || before.contains("{{") || after.contains("{{") {
        return Err(error("may hold `{{ token }}` once and no other variable"));
    }
    // The URL goes between angle brackets in a header: nothing in it may end it there.
    let bad = |b: u8| b <= b' ' || b >= 0x7f || matches!(b, b'<' | b'>' | b'"' | b',');
    if before.bytes().chain(after.bytes()).any(bad) {
        return Err(error(
            "spaces, control characters, non-ASCII, `<`, `>`, `\"` and `,` must be percent-encoded",
        ));
    }
    Ok((before.to_owned(), after.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret() -> Secret {
        Secret::new(b"0123456789abcdef0123456789abcdef").unwrap()
    }

    #[test]
    fn a_token_verifies_to_its_campaign_and_recipient_and_nothing_else_does() {
        let s = secret();
        let token = s.token("spring-sale", "Ann.Lee@Example.com");
        assert!(token.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)), "{token}");
        assert_eq!(s.verify(&token), Ok(("spring-sale".into(), "Ann.Lee@Example.com".into())));
        // Another secret, a changed recipient or campaign, a truncated MAC: all refused.
        let other = Secret::new(b"another secret of enough length").unwrap();
        assert_eq!(other.verify(&token), Err(TokenError::BadMac));
        let (payload, mac) = token.split_once('.').unwrap();
        let forged = URL_SAFE_NO_PAD.encode("spring-sale\nbob@example.com");
        assert_eq!(s.verify(&format!("{forged}.{mac}")), Err(TokenError::BadMac));
        assert_eq!(s.verify(&format!("{payload}.{}", &mac[..20])), Err(TokenError::BadMac));
        for bad in ["", "nodot", "!!.!!", ".", "YQ.YQ"] {
            assert!(s.verify(bad).is_err(), "{bad:?}");
        }
        // The campaign is part of the MAC: the same recipient in another campaign differs.
        assert_ne!(s.token("autumn", "Ann.Lee@Example.com"), token);
    }

    #[test]
    fn secrets_are_checked_and_never_printed() {
        assert!(matches!(Secret::new(b"short"), Err(UnsubscribeError::Secret(_))));
        let dir = std::env::temp_dir().join(format!("volley-unsub-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("secret");
        std::fs::write(&file, "0123456789abcdef-from-a-file\n").unwrap();
        let from_file = Secret::load(Some(&file)).unwrap().unwrap();
        // The final line break is not part of the key.
        let direct = Secret::new(b"0123456789abcdef-from-a-file").unwrap();
        assert_eq!(
            direct.verify(&from_file.token("c", "a@b.example")).map(|v| v.1),
            Ok("a@b.example".into())
        );
        assert_eq!(format!("{from_file:?}"), "Secret(…)");
        assert!(Secret::load(Some(&dir.join("missing"))).is_err());
        assert!(Secret::load(Some(&dir)).is_err(), "a directory");
        let _ = std::fs::remove_dir_all(&dir);
        let u = Unsubscribe::new(Some("https://x.example/u/{{ token }}"), None, from_file).unwrap();
        assert!(!format!("{u:?}").contains("from-a-file"));
    }

    #[test]
    fn urls_and_mailto_are_validated() {
        let cases: &[(&str, bool)] = &[
            ("https://example.com/u/{{ token }}", true),
            ("https://example.com/u?t={{token}}&x=1", true),
            ("HTTPS://example.com/{{ token }}/done", true),
            ("http://example.com/u/{{ token }}", false),
            ("https://example.com/u/", false),
            ("https://example.com/u/{{ token }}/{{ token }}", false),
            ("https://example.com/{{ email }}/{{ token }}", false),
            ("https://example.com/u/{{ token }}>,<https://evil", false),
            ("https://example.com/u/{{ token }}\r\nBcc: x@y", false),
            ("https://exa mple.com/{{ token }}", false),
        ];
        for (url, ok) in cases {
            assert_eq!(Unsubscribe::new(Some(url), None, secret()).is_ok(), *ok, "{url:?}");
        }
        assert!(Unsubscribe::new(None, Some("mailto:unsub@example.com"), secret()).is_ok());
        assert!(Unsubscribe::new(None, Some("not an address"), secret()).is_err());
        assert!(Unsubscribe::new(None, Some("a@b.example\r\nBcc: x@y"), secret()).is_err());
    }

    #[test]
    fn the_header_value_lists_https_then_mailto_with_the_same_token() {
        let u = Unsubscribe::new(
            Some("https://example.com/u/{{ token }}?l=en"),
            Some("unsub@example.com"),
            secret(),
        )
        .unwrap();
        let token = secret().token("c1", "ann@example.org");
        let mut value = String::new();
        u.write_header_value("c1", "ann@example.org", &mut value);
        assert_eq!(
            value,
            format!(
                "<https://example.com/u/{token}?l=en>, <mailto:unsub@example.com?subject=unsubscribe%20{token}>"
            )
        );
        assert!(u.one_click());
        let mailto_only = Unsubscribe::new(None, Some("unsub@example.com"), secret()).unwrap();
        assert!(!mailto_only.one_click(), "one-click needs an HTTPS URL");
        assert_eq!(mailto_only.uris("c1", "ann@example.org").len(), 1);
    }
}

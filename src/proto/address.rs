//! Mailbox and domain validation: the guard between user input and the command encoder.
//!
//! Every address that reaches `MAIL FROM` or `RCPT TO` passed through [`Address::new`], which
//! refuses anything that could end or extend a command line (CR, LF, NUL, `<`, `>`, other control
//! characters, unquoted spaces) and anything over the RFC 5321 §4.5.3.1 size limits.

use std::fmt;
use std::sync::Arc;

use thiserror::Error;

pub const MAX_LOCAL_PART: usize = 64;
pub const MAX_DOMAIN: usize = 255;
/// A path is at most 256 octets including the angle brackets.
pub const MAX_PATH: usize = 256;

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum AddressError {
    #[error("empty address")]
    Empty,
    #[error("forbidden character {byte:#04x} at offset {offset}")]
    ForbiddenCharacter { byte: u8, offset: usize },
    #[error("no '@' in address")]
    MissingAt,
    #[error("empty local part")]
    EmptyLocalPart,
    #[error("empty domain")]
    EmptyDomain,
    #[error("local part is {len} octets (limit {MAX_LOCAL_PART})")]
    LocalPartTooLong { len: usize },
    #[error("domain is {len} octets (limit {MAX_DOMAIN})")]
    DomainTooLong { len: usize },
    #[error("path is {len} octets with brackets (limit {MAX_PATH})")]
    PathTooLong { len: usize },
}

/// A validated mailbox (`local@domain`). Cheap to clone: recipients of a bulk job share text.
///
/// ```
/// use mailvolley::proto::{Address, AddressError};
///
/// assert_eq!(Address::new("user@example.com").unwrap().domain(), "example.com");
/// // What would end the command line early is refused, so it can never reach the wire.
/// assert!(matches!(
///     Address::new("a@b>\r\nRCPT TO:<victim@x"),
///     Err(AddressError::ForbiddenCharacter { .. })
/// ));
/// ```
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Address {
    text: Arc<str>,
    at: u16,
    utf8: bool,
}

impl Address {
    pub fn new(text: &str) -> Result<Address, AddressError> {
        let bytes = text.as_bytes();
        if bytes.is_empty() {
            return Err(AddressError::Empty);
        }
        if bytes.len() + 2 > MAX_PATH {
            return Err(AddressError::PathTooLong { len: bytes.len() + 2 });
        }
        let at = bytes.iter().rposition(|&b| b == b'@').ok_or(AddressError::MissingAt)?;
        let (local, domain) = (&bytes[..at], &bytes[at + 1..]);
        if local.is_empty() {
            return Err(AddressError::EmptyLocalPart);
        }
        if domain.is_empty() {
            return Err(AddressError::EmptyDomain);
        }
        if local.len() > MAX_LOCAL_PART {
            return Err(AddressError::LocalPartTooLong { len: local.len() });
        }
        if domain.len() > MAX_DOMAIN {
            return Err(AddressError::DomainTooLong { len: domain.len() });
        }
        // Nearly every address has no space or forbidden octet: one pass without early exit
        // (so it vectorises) says so; the loop below finds which and where.
        let suspect = |b: u8| forbidden(b) || b == b' ';
        let quoted = local.len() >= 2 && local[0] == b'"' && local[local.len() - 1] == b'"';
        let scan = if bytes.iter().fold(false, |any, &b| any | suspect(b)) { bytes } else { &[] };
        for (offset, &byte) in scan.iter().enumerate() {
            let space_ok = quoted && offset > 0 && offset < at - 1;
            if forbidden(byte) || (byte == b' ' && !space_ok) {
                return Err(AddressError::ForbiddenCharacter { byte, offset });
            }
        }
        // at < MAX_PATH, so it fits.
        Ok(Address { text: text.into(), at: at as u16, utf8: !text.is_ascii() })
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The text, shared (a copy costs a reference count, not an allocation).
    pub fn shared(&self) -> Arc<str> {
        Arc::clone(&self.text)
    }

    pub fn local_part(&self) -> &str {
        &self.text[..usize::from(self.at)]
    }

    pub fn domain(&self) -> &str {
        &self.text[usize::from(self.at) + 1..]
    }

    /// Non-ASCII addresses can only be sent to servers offering SMTPUTF8 (RFC 6531).
    pub fn needs_smtputf8(&self) -> bool {
        self.utf8
    }
}

impl fmt::Debug for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "<{}>", self.text)
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

fn forbidden(byte: u8) -> bool {
    byte < 0x20 || byte == 0x7f || byte == b'<' || byte == b'>'
}

/// A validated domain or address literal for EHLO/HELO.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Domain(Arc<str>);

impl Domain {
    pub fn new(text: &str) -> Result<Domain, AddressError> {
        if text.is_empty() {
            return Err(AddressError::EmptyDomain);
        }
        if text.len() > MAX_DOMAIN {
            return Err(AddressError::DomainTooLong { len: text.len() });
        }
        if let Some((offset, &byte)) =
            text.as_bytes().iter().enumerate().find(|&(_, &b)| forbidden(b) || b == b' ')
        {
            return Err(AddressError::ForbiddenCharacter { byte, offset });
        }
        Ok(Domain(text.into()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_addresses() {
        for (text, local, domain, utf8) in [
            ("a@b", "a", "b", false),
            ("user.name+tag@example.com", "user.name+tag", "example.com", false),
            ("\"john doe\"@example.com", "\"john doe\"", "example.com", false),
            ("\"a@b\"@example.com", "\"a@b\"", "example.com", false),
            ("postmaster@[192.0.2.1]", "postmaster", "[192.0.2.1]", false),
            ("j\u{f6}rg@m\u{fc}ller.de", "j\u{f6}rg", "m\u{fc}ller.de", true),
        ] {
            let a = Address::new(text).unwrap();
            assert_eq!((a.local_part(), a.domain(), a.needs_smtputf8()), (local, domain, utf8));
            assert_eq!(a.as_str(), text);
        }
    }

    #[test]
    fn injection_and_malformed_addresses_are_rejected() {
        use AddressError::*;
        let fc = |byte, offset| ForbiddenCharacter { byte, offset };
        let cases: &[(&str, AddressError)] = &[
            ("", Empty),
            ("a@b\r\nRCPT TO:<x@y>", fc(b'\r', 3)),
            ("a@b\nDATA", fc(b'\n', 3)),
            ("a\0@b", fc(0, 1)),
            ("a@b>", fc(b'>', 3)),
            ("<a@b", fc(b'<', 0)),
            ("a@b> SIZE=1", fc(b'>', 3)),
            ("a b@c", fc(b' ', 1)),
            ("a@b c", fc(b' ', 3)),
            ("\"a b@c", fc(b' ', 2)),
            ("a\x7f@b", fc(0x7f, 1)),
            ("a\t@b", fc(b'\t', 1)),
            ("nobody", MissingAt),
            ("@b", EmptyLocalPart),
            ("a@", EmptyDomain),
        ];
        for (text, err) in cases {
            assert_eq!(Address::new(text).unwrap_err(), *err, "{text:?}");
        }
    }

    #[test]
    fn length_limits() {
        let local64 = "l".repeat(64);
        assert!(Address::new(&format!("{local64}@b")).is_ok());
        assert_eq!(
            Address::new(&format!("{local64}l@b")).unwrap_err(),
            AddressError::LocalPartTooLong { len: 65 }
        );
        // 254 octets is the longest address whose path (with brackets) fits in 256.
        let domain = "d".repeat(254 - 2);
        assert!(Address::new(&format!("a@{domain}")).is_ok());
        assert_eq!(
            Address::new(&format!("a@{domain}d")).unwrap_err(),
            AddressError::PathTooLong { len: 257 }
        );
    }

    #[test]
    fn domains() {
        assert!(Domain::new("mx.example").is_ok());
        assert!(Domain::new("[127.0.0.1]").is_ok());
        assert_eq!(Domain::new("").unwrap_err(), AddressError::EmptyDomain);
        assert_eq!(
            Domain::new("a b").unwrap_err(),
            AddressError::ForbiddenCharacter { byte: b' ', offset: 1 }
        );
        assert_eq!(
            Domain::new("a\r\nQUIT").unwrap_err(),
            AddressError::ForbiddenCharacter { byte: b'\r', offset: 1 }
        );
        assert_eq!(Domain::new(&"d".repeat(256)).unwrap_err(), AddressError::DomainTooLong { len: 256 });
    }
}

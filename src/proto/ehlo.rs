//! EHLO capabilities (RFC 5321 §4.1.1.1 and the extensions volley uses), parsed once per session
//! into a typed set.

use super::reply::ReplyRef;

/// SASL mechanisms a server may offer after `AUTH`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct AuthMechanisms(u8);

impl AuthMechanisms {
    pub const PLAIN: AuthMechanisms = AuthMechanisms(1);
    pub const LOGIN: AuthMechanisms = AuthMechanisms(1 << 1);
    pub const CRAM_MD5: AuthMechanisms = AuthMechanisms(1 << 2);
    pub const XOAUTH2: AuthMechanisms = AuthMechanisms(1 << 3);
    pub const OAUTHBEARER: AuthMechanisms = AuthMechanisms(1 << 4);
    pub const SCRAM_SHA_1: AuthMechanisms = AuthMechanisms(1 << 5);
    pub const SCRAM_SHA_256: AuthMechanisms = AuthMechanisms(1 << 6);

    const NAMES: [(&str, AuthMechanisms); 7] = [
        ("PLAIN", AuthMechanisms::PLAIN),
        ("LOGIN", AuthMechanisms::LOGIN),
        ("CRAM-MD5", AuthMechanisms::CRAM_MD5),
        ("XOAUTH2", AuthMechanisms::XOAUTH2),
        ("OAUTHBEARER", AuthMechanisms::OAUTHBEARER),
        ("SCRAM-SHA-1", AuthMechanisms::SCRAM_SHA_1),
        ("SCRAM-SHA-256", AuthMechanisms::SCRAM_SHA_256),
    ];

    fn from_name(name: &str) -> Option<AuthMechanisms> {
        Self::NAMES.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|&(_, m)| m)
    }

    pub fn contains(self, other: AuthMechanisms) -> bool {
        self.0 & other.0 == other.0 && other.0 != 0
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }
}

impl std::ops::BitOr for AuthMechanisms {
    type Output = AuthMechanisms;

    fn bitor(self, other: AuthMechanisms) -> AuthMechanisms {
        AuthMechanisms(self.0 | other.0)
    }
}

impl std::fmt::Display for AuthMechanisms {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> =
            Self::NAMES.iter().filter(|(_, m)| self.contains(*m)).map(|&(n, _)| n).collect();
        if names.is_empty() { f.write_str("nothing") } else { f.write_str(&names.join(" ")) }
    }
}

/// What a server advertised in its EHLO reply.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Capabilities {
    /// The domain the server named on the first line.
    pub domain: String,
    pub pipelining: bool,
    /// `SIZE` advertised; `Some(0)` means advertised without a fixed limit (RFC 1870).
    pub size: Option<u64>,
    pub eight_bit_mime: bool,
    pub smtputf8: bool,
    pub starttls: bool,
    pub auth: AuthMechanisms,
    pub chunking: bool,
    pub binarymime: bool,
    pub enhanced_status_codes: bool,
    pub dsn: bool,
    pub requiretls: bool,
    /// Keywords we do not act on, kept for logs and diagnostics.
    pub unknown: Vec<String>,
}

impl Capabilities {
    /// Parses an EHLO reply. The caller checks that it is positive first.
    pub fn from_ehlo(reply: &ReplyRef<'_>) -> Capabilities {
        let mut caps = Capabilities::default();
        let mut lines = reply.lines();
        if let Some(first) = lines.next() {
            caps.domain = first.split_ascii_whitespace().next().unwrap_or("").to_owned();
        }
        for line in lines {
            caps.add_line(line);
        }
        caps
    }

    /// A server that answered HELO only: no extensions.
    pub fn helo_only(domain: &str) -> Capabilities {
        Capabilities { domain: domain.to_owned(), ..Capabilities::default() }
    }

    fn add_line(&mut self, line: &str) {
        let mut words = line.split_ascii_whitespace();
        let Some(keyword) = words.next() else { return };
        // Old servers advertise "AUTH=LOGIN PLAIN"; treat it like "AUTH LOGIN PLAIN".
        let (keyword, first_param) = match keyword.split_once('=') {
            Some((k, p)) if k.eq_ignore_ascii_case("AUTH") => (k, Some(p)),
            _ => (keyword, None),
        };
        let is = |name: &str| keyword.eq_ignore_ascii_case(name);
        if is("PIPELINING") {
            self.pipelining = true;
        } else if is("SIZE") {
            // A malformed limit is treated as "no declared limit" rather than failing the session.
            self.size = Some(words.next().and_then(|n| n.parse().ok()).unwrap_or(0));
        } else if is("8BITMIME") {
            self.eight_bit_mime = true;
        } else if is("SMTPUTF8") {
            self.smtputf8 = true;
        } else if is("STARTTLS") {
            self.starttls = true;
        } else if is("AUTH") {
            for name in first_param.into_iter().chain(words) {
                if let Some(m) = AuthMechanisms::from_name(name) {
                    self.auth.0 |= m.0;
                }
            }
        } else if is("CHUNKING") {
            self.chunking = true;
        } else if is("BINARYMIME") {
            self.binarymime = true;
        } else if is("ENHANCEDSTATUSCODES") {
            self.enhanced_status_codes = true;
        } else if is("DSN") {
            self.dsn = true;
        } else if is("REQUIRETLS") {
            self.requiretls = true;
        } else {
            self.unknown.push(line.to_owned());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::reply::ReplyParser;

    fn caps(raw: &[u8]) -> Capabilities {
        let (reply, _) = ReplyParser::new().parse(raw).unwrap().unwrap();
        Capabilities::from_ehlo(&reply)
    }

    #[test]
    fn parses_every_known_keyword() {
        let c = caps(
            b"250-mx.example.org Hello\r\n250-PIPELINING\r\n250-SIZE 10240000\r\n250-8BITMIME\r\n\
              250-SMTPUTF8\r\n250-STARTTLS\r\n250-AUTH PLAIN LOGIN XOAUTH2\r\n250-CHUNKING\r\n\
              250-BINARYMIME\r\n250-ENHANCEDSTATUSCODES\r\n250-DSN\r\n250-REQUIRETLS\r\n\
              250 X-FOO bar\r\n",
        );
        assert_eq!(c.domain, "mx.example.org");
        assert!(c.pipelining && c.eight_bit_mime && c.smtputf8 && c.starttls);
        assert!(c.chunking && c.binarymime && c.enhanced_status_codes && c.dsn && c.requiretls);
        assert_eq!(c.size, Some(10_240_000));
        assert!(c.auth.contains(AuthMechanisms::PLAIN));
        assert!(c.auth.contains(AuthMechanisms::LOGIN));
        assert!(c.auth.contains(AuthMechanisms::XOAUTH2));
        assert!(!c.auth.contains(AuthMechanisms::CRAM_MD5));
        assert_eq!(c.unknown, vec!["X-FOO bar".to_owned()]);
    }

    #[test]
    fn keyword_table() {
        type Check = fn(&Capabilities) -> bool;
        let cases: &[(&[u8], Check)] = &[
            (b"250-x\r\n250 pipelining\r\n", |c| c.pipelining),
            (b"250-x\r\n250 Chunking\r\n", |c| c.chunking),
            (b"250-x\r\n250 SIZE\r\n", |c| c.size == Some(0)),
            (b"250-x\r\n250 SIZE junk\r\n", |c| c.size == Some(0)),
            (b"250-x\r\n250 size 42\r\n", |c| c.size == Some(42)),
            (b"250-x\r\n250 AUTH=LOGIN PLAIN\r\n", |c| {
                c.auth.contains(AuthMechanisms::LOGIN) && c.auth.contains(AuthMechanisms::PLAIN)
            }),
            (b"250-x\r\n250 AUTH cram-md5 UNKNOWN-MECH\r\n", |c| c.auth == AuthMechanisms::CRAM_MD5),
            (b"250 x\r\n", |c| *c == Capabilities::helo_only("x")),
            (b"250-x\r\n250 PIPELININGX\r\n", |c| !c.pipelining && c.unknown.len() == 1),
        ];
        for (raw, check) in cases {
            assert!(check(&caps(raw)), "{}", String::from_utf8_lossy(raw));
        }
    }
}

//! MTA-STS (RFC 8461): what a receiving domain publishes, as volley reads it. The TXT record
//! at `_mta-sts.DOMAIN` (§3.1, parsed by mail-auth) says which policy is current by its `id`;
//! the policy (§3.2), fetched over HTTPS from `https://mta-sts.DOMAIN/.well-known/mta-sts.txt`,
//! says the mode, the MX hosts allowed (§4.1: a name, or `*.` and a name for one more label)
//! and how long it may be cached.
//!
//! This module is the sans-IO part: parsing and matching, no network; `fetch.rs` gets a policy
//! over HTTPS; `cache.rs` keeps policies and decides when to fetch; `lookup.rs` puts them
//! together on the DNS thread, beside the MX lookup. A policy in `enforce` mode narrows the
//! domain's MX hosts to those it lists and makes its destination require TLS with a checked
//! certificate (`engine::Destination::verified_tls`).

pub mod cache;
pub mod fetch;
pub mod lookup;

use mail_auth::common::parse::TxtRecordParser as _;
use thiserror::Error;

/// The longest a policy may be cached (§3.2: about a year).
pub const MAX_AGE_LIMIT: u64 = 31_557_600;

/// The largest policy body read (§3.3 asks senders to bound it; real ones are a few hundred
/// octets).
pub const MAX_POLICY_SIZE: usize = 64 * 1024;

/// What a policy asks of senders.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Deliver only to a listed MX host, over TLS with a certificate valid for its name.
    Enforce,
    /// Deliver as before; report what would have failed.
    Testing,
    /// No policy (a domain withdrawing one publishes this).
    None,
}

/// An allowed MX host: a name, or every name one label longer (`*.example.com`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MxPattern {
    Exact(String),
    /// The suffix after `*.`, lower case.
    Wildcard(String),
}

impl MxPattern {
    fn parse(text: &str) -> MxPattern {
        let text = text.trim_end_matches('.').to_ascii_lowercase();
        match text.strip_prefix("*.") {
            Some(suffix) => MxPattern::Wildcard(suffix.to_owned()),
            None => MxPattern::Exact(text),
        }
    }

    /// Whether `host` (an MX host's name as DNS gave it; case and a final dot do not matter)
    /// matches: a wildcard stands for exactly one leftmost label (§4.1: `*.example.com`
    /// matches `mx1.example.com`, not `example.com` nor `a.b.example.com`).
    pub fn matches(&self, host: &str) -> bool {
        let host = host.trim_end_matches('.');
        match self {
            MxPattern::Exact(name) => host.eq_ignore_ascii_case(name),
            MxPattern::Wildcard(suffix) => match host.split_once('.') {
                Some((label, rest)) => !label.is_empty() && rest.eq_ignore_ascii_case(suffix),
                None => false,
            },
        }
    }
}

/// A parsed policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    pub mode: Mode,
    pub mx: Vec<MxPattern>,
    /// Seconds it may be cached (capped at [`MAX_AGE_LIMIT`]).
    pub max_age: u64,
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum PolicyError {
    #[error("policy larger than {MAX_POLICY_SIZE} octets")]
    TooLarge,
    #[error("policy is not UTF-8")]
    NotText,
    #[error("policy has no `{0}` field")]
    Missing(&'static str),
    #[error("policy's version is {0:?}, not STSv1")]
    Version(String),
    #[error("policy's mode is {0:?} (enforce, testing or none)")]
    Mode(String),
    #[error("policy's max_age is {0:?}, not a number of seconds")]
    MaxAge(String),
    #[error("policy line {0:?} is not `name: value`")]
    Line(String),
}

impl Policy {
    /// Parses a policy body: `name: value` lines ended by LF or CRLF (§3.2, with erratum 6253),
    /// blanks around names and values ignored. `version`, `mode` and `max_age` are required,
    /// and at least one `mx` unless the mode is `none`; unknown fields are ignored (for
    /// extensions), and of a field other than `mx` given twice the first counts.
    pub fn parse(body: &[u8]) -> Result<Policy, PolicyError> {
        if body.len() > MAX_POLICY_SIZE {
            return Err(PolicyError::TooLarge);
        }
        let text = std::str::from_utf8(body).map_err(|_| PolicyError::NotText)?;
        let (mut version, mut mode, mut max_age) = (None, None, None);
        let mut mx = Vec::new();
        for line in text.split('\n') {
            let line = line.strip_suffix('\r').unwrap_or(line).trim_matches([' ', '\t']);
            if line.is_empty() {
                continue;
            }
            let Some((name, value)) = line.split_once(':') else {
                return Err(PolicyError::Line(line.chars().take(80).collect()));
            };
            let value = value.trim_matches([' ', '\t']);
            match name.trim_end_matches([' ', '\t']) {
                "version" => {
                    version.get_or_insert(value);
                }
                "mode" => {
                    mode.get_or_insert(value);
                }
                "max_age" => {
                    max_age.get_or_insert(value);
                }
                "mx" if !value.is_empty() => mx.push(MxPattern::parse(value)),
                _ => {}
            }
        }
        match version {
            Some("STSv1") => {}
            Some(other) => return Err(PolicyError::Version(other.to_owned())),
            None => return Err(PolicyError::Missing("version")),
        }
        let mode = match mode {
            Some("enforce") => Mode::Enforce,
            Some("testing") => Mode::Testing,
            Some("none") => Mode::None,
            Some(other) => return Err(PolicyError::Mode(other.to_owned())),
            None => return Err(PolicyError::Missing("mode")),
        };
        let max_age = match max_age {
            // 1*10 DIGIT in the ABNF; anything above the limit is the limit.
            Some(v) if (1..=10).contains(&v.len()) && v.bytes().all(|b| b.is_ascii_digit()) => {
                v.parse::<u64>().map_err(|_| PolicyError::MaxAge(v.to_owned()))?.min(MAX_AGE_LIMIT)
            }
            Some(v) => return Err(PolicyError::MaxAge(v.to_owned())),
            None => return Err(PolicyError::Missing("max_age")),
        };
        if mx.is_empty() && mode != Mode::None {
            return Err(PolicyError::Missing("mx"));
        }
        Ok(Policy { mode, mx, max_age })
    }

    /// The policy as a policy file says it (what the cache keeps).
    pub fn to_text(&self) -> String {
        let mode = match self.mode {
            Mode::Enforce => "enforce",
            Mode::Testing => "testing",
            Mode::None => "none",
        };
        let mut text = format!("version: STSv1\nmode: {mode}\n");
        for mx in &self.mx {
            match mx {
                MxPattern::Exact(name) => text.push_str(&format!("mx: {name}\n")),
                MxPattern::Wildcard(suffix) => text.push_str(&format!("mx: *.{suffix}\n")),
            }
        }
        text.push_str(&format!("max_age: {}\n", self.max_age));
        text
    }

    /// Whether `host` is one of the MX hosts the policy allows.
    pub fn allows(&self, host: &str) -> bool {
        self.mx.iter().any(|p| p.matches(host))
    }
}

/// The policy id a domain's `_mta-sts` TXT records name (`v=STSv1; id=...`). RFC 8461 §3.1:
/// records not beginning with `v=STSv1` are discarded; unless exactly one is left, and it
/// parses, the domain has no policy (`None`).
pub fn record_id(records: &[&str]) -> Option<String> {
    let mut sts = records.iter().filter(|r| r.trim_start().starts_with("v=STSv1"));
    match (sts.next(), sts.next()) {
        (Some(one), None) => mail_auth::mta_sts::MtaSts::parse(one.as_bytes()).ok().map(|r| r.id),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Whatever a web server sends: a policy that keeps the rules, or an error, never a
        /// panic.
        #[test]
        fn any_body_is_a_policy_or_an_error(body in prop::collection::vec(any::<u8>(), 0..400)) {
            if let Ok(p) = Policy::parse(&body) {
                prop_assert!(p.max_age <= MAX_AGE_LIMIT);
                prop_assert!(p.mode == Mode::None || !p.mx.is_empty());
            }
        }

        #[test]
        fn a_wildcard_matches_one_label_only(label in "[a-z0-9]{1,10}", extra in "[a-z0-9]{1,10}") {
            let p = MxPattern::parse("*.mx.example.com");
            let one_label = format!("{label}.mx.example.com");
            let two_labels = format!("{extra}.{label}.mx.example.com");
            prop_assert!(p.matches(&one_label));
            prop_assert!(!p.matches(&two_labels));
        }
    }

    /// The policy of RFC 8461 §3.2's example.
    const RFC_EXAMPLE: &str = "version: STSv1\r\nmode: enforce\r\nmx: mail.example.com\r\nmx: *.example.net\r\nmx: backupmx.example.com\r\nmax_age: 604800\r\n";

    #[test]
    fn the_rfcs_example_policy() {
        let p = Policy::parse(RFC_EXAMPLE.as_bytes()).unwrap();
        assert_eq!(p.mode, Mode::Enforce);
        assert_eq!(p.max_age, 604_800);
        assert_eq!(p.mx.len(), 3);
        assert!(p.allows("mail.example.com") && p.allows("MAIL.Example.COM."));
        assert!(p.allows("mx1.example.net") && p.allows("backupmx.example.com"));
        assert!(!p.allows("example.net"), "a wildcard needs its one label");
        assert!(!p.allows("a.b.example.net"), "and only one");
        assert!(!p.allows("mail.example.org") && !p.allows("xmail.example.com"));
    }

    #[test]
    fn lines_blanks_and_unknown_fields() {
        let p = Policy::parse(
            b"  version : STSv1 \nmode:testing\n\nmx:mx.a.test\nmax_age: 86400\nfuture_field: 1\n",
        )
        .unwrap();
        assert_eq!((p.mode, p.max_age), (Mode::Testing, 86_400));
        assert_eq!(p.mx, vec![MxPattern::Exact("mx.a.test".into())]);
        let p = Policy::parse(b"version: STSv1\nmode: none\nmax_age: 99999999999\n");
        assert_eq!(p, Err(PolicyError::MaxAge("99999999999".into())), "more than 10 digits");
        let p = Policy::parse(b"version: STSv1\nmode: none\nmax_age: 9999999999\n").unwrap();
        assert_eq!(
            (p.mode, p.max_age, p.mx.len()),
            (Mode::None, MAX_AGE_LIMIT, 0),
            "capped; none needs no mx"
        );
        let p =
            Policy::parse(b"version: STSv1\nmode: enforce\nmode: none\nmx: a.test\nmax_age: 1\n").unwrap();
        assert_eq!(p.mode, Mode::Enforce, "the first of a repeated field counts");
    }

    #[test]
    fn what_is_not_a_policy() {
        let parse = |s: &str| Policy::parse(s.as_bytes());
        assert_eq!(parse("mode: enforce\nmx: a.test\nmax_age: 1"), Err(PolicyError::Missing("version")));
        assert_eq!(
            parse("version: STSv2\nmode: enforce\nmx: a.test\nmax_age: 1"),
            Err(PolicyError::Version("STSv2".into()))
        );
        assert_eq!(
            parse("version: STSv1\nmode: strict\nmx: a.test\nmax_age: 1"),
            Err(PolicyError::Mode("strict".into()))
        );
        assert_eq!(parse("version: STSv1\nmode: enforce\nmax_age: 1"), Err(PolicyError::Missing("mx")));
        assert_eq!(parse("version: STSv1\nmode: enforce\nmx: a.test"), Err(PolicyError::Missing("max_age")));
        assert_eq!(
            parse("version: STSv1\nmode: enforce\nmx: a.test\nmax_age: -1"),
            Err(PolicyError::MaxAge("-1".into()))
        );
        assert!(matches!(parse("<html>\n<body>not found</body>"), Err(PolicyError::Line(_))));
        assert_eq!(Policy::parse(&[0xff, 0xfe]), Err(PolicyError::NotText));
        assert_eq!(Policy::parse(&vec![b' '; MAX_POLICY_SIZE + 1]), Err(PolicyError::TooLarge));
    }

    #[test]
    fn txt_records() {
        // §3.1's example.
        assert_eq!(record_id(&["v=STSv1; id=20160831085700Z;"]).as_deref(), Some("20160831085700Z"));
        assert_eq!(
            record_id(&["v=spf1 -all", "v=STSv1; id=abc"]).as_deref(),
            Some("abc"),
            "others are ignored"
        );
        assert_eq!(record_id(&["v=STSv1; id=a", "v=STSv1; id=b"]), None, "two policies: none");
        assert_eq!(record_id(&["v=STSv1;"]), None, "no id");
        assert_eq!(record_id(&["v=STSv1; id=a", "v=STSv1;"]), None, "two records begin with v=STSv1");
        assert_eq!(record_id(&[]), None);
    }
}

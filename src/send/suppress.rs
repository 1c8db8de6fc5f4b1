//! `--suppress FILE`: addresses and whole domains never sent to (unsubscribed, complained,
//! hard-bounced before). A suppressed recipient gets its one final record, `suppressed`, and no
//! connection is made for it.
//!
//! One entry per line: an address (`ann@example.com`) or a domain (`example.com`, or
//! `@example.com`); blank lines and lines starting with `#` are skipped; case is ignored. A CSV
//! export works too when its first column is the address: a header line whose first field is
//! `email` is skipped, and anything after the first comma is ignored. Addresses are kept as
//! 8-byte fingerprints (a list of 10 million costs ~160 MB), domains as text.

use std::io::BufRead;
use std::path::Path;

use thiserror::Error;

use super::hashing::Fingerprints;
use super::input::a_label;
use super::source::fingerprint;
use crate::deliver::lowercase;
use crate::hash::DomainMap;
use crate::proto::Address;

#[derive(Debug, Error)]
pub enum SuppressError {
    #[error("--suppress {path}: {error}")]
    Read { path: String, error: std::io::Error },
    #[error("--suppress {path} line {line}: `{entry}` is neither an address nor a domain")]
    Entry { path: String, line: u64, entry: String },
}

/// Why a recipient is suppressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Suppressed {
    Address,
    Domain,
}

impl Suppressed {
    pub fn reason(self) -> &'static str {
        match self {
            Suppressed::Address => "suppressed: the address is on the --suppress list",
            Suppressed::Domain => "suppressed: the domain is on the --suppress list",
        }
    }
}

#[derive(Debug, Default)]
pub struct Suppressions {
    addresses: Fingerprints,
    domains: DomainMap<()>,
}

impl Suppressions {
    /// Reads every list; an entry that is neither an address nor a domain stops the run here.
    pub fn load(paths: &[impl AsRef<Path>]) -> Result<Suppressions, SuppressError> {
        let mut s = Suppressions::default();
        for path in paths {
            let path = path.as_ref();
            let name = path.display().to_string();
            let file = std::fs::File::open(path)
                .map_err(|error| SuppressError::Read { path: name.clone(), error })?;
            s.read(std::io::BufReader::new(file), &name)?;
        }
        Ok(s)
    }

    fn read(&mut self, input: impl BufRead, path: &str) -> Result<(), SuppressError> {
        for (index, line) in input.split(b'\n').enumerate() {
            let line = line.map_err(|error| SuppressError::Read { path: path.to_owned(), error })?;
            let line = String::from_utf8_lossy(&line);
            let entry = line.split(',').next().unwrap_or("").trim().trim_matches('"');
            if entry.is_empty()
                || entry.starts_with('#')
                || (index == 0 && entry.eq_ignore_ascii_case("email"))
            {
                continue;
            }
            let bad = || SuppressError::Entry {
                path: path.to_owned(),
                line: index as u64 + 1,
                entry: entry.to_owned(),
            };
            match entry.rsplit_once('@') {
                Some(("", domain)) => self.add_domain(domain).ok_or_else(bad)?,
                Some((local, domain)) if !local.contains(char::is_whitespace) && is_domain(domain) => {
                    // Rows' domains are A-labels (see `input::a_label`): so are the list's.
                    let domain = a_label(domain).map_err(|_| bad())?;
                    self.addresses.insert(fingerprint(&format!("{local}@{domain}")));
                }
                Some(_) => return Err(bad()),
                None => self.add_domain(entry).ok_or_else(bad)?,
            }
        }
        Ok(())
    }

    fn add_domain(&mut self, domain: &str) -> Option<()> {
        let domain = a_label(domain.trim_end_matches('.')).ok().filter(|_| is_domain(domain))?;
        self.domains.insert(domain.to_ascii_lowercase(), ());
        Some(())
    }

    pub fn is_empty(&self) -> bool {
        self.addresses.is_empty() && self.domains.is_empty()
    }

    /// Whether `address` may not be sent to. With empty lists this costs two length checks:
    /// the domain is lower-cased and the address hashed only when there is a list to look in.
    pub fn check(&self, address: &Address) -> Option<Suppressed> {
        if !self.domains.is_empty() && self.domains.contains_key(lowercase(address.domain()).as_ref()) {
            return Some(Suppressed::Domain);
        }
        (!self.addresses.is_empty() && self.addresses.contains(fingerprint(address.as_str())))
            .then_some(Suppressed::Address)
    }
}

/// A domain as a list may name one: dot-separated labels of letters, digits, `-` and `_`, or
/// non-ASCII (internationalised names as the recipients file has them).
fn is_domain(s: &str) -> bool {
    let s = s.strip_suffix('.').unwrap_or(s);
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|l| {
            !l.is_empty() && l.len() <= 63 && l.chars().all(|c| c.is_alphanumeric() || c == '-' || c == '_')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(text: &str) -> Result<Suppressions, SuppressError> {
        let mut s = Suppressions::default();
        s.read(text.as_bytes(), "list.txt").map(|()| s)
    }

    #[test]
    fn addresses_and_domains_are_matched_without_regard_to_case() {
        let s = list("# unsubscribed\nAnn@Example.com\n\n@blocked.test\nwhole.example.\nbob@x.test,2026-11-01,complaint\n")
            .unwrap();
        let cases = [
            ("ann@example.com", Some(Suppressed::Address)),
            ("ANN@EXAMPLE.COM", Some(Suppressed::Address)),
            ("anne@example.com", None),
            ("any@blocked.test", Some(Suppressed::Domain)),
            ("any@Blocked.TEST", Some(Suppressed::Domain)),
            ("x@whole.example", Some(Suppressed::Domain)),
            ("x@sub.whole.example", None),
            ("bob@x.test", Some(Suppressed::Address)),
            ("carol@x.test", None),
        ];
        for (address, want) in cases {
            assert_eq!(s.check(&Address::new(address).unwrap()), want, "{address}");
        }
    }

    #[test]
    fn a_csv_export_with_an_email_header_is_read_by_its_first_column() {
        let s = list("email,reason\n\"ann@example.com\",unsubscribed\n").unwrap();
        assert_eq!(s.check(&Address::new("ann@example.com").unwrap()), Some(Suppressed::Address));
        assert!(list("").unwrap().is_empty());
    }

    #[test]
    fn a_line_that_is_neither_address_nor_domain_is_an_error_with_its_line() {
        for (text, line) in
            [("ok@x.test\nnot an address\n", 2), ("a@b@\n", 1), ("@\n", 1), ("x@bad..test\n", 1)]
        {
            let e = list(text).unwrap_err().to_string();
            assert!(e.contains(&format!("line {line}")) && e.contains("list.txt"), "{text:?}: {e}");
        }
        let missing = Suppressions::load(&["/nonexistent/volley-suppress"]).unwrap_err().to_string();
        assert!(missing.contains("/nonexistent/volley-suppress"), "{missing}");
    }
}

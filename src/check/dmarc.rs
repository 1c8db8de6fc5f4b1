//! DMARC (RFC 7489): the From domain's policy record, and whether From aligns with a DKIM
//! signing domain or the SPF-checked envelope domain.
//!
//! Relaxed alignment needs the organizational domain, which DMARC takes from the public suffix
//! list. volley ships no such list: two domains align here when one is the other or a
//! subdomain of it (never a false pass); siblings (`news.example.com`, `mail.example.com`),
//! which align when their parent is the organizational domain, get a warning saying so.

use super::spf::Spf;
use super::{Campaign, Lookup, Row, Verdict, row, tag};

/// How two domains align.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Aligned {
    Yes,
    /// Siblings under a common parent: aligned if that parent is the organizational domain.
    Maybe,
    No,
}

fn aligned(from: &str, other: &str, strict: bool) -> Aligned {
    let (from, other) = (from.to_ascii_lowercase(), other.to_ascii_lowercase());
    if from == other {
        return Aligned::Yes;
    }
    if strict {
        return Aligned::No;
    }
    let under = |a: &str, b: &str| a.ends_with(&format!(".{b}"));
    if under(&from, &other) || under(&other, &from) {
        return Aligned::Yes;
    }
    let parent = |d: &str| d.split_once('.').map(|(_, p)| p.to_owned()).unwrap_or_default();
    let (pf, po) = (parent(&from), parent(&other));
    if !pf.is_empty() && pf == po && pf.contains('.') { Aligned::Maybe } else { Aligned::No }
}

/// The DMARC record that applies to `domain`: its own, else its parents' (the organizational
/// domain's policy covers subdomains), as `(where, record)`.
fn find(dns: &mut dyn Lookup, domain: &str) -> Result<Option<(String, String)>, String> {
    let mut name = domain.trim_end_matches('.').to_ascii_lowercase();
    loop {
        let at = format!("_dmarc.{name}");
        let records: Vec<String> = dns
            .txt(&at)?
            .into_iter()
            .filter(|t| t.trim_start().to_ascii_lowercase().starts_with("v=dmarc1"))
            .collect();
        match records.len() {
            0 => {}
            1 => return Ok(records.into_iter().next().map(|r| (at, r))),
            n => return Err(format!("{at} has {n} DMARC records (one allowed)")),
        }
        match name.split_once('.') {
            // Stop above the last two labels: a TLD publishes no DMARC policy for us.
            Some((_, parent)) if parent.contains('.') => name = parent.to_owned(),
            _ => return Ok(None),
        }
    }
}

pub(super) fn check(c: &Campaign, spf: Option<&Spf>, dns: &mut dyn Lookup, rows: &mut Vec<Row>) {
    let Some(from) = c.from_domain.as_deref() else {
        rows.push(row(
            "DMARC",
            Verdict::Fail,
            "the From domain is not known",
            "give --from, or a literal From header",
        ));
        return;
    };
    let check = format!("DMARC {from}");
    let publish = format!(
        "publish a TXT record at _dmarc.{from}: \"v=DMARC1; p=none; rua=mailto:dmarc@{from}\" (then tighten p=)"
    );
    let (at, record) = match find(dns, from) {
        Ok(Some(found)) => found,
        Ok(None) => {
            rows.push(row(
                check,
                Verdict::Fail,
                "no DMARC record (Gmail and Yahoo require one of bulk senders)",
                publish,
            ));
            return;
        }
        Err(e) => {
            rows.push(row(check, Verdict::Fail, e, "keep exactly one v=DMARC1 record"));
            return;
        }
    };
    let policy = tag(&record, "p").map(|p| p.to_ascii_lowercase());
    match policy.as_deref() {
        Some("none" | "quarantine" | "reject") => {
            let note = if policy.as_deref() == Some("none") {
                " (monitoring only: enough for Gmail's and Yahoo's rules)"
            } else {
                ""
            };
            rows.push(row(check, Verdict::Pass, format!("{at}: \"{record}\"{note}"), ""));
        }
        _ => {
            rows.push(row(check, Verdict::Fail, format!("{at}: \"{record}\" has no valid p= tag"), publish));
            return;
        }
    }
    let strict_dkim = tag(&record, "adkim").is_some_and(|v| v.eq_ignore_ascii_case("s"));
    let strict_spf = tag(&record, "aspf").is_some_and(|v| v.eq_ignore_ascii_case("s"));
    let mut best = (Aligned::No, String::new());
    if let Some(dkim) = &c.dkim {
        for d in dkim.domains() {
            let a = aligned(from, d, strict_dkim);
            if a == Aligned::Yes || (a == Aligned::Maybe && best.0 == Aligned::No) {
                best = (a, format!("DKIM d={d}"));
            }
        }
    }
    if best.0 != Aligned::Yes {
        if let Some(envelope) = c.envelope_domain.as_deref() {
            let a = aligned(from, envelope, strict_spf);
            // SPF aligns only if SPF passes for the sending IP (or could not be checked).
            let spf_ok = !matches!(spf, Some(s) if *s != Spf::Pass);
            if spf_ok && (a == Aligned::Yes || (a == Aligned::Maybe && best.0 == Aligned::No)) {
                let unchecked = if spf.is_none() { " (SPF not checked: give --source-ip)" } else { "" };
                best = (a, format!("SPF envelope domain {envelope}{unchecked}"));
            }
        }
    }
    let name = "DMARC alignment";
    match best {
        (Aligned::Yes, via) => rows.push(row(name, Verdict::Pass, format!("From {from} aligns with {via}"), "")),
        (Aligned::Maybe, via) => rows.push(row(
            name,
            Verdict::Warn,
            format!("From {from} aligns with {via} only if their common parent is the organizational domain"),
            format!("sign with d={from} (--dkim {from}:SELECTOR:KEY) to be certain"),
        )),
        (Aligned::No, _) => rows.push(row(
            name,
            Verdict::Fail,
            format!("From {from} aligns with no DKIM signing domain and no passing SPF domain"),
            format!("sign with d={from} (--dkim {from}:SELECTOR:KEY), or send with an envelope domain under {from}"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alignment_is_never_a_false_pass() {
        let cases = [
            ("example.com", "example.com", false, Aligned::Yes),
            ("news.example.com", "example.com", false, Aligned::Yes),
            ("example.com", "mail.example.com", false, Aligned::Yes),
            ("news.example.com", "example.com", true, Aligned::No),
            ("Example.COM", "example.com", true, Aligned::Yes),
            ("news.example.com", "mail.example.com", false, Aligned::Maybe),
            ("a.co.uk", "b.co.uk", false, Aligned::Maybe),
            ("example.com", "example.net", false, Aligned::No),
            ("example.com", "badexample.com", false, Aligned::No),
        ];
        for (a, b, strict, want) in cases {
            assert_eq!(aligned(a, b, strict), want, "{a} {b} strict={strict}");
        }
    }
}

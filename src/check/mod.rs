//! `volley check`: before a campaign, what the large receivers will check, against DNS: SPF
//! for the envelope domain (and the sending IP), the DKIM keys published and matching the
//! private keys given, a DMARC record and From aligned with DKIM or SPF, the sending IP's
//! forward-confirmed PTR, and RFC 8058 one-click unsubscribe headers for bulk mail. And, for a
//! recipient domain, what it asks of senders' TLS ([`recipient`]).
//!
//! The checks are functions of the answers of a [`Lookup`], so tests give them a table; the
//! real one ([`dns::Dns`]) asks hickory. Each check is one [`Row`]: pass, warn or fail, what
//! was found, and the fix.

mod dmarc;
pub mod dns;
pub mod recipient;
pub mod spf;

use std::net::IpAddr;

use serde::Serialize;

use crate::deliver::dkim::Dkim;
use spf::Spf;

/// DNS answers the checks need. A name that does not exist, or has no such records, is
/// `Ok(vec![])`; `Err` is a failure to get an answer (SERVFAIL, timeout).
pub trait Lookup {
    fn txt(&mut self, name: &str) -> Result<Vec<String>, String>;
    fn ips(&mut self, name: &str) -> Result<Vec<IpAddr>, String>;
    fn mx(&mut self, name: &str) -> Result<Vec<String>, String>;
    fn ptr(&mut self, ip: IpAddr) -> Result<Vec<String>, String>;
    /// `domain`'s MTA-STS policy, fetched over HTTPS (`Err`: why it could not be).
    fn mta_sts_policy(&mut self, domain: &str) -> Result<crate::deliver::mta_sts::Policy, String>;
    /// What DNSSEC says of an MX host's TLS (`Err`: DANE cannot be checked, e.g. answers do
    /// not validate through this resolver).
    fn dane(&mut self, host: &str) -> Result<crate::deliver::dane::HostDane, String>;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Pass,
    Warn,
    Fail,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Pass => "pass",
            Verdict::Warn => "warn",
            Verdict::Fail => "fail",
        }
    }
}

/// One check's result.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub check: String,
    pub verdict: Verdict,
    /// What was found.
    pub detail: String,
    /// What to do about it (empty on a pass).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub fix: String,
}

/// A check that could not be made: DNS gave no answer. Receivers would defer or fail it too.
fn dns_failed(check: String, e: &str) -> Row {
    row(check, Verdict::Fail, format!("DNS failed: {e}"), "check the DNS server and try again")
}

fn row(check: impl Into<String>, verdict: Verdict, detail: impl Into<String>, fix: impl Into<String>) -> Row {
    Row { check: check.into(), verdict, detail: detail.into(), fix: fix.into() }
}

/// What the campaign would send, as far as the checks care.
#[derive(Debug, Default)]
pub struct Campaign {
    /// The From header's domain.
    pub from_domain: Option<String>,
    /// The envelope sender's domain.
    pub envelope_domain: Option<String>,
    pub dkim: Option<Dkim>,
    /// The sending IP, when the user gave it.
    pub source_ip: Option<IpAddr>,
    /// Where the RFC 8058 headers come from: `--unsubscribe-url`, or the message's own.
    pub one_click: OneClick,
    /// Transactional mail needs no unsubscribe headers.
    pub transactional: bool,
}

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub enum OneClick {
    /// `--unsubscribe-url` (an HTTPS URL with a token: checked when parsed).
    Flag,
    /// The message template's own headers: (List-Unsubscribe value, List-Unsubscribe-Post
    /// value), either possibly missing.
    Template(Option<String>, Option<String>),
    #[default]
    None,
}

/// Runs every check.
pub fn run(c: &Campaign, dns: &mut dyn Lookup) -> Vec<Row> {
    let mut rows = Vec::new();
    let spf = check_spf(c, dns, &mut rows);
    check_dkim(c, dns, &mut rows);
    dmarc::check(c, spf.as_ref(), dns, &mut rows);
    check_ptr(c, dns, &mut rows);
    check_one_click(c, &mut rows);
    rows
}

/// The SPF row; returns the result for the sending IP when there was one to check.
fn check_spf(c: &Campaign, dns: &mut dyn Lookup, rows: &mut Vec<Row>) -> Option<Spf> {
    let Some(domain) = c.envelope_domain.as_deref() else {
        rows.push(row("SPF", Verdict::Fail, "no envelope domain", "give --mail-from or --from"));
        return None;
    };
    let name = format!("SPF {domain}");
    let publish = format!("publish a TXT record at {domain}: \"v=spf1 ip4:YOUR.IP -all\" (your sending IPs)");
    let record = match spf::record(dns, domain) {
        Ok(Some(r)) => r,
        Ok(None) => {
            rows.push(row(name, Verdict::Fail, "no SPF record", publish));
            return None;
        }
        Err(Spf::TempError(e)) => {
            rows.push(dns_failed(name, &e));
            return None;
        }
        Err(e) => {
            let detail = match e {
                Spf::PermError(why) => why,
                other => format!("{other:?}"),
            };
            rows.push(row(name, Verdict::Fail, detail, "keep exactly one v=spf1 record"));
            return None;
        }
    };
    let open = record.split_whitespace().any(|t| t == "+all" || t == "all");
    let Some(ip) = c.source_ip else {
        let (verdict, fix) = if open {
            (Verdict::Fail, "`+all` lets anyone send as you: end the record with -all or ~all")
        } else {
            (Verdict::Warn, "give --source-ip to check that the record allows the IP you send from")
        };
        rows.push(row(name, verdict, format!("\"{record}\""), fix));
        return None;
    };
    let result = spf::evaluate_record(dns, ip, domain, &record);
    let (verdict, detail, fix) = match &result {
        Spf::Pass if open => (
            Verdict::Fail,
            format!("{ip} passes, as does anyone: \"{record}\""),
            "end the record with -all or ~all, not +all".into(),
        ),
        Spf::Pass => (Verdict::Pass, format!("{ip} is allowed: \"{record}\""), String::new()),
        Spf::SoftFail => (
            Verdict::Warn,
            format!("{ip} soft-fails (~all): \"{record}\""),
            format!("add {ip} to the record"),
        ),
        Spf::Fail | Spf::Neutral | Spf::None => (
            Verdict::Fail,
            format!("{ip} is not allowed ({result:?}): \"{record}\""),
            format!("add ip4:{ip} (or an include: of your provider) to the record"),
        ),
        Spf::PermError(e) => (
            Verdict::Fail,
            format!("the record is broken: {e}"),
            "fix the record: receivers treat a permerror as a failure".into(),
        ),
        Spf::TempError(e) => {
            (Verdict::Fail, format!("DNS failed: {e}"), "check the DNS server and try again".into())
        }
        Spf::Unknown(e) => {
            (Verdict::Warn, format!("not evaluated: {e}"), "check with a full SPF evaluator".into())
        }
    };
    rows.push(row(name, verdict, detail, fix));
    Some(result)
}

fn check_dkim(c: &Campaign, dns: &mut dyn Lookup, rows: &mut Vec<Row>) {
    let Some(dkim) = &c.dkim else {
        let fix = "sign with --dkim DOMAIN:SELECTOR:KEYFILE (Gmail, Yahoo and Microsoft require DKIM of bulk senders)";
        rows.push(row("DKIM", Verdict::Fail, "no key given: messages would be unsigned", fix));
        return;
    };
    for (name, ours) in dkim.records() {
        let check = format!("DKIM {name}");
        let publish = format!("publish a TXT record at {name}: \"{ours}\"");
        let found = match dns.txt(&name) {
            Ok(found) => found,
            Err(e) => {
                rows.push(dns_failed(check, &e));
                continue;
            }
        };
        let keys: Vec<&String> = found.iter().filter(|t| tag(t, "p").is_some()).collect();
        let (verdict, detail, fix) = match keys.as_slice() {
            [] => (Verdict::Fail, "no DKIM key published".to_owned(), publish),
            [one] => {
                let p = tag(one, "p").unwrap_or_default().replace(char::is_whitespace, "");
                let k = tag(one, "k").unwrap_or_else(|| "rsa".into());
                let (our_p, our_k) = (tag(ours, "p").unwrap_or_default(), tag(ours, "k").unwrap_or_default());
                if p.is_empty() {
                    (Verdict::Fail, "the key is revoked (empty p=)".into(), publish)
                } else if p != our_p || !k.eq_ignore_ascii_case(&our_k) {
                    (
                        Verdict::Fail,
                        "the published key is not the public half of this private key".into(),
                        publish,
                    )
                } else {
                    (Verdict::Pass, format!("published and matching (k={k})"), String::new())
                }
            }
            _ => (Verdict::Fail, format!("{} keys published at one name", keys.len()), publish),
        };
        rows.push(row(check, verdict, detail, fix));
    }
}

fn check_ptr(c: &Campaign, dns: &mut dyn Lookup, rows: &mut Vec<Row>) {
    let Some(ip) = c.source_ip else {
        rows.push(row("PTR", Verdict::Warn, "not checked", "give --source-ip to check its reverse DNS"));
        return;
    };
    let check = format!("PTR {ip}");
    let fix = format!("ask whoever runs {ip} for a PTR record naming a host whose A/AAAA record is {ip}");
    let names = match dns.ptr(ip) {
        Ok(n) => n,
        Err(e) => {
            rows.push(dns_failed(check, &e));
            return;
        }
    };
    if names.is_empty() {
        rows.push(row(check, Verdict::Fail, "no PTR record", fix));
        return;
    }
    for name in &names {
        if dns.ips(name).is_ok_and(|addrs| addrs.contains(&ip)) {
            rows.push(row(check, Verdict::Pass, format!("{name}, which resolves back to {ip}"), ""));
            return;
        }
    }
    let detail = format!("{} does not resolve back to {ip} (not forward-confirmed)", names.join(", "));
    rows.push(row(check, Verdict::Fail, detail, fix));
}

fn check_one_click(c: &Campaign, rows: &mut Vec<Row>) {
    const NAME: &str = "One-click unsubscribe";
    let fix =
        "give --unsubscribe-url 'https://…/{{ token }}' (RFC 8058), or --transactional for non-bulk mail";
    let (verdict, detail) = match &c.one_click {
        OneClick::Flag => (Verdict::Pass, "List-Unsubscribe and List-Unsubscribe-Post added per recipient".to_owned()),
        OneClick::Template(list, post) => {
            let https = list.as_deref().is_some_and(|l| l.to_ascii_lowercase().contains("<https://"));
            let one_click = post.as_deref().is_some_and(|p| p.trim() == "List-Unsubscribe=One-Click");
            match (https, one_click) {
                (true, true) => (Verdict::Pass, "the message carries both RFC 8058 headers".to_owned()),
                (false, _) => (Verdict::Fail, "the message's List-Unsubscribe has no https URI".to_owned()),
                (true, false) => (Verdict::Fail, "the message has no `List-Unsubscribe-Post: List-Unsubscribe=One-Click`".to_owned()),
            }
        }
        OneClick::None if c.transactional => (Verdict::Pass, "transactional: not required".to_owned()),
        OneClick::None => (Verdict::Fail, "no List-Unsubscribe headers: bulk mail without them is refused or spam-foldered by Gmail and Yahoo".to_owned()),
    };
    let fix = if verdict == Verdict::Pass { "" } else { fix };
    rows.push(row(NAME, verdict, detail, fix));
}

/// The value of tag `name` in a `tag=value; ...` record (DKIM, DMARC).
pub(crate) fn tag(record: &str, name: &str) -> Option<String> {
    record.split(';').find_map(|part| {
        let (k, v) = part.split_once('=')?;
        k.trim().eq_ignore_ascii_case(name).then(|| v.trim().to_owned())
    })
}

/// The table `volley check` prints.
pub fn table(rows: &[Row]) -> String {
    use std::fmt::Write as _;
    let width = rows.iter().map(|r| r.check.len()).max().unwrap_or(5).max(5);
    let mut s = String::new();
    for r in rows {
        let _ = writeln!(s, "{:<4}  {:<width$}  {}", r.verdict.as_str(), r.check, r.detail);
        if !r.fix.is_empty() {
            let _ = writeln!(s, "{:<4}  {:<width$}  fix: {}", "", "", r.fix);
        }
    }
    let count = |v| rows.iter().filter(|r| r.verdict == v).count();
    let _ = writeln!(
        s,
        "{} passed, {} warnings, {} failed",
        count(Verdict::Pass),
        count(Verdict::Warn),
        count(Verdict::Fail)
    );
    s
}

#[cfg(test)]
pub(crate) mod tests;

//! `volley check --recipient-domain D`: what a receiving domain publishes about the TLS its
//! mail must come over, as volley's delivery reads it: its MX hosts, its MTA-STS policy (RFC
//! 8461: the record, the policy fetched, and whether the policy lists every MX host, since
//! senders that enforce it deliver to no other), and its TLS-RPT record (RFC 8460: where
//! senders' reports go), and DANE (RFC 7672: each MX host's TLSA records, validated as
//! delivery validates them).

use crate::deliver::tls_report::rua;

use super::{Lookup, Row, Verdict, dns_failed, row};
use crate::deliver::dane::HostDane;
use crate::deliver::mta_sts::{Mode, MxPattern, record_id};
use crate::tls::dane::Tlsa;

/// The rows for `domain`.
pub fn check(domain: &str, dns: &mut dyn Lookup) -> Vec<Row> {
    let domain = domain.trim_end_matches('.').to_ascii_lowercase();
    let mut rows = Vec::new();
    let hosts = check_mx(&domain, dns, &mut rows);
    check_mta_sts(&domain, hosts.as_deref(), dns, &mut rows);
    check_tls_rpt(&domain, dns, &mut rows);
    check_dane(&domain, hosts.as_deref().unwrap_or_default(), dns, &mut rows);
    rows
}

/// The MX row; the hosts mail would go to, when DNS said.
fn check_mx(domain: &str, dns: &mut dyn Lookup, rows: &mut Vec<Row>) -> Option<Vec<String>> {
    let name = format!("MX {domain}");
    let hosts = match dns.mx(domain) {
        Ok(hosts) => hosts,
        Err(e) => {
            rows.push(dns_failed(name, &e));
            return None;
        }
    };
    if hosts.iter().any(String::is_empty) && hosts.len() == 1 {
        rows.push(row(name, Verdict::Fail, "null MX (RFC 7505): the domain accepts no mail", ""));
        return Some(Vec::new());
    }
    let hosts: Vec<String> = hosts.into_iter().filter(|h| !h.is_empty()).collect();
    if hosts.is_empty() {
        // RFC 5321 §5.1: no MX, the domain itself is the host, if it has an address.
        return match dns.ips(domain) {
            Ok(ips) if !ips.is_empty() => {
                rows.push(row(
                    name,
                    Verdict::Warn,
                    "no MX record: mail goes to the domain's own address",
                    "",
                ));
                Some(vec![domain.to_owned()])
            }
            Ok(_) => {
                rows.push(row(
                    name,
                    Verdict::Fail,
                    "no MX record and no address: no mail can be delivered",
                    "",
                ));
                Some(Vec::new())
            }
            Err(e) => {
                rows.push(dns_failed(name, &e));
                None
            }
        };
    }
    rows.push(row(name, Verdict::Pass, hosts.join(", "), ""));
    Some(hosts)
}

fn check_mta_sts(domain: &str, hosts: Option<&[String]>, dns: &mut dyn Lookup, rows: &mut Vec<Row>) {
    let name = format!("MTA-STS {domain}");
    let records = match dns.txt(&format!("_mta-sts.{domain}")) {
        Ok(r) => r,
        Err(e) => return rows.push(dns_failed(name, &e)),
    };
    let publish = format!(
        "publish a TXT record at _mta-sts.{domain} (\"v=STSv1; id=20260101\") and the policy at \
         https://mta-sts.{domain}/.well-known/mta-sts.txt"
    );
    let Some(id) = record_id(&records.iter().map(String::as_str).collect::<Vec<_>>()) else {
        let sts = records.iter().filter(|r| r.trim_start().starts_with("v=STSv1")).count();
        let (verdict, detail) = match sts {
            0 => (
                Verdict::Warn,
                "no policy: senders use STARTTLS only if offered, which anyone on the path can strip"
                    .to_owned(),
            ),
            1 => (Verdict::Fail, format!("the _mta-sts record does not parse: {:?}", records)),
            n => (Verdict::Fail, format!("{n} _mta-sts records (RFC 8461 §3.1: exactly one): none counts")),
        };
        return rows.push(row(name, verdict, detail, publish));
    };
    let policy = match dns.mta_sts_policy(domain) {
        Ok(p) => p,
        Err(e) => {
            return rows.push(row(
                name,
                Verdict::Fail,
                format!("record id={id}, but the policy cannot be fetched: {e}"),
                format!(
                    "serve the policy at https://mta-sts.{domain}/.well-known/mta-sts.txt (text/plain, \
                     a certificate valid for mta-sts.{domain}, no redirect)"
                ),
            ));
        }
    };
    let patterns: Vec<String> = policy
        .mx
        .iter()
        .map(|p| match p {
            MxPattern::Exact(n) => n.clone(),
            MxPattern::Wildcard(s) => format!("*.{s}"),
        })
        .collect();
    let described = format!(
        "id={id}, mode {}, mx {}, max_age {} s",
        mode_name(policy.mode),
        patterns.join(" "),
        policy.max_age
    );
    let unlisted: Vec<&str> =
        hosts.unwrap_or_default().iter().map(String::as_str).filter(|h| !policy.allows(h)).collect();
    let (verdict, detail, fix) = match policy.mode {
        Mode::Enforce if !unlisted.is_empty() => (
            Verdict::Fail,
            format!(
                "{described}; MX hosts not listed, to which senders deliver nothing: {}",
                unlisted.join(", ")
            ),
            "list every MX host in the policy's mx lines, then change the record's id".to_owned(),
        ),
        Mode::Enforce => (Verdict::Pass, described, String::new()),
        Mode::Testing => (
            Verdict::Warn,
            format!("{described}; testing: failures are reported, not prevented"),
            "switch to mode: enforce once TLS reports show no failures".to_owned(),
        ),
        Mode::None => (Verdict::Warn, format!("{described}; none: the policy is withdrawn"), publish),
    };
    rows.push(row(name, verdict, detail, fix));
}

/// A row per MX host with TLSA records or whose records fail validation; one for the domain
/// when none has DANE (or it cannot be checked).
fn check_dane(domain: &str, hosts: &[String], dns: &mut dyn Lookup, rows: &mut Vec<Row>) {
    let mut any = false;
    for host in hosts {
        let name = format!("DANE {host}");
        let (verdict, detail, fix) = match dns.dane(host) {
            Err(why) => {
                return rows.push(row(
                    format!("DANE {domain}"),
                    Verdict::Warn,
                    format!("not checked: {why}"),
                    "ask a DNS server that passes DNSSEC records on (--dns-server), or give the \
                     trust anchor (--dnssec-trust-anchor)",
                ));
            }
            Ok(HostDane::None) => continue,
            Ok(HostDane::Tlsa(records)) => {
                let usable: Vec<String> = records.iter().filter(|r| r.usable()).map(describe_tlsa).collect();
                if usable.is_empty() {
                    (
                        Verdict::Warn,
                        format!(
                            "{} TLSA record(s), none usable for SMTP: TLS is required, unauthenticated",
                            records.len()
                        ),
                        "publish DANE-EE (3 1 1) or DANE-TA (2 x x) records (RFC 7672 §3.1)".to_owned(),
                    )
                } else {
                    let detail =
                        format!("TLS required, the certificate matched against {}", usable.join(", "));
                    (Verdict::Pass, detail, String::new())
                }
            }
            Ok(HostDane::Failed(why)) => (
                Verdict::Fail,
                format!("{why}: senders using DANE deliver nothing to this host"),
                "fix the zone's signatures (or its DS records in the parent)".to_owned(),
            ),
        };
        any = true;
        rows.push(row(name, verdict, detail, fix));
    }
    if !any && !hosts.is_empty() {
        rows.push(row(
            format!("DANE {domain}"),
            Verdict::Warn,
            "no MX host has DNSSEC-signed TLSA records",
            "sign the MX hosts' zone and publish _25._tcp.HOST TLSA 3 1 1 records for their keys",
        ));
    }
}

fn describe_tlsa(r: &Tlsa) -> String {
    let data: String = r.data.iter().take(8).map(|b| format!("{b:02x}")).collect();
    let more = if r.data.len() > 8 { "…" } else { "" };
    format!("{} {} {} {data}{more}", r.usage, r.selector, r.matching)
}

fn mode_name(mode: Mode) -> &'static str {
    match mode {
        Mode::Enforce => "enforce",
        Mode::Testing => "testing",
        Mode::None => "none",
    }
}

fn check_tls_rpt(domain: &str, dns: &mut dyn Lookup, rows: &mut Vec<Row>) {
    let name = format!("TLS-RPT {domain}");
    let at = format!("_smtp._tls.{domain}");
    let records = match dns.txt(&at) {
        Ok(r) => r,
        Err(e) => return rows.push(dns_failed(name, &e)),
    };
    let publish = format!("publish a TXT record at {at}: \"v=TLSRPTv1; rua=mailto:tls-reports@{domain}\"");
    // The record read as volley's own reports read it: exactly one, naming an address they
    // can be sent to.
    match rua::parse(domain, &records) {
        Ok(rua) if rua.is_empty() => rows.push(row(
            name,
            Verdict::Warn,
            "no record: senders cannot tell you when TLS to you fails",
            publish,
        )),
        Ok(rua) => {
            let rua: Vec<String> = rua.iter().map(ToString::to_string).collect();
            rows.push(row(name, Verdict::Pass, format!("reports to {}", rua.join(", ")), ""));
        }
        Err(e) => rows.push(row(name, Verdict::Fail, e.to_string(), publish)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check::tests::FakeDns;

    const ENFORCE: &str = "version: STSv1\nmode: enforce\nmx: *.mail.test\nmax_age: 604800\n";

    /// DNS answers as `FakeDns` takes them: name, type, value.
    type Answers = Vec<(&'static str, &'static str, &'static str)>;

    fn verdicts(dns: &[(&str, &str, &str)]) -> Vec<(String, Verdict, String)> {
        check("r.test", &mut FakeDns::new(dns)).into_iter().map(|r| (r.check, r.verdict, r.detail)).collect()
    }

    fn base() -> Answers {
        vec![
            ("r.test", "MX", "mx1.mail.test"),
            ("r.test", "MX", "mx2.mail.test"),
            ("_mta-sts.r.test", "TXT", "v=STSv1; id=20260101"),
            ("r.test", "POLICY", ENFORCE),
            ("_smtp._tls.r.test", "TXT", "v=TLSRPTv1; rua=mailto:tls@r.test,https://rpt.r.test/v1"),
            (
                "_25._tcp.mx1.mail.test",
                "TLSA",
                concat!("3 1 1 ", "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff"),
            ),
            (
                "_25._tcp.mx2.mail.test",
                "TLSA",
                concat!("2 0 1 ", "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff"),
            ),
        ]
    }

    #[test]
    fn a_domain_set_up_right_passes() {
        let rows = verdicts(&base());
        assert_eq!(rows.len(), 5);
        assert!(rows.iter().all(|r| r.1 == Verdict::Pass), "{rows:?}");
        assert_eq!(rows[3].0, "DANE mx1.mail.test");
        assert_eq!(rows[3].2, "TLS required, the certificate matched against 3 1 1 0011223344556677…");
        assert_eq!(rows[0].2, "mx1.mail.test, mx2.mail.test");
        assert_eq!(rows[1].2, "id=20260101, mode enforce, mx *.mail.test, max_age 604800 s");
        assert_eq!(rows[2].2, "reports to mailto:tls@r.test, https://rpt.r.test/v1");
    }

    #[test]
    fn what_fails_and_what_warns() {
        let with = |change: &dyn Fn(&mut Answers)| {
            let mut dns = base();
            change(&mut dns);
            verdicts(&dns)
        };
        // An MX host the enforced policy does not list gets no mail from senders keeping to it.
        let rows = with(&|d| d.push(("r.test", "MX", "backup.other.test")));
        assert_eq!(rows[1].1, Verdict::Fail, "{rows:?}");
        assert!(rows[1].2.ends_with("deliver nothing: backup.other.test"), "{rows:?}");
        // A record whose policy cannot be fetched.
        let rows = with(&|d| d.retain(|r| r.1 != "POLICY"));
        assert!(
            rows[1].1 == Verdict::Fail && rows[1].2.contains("cannot be fetched: mta-sts.r.test"),
            "{rows:?}"
        );
        // Two records: none counts.
        let rows = with(&|d| d.push(("_mta-sts.r.test", "TXT", "v=STSv1; id=2")));
        assert!(rows[1].1 == Verdict::Fail && rows[1].2.contains("2 _mta-sts records"), "{rows:?}");
        // No policy, a testing one, no TLS-RPT record: warnings.
        let rows = with(&|d| d.retain(|r| !r.0.starts_with("_")));
        assert_eq!((rows[1].1, rows[2].1), (Verdict::Warn, Verdict::Warn), "{rows:?}");
        let rows = with(&|d| {
            d.retain(|r| r.1 != "POLICY");
            d.push(("r.test", "POLICY", "version: STSv1\nmode: testing\nmx: *.mail.test\nmax_age: 60\n"));
        });
        assert!(rows[1].1 == Verdict::Warn && rows[1].2.contains("testing"), "{rows:?}");
        // A null MX, and DNS failing.
        let rows = verdicts(&[("r.test", "MX", "")]);
        assert!(rows[0].1 == Verdict::Fail && rows[0].2.contains("null MX"), "{rows:?}");
        let rows = verdicts(&[("r.test", "SERVFAIL", "")]);
        assert!(rows[0].1 == Verdict::Fail && rows[0].2.contains("DNS failed"), "{rows:?}");
        // A broken TLS-RPT record.
        let rows = with(&|d| {
            d.retain(|r| r.0 != "_smtp._tls.r.test");
            d.push(("_smtp._tls.r.test", "TXT", "v=TLSRPTv1; nothing"));
        });
        assert_eq!(rows[2].1, Verdict::Fail, "{rows:?}");
    }

    #[test]
    fn dane_rows_say_what_each_mx_host_publishes() {
        let with = |change: &dyn Fn(&mut Answers)| {
            let mut dns = base();
            change(&mut dns);
            verdicts(&dns)[3..].to_vec()
        };
        // Records that fail validation: senders with DANE skip the host.
        let rows = with(&|d| d.push(("_25._tcp.mx2.mail.test", "BOGUS", "1")));
        assert_eq!(rows[1].1, Verdict::Fail, "{rows:?}");
        assert!(rows[1].2.contains("deliver nothing to this host"), "{rows:?}");
        // Only PKIX usages: TLS without authentication.
        let rows = with(&|d| {
            d.retain(|r| r.1 != "TLSA");
            d.push(("_25._tcp.mx1.mail.test", "TLSA", "1 1 1 00"));
        });
        assert_eq!(rows.len(), 1, "hosts without records have no row: {rows:?}");
        assert!(rows[0].1 == Verdict::Warn && rows[0].2.contains("none usable"), "{rows:?}");
        // None at all; and a resolver that does not validate.
        let rows = with(&|d| d.retain(|r| r.1 != "TLSA"));
        assert_eq!((rows[0].0.as_str(), rows[0].1), ("DANE r.test", Verdict::Warn), "{rows:?}");
        let rows = with(&|d| d.push(("resolver", "NODANE", "1")));
        assert_eq!(rows.len(), 1, "{rows:?}");
        assert!(rows[0].1 == Verdict::Warn && rows[0].2.starts_with("not checked"), "{rows:?}");
    }
}

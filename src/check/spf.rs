//! SPF (RFC 7208) evaluation for `volley check`: is the sending IP allowed to send for the
//! envelope domain? The common mechanisms (`all`, `include`, `a`, `mx`, `ip4`, `ip6`,
//! `exists` without macros) and `redirect=` are evaluated, with the 10-lookup limit (§4.6.4);
//! macros and the deprecated `ptr` make the answer unknown rather than guessed.

use std::net::IpAddr;

use super::Lookup;

/// RFC 7208 §2.6 results, and `Unknown` for what this evaluator does not do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Spf {
    Pass,
    Fail,
    SoftFail,
    Neutral,
    None,
    /// The record is broken (two records, a syntax error, too many lookups): receivers fail it.
    PermError(String),
    TempError(String),
    Unknown(String),
}

/// Lookups `include`, `a`, `mx`, `exists` and `redirect` may make, together (§4.6.4).
const LOOKUP_LIMIT: u32 = 10;

/// The SPF record of `domain`: `Ok(None)` when it has none, `Err` when it has two or more.
pub fn record(dns: &mut dyn Lookup, domain: &str) -> Result<Option<String>, Spf> {
    let txt = dns.txt(domain).map_err(Spf::TempError)?;
    let spf: Vec<String> = txt
        .into_iter()
        .filter(|t| {
            let t = t.trim().to_ascii_lowercase();
            t == "v=spf1" || t.starts_with("v=spf1 ")
        })
        .collect();
    match spf.len() {
        0 => Ok(None),
        1 => Ok(spf.into_iter().next()),
        n => Err(Spf::PermError(format!("{domain} has {n} SPF records (one allowed)"))),
    }
}

/// `check_host(ip, domain)`.
pub fn check(dns: &mut dyn Lookup, ip: IpAddr, domain: &str) -> Spf {
    let mut lookups = 0;
    check_host(dns, ip, domain, &mut lookups, 0)
}

/// `check_host(ip, domain)` with `domain`'s record already fetched (by [`record`]).
pub fn evaluate_record(dns: &mut dyn Lookup, ip: IpAddr, domain: &str, record: &str) -> Spf {
    let mut lookups = 0;
    evaluate(dns, ip, domain, record, &mut lookups, 0)
}

fn check_host(dns: &mut dyn Lookup, ip: IpAddr, domain: &str, lookups: &mut u32, depth: u32) -> Spf {
    if depth > LOOKUP_LIMIT {
        return Spf::PermError("include/redirect loop".into());
    }
    match record(dns, domain) {
        Ok(Some(text)) => evaluate(dns, ip, domain, &text, lookups, depth),
        Ok(None) => Spf::None,
        Err(e) => e,
    }
}

/// Evaluates `domain`'s record `text` for `ip`.
fn evaluate(
    dns: &mut dyn Lookup,
    ip: IpAddr,
    domain: &str,
    text: &str,
    lookups: &mut u32,
    depth: u32,
) -> Spf {
    let mut redirect = None;
    for term in text.split_whitespace().skip(1) {
        let lower = term.to_ascii_lowercase();
        if let Some(target) = lower.strip_prefix("redirect=") {
            redirect = Some(target.to_owned());
            continue;
        }
        if lower.contains('=') {
            continue; // exp= and unknown modifiers
        }
        let (qualifier, mechanism) = match lower.as_bytes().first() {
            Some(b'+' | b'-' | b'~' | b'?') => (lower.as_bytes()[0], &lower[1..]),
            _ => (b'+', lower.as_str()),
        };
        if mechanism.contains('%') {
            return Spf::Unknown(format!("`{term}` uses macros, which volley check does not expand"));
        }
        let matched = match matches(dns, ip, domain, mechanism, lookups, depth) {
            Ok(m) => m,
            Err(result) => return result,
        };
        if matched {
            return match qualifier {
                b'-' => Spf::Fail,
                b'~' => Spf::SoftFail,
                b'?' => Spf::Neutral,
                _ => Spf::Pass,
            };
        }
    }
    match redirect {
        Some(target) => {
            *lookups += 1;
            if *lookups > LOOKUP_LIMIT {
                return Spf::PermError(format!("more than {LOOKUP_LIMIT} DNS lookups"));
            }
            match check_host(dns, ip, &target, lookups, depth + 1) {
                Spf::None => Spf::PermError(format!("redirect={target}: no SPF record there")),
                other => other,
            }
        }
        None => Spf::Neutral,
    }
}

/// Whether `mechanism` matches; `Err` ends the evaluation with that result.
fn matches(
    dns: &mut dyn Lookup,
    ip: IpAddr,
    domain: &str,
    mechanism: &str,
    lookups: &mut u32,
    depth: u32,
) -> Result<bool, Spf> {
    let (name, arg) = match mechanism.split_once([':', '/']) {
        Some((n, _)) => (n, &mechanism[n.len()..]),
        None => (mechanism, ""),
    };
    let mut count = || {
        *lookups += 1;
        if *lookups > LOOKUP_LIMIT {
            Err(Spf::PermError(format!("more than {LOOKUP_LIMIT} DNS lookups (RFC 7208 §4.6.4)")))
        } else {
            Ok(())
        }
    };
    // `a:host/24//64`: the host (default: the domain) and CIDR lengths.
    let target_and_cidr = |arg: &str| -> (String, Option<u8>, Option<u8>) {
        let arg = arg.strip_prefix(':').unwrap_or(arg);
        let (host, cidr) = match arg.find('/') {
            Some(i) => (&arg[..i], &arg[i..]),
            None => (arg, ""),
        };
        let host = if host.is_empty() { domain.to_owned() } else { host.to_owned() };
        let (v4, v6) = match cidr.split_once("//") {
            Some((v4, v6)) => (v4, Some(v6)),
            None => (cidr, None),
        };
        let v4 = v4.strip_prefix('/').and_then(|p| p.parse().ok());
        (host, v4, v6.and_then(|p| p.parse().ok()))
    };
    let temp = |e: String| Spf::TempError(e);
    match name {
        "all" => Ok(true),
        "include" => {
            count()?;
            let target = arg.strip_prefix(':').unwrap_or(arg);
            match check_host(dns, ip, target, lookups, depth + 1) {
                Spf::Pass => Ok(true),
                Spf::Fail | Spf::SoftFail | Spf::Neutral => Ok(false),
                Spf::None => Err(Spf::PermError(format!("include:{target}: no SPF record there"))),
                other => Err(other),
            }
        }
        "a" => {
            count()?;
            let (host, v4, v6) = target_and_cidr(arg);
            let addrs = dns.ips(&host).map_err(temp)?;
            Ok(addrs.iter().any(|a| in_network(ip, *a, v4, v6)))
        }
        "mx" => {
            count()?;
            let (host, v4, v6) = target_and_cidr(arg);
            for exchange in dns.mx(&host).map_err(temp)? {
                if dns.ips(&exchange).map_err(temp)?.iter().any(|a| in_network(ip, *a, v4, v6)) {
                    return Ok(true);
                }
            }
            Ok(false)
        }
        "ip4" | "ip6" => {
            let arg = arg.strip_prefix(':').unwrap_or(arg);
            let (net, len) = match arg.split_once('/') {
                Some((n, l)) => (n, l.parse::<u8>().ok()),
                None => (arg, None),
            };
            let net: IpAddr =
                net.parse().map_err(|_| Spf::PermError(format!("`{mechanism}` is not an address")))?;
            Ok(in_network(ip, net, len.filter(|_| net.is_ipv4()), len.filter(|_| net.is_ipv6())))
        }
        "exists" => {
            count()?;
            let target = arg.strip_prefix(':').unwrap_or(arg);
            Ok(!dns.ips(target).map_err(temp)?.is_empty())
        }
        "ptr" => {
            Err(Spf::Unknown("`ptr` is deprecated (RFC 7208 §5.5) and not evaluated: replace it".into()))
        }
        other => Err(Spf::PermError(format!("unknown mechanism `{other}`"))),
    }
}

/// Whether `ip` is in `net`/`len` (the whole address when no length is given).
fn in_network(ip: IpAddr, net: IpAddr, v4_len: Option<u8>, v6_len: Option<u8>) -> bool {
    match (ip, net) {
        (IpAddr::V4(a), IpAddr::V4(n)) => {
            let len = u32::from(v4_len.unwrap_or(32).min(32));
            let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
            u32::from(a) & mask == u32::from(n) & mask
        }
        (IpAddr::V6(a), IpAddr::V6(n)) => {
            let len = u32::from(v6_len.unwrap_or(128).min(128));
            let mask = if len == 0 { 0 } else { u128::MAX << (128 - len) };
            u128::from(a) & mask == u128::from(n) & mask
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::FakeDns;
    use super::*;

    #[test]
    fn records_are_evaluated_as_rfc_7208_says() {
        let dns = FakeDns::new(&[
            ("a.test", "TXT", "v=spf1 ip4:192.0.2.0/24 include:b.test ~all"),
            ("b.test", "TXT", "v=spf1 a:mail.b.test mx/24 -all"),
            ("mail.b.test", "A", "198.51.100.7"),
            ("b.test", "MX", "mx.b.test"),
            ("mx.b.test", "A", "203.0.113.1"),
            ("v6.test", "TXT", "v=spf1 ip6:2001:db8::/32 -all"),
            ("two.test", "TXT", "v=spf1 -all"),
            ("two.test", "TXT", "v=spf1 +all"),
            ("redir.test", "TXT", "v=spf1 redirect=a.test"),
            ("loop.test", "TXT", "v=spf1 include:loop.test -all"),
            ("macro.test", "TXT", "v=spf1 exists:%{i}.spf.macro.test -all"),
            ("open.test", "TXT", "v=spf1 +all"),
            ("other.test", "TXT", "google-site-verification=xyz"),
        ]);
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let cases = [
            ("a.test", "192.0.2.77", Spf::Pass),
            ("a.test", "198.51.100.7", Spf::Pass),  // through include: a
            ("a.test", "203.0.113.200", Spf::Pass), // through include: mx/24
            ("a.test", "198.51.100.8", Spf::SoftFail),
            ("b.test", "192.0.2.77", Spf::Fail),
            ("v6.test", "2001:db8::25", Spf::Pass),
            ("v6.test", "192.0.2.1", Spf::Fail),
            ("redir.test", "192.0.2.1", Spf::Pass),
            ("open.test", "8.8.8.8", Spf::Pass),
            ("other.test", "192.0.2.1", Spf::None),
            ("nothing.test", "192.0.2.1", Spf::None),
        ];
        for (domain, addr, want) in cases {
            let mut dns = dns.clone();
            assert_eq!(check(&mut dns, ip(addr), domain), want, "{domain} {addr}");
        }
        let mut d = dns.clone();
        assert!(
            matches!(check(&mut d, ip("192.0.2.1"), "two.test"), Spf::PermError(e) if e.contains("2 SPF records"))
        );
        assert!(matches!(check(&mut d, ip("192.0.2.1"), "loop.test"), Spf::PermError(_)));
        assert!(matches!(check(&mut d, ip("192.0.2.1"), "macro.test"), Spf::Unknown(_)));
    }

    #[test]
    fn networks_match_by_prefix() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert!(in_network(ip("10.1.2.3"), ip("10.0.0.0"), Some(8), None));
        assert!(!in_network(ip("11.1.2.3"), ip("10.0.0.0"), Some(8), None));
        assert!(in_network(ip("10.1.2.3"), ip("0.0.0.0"), Some(0), None));
        assert!(!in_network(ip("10.1.2.3"), ip("10.1.2.4"), None, None));
        assert!(in_network(ip("2001:db8::1"), ip("2001:db8::"), None, Some(32)));
        assert!(!in_network(ip("2001:db8::1"), ip("10.0.0.0"), Some(8), None));
    }
}

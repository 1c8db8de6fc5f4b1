use std::collections::HashMap;
use std::net::IpAddr;

use super::*;

/// A table of DNS answers: `(name, type, value)`; `SERVFAIL` as a type fails every question
/// about the name.
#[derive(Debug, Clone, Default)]
pub(crate) struct FakeDns {
    records: HashMap<(String, String), Vec<String>>,
}

impl FakeDns {
    pub(crate) fn new(rows: &[(&str, &str, &str)]) -> FakeDns {
        let mut records: HashMap<(String, String), Vec<String>> = HashMap::new();
        for (name, kind, value) in rows {
            records.entry((name.to_ascii_lowercase(), kind.to_string())).or_default().push(value.to_string());
        }
        FakeDns { records }
    }

    fn get(&self, name: &str, kind: &str) -> Result<Vec<String>, String> {
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        if self.records.contains_key(&(name.clone(), "SERVFAIL".into())) {
            return Err(format!("{name}: SERVFAIL"));
        }
        Ok(self.records.get(&(name, kind.to_owned())).cloned().unwrap_or_default())
    }
}

impl Lookup for FakeDns {
    fn txt(&mut self, name: &str) -> Result<Vec<String>, String> {
        self.get(name, "TXT")
    }
    fn ips(&mut self, name: &str) -> Result<Vec<IpAddr>, String> {
        Ok(self.get(name, "A")?.iter().filter_map(|a| a.parse().ok()).collect())
    }
    fn mx(&mut self, name: &str) -> Result<Vec<String>, String> {
        self.get(name, "MX")
    }
    fn ptr(&mut self, ip: IpAddr) -> Result<Vec<String>, String> {
        self.get(&ip.to_string(), "PTR")
    }
    /// The policy text under the `POLICY` type of the domain; none served: an error.
    fn mta_sts_policy(&mut self, domain: &str) -> Result<crate::deliver::mta_sts::Policy, String> {
        let text = self.get(domain, "POLICY")?.concat();
        if text.is_empty() {
            return Err(format!("mta-sts.{domain}: answered 404"));
        }
        crate::deliver::mta_sts::Policy::parse(text.as_bytes()).map_err(|e| e.to_string())
    }
    /// `TLSA` values of `_25._tcp.HOST` as `usage selector matching hex`; `BOGUS` there fails
    /// validation; `NODANE` at `resolver` says the resolver does not validate.
    fn dane(&mut self, host: &str) -> Result<crate::deliver::dane::HostDane, String> {
        use crate::deliver::dane::HostDane;
        if !self.get("resolver", "NODANE")?.is_empty() {
            return Err("the SOA record of . does not validate".into());
        }
        let at = format!("_25._tcp.{host}");
        if !self.get(&at, "BOGUS")?.is_empty() {
            return Ok(HostDane::Failed(format!("{at} does not validate (bogus)")));
        }
        let records: Vec<crate::tls::dane::Tlsa> = self
            .get(&at, "TLSA")?
            .iter()
            .map(|v| {
                let f: Vec<&str> = v.split_whitespace().collect();
                let data =
                    (0..f[3].len()).step_by(2).map(|i| u8::from_str_radix(&f[3][i..i + 2], 16).unwrap());
                crate::tls::dane::Tlsa {
                    usage: f[0].parse().unwrap(),
                    selector: f[1].parse().unwrap(),
                    matching: f[2].parse().unwrap(),
                    data: data.collect(),
                }
            })
            .collect();
        Ok(if records.is_empty() { HostDane::None } else { HostDane::Tlsa(records) })
    }
}

fn dkim() -> Dkim {
    let spec: crate::deliver::dkim::KeySpec =
        format!("example.com:ed:{}", crate::deliver::dkim::tests::key_path("ed25519.pem").display())
            .parse()
            .unwrap();
    Dkim::load(&[spec]).unwrap().unwrap()
}

/// A sender whose DNS is right, and the rows it gets.
fn good() -> (Campaign, FakeDns) {
    let dkim = dkim();
    let (name, record) = dkim.records().next().map(|(n, r)| (n, r.to_owned())).unwrap();
    let dns = FakeDns::new(&[
        ("example.com", "TXT", "v=spf1 ip4:192.0.2.0/24 -all"),
        (&name, "TXT", &record),
        ("_dmarc.example.com", "TXT", "v=DMARC1; p=quarantine; rua=mailto:d@example.com"),
        ("192.0.2.10", "PTR", "mail.example.com"),
        ("mail.example.com", "A", "192.0.2.10"),
    ]);
    let campaign = Campaign {
        from_domain: Some("example.com".into()),
        envelope_domain: Some("example.com".into()),
        dkim: Some(dkim),
        source_ip: Some("192.0.2.10".parse().unwrap()),
        one_click: OneClick::Flag,
        transactional: false,
    };
    (campaign, dns)
}

fn verdicts(rows: &[Row]) -> Vec<(String, Verdict)> {
    rows.iter().map(|r| (r.check.clone(), r.verdict)).collect()
}

#[test]
fn a_sender_with_everything_in_place_passes_every_check() {
    let (c, mut dns) = good();
    let rows = run(&c, &mut dns);
    assert!(rows.iter().all(|r| r.verdict == Verdict::Pass), "{}", table(&rows));
    assert_eq!(rows.len(), 6, "{}", table(&rows));
}

#[test]
fn each_mistake_fails_its_own_check_with_a_fix() {
    type Break = fn(&mut Campaign, &mut FakeDns);
    let cases: Vec<(&str, Break, &str)> = vec![
        ("no SPF record", |_, d| d.records.retain(|k, _| k.0 != "example.com"), "SPF example.com"),
        (
            "IP not in SPF",
            |_, d| {
                d.records.insert(
                    ("example.com".into(), "TXT".into()),
                    vec!["v=spf1 ip4:198.51.100.0/24 -all".into()],
                );
            },
            "SPF example.com",
        ),
        (
            "SPF +all",
            |_, d| {
                d.records.insert(("example.com".into(), "TXT".into()), vec!["v=spf1 +all".into()]);
            },
            "SPF example.com",
        ),
        (
            "DKIM key missing",
            |_, d| d.records.retain(|k, _| !k.0.contains("_domainkey")),
            "DKIM ed._domainkey.example.com",
        ),
        (
            "DKIM key of another key",
            |_, d| {
                d.records.insert(
                    ("ed._domainkey.example.com".into(), "TXT".into()),
                    vec!["v=DKIM1; k=ed25519; p=11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo=".into()],
                );
            },
            "DKIM ed._domainkey.example.com",
        ),
        (
            "DKIM revoked",
            |_, d| {
                d.records
                    .insert(("ed._domainkey.example.com".into(), "TXT".into()), vec!["v=DKIM1; p=".into()]);
            },
            "DKIM ed._domainkey.example.com",
        ),
        ("no DKIM key given", |c, _| c.dkim = None, "DKIM"),
        ("no DMARC", |_, d| d.records.retain(|k, _| !k.0.starts_with("_dmarc")), "DMARC example.com"),
        (
            "DMARC without p=",
            |_, d| {
                d.records.insert(
                    ("_dmarc.example.com".into(), "TXT".into()),
                    vec!["v=DMARC1; rua=mailto:x@example.com".into()],
                );
            },
            "DMARC example.com",
        ),
        (
            "From not aligned",
            |c, _| {
                c.from_domain = Some("brand.test".into());
            },
            "DMARC brand.test",
        ),
        ("no PTR", |_, d| d.records.retain(|k, _| k.1 != "PTR"), "PTR 192.0.2.10"),
        ("PTR not confirmed", |_, d| d.records.retain(|k, _| k.0 != "mail.example.com"), "PTR 192.0.2.10"),
        ("no unsubscribe headers", |c, _| c.one_click = OneClick::None, "One-click unsubscribe"),
        (
            "template without -Post",
            |c, _| c.one_click = OneClick::Template(Some("<https://x.test/u/1>".into()), None),
            "One-click unsubscribe",
        ),
        (
            "DNS failing",
            |_, d| {
                d.records.insert(("_dmarc.example.com".into(), "SERVFAIL".into()), vec![]);
            },
            "DMARC example.com",
        ),
    ];
    for (what, breaks, check) in cases {
        let (mut c, mut dns) = good();
        breaks(&mut c, &mut dns);
        let rows = run(&c, &mut dns);
        let failed: Vec<&Row> = rows.iter().filter(|r| r.verdict == Verdict::Fail).collect();
        assert!(failed.iter().any(|r| r.check == check && !r.fix.is_empty()), "{what}:\n{}", table(&rows));
        // Nothing else fails because of it, but alignment, which follows From and DMARC.
        assert!(
            failed
                .iter()
                .all(|r| r.check == check || r.check == "DMARC alignment" || r.check.starts_with("DMARC")),
            "{what}: {:?}",
            verdicts(&rows)
        );
    }
}

#[test]
fn without_a_source_ip_spf_and_ptr_warn_and_a_parents_dmarc_applies() {
    let (mut c, mut dns) = good();
    c.source_ip = None;
    c.from_domain = Some("news.example.com".into());
    let rows = run(&c, &mut dns);
    let v: HashMap<String, Verdict> = verdicts(&rows).into_iter().collect();
    assert_eq!(v["SPF example.com"], Verdict::Warn);
    assert_eq!(v["PTR"], Verdict::Warn);
    assert_eq!(v["DMARC news.example.com"], Verdict::Pass, "{}", table(&rows));
    assert_eq!(v["DMARC alignment"], Verdict::Pass, "d=example.com covers news.example.com (relaxed)");
    // Transactional mail needs no unsubscribe headers.
    c.one_click = OneClick::None;
    c.transactional = true;
    let rows = run(&c, &mut dns);
    assert!(rows.iter().any(|r| r.check == "One-click unsubscribe" && r.verdict == Verdict::Pass));
}

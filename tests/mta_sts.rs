//! MTA-STS (RFC 8461) end to end: `volley send` to domains that publish policies, as a user
//! runs it. A local DNS server answers the MX, `_mta-sts` TXT and `mta-sts.DOMAIN` records; a
//! local HTTPS server (a test certificate, given as `--ca-file`) serves the policies on
//! `--mta-sts-port`; sinks on 127.0.0.x play the MX hosts, with a certificate valid for their
//! names, with one valid for no name volley trusts, or without STARTTLS.

mod common;

use common::campaign::{finals, records, run, stderr, two_per_domain};

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use mailvolley::testkit::dns::{DnsStub, Zone};
use mailvolley::testkit::https::{HttpsStub, host_of, response};
use mailvolley::tls::ServerTls;
use serde_json::Value;

const VOLLEY: &str = env!("CARGO_BIN_EXE_volley");

/// A self-signed certificate for `names`, written to `dir` as `stem.pem` and `stem.key`.
fn certificate(dir: &Path, stem: &str, names: &[&str]) -> (std::path::PathBuf, ServerTls) {
    let made =
        rcgen::generate_simple_self_signed(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
    let (cert, key) = (dir.join(format!("{stem}.pem")), dir.join(format!("{stem}.key")));
    std::fs::write(&cert, made.cert.pem()).unwrap();
    std::fs::write(&key, made.key_pair.serialize_pem()).unwrap();
    let tls = ServerTls::from_files(&cert, &key).unwrap();
    (cert, tls)
}

fn policy(mode: &str, mx: &str) -> Vec<u8> {
    format!("version: STSv1\r\nmode: {mode}\r\nmx: {mx}\r\nmax_age: 86400\r\n").into_bytes()
}

/// Each domain meets one case; the campaign runs them all at once. Deferred recipients expire
/// after 2 s, so every recipient ends in one final record.
#[test]
fn delivery_keeps_to_each_domains_mta_sts_policy() {
    let dir = common::temp_dir("mta-sts");
    // The certificate the trusted names share: the policy hosts and the MX hosts that serve TLS.
    let trusted_names = [
        "mta-sts.enforced.test",
        "mta-sts.plain.test",
        "mta-sts.unlisted.test",
        "mta-sts.testing.test",
        "mta-sts.badcert.test",
        "mta-sts.cached.test",
        "mta-sts.nofetch.test",
        "mta-sts.testbad.test",
        "mx.enforced.test",
        "mx.unlisted.test",
    ];
    let (ca, trusted) = certificate(&dir, "trusted", &trusted_names);
    // A certificate for the right name, but from no CA volley trusts.
    let (_, untrusted) = certificate(&dir, "untrusted", &["mx.badcert.test", "mx.testbad.test"]);

    let policies: BTreeMap<&str, Vec<u8>> = [
        ("mta-sts.enforced.test", policy("enforce", "mx.enforced.test")),
        ("mta-sts.plain.test", policy("enforce", "mx.plain.test")),
        ("mta-sts.unlisted.test", policy("enforce", "mx.elsewhere.test")),
        ("mta-sts.testing.test", policy("testing", "mx.testing.test")),
        ("mta-sts.badcert.test", policy("enforce", "*.badcert.test")),
        ("mta-sts.testbad.test", policy("testing", "mx.testbad.test")),
    ]
    .into_iter()
    .collect();
    let https = HttpsStub::start("127.0.0.1:0".parse().unwrap(), Arc::clone(&trusted.config), move |head| {
        let host = host_of(head).unwrap_or_default();
        let found =
            head.starts_with("GET /.well-known/mta-sts.txt ").then(|| policies.get(host.as_str())).flatten();
        let answer = match found {
            Some(body) => response("200 OK", Some("text/plain"), "", body),
            None => response("404 Not Found", Some("text/plain"), "", b"no policy here"),
        };
        (answer, Duration::ZERO)
    })
    .unwrap();

    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let sinks = common::mx_sinks(&dir, port, vec![(2u8, Some(trusted)), (3, None), (4, Some(untrusted))]);

    let mut zone = String::new();
    let cases = [
        // domain, MX host's address, TXT record
        ("enforced.test", 2, Some("v=STSv1; id=1")),
        ("plain.test", 3, Some("v=STSv1; id=1")),
        ("unlisted.test", 2, Some("v=STSv1; id=1")),
        ("testing.test", 3, Some("v=STSv1; id=1")),
        ("badcert.test", 4, Some("v=STSv1; id=1")),
        ("cached.test", 3, Some("v=STSv1; id=2")),
        ("nofetch.test", 3, Some("v=STSv1; id=1")),
        ("none.test", 3, None),
        ("testbad.test", 4, Some("v=STSv1; id=1")),
    ];
    for (domain, x, txt) in cases {
        zone.push_str(&format!("{domain} MX 10 mx.{domain}\nmx.{domain} A 127.0.0.{x}\n"));
        zone.push_str(&format!("mta-sts.{domain} A 127.0.0.1\n"));
        if let Some(txt) = txt {
            zone.push_str(&format!("_mta-sts.{domain} TXT {txt}\n"));
        }
    }
    let dns = DnsStub::start("127.0.0.1:0".parse().unwrap(), zone.parse::<Zone>().unwrap()).unwrap();

    // cached.test's policy was learnt earlier (id 1, enforce); its record now names id 2, whose
    // fetch fails (404): the cached policy holds (RFC 8461 §5.1), no plaintext.
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
    let cache = dir.join("mta-sts.json");
    let cached = serde_json::json!({
        "cached.test": {
            "id": "1",
            "fetched": now - 60,
            "policy": "version: STSv1\nmode: enforce\nmx: mx.cached.test\nmax_age: 86400\n",
        }
    });
    std::fs::write(&cache, cached.to_string()).unwrap();

    let (list_path, msg) = two_per_domain(&dir, cases.iter().map(|(d, ..)| *d));
    let log = dir.join("log.jsonl");
    let mut cmd = Command::new(VOLLEY);
    cmd.args(["send", "--quiet", "--threads", "2"])
        .args(["--dns-server", &dns.addr().to_string(), "--dns-timeout", "500ms"])
        .args(["--smtp-port", &port.to_string()])
        .args(["--mta-sts-port", &https.addr().port().to_string()])
        .args(["--ca-file", ca.to_str().unwrap(), "--mta-sts-cache", cache.to_str().unwrap()])
        .args(["--recipients", list_path.to_str().unwrap(), "--message", msg.to_str().unwrap()])
        .args(["--log", log.to_str().unwrap(), "--retry-after", "300ms", "--retry-max", "300ms"])
        .args(["--max-age", "2s", "--reconnect-backoff", "50ms"])
        .args(["--tls-report", dir.join("reports").to_str().unwrap(), "--helo", "sender.test", "--json"])
        .stdin(Stdio::null());
    let out = run(cmd, Duration::from_secs(60));
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));

    let all = records(&log);
    let f = finals(&all);
    assert_eq!(f.len(), 18, "one final record per recipient: {f:?}");
    let by_domain = |domain: &str| -> Vec<&Value> {
        f.values()
            .filter(|r| r["rcpt"].as_str().is_some_and(|a| a.ends_with(&format!("@{domain}"))))
            .collect()
    };
    for domain in ["enforced.test", "testing.test", "nofetch.test", "none.test", "testbad.test"] {
        for r in by_domain(domain) {
            assert_eq!(r["status"], "delivered", "{domain}: {r}");
        }
    }
    for r in by_domain("enforced.test") {
        assert!(r["tls"].as_str().is_some_and(|v| v.starts_with("TLSv1")), "over TLS: {r}");
    }
    for r in by_domain("testbad.test") {
        assert!(
            r["tls"].as_str().is_some_and(|v| v.starts_with("TLSv1")),
            "testing: TLS unchecked, as before: {r}"
        );
    }
    for r in by_domain("testing.test") {
        assert!(r["tls"].is_null(), "testing: delivered as before, in plaintext: {r}");
    }
    for (domain, why) in [
        ("plain.test", "does not offer STARTTLS"),
        ("unlisted.test", "lists none of its MX hosts (mx.unlisted.test)"),
        ("badcert.test", "certificate"),
        ("cached.test", "does not offer STARTTLS"),
    ] {
        for r in by_domain(domain) {
            assert_eq!(
                (r["status"].as_str(), r["category"].as_str()),
                (Some("expired"), Some("tls_required")),
                "{domain}: {r}"
            );
            assert!(r["reason"].as_str().unwrap_or("").contains(why), "{domain}: {r}");
        }
    }

    // What the MX hosts received: nothing of the refused domains' mail, in any form.
    let dumped: Vec<String> = sinks
        .keys()
        .flat_map(|x| common::dumped(&dir.join(format!("sink{x}"))))
        .map(|(envelope, _)| envelope)
        .collect();
    for domain in ["plain.test", "unlisted.test", "badcert.test", "cached.test"] {
        assert!(
            !dumped.iter().any(|e| e.contains(&format!("@{domain}>"))),
            "{domain} reached a server: {dumped:?}"
        );
    }
    assert_eq!(dumped.len(), 10, "five domains' two recipients each: {dumped:?}");

    // Policies were fetched once each, from their well-known path; the cache file now holds
    // the fetched ones too, and cached.test's earlier policy.
    let fetched: Vec<String> = https.requests().iter().filter_map(|h| host_of(h)).collect();
    for host in ["mta-sts.enforced.test", "mta-sts.testing.test", "mta-sts.cached.test"] {
        assert_eq!(fetched.iter().filter(|h| h.starts_with(host)).count(), 1, "{host}: {fetched:?}");
    }
    assert!(!fetched.iter().any(|h| h.starts_with("mta-sts.none.test")), "no record, no fetch: {fetched:?}");
    let kept: Value = serde_json::from_slice(&std::fs::read(&cache).unwrap()).unwrap();
    for domain in
        ["enforced.test", "plain.test", "unlisted.test", "testing.test", "badcert.test", "cached.test"]
    {
        assert!(kept.get(domain).is_some(), "{domain} kept: {kept}");
    }
    assert_eq!(kept["cached.test"]["id"], "1", "the earlier policy, still valid, holds: {kept}");
    assert!(kept.get("nofetch.test").is_none(), "a failed fetch keeps nothing: {kept}");
    for (_, sink) in sinks {
        sink.stop().unwrap();
    }

    // The TLS reports (RFC 8460): one per policy domain, saying what each session met.
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let files: Vec<String> =
        report["tls_reports"].as_array().unwrap().iter().map(|f| f.as_str().unwrap().to_owned()).collect();
    let tls_report = |domain: &str| -> Value {
        let file = files
            .iter()
            .find(|f| f.contains(&format!("/sender.test!{domain}!")) && f.ends_with(".json"))
            .unwrap_or_else(|| panic!("a report for {domain}: {files:?}"));
        let json = std::fs::read(file).unwrap();
        common::tls_report_read_by_mail_auth(&json);
        serde_json::from_slice(&json).unwrap()
    };
    let results = |domain: &str| -> (u64, Vec<String>) {
        let r = tls_report(domain);
        assert_eq!(r["contact-info"], "postmaster@sender.test");
        let policies = r["policies"].as_array().unwrap();
        let ok =
            policies.iter().map(|p| p["summary"]["total-successful-session-count"].as_u64().unwrap()).sum();
        let mut types: Vec<String> = policies
            .iter()
            .flat_map(|p| p["failure-details"].as_array().cloned().unwrap_or_default())
            .map(|d| d["result-type"].as_str().unwrap().to_owned())
            .collect();
        types.sort();
        types.dedup();
        (ok, types)
    };
    let (ok, failed) = results("enforced.test");
    assert!(ok >= 1 && failed.is_empty(), "enforced.test: {ok} {failed:?}");
    assert_eq!(results("plain.test"), (0, vec!["starttls-not-supported".to_owned()]));
    assert_eq!(results("badcert.test"), (0, vec!["certificate-not-trusted".to_owned()]));
    // Testing: delivered in plaintext, and the report says STARTTLS was missing.
    assert_eq!(results("testing.test").1, ["starttls-not-supported"]);
    // Testing, over TLS with a certificate a check refuses: delivered, the refusal reported.
    assert_eq!(results("testbad.test"), (0, vec!["certificate-not-trusted".to_owned()]));
    assert_eq!(results("nofetch.test").1, ["sts-policy-fetch-error"]);
    assert_eq!(results("cached.test").1, ["starttls-not-supported", "sts-policy-fetch-error"]);
    let nofetch = tls_report("nofetch.test");
    assert_eq!(nofetch["policies"][0]["policy"]["policy-type"], "no-policy-found");
    let plain = tls_report("plain.test");
    let detail = &plain["policies"][0]["failure-details"][0];
    assert_eq!(
        (detail["receiving-mx-hostname"].as_str(), detail["receiving-ip"].as_str()),
        (Some("mx.plain.test"), Some("127.0.0.3"))
    );
    assert_eq!(plain["policies"][0]["policy"]["policy-string"][1], "mode: enforce");
    assert!(!files.iter().any(|f| f.contains("!none.test!")), "no policy, no report: {files:?}");
    let tallied: Vec<&str> =
        report["mta_sts"].as_array().unwrap().iter().map(|t| t["domain"].as_str().unwrap()).collect();
    assert!(tallied.contains(&"enforced.test") && tallied.contains(&"plain.test"), "{tallied:?}");
}

/// `volley check --recipient-domain`: the receiving side's rows from real DNS and HTTPS
/// answers, and exit 1 when a policy would stop mail to one of the domain's MX hosts.
#[test]
fn check_shows_what_a_recipient_domain_asks_of_senders() {
    let dir = common::temp_dir("mta-sts-check");
    let (ca, tls) = certificate(&dir, "trusted", &["mta-sts.good.test", "mta-sts.partial.test"]);
    let https = HttpsStub::start("127.0.0.1:0".parse().unwrap(), Arc::clone(&tls.config), |head| {
        let body = match host_of(head).as_deref() {
            Some("mta-sts.good.test") => policy("enforce", "*.good.test"),
            _ => policy("enforce", "mx1.partial.test"),
        };
        (response("200 OK", Some("text/plain"), "", &body), Duration::ZERO)
    })
    .unwrap();
    let zone = "
        good.test MX 10 mx1.good.test
        mta-sts.good.test A 127.0.0.1
        _mta-sts.good.test TXT v=STSv1; id=7
        _smtp._tls.good.test TXT v=TLSRPTv1; rua=mailto:tls@good.test
        partial.test MX 10 mx1.partial.test
        partial.test MX 20 mx2.partial.test
        mta-sts.partial.test A 127.0.0.1
        _mta-sts.partial.test TXT v=STSv1; id=1
        bare.test MX 10 mx.bare.test
    ";
    let dns = DnsStub::start("127.0.0.1:0".parse().unwrap(), zone.parse::<Zone>().unwrap()).unwrap();
    let check = |domains: &[&str]| {
        let mut cmd = Command::new(VOLLEY);
        cmd.args(["check", "--json", "--dns-server", &dns.addr().to_string(), "--dns-timeout", "1s"]).args([
            "--mta-sts-port",
            &https.addr().port().to_string(),
            "--ca-file",
            ca.to_str().unwrap(),
        ]);
        for d in domains {
            cmd.args(["--recipient-domain", d]);
        }
        let out = run(cmd, Duration::from_secs(30));
        let rows: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap_or_default();
        let verdicts: Vec<(String, String)> = rows
            .iter()
            .map(|r| {
                (r["check"].as_str().unwrap_or("").to_owned(), r["verdict"].as_str().unwrap_or("").to_owned())
            })
            .collect();
        (out, rows, verdicts)
    };
    let (out, rows, verdicts) = check(&["good.test"]);
    assert_eq!(out.status.code(), Some(0), "{rows:#?}\n{}", stderr(&out));
    let mut expected: Vec<(String, String)> = ["MX good.test", "MTA-STS good.test", "TLS-RPT good.test"]
        .iter()
        .map(|c| (c.to_string(), "pass".to_owned()))
        .collect();
    // The stub's answers do not validate against the root's keys: DANE not checked (see
    // tests/dane.rs for a signed zone).
    expected.push(("DANE good.test".to_owned(), "warn".to_owned()));
    assert_eq!(verdicts, expected, "{rows:#?}");
    assert!(rows[3]["detail"].as_str().unwrap().starts_with("not checked"), "{rows:#?}");
    assert!(rows[1]["detail"].as_str().unwrap().contains("mode enforce, mx *.good.test"), "{rows:#?}");

    let (out, rows, verdicts) = check(&["partial.test", "bare.test"]);
    assert_eq!(out.status.code(), Some(1), "{rows:#?}");
    let verdict = |c: &str| verdicts.iter().find(|v| v.0 == c).map(|v| v.1.as_str()).unwrap_or("missing");
    assert_eq!(verdict("MTA-STS partial.test"), "fail", "{rows:#?}");
    assert!(rows[1]["detail"].as_str().unwrap().ends_with("deliver nothing: mx2.partial.test"), "{rows:#?}");
    assert_eq!(
        (verdict("TLS-RPT partial.test"), verdict("MTA-STS bare.test")),
        ("warn", "warn"),
        "{rows:#?}"
    );
}

/// A policy in use is fetched again in the background once half its max_age has passed, so
/// it outlives its first max_age even when its host stops serving it (RFC 8461 §10.2: an
/// attacker who blocks fetches later cannot end it). Without the refresh, the lookup after
/// the first max_age would find no valid policy and deliver as without one.
#[test]
fn a_policy_in_use_is_kept_warm_and_outlives_a_later_blocked_fetch() {
    use mailvolley::deliver::dns::{Answer, DnsConfig, Resolver, TlsDemand};
    use mailvolley::deliver::mta_sts::Mode;
    use mailvolley::deliver::mta_sts::lookup::StsConfig;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Instant;

    let dir = common::temp_dir("mta-sts-warm");
    let (ca, tls) = certificate(&dir, "ca", &["mta-sts.warm.test"]);
    let up = Arc::new(AtomicBool::new(true));
    let serving = Arc::clone(&up);
    let https = HttpsStub::start("127.0.0.1:0".parse().unwrap(), Arc::clone(&tls.config), move |_| {
        let answer = match serving.load(Ordering::Relaxed) {
            true => {
                let body = b"version: STSv1\r\nmode: enforce\r\nmx: mx.warm.test\r\nmax_age: 6\r\n";
                response("200 OK", Some("text/plain"), "", body)
            }
            false => response("404 Not Found", Some("text/plain"), "", b"blocked"),
        };
        (answer, Duration::ZERO)
    })
    .unwrap();
    let zone = "
        warm.test MX 10 mx.warm.test
        mx.warm.test A 127.0.0.2
        mta-sts.warm.test A 127.0.0.1
        _mta-sts.warm.test TXT v=STSv1; id=1
    ";
    let dns = DnsStub::start("127.0.0.1:0".parse().unwrap(), zone.parse::<Zone>().unwrap()).unwrap();
    let sts = StsConfig::new(Some(&ca), https.addr().port(), None).unwrap();
    let resolver = Resolver::start(DnsConfig {
        server: Some(dns.addr()),
        timeout: Duration::from_millis(500),
        attempts: 1,
        mta_sts: Some(sts),
        ..DnsConfig::default()
    })
    .unwrap();
    let enforced = |resolver: &Resolver| {
        resolver.ask("warm.test");
        let (_, answer) = resolver.answer_within(Duration::from_secs(10)).expect("an answer");
        matches!(answer, Answer::Hosts { tls: TlsDemand::MtaSts(p), .. } if p.mode == Mode::Enforce)
    };
    assert!(enforced(&resolver));
    let first = Instant::now();
    let gets = || https.requests().iter().filter(|r| r.starts_with("GET ")).count();
    common::serve::wait_until(Duration::from_secs(8), "the policy fetched again", || gets() == 2);
    up.store(false, Ordering::Relaxed);
    // Past the first fetch's max_age (6 s; the store counts whole seconds): the refreshed
    // policy holds, though its host now answers 404.
    std::thread::sleep((first + Duration::from_secs(7)).saturating_duration_since(Instant::now()));
    assert!(enforced(&resolver), "the refreshed policy still holds");
    drop(resolver);
    let _ = std::fs::remove_dir_all(&dir);
}

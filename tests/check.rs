//! `volley check` end to end: the binary against a local DNS server holding SPF, DKIM, DMARC
//! and PTR records, in passing and failing variants.

mod common;

use common::campaign::{OutputWithin, SHORT};

use std::path::Path;
use std::process::{Command, Output};

use mailvolley::testkit::dns::{DnsStub, Zone};
use serde_json::Value;

const VOLLEY: &str = env!("CARGO_BIN_EXE_volley");

fn key(name: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/dkim").join(name).display().to_string()
}

fn public(name: &str) -> String {
    std::fs::read_to_string(key(name)).unwrap().trim().to_owned()
}

/// A zone where example.com is set up right for 192.0.2.9 sending with both test keys.
fn zone(changes: &[(&str, &str)]) -> String {
    let mut lines = vec![
        ("spf", "example.com TXT v=spf1 ip4:192.0.2.0/29 include:_spf.example.net -all".to_owned()),
        ("include", "_spf.example.net TXT v=spf1 ip4:192.0.2.8/30 -all".to_owned()),
        ("rsa", format!("rsa._domainkey.example.com TXT v=DKIM1; k=rsa; p={}", public("rsa2048.p"))),
        ("ed", format!("ed._domainkey.example.com TXT v=DKIM1; k=ed25519; p={}", public("ed25519.p"))),
        ("dmarc", "_dmarc.example.com TXT v=DMARC1; p=reject; adkim=r".to_owned()),
        ("ptr", "9.2.0.192.in-addr.arpa PTR out.example.com".to_owned()),
        ("a", "out.example.com A 192.0.2.9".to_owned()),
    ];
    for (tag, replacement) in changes {
        lines.retain(|(t, _)| t != tag);
        if !replacement.is_empty() {
            lines.push(("new", replacement.to_string()));
        }
    }
    lines.into_iter().map(|(_, l)| l + "\n").collect()
}

fn check(zone_text: &str, extra: &[&str]) -> (Output, Vec<Value>) {
    let dns = DnsStub::start("127.0.0.1:0".parse().unwrap(), zone_text.parse::<Zone>().unwrap()).unwrap();
    // A directory per call: the tests run at once, and temp_dir empties the one it names.
    static CALLS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let dir =
        common::temp_dir(&format!("check-{}", CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed)));
    let msg = dir.join("msg.txt");
    std::fs::write(&msg, "From: News <news@example.com>\nSubject: Hi {{ name }}\n\nHello\n").unwrap();
    let out = Command::new(VOLLEY)
        .args(["check", "--json", "--dns-server", &dns.addr().to_string(), "--dns-timeout", "1s"])
        .args(["--message", msg.to_str().unwrap(), "--source-ip", "192.0.2.9"])
        .args(["--dkim", &format!("example.com:rsa:{}", key("rsa2048.pem"))])
        .args(["--dkim", &format!("example.com:ed:{}", key("ed25519.pem"))])
        .args(["--unsubscribe-url", "https://example.com/u/{{ token }}"])
        .args(extra)
        .output_within(SHORT);
    let rows = serde_json::from_slice(&out.stdout).unwrap_or_default();
    (out, rows)
}

fn verdict<'a>(rows: &'a [Value], check: &str) -> &'a str {
    rows.iter().find(|r| r["check"] == check).and_then(|r| r["verdict"].as_str()).unwrap_or("missing")
}

#[test]
fn a_sender_set_up_right_passes_and_exits_zero() {
    let (out, rows) = check(&zone(&[]), &[]);
    assert_eq!(out.status.code(), Some(0), "{rows:#?}\n{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(rows.len(), 7, "{rows:#?}");
    assert!(rows.iter().all(|r| r["verdict"] == "pass"), "{rows:#?}");
}

#[test]
fn each_broken_record_fails_its_check_and_exits_one() {
    let other_key =
        "rsa._domainkey.example.com TXT v=DKIM1; k=rsa; p=MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEAwrong";
    // (what, zone changes, extra arguments, the check that must fail)
    type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], &'a [&'a str], &'a str);
    let cases: &[Case] = &[
        ("no SPF", &[("spf", "")], &[], "SPF example.com"),
        ("IP outside SPF", &[("include", "_spf.example.net TXT v=spf1 -all")], &[], "SPF example.com"),
        ("two SPF records", &[("include", "example.com TXT v=spf1 -all")], &[], "SPF example.com"),
        ("DKIM key not published", &[("ed", "")], &[], "DKIM ed._domainkey.example.com"),
        ("another DKIM key published", &[("rsa", other_key)], &[], "DKIM rsa._domainkey.example.com"),
        ("no DMARC", &[("dmarc", "")], &[], "DMARC example.com"),
        (
            "DMARC not aligned (strict, signing a parent)",
            &[("dmarc", "_dmarc.example.com TXT v=DMARC1; p=reject; adkim=s; aspf=s")],
            &["--mail-from", "b@bounce.example.org", "--from", "n@news.example.com"],
            "DMARC alignment",
        ),
        ("no PTR", &[("ptr", "")], &[], "PTR 192.0.2.9"),
        ("PTR not confirmed", &[("a", "out.example.com A 192.0.2.10")], &[], "PTR 192.0.2.9"),
        ("DNS failing", &[("dmarc", "_dmarc.example.com SERVFAIL")], &[], "DMARC example.com"),
    ];
    for (what, changes, extra, failing) in cases {
        let (out, rows) = check(&zone(changes), extra);
        assert_eq!(out.status.code(), Some(1), "{what}: {rows:#?}");
        assert_eq!(verdict(&rows, failing), "fail", "{what}: {rows:#?}");
        let fix = rows.iter().find(|r| r["check"] == *failing).and_then(|r| r["fix"].as_str()).unwrap_or("");
        assert!(!fix.is_empty(), "{what}: a failure says how to fix it");
    }
}

#[test]
fn missing_unsubscribe_headers_fail_bulk_mail_and_the_text_table_shows_fixes() {
    let dns = DnsStub::start("127.0.0.1:0".parse().unwrap(), zone(&[]).parse::<Zone>().unwrap()).unwrap();
    let out = Command::new(VOLLEY)
        .args(["check", "--dns-server", &dns.addr().to_string(), "--from", "news@example.com"])
        .args(["--dkim", &format!("example.com:ed:{}", key("ed25519.pem"))])
        .output_within(SHORT);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("fail  One-click unsubscribe") && text.contains("fix: give --unsubscribe-url"),
        "{text}"
    );
    assert!(text.contains("warn  PTR") && text.contains("warn  SPF example.com"), "no --source-ip: {text}");
    // Transactional mail: no unsubscribe needed, warnings only: exit 0.
    let out = Command::new(VOLLEY)
        .args([
            "check",
            "--dns-server",
            &dns.addr().to_string(),
            "--from",
            "news@example.com",
            "--transactional",
        ])
        .args(["--dkim", &format!("example.com:ed:{}", key("ed25519.pem"))])
        .output_within(SHORT);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stdout));
    // A message that carries its own headers: both needed, and `send`'s flag would clash.
    let dir = common::temp_dir("check-own");
    let own = |post: &str| {
        let msg = dir.join("own.txt");
        let text = format!(
            "From: n@example.com\nList-Unsubscribe: <mailto:u@example.com>,\n <https://example.com/u/1>\n{post}\nhi\n"
        );
        std::fs::write(&msg, text).unwrap();
        let out = Command::new(VOLLEY)
            .args(["check", "--dns-server", &dns.addr().to_string(), "--message", msg.to_str().unwrap()])
            .args(["--dkim", &format!("example.com:ed:{}", key("ed25519.pem"))])
            .output_within(SHORT);
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert!(
        own("List-Unsubscribe-Post: List-Unsubscribe=One-Click\n").contains("pass  One-click unsubscribe")
    );
    assert!(own("").contains("fail  One-click unsubscribe"));
    // A bad key is a usage error.
    let out = Command::new(VOLLEY)
        .args(["check", "--dns-server", &dns.addr().to_string(), "--from", "news@example.com"])
        .args(["--dkim", &format!("example.com:s:{}", key("ec-p256.pem"))])
        .output_within(SHORT);
    assert_eq!(out.status.code(), Some(2));
}

//! DANE (RFC 7672) end to end: `volley send` to MX hosts that publish TLSA records, as a user
//! runs it. The local DNS server signs its zone (a key made at start, given to volley as
//! `--dnssec-trust-anchor`), with a zone delegated unsigned and a name whose signatures do not
//! verify; sinks on 127.0.0.x play the MX hosts: one with STARTTLS and a self-signed
//! certificate (no CA vouches for it: only DANE-EE can), one without STARTTLS.

mod common;

use common::campaign::{finals, records, run, stderr, two_per_domain};

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use mailvolley::sink::SinkHandle;
use mailvolley::testkit::dns::{DnsStub, Zone};
use mailvolley::tls::ServerTls;
use serde_json::Value;

const VOLLEY: &str = env!("CARGO_BIN_EXE_volley");

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

struct Setup {
    dir: std::path::PathBuf,
    dns: DnsStub,
    sinks: BTreeMap<u8, SinkHandle>,
    port: u16,
    list: std::path::PathBuf,
    msg: std::path::PathBuf,
}

/// Each domain meets one case; the campaign runs them all at once.
const CASES: [&str; 9] = [
    "ee.test",
    "wrong.test",
    "stripped.test",
    "bogus.test",
    "odd.test",
    "none.test",
    "plain.test",
    "mix.test",
    "split.test",
];

fn setup(name: &str) -> Setup {
    let dir = common::temp_dir(name);
    let made = rcgen::generate_simple_self_signed(vec!["mx.ee.test".to_owned()]).unwrap();
    let (cert, key) = (dir.join("mx.pem"), dir.join("mx.key"));
    std::fs::write(&cert, made.cert.pem()).unwrap();
    std::fs::write(&key, made.key_pair.serialize_pem()).unwrap();
    let tls = ServerTls::from_files(&cert, &key).unwrap();
    // DANE-EE 3 1 1: the SHA-256 of the server's public key.
    let spki = hex(ring::digest::digest(&ring::digest::SHA256, &made.key_pair.public_key_der()).as_ref());
    let other = "ab".repeat(32);

    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let sinks = common::mx_sinks(&dir, port, vec![(2u8, Some(tls)), (3, None)]);

    let zone = format!(
        "
        test SIGNED
        # TLSA matching the TLS sink's key: delivered over TLS.
        ee.test MX 10 mx.ee.test
        mx.ee.test A 127.0.0.2
        _25._tcp.mx.ee.test TLSA 3 1 1 {spki}
        # TLSA matching another key: refused at the handshake.
        wrong.test MX 10 mx.wrong.test
        mx.wrong.test A 127.0.0.2
        _25._tcp.mx.wrong.test TLSA 3 1 1 {other}
        # TLSA, but the host does not offer STARTTLS: never plaintext.
        stripped.test MX 10 mx.stripped.test
        mx.stripped.test A 127.0.0.3
        _25._tcp.mx.stripped.test TLSA 3 1 1 {spki}
        # TLSA whose signature does not verify: the host is not used.
        bogus.test MX 10 mx.bogus.test
        mx.bogus.test A 127.0.0.2
        _25._tcp.mx.bogus.test TLSA 3 1 1 {spki}
        _25._tcp.mx.bogus.test BOGUS
        # Secure, but no usable record (PKIX-TA): TLS required, unauthenticated.
        odd.test MX 10 mx.odd.test
        mx.odd.test A 127.0.0.2
        _25._tcp.mx.odd.test TLSA 0 1 1 {other}
        # No TLSA (a secure denial): as without DANE.
        none.test MX 10 mx.none.test
        mx.none.test A 127.0.0.3
        # An unsigned zone: its TLSA records count for nothing.
        plain.test ZONE
        plain.test MX 10 mx.plain.test
        mx.plain.test A 127.0.0.3
        _25._tcp.mx.plain.test TLSA 3 1 1 {other}
        # The preferred host fails validation; the other, without TLSA, takes the mail.
        mix.test MX 10 mx1.mix.test
        mix.test MX 20 mx2.mix.test
        mx1.mix.test A 127.0.0.2
        _25._tcp.mx1.mix.test TLSA 3 1 1 {spki}
        _25._tcp.mx1.mix.test BOGUS
        mx2.mix.test A 127.0.0.3
        # The preferred host has TLSA records but is down; the other has none and no STARTTLS:
        # used as without DANE (RFC 7672 §2.2), in plaintext.
        split.test MX 10 mx1.split.test
        split.test MX 20 mx2.split.test
        mx1.split.test A 127.0.0.9
        _25._tcp.mx1.split.test TLSA 3 1 1 {spki}
        mx2.split.test A 127.0.0.3
        "
    );
    let dns = DnsStub::start("127.0.0.1:0".parse().unwrap(), zone.parse::<Zone>().unwrap()).unwrap();

    let (list_path, msg) = two_per_domain(&dir, CASES);
    Setup { dir, dns, sinks, port, list: list_path, msg }
}

impl Setup {
    /// `volley send` over the whole list; its log's records, and its stderr.
    fn send(&self, log: &Path, extra: &[&str]) -> (Vec<Value>, String) {
        let mut cmd = Command::new(VOLLEY);
        cmd.args(["send", "--quiet", "--threads", "2"])
            .args(["--dns-server", &self.dns.addr().to_string(), "--dns-timeout", "500ms"])
            .args(["--smtp-port", &self.port.to_string()])
            .args(["--recipients", self.list.to_str().unwrap(), "--message", self.msg.to_str().unwrap()])
            .args(["--log", log.to_str().unwrap(), "--retry-after", "300ms", "--retry-max", "300ms"])
            .args(["--max-age", "2s", "--reconnect-backoff", "50ms", "--helo", "sender.test"])
            .args(extra)
            .stdin(Stdio::null());
        let out = run(cmd, Duration::from_secs(60));
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        (records(log), stderr(&out))
    }

    fn dumped(&self) -> Vec<String> {
        self.sinks
            .keys()
            .flat_map(|x| common::dumped(&self.dir.join(format!("sink{x}"))))
            .map(|(envelope, _)| envelope)
            .collect()
    }
}

fn by_domain<'a>(f: &'a BTreeMap<u64, Value>, domain: &str) -> Vec<&'a Value> {
    f.values().filter(|r| r["rcpt"].as_str().is_some_and(|a| a.ends_with(&format!("@{domain}")))).collect()
}

#[test]
fn delivery_keeps_to_each_mx_hosts_tlsa_records() {
    let setup = setup("dane");
    let anchor = setup.dir.join("anchor.key");
    std::fs::write(&anchor, setup.dns.trust_anchor()).unwrap();
    let log = setup.dir.join("log.jsonl");
    let reports = setup.dir.join("tls-reports");
    let (all, err) = setup.send(
        &log,
        &["--dnssec-trust-anchor", anchor.to_str().unwrap(), "--tls-report", reports.to_str().unwrap()],
    );
    assert!(!err.contains("DANE is off"), "{err}");
    let f = finals(&all);
    assert_eq!(f.len(), 18, "one final record per recipient: {f:?}");

    for r in by_domain(&f, "ee.test").into_iter().chain(by_domain(&f, "odd.test")) {
        assert_eq!(r["status"], "delivered", "{r}");
        assert!(r["tls"].as_str().is_some_and(|v| v.starts_with("TLSv1")), "over TLS: {r}");
    }
    for domain in ["none.test", "plain.test", "mix.test", "split.test"] {
        for r in by_domain(&f, domain) {
            assert_eq!(r["status"], "delivered", "{domain}: {r}");
            assert!(r["tls"].is_null(), "{domain}: DANE does not apply, plaintext as before: {r}");
        }
    }
    for r in by_domain(&f, "mix.test") {
        assert_eq!(r["mx"], "mx2.mix.test", "the host that fails validation is skipped: {r}");
    }
    for r in by_domain(&f, "split.test") {
        assert_eq!(r["mx"], "mx2.split.test", "the host without records, in plaintext: {r}");
    }
    for (domain, why) in
        [("wrong.test", "TLSA"), ("stripped.test", "does not offer STARTTLS"), ("bogus.test", "passes DANE")]
    {
        for r in by_domain(&f, domain) {
            assert_eq!(
                (r["status"].as_str(), r["category"].as_str()),
                (Some("expired"), Some("tls_required")),
                "{domain}: {r}"
            );
            assert!(r["reason"].as_str().unwrap_or("").contains(why), "{domain}: {why}: {r}");
        }
    }
    // Nothing of the refused domains' mail reached a server.
    let dumped = setup.dumped();
    for domain in ["wrong.test", "stripped.test", "bogus.test"] {
        assert!(!dumped.iter().any(|e| e.contains(&format!("@{domain}>"))), "{domain}: {dumped:?}");
    }
    assert_eq!(dumped.len(), 12, "six domains' two recipients each: {dumped:?}");
    // TLS reports (RFC 8460): one per MX host with TLSA records (a DANE policy's domain is
    // the host, its records the policy's strings), none for hosts DANE does not apply to.
    let report = |host: &str| -> Value {
        let file = std::fs::read_dir(&reports)
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| p.file_name().unwrap().to_str().unwrap().starts_with(&format!("sender.test!{host}!")))
            .unwrap_or_else(|| panic!("no report for {host} in {}", reports.display()));
        let json = std::fs::read(file).unwrap();
        let read = common::tls_report_read_by_mail_auth(&json);
        assert_eq!(read.policies[0].policy.policy_type, mail_auth::report::tlsrpt::PolicyType::Tlsa);
        let report: Value = serde_json::from_slice(&json).unwrap();
        let policy = &report["policies"][0];
        assert_eq!(policy["policy"]["policy-type"], "tlsa", "{host}: {report}");
        assert_eq!(policy["policy"]["policy-domain"], host, "{report}");
        policy.clone()
    };
    let ee = report("mx.ee.test");
    assert_eq!(ee["policy"]["policy-string"][0].as_str().unwrap().get(..6), Some("3 1 1 "), "{ee}");
    assert_eq!(ee["summary"]["total-failure-session-count"], 0, "{ee}");
    assert!(ee["summary"]["total-successful-session-count"].as_u64().unwrap() >= 1, "{ee}");
    for (host, result) in [
        ("mx.wrong.test", "tlsa-invalid"),
        ("mx.stripped.test", "starttls-not-supported"),
        ("mx.bogus.test", "dnssec-invalid"),
        ("mx1.mix.test", "dnssec-invalid"),
    ] {
        let p = report(host);
        assert_eq!(p["summary"]["total-successful-session-count"], 0, "{host}: {p}");
        let details = p["failure-details"].as_array().unwrap();
        assert!(details.iter().all(|d| d["result-type"] == result), "{host}: {p}");
        assert_eq!(details[0]["receiving-mx-hostname"], host, "{p}");
    }
    let names: Vec<String> =
        std::fs::read_dir(&reports).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    for host in ["mx.none.test", "mx.plain.test", "mx2.mix.test", "none.test", "plain.test", "mix.test"] {
        assert!(!names.iter().any(|n| n.contains(&format!("!{host}!"))), "{host}: {names:?}");
    }
    // The TLSA questions were asked with DNSSEC: the stub saw them, and the zone's keys.
    let asked = setup.dns.questions();
    assert!(asked.iter().any(|q| q == "_25._tcp.mx.ee.test TLSA"), "{asked:?}");
    assert!(asked.iter().any(|q| q == "test DNSKEY"), "{asked:?}");
}

/// Without a trust anchor the stub's answers validate against (the built-in root keys), DANE
/// is off (until they validate, which they never do here), with a warning, and delivery is as
/// without it; `--dane off` asks nothing.
#[test]
fn dane_is_off_when_answers_do_not_validate_or_when_asked() {
    let setup = setup("dane-off");
    let (all, err) = setup.send(&setup.dir.join("log1.jsonl"), &[]);
    assert!(err.contains("DANE is off until the resolver's answers validate"), "{err}");
    let f = finals(&all);
    for r in by_domain(&f, "wrong.test").into_iter().chain(by_domain(&f, "bogus.test")) {
        assert_eq!(r["status"], "delivered", "{r}");
    }
    let before = setup.dns.questions().len();
    let anchor = setup.dir.join("anchor.key");
    std::fs::write(&anchor, setup.dns.trust_anchor()).unwrap();
    let (all, err) = setup.send(
        &setup.dir.join("log2.jsonl"),
        &["--dane", "off", "--dnssec-trust-anchor", anchor.to_str().unwrap()],
    );
    assert!(!err.contains("DANE"), "{err}");
    assert_eq!(finals(&all).values().filter(|r| r["status"] == "delivered").count(), 18);
    let asked = setup.dns.questions();
    assert!(!asked[before..].iter().any(|q| q.ends_with(" TLSA") || q.ends_with(" DNSKEY")), "{asked:?}");
}

/// `volley check --recipient-domain`: a row per MX host with TLSA records, from the signed zone.
#[test]
fn check_shows_each_mx_hosts_dane() {
    let setup = setup("dane-check");
    let anchor = setup.dir.join("anchor.key");
    std::fs::write(&anchor, setup.dns.trust_anchor()).unwrap();
    let mut cmd = Command::new(VOLLEY);
    cmd.args(["check", "--json", "--dns-server", &setup.dns.addr().to_string()])
        .args(["--dnssec-trust-anchor", anchor.to_str().unwrap()]);
    for domain in ["ee.test", "bogus.test", "none.test", "odd.test"] {
        cmd.args(["--recipient-domain", domain]);
    }
    let out = run(cmd, Duration::from_secs(30));
    assert_eq!(out.status.code(), Some(1), "bogus.test fails: {}", stderr(&out));
    let rows: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    let verdict = |check: &str| -> (String, String) {
        let row = rows.iter().find(|r| r["check"] == check).unwrap_or_else(|| panic!("{check}: {rows:#?}"));
        (row["verdict"].as_str().unwrap().to_owned(), row["detail"].as_str().unwrap().to_owned())
    };
    let (v, detail) = verdict("DANE mx.ee.test");
    assert_eq!(v, "pass", "{detail}");
    assert!(detail.starts_with("TLS required, the certificate matched against 3 1 1 "), "{detail}");
    assert_eq!(verdict("DANE mx.bogus.test").0, "fail");
    assert_eq!(verdict("DANE none.test").0, "warn", "no TLSA records");
    assert!(verdict("DANE mx.odd.test").1.contains("none usable"));
}

/// A trust-anchor file that is not one stops the run before anything is sent.
#[test]
fn a_bad_trust_anchor_file_is_a_clear_error() {
    let setup = setup("dane-bad-anchor");
    let anchor = setup.dir.join("anchor.key");
    std::fs::write(
        &anchor,
        ". IN DS 20326 8 2 E06D44B80B8F1D39A95C0B0D7C65D08458E880409BBC683457104237C7F8EC8D\n",
    )
    .unwrap();
    let log = setup.dir.join("log.jsonl");
    let mut cmd = Command::new(VOLLEY);
    cmd.args(["send", "--quiet", "--dns-server", &setup.dns.addr().to_string()])
        .args(["--recipients", setup.list.to_str().unwrap(), "--message", setup.msg.to_str().unwrap()])
        .args(["--log", log.to_str().unwrap(), "--dnssec-trust-anchor", anchor.to_str().unwrap()])
        .stdin(Stdio::null());
    let out = run(cmd, Duration::from_secs(30));
    assert_ne!(out.status.code(), Some(0));
    let err = stderr(&out);
    assert!(err.contains("anchor.key line 1") && err.contains("DS record"), "{err}");
    assert!(setup.dumped().is_empty());
}

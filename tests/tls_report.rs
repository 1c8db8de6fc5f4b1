//! `volley tls-report send DIR` end to end, as a user runs it after `send --tls-report DIR`:
//! a local DNS server answers the policy domains' `_smtp._tls` records and the MX hosts of
//! the report addresses; a local HTTPS server (a test certificate, given as `--ca-file`)
//! takes the POSTed reports; sinks on 127.0.0.x take the mailed ones.

mod common;

use common::campaign::{run, stderr};

use std::io::Read as _;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use mailvolley::testkit::dns::{DnsStub, Zone};
use mailvolley::testkit::https::{HttpsStub, response};
use mailvolley::tls::ServerTls;

const VOLLEY: &str = env!("CARGO_BIN_EXE_volley");

fn gunzip(data: &[u8]) -> String {
    let mut text = String::new();
    mail_auth::flate2::read::GzDecoder::new(data).read_to_string(&mut text).unwrap();
    text
}

/// A report as `send --tls-report` writes it, for `domain`: its file name and JSON.
fn report(domain: &str) -> (String, String) {
    let json = serde_json::json!({
        "organization-name": "sender.test",
        "date-range": {"start-datetime": "2026-12-01T00:00:00Z", "end-datetime": "2026-12-01T23:59:59Z"},
        "contact-info": "postmaster@sender.test",
        "report-id": format!("1764547200.{domain}@sender.test"),
        "policies": [{
            "policy": {"policy-type": "no-policy-found", "policy-domain": domain},
            "summary": {"total-successful-session-count": 3, "total-failure-session-count": 0}
        }]
    });
    (format!("sender.test!{domain}!1764547200!1764633599.json"), json.to_string())
}

/// The attachment of a mailed report (base64 between the attachment's headers and the final
/// boundary), decoded.
fn attachment(message: &str) -> Vec<u8> {
    let start = message.find("Content-Disposition: attachment").expect("an attachment");
    let body = &message[start..];
    let body = &body[body.find("\r\n\r\n").unwrap() + 4..];
    let body = &body[..body.find("--volley-tlsrpt--").unwrap()];
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.decode(body.replace(['\r', '\n'], "")).unwrap()
}

fn header<'a>(message: &'a str, name: &str) -> Option<&'a str> {
    let head = &message[..message.find("\r\n\r\n")?];
    head.split("\r\n").find_map(|l| l.strip_prefix(name)?.strip_prefix(": "))
}

#[test]
fn reports_reach_the_addresses_their_domains_name_once_each() {
    let dir = common::temp_dir("tls-report-send");
    let reports = dir.join("reports");
    std::fs::create_dir_all(&reports).unwrap();
    let made = rcgen::generate_simple_self_signed(vec!["rpt.test".to_owned()]).unwrap();
    let (cert, key) = (dir.join("rpt.pem"), dir.join("rpt.key"));
    std::fs::write(&cert, made.cert.pem()).unwrap();
    std::fs::write(&key, made.key_pair.serialize_pem()).unwrap();
    // The HTTPS endpoint: 202 for /v1/tlsrpt; /fail answers 500 until told otherwise.
    let failing = Arc::new(AtomicBool::new(true));
    let f = Arc::clone(&failing);
    let https = HttpsStub::start(
        "127.0.0.1:0".parse().unwrap(),
        ServerTls::from_files(&cert, &key).unwrap().config,
        move |head| match head.starts_with("POST /fail") && f.load(Ordering::Relaxed) {
            true => (response("500 Internal Server Error", None, "", b""), Duration::ZERO),
            false => (response("202 Accepted", None, "", b""), Duration::ZERO),
        },
    )
    .unwrap();
    let hp = https.addr().port();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let sinks = common::mx_sinks(&dir, port, vec![(2u8, None)]);
    let zone = format!(
        "
        _smtp._tls.a.test TXT v=TLSRPTv1; rua=mailto:tls@reports.test,https://rpt.test:{hp}/v1/tlsrpt
        _smtp._tls.c.test TXT v=TLSRPTv1; rua=https://rpt.test:{hp}/fail,mailto:tls@reports.test
        _smtp._tls.d.test TXT v=TLSRPTv1; rua=mailto:tls@down.test
        b.test MX 10 mx.b.test
        reports.test MX 10 mx.reports.test
        mx.reports.test A 127.0.0.2
        down.test MX 10 mx.down.test
        mx.down.test A 127.0.0.4
        rpt.test A 127.0.0.1
        "
    );
    let dns = DnsStub::start("127.0.0.1:0".parse().unwrap(), zone.parse::<Zone>().unwrap()).unwrap();
    let mut files = std::collections::BTreeMap::new();
    for domain in ["a.test", "b.test", "c.test", "d.test"] {
        let (name, json) = report(domain);
        std::fs::write(reports.join(&name), &json).unwrap();
        files.insert(domain, (name, json));
    }
    let send = || {
        let mut cmd = Command::new(VOLLEY);
        cmd.args(["tls-report", "send", reports.to_str().unwrap()])
            .args(["--from", "TLS reports <tls-reports@sender.test>", "--helo", "sender.test"])
            .args(["--dns-server", &dns.addr().to_string(), "--dns-timeout", "500ms"])
            .args(["--smtp-port", &port.to_string(), "--ca-file", cert.to_str().unwrap()])
            .args(["--retry-after", "200ms", "--retry-max", "200ms", "--max-age", "1s"])
            .args(["--reconnect-backoff", "50ms", "--dane", "off"])
            .args(["--dkim", "sender.test:tlsrpt:tests/data/dkim/rsa2048.pem"])
            .stdin(Stdio::null());
        run(cmd, Duration::from_secs(60))
    };

    // First run: c.test's HTTPS address fails, d.test's mail host is down (its report's mail
    // expires after --max-age: the engine waits ~10 s before trying a refusing host again).
    let out = send();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(out.status.code(), Some(1), "{stdout}{}", stderr(&out));
    let sent = reports.join("sent");
    let (a, b, c, d) = (&files["a.test"].0, &files["b.test"].0, &files["c.test"].0, &files["d.test"].0);
    assert!(sent.join(a).is_file() && sent.join(b).is_file(), "{stdout}");
    assert!(reports.join(c).is_file() && reports.join(d).is_file(), "{stdout}");
    let done = std::fs::read_to_string(sent.join(format!("{a}.done"))).unwrap();
    assert_eq!(done.lines().count(), 2, "{done}");
    assert_eq!(
        std::fs::read_to_string(reports.join(format!("{c}.done"))).unwrap(),
        "mailto:tls@reports.test\n"
    );
    assert!(stdout.contains("not wanted"), "b.test has no record: {stdout}");
    assert!(stdout.contains("answered 500"), "{stdout}");

    // The POSTs (§5.4): the gzip of the report, as application/tlsrpt+gzip.
    let heads = https.requests();
    assert_eq!(heads.len(), 2, "{heads:?}");
    assert!(heads[0].starts_with("POST /v1/tlsrpt "), "{heads:?}");
    assert!(heads[0].to_ascii_lowercase().contains("content-type: application/tlsrpt+gzip"), "{heads:?}");
    assert!(heads[0].to_ascii_lowercase().contains(&format!("host: rpt.test:{hp}")), "{heads:?}");
    assert_eq!(gunzip(&https.bodies()[0]), files["a.test"].1);

    // The mail (§5.3): to the rua address, from --from, the report gzipped and attached.
    let mailed = common::dumped(&dir.join("sink2"));
    assert_eq!(mailed.len(), 2, "a.test's and c.test's");
    let mut domains = Vec::new();
    for (envelope, content) in &mailed {
        let message = String::from_utf8_lossy(content).into_owned();
        let domain = header(&message, "TLS-Report-Domain").expect("TLS-Report-Domain").to_owned();
        let domain = domain.as_str();
        domains.push(domain.to_owned());
        assert!(envelope.contains("tls@reports.test"), "{envelope}");
        assert!(envelope.contains("tls-reports@sender.test"), "{envelope}");
        assert_eq!(
            header(&message, "Subject"),
            Some(format!("Report Domain: {domain} Submitter: sender.test Report-ID: <1764547200.{domain}@sender.test>").as_str()),
            "{message}"
        );
        assert_eq!(header(&message, "TLS-Report-Submitter"), Some("sender.test"), "{message}");
        assert!(message.contains("multipart/report; report-type=\"tlsrpt\""), "{message}");
        // Signed (§5.3) with the key given, as any campaign's message.
        let signature = header(&message, "DKIM-Signature").expect("a DKIM signature");
        assert!(signature.contains("d=sender.test") && signature.contains("s=tlsrpt"), "{signature}");
        let read =
            mail_auth::report::tlsrpt::TlsReport::parse_rfc5322(content, 1 << 20).expect("a TLS report mail");
        assert_eq!(read.report_id, format!("1764547200.{domain}@sender.test"));
        let name = &files[domain].0;
        assert!(message.contains(&format!("filename=\"{}.gz\"", name)), "{message}");
        assert_eq!(gunzip(&attachment(&message)), files[domain].1, "{domain}");
    }
    domains.sort();
    assert_eq!(domains, ["a.test", "c.test"]);

    // Second run, the failures gone: only what is left is sent, nothing twice.
    failing.store(false, Ordering::Relaxed);
    let _down = common::mx_sinks(&dir, port, vec![(4u8, None)]);
    let out = send();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(out.status.code(), Some(0), "{stdout}{}", stderr(&out));
    for name in [a, b, c, d] {
        assert!(sent.join(name).is_file(), "{name}: {stdout}");
        assert!(!reports.join(name).exists(), "{name}");
    }
    let heads = https.requests();
    assert_eq!(heads.len(), 3, "c.test's POST once more, nothing else: {heads:?}");
    assert!(heads[2].starts_with("POST /fail "), "{heads:?}");
    assert_eq!(gunzip(&https.bodies()[2]), files["c.test"].1);
    assert_eq!(common::dumped(&dir.join("sink2")).len(), 2, "c.test's mail is not sent again");
    let down = common::dumped(&dir.join("sink4"));
    assert_eq!(down.len(), 1);
    assert_eq!(gunzip(&attachment(&String::from_utf8_lossy(&down[0].1))), files["d.test"].1);
    drop(sinks);

    // A third run has nothing to do.
    let out = send();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(https.requests().len(), 3);
}

/// Submits one message to `rcpt` over SMTP.
fn submit(smtp: std::net::SocketAddr, rcpt: &str) {
    let mut c = common::Raw::greeted(smtp);
    c.ehlo();
    assert_eq!(c.cmd("MAIL FROM:<app@sender.test>"), 250);
    assert_eq!(c.cmd(&format!("RCPT TO:<{rcpt}>")), 250);
    assert_eq!(c.cmd("DATA"), 354);
    assert_eq!(c.cmd("Subject: hi\r\n\r\nhello\r\n."), 250);
    let _ = c.cmd("QUIT");
}

/// The report files in `dir`, sorted.
fn report_files(dir: &std::path::Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.ends_with(".json"))
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// serve's periodic reports (a period of 2 s here, a day by default): the period's counts
/// survive a stop and are reported at the next start once the period has ended; each report
/// is mailed through the spool (DKIM-signed, delivered to the rua address's MX host) and
/// POSTed, a POST that fails is tried again, and nothing is sent twice.
#[test]
fn serve_reports_each_period_and_keeps_its_counts_across_a_restart() {
    use common::serve::{Serve, http, wait_until};
    let dir = common::temp_dir("tls-report-serve");
    let names = ["rpt.test", "mta-sts.rcpt.test", "mx.rcpt.test"].map(str::to_owned).to_vec();
    let made = rcgen::generate_simple_self_signed(names).unwrap();
    let (cert, key) = (dir.join("ca.pem"), dir.join("ca.key"));
    std::fs::write(&cert, made.cert.pem()).unwrap();
    std::fs::write(&key, made.key_pair.serialize_pem()).unwrap();
    let tls = || ServerTls::from_files(&cert, &key).unwrap();
    // The policy of rcpt.test, and the report endpoint, whose first POST fails.
    let posts = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let p = Arc::clone(&posts);
    let https = HttpsStub::start("127.0.0.1:0".parse().unwrap(), tls().config, move |head| {
        let answer = if head.starts_with("GET /.well-known/mta-sts.txt ") {
            let policy = b"version: STSv1\r\nmode: enforce\r\nmx: mx.rcpt.test\r\nmax_age: 86400\r\n";
            response("200 OK", Some("text/plain"), "", policy)
        } else if head.starts_with("POST /v1/tlsrpt ") && p.fetch_add(1, Ordering::Relaxed) == 0 {
            response("500 Internal Server Error", None, "", b"")
        } else if head.starts_with("POST /v1/tlsrpt ") {
            response("202 Accepted", None, "", b"")
        } else {
            response("404 Not Found", None, "", b"")
        };
        (answer, Duration::ZERO)
    })
    .unwrap();
    let hp = https.addr().port();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let _sinks = common::mx_sinks(&dir, port, vec![(2u8, Some(tls())), (3, None)]);
    let zone = format!(
        "
        rcpt.test MX 10 mx.rcpt.test
        mx.rcpt.test A 127.0.0.2
        mta-sts.rcpt.test A 127.0.0.1
        _mta-sts.rcpt.test TXT v=STSv1; id=1
        _smtp._tls.rcpt.test TXT v=TLSRPTv1; rua=mailto:tls@reports.test,https://rpt.test:{hp}/v1/tlsrpt
        reports.test MX 10 mx.reports.test
        mx.reports.test A 127.0.0.3
        rpt.test A 127.0.0.1
        "
    );
    let dns = DnsStub::start("127.0.0.1:0".parse().unwrap(), zone.parse::<Zone>().unwrap()).unwrap();
    let spool = dir.join("spool");
    let (dns_addr, smtp_port, mta_sts_port) = (dns.addr().to_string(), port.to_string(), hp.to_string());
    let args = |period: &'static str| -> Vec<String> {
        let args = [
            "--dns-server",
            &dns_addr,
            "--dns-timeout",
            "500ms",
            "--smtp-port",
            &smtp_port,
            "--mta-sts-port",
            &mta_sts_port,
            "--ca-file",
            cert.to_str().unwrap(),
            "--dane",
            "off",
            "--helo",
            "sender.test",
            "--trusted-networks",
            "127.0.0.1/32",
            "--quiet",
            "--dkim",
            "sender.test:tlsrpt:tests/data/dkim/rsa2048.pem",
            "--metrics-listen",
            "127.0.0.1:0",
            "--tls-report-period",
            period,
        ];
        args.map(str::to_owned).to_vec()
    };
    let metrics = |serve: &Serve| http(serve.metrics.unwrap(), "GET", "/metrics", &[], "").2;
    let reports = spool.join("tls-reports");
    let sent = reports.join("sent");

    // A day's period: one session counted, nothing reported yet; the stop keeps the count.
    let a = args("1d");
    let serve = Serve::routed(&spool, &a.iter().map(String::as_str).collect::<Vec<_>>());
    submit(serve.smtp, "a@rcpt.test");
    wait_until(Duration::from_secs(20), "delivery to mx.rcpt.test", || {
        common::dumped(&dir.join("sink2")).len() == 1
    });
    let text = metrics(&serve);
    assert!(text.contains(r#"volley_tls_sessions_total{policy_type="sts",result="success"} 1"#), "{text}");
    let (code, said) = serve.terminate();
    assert_eq!(code, Some(0), "{said}");
    assert!(report_files(&reports).is_empty() && report_files(&sent).is_empty());
    let kept: serde_json::Value = {
        let store = mailvolley::serve::spool::open(&spool).unwrap();
        serde_json::from_slice(&store.setting("tls-report-period").unwrap().expect("the period kept"))
            .unwrap()
    };
    let policy = &kept["policies"][0];
    assert_eq!(policy["policy"]["policy-domain"], "rcpt.test", "{kept}");
    assert_eq!(policy["successes"], 1, "{kept}");
    let start = kept["start"].as_u64().unwrap();

    // Started again with 2 s periods, once that period has ended: it is reported at once.
    let ended_by = std::time::UNIX_EPOCH + Duration::from_secs(start + 3);
    if let Ok(wait) = ended_by.duration_since(std::time::SystemTime::now()) {
        std::thread::sleep(wait);
    }
    let b = args("2s");
    let serve = Serve::routed(&spool, &b.iter().map(String::as_str).collect::<Vec<_>>());
    wait_until(Duration::from_secs(30), "the kept period's report sent everywhere", || {
        report_files(&sent).len() == 1
    });
    let first = report_files(&sent).remove(0);
    assert!(first.starts_with(&format!("sender.test!rcpt.test!{start}!")), "{first}");
    // A session in the new process: its period's report follows.
    submit(serve.smtp, "b@rcpt.test");
    wait_until(Duration::from_secs(20), "delivery to mx.rcpt.test", || {
        common::dumped(&dir.join("sink2")).len() == 2
    });
    wait_until(Duration::from_secs(30), "the next period's report sent everywhere", || {
        report_files(&sent).len() == 2
    });
    wait_until(Duration::from_secs(20), "both reports' mail delivered", || {
        common::dumped(&dir.join("sink3")).len() == 2
    });
    let text = metrics(&serve);
    for line in [
        "volley_tls_reports_written_total 2",
        r#"volley_tls_report_deliveries_total{result="sent"} 4"#,
        r#"volley_tls_report_deliveries_total{result="failed"} 1"#,
        r#"volley_intake_messages_total{intake="internal"} 2"#,
    ] {
        assert!(text.contains(line), "{line} in\n{text}");
    }
    let (code, said) = serve.terminate();
    assert_eq!(code, Some(0), "{said}");

    let files: Vec<(String, String)> = report_files(&sent)
        .into_iter()
        .map(|name| {
            let json = std::fs::read_to_string(sent.join(&name)).unwrap();
            let done = std::fs::read_to_string(sent.join(format!("{name}.done"))).unwrap();
            assert_eq!(done.lines().count(), 2, "{name}: {done}");
            (name, json)
        })
        .collect();
    for (name, json) in &files {
        let read = common::tls_report_read_by_mail_auth(json.as_bytes());
        assert_eq!(read.policies.len(), 1, "{name}");
        assert_eq!(read.policies[0].summary.total_success, 1, "{name}");
        let report: serde_json::Value = serde_json::from_str(json).unwrap();
        assert_eq!(report["organization-name"], "sender.test");
        assert_eq!(report["contact-info"], "postmaster@sender.test");
        let p = &report["policies"][0];
        assert_eq!(p["policy"]["policy-type"], "sts", "{name}");
        assert_eq!(p["policy"]["mx-host"][0], "mx.rcpt.test", "{name}");
        assert_eq!(
            p["summary"],
            serde_json::json!({"total-successful-session-count": 1, "total-failure-session-count": 0}),
            "{name}"
        );
    }
    // Each POSTed once with success (the first one's failure tried again), each mailed once.
    let bodies: Vec<Vec<u8>> = (https.requests().into_iter().zip(https.bodies()))
        .filter(|(head, _)| head.starts_with("POST "))
        .map(|(_, body)| body)
        .collect();
    assert_eq!(bodies.len(), 3, "{:?}", https.requests());
    let mut posted: Vec<String> = bodies[1..].iter().map(|b| gunzip(b)).collect();
    posted.sort();
    let mut expected: Vec<String> = files.iter().map(|(_, json)| json.clone()).collect();
    expected.sort();
    assert_eq!(posted, expected);
    let mut mailed = Vec::new();
    for (envelope, content) in common::dumped(&dir.join("sink3")) {
        let message = String::from_utf8_lossy(&content).into_owned();
        assert!(
            envelope.contains("tls@reports.test") && envelope.contains("postmaster@sender.test"),
            "{envelope}"
        );
        assert_eq!(header(&message, "TLS-Report-Domain"), Some("rcpt.test"), "{message}");
        let signature = header(&message, "DKIM-Signature").expect("a DKIM signature");
        assert!(signature.contains("d=sender.test") && signature.contains("s=tlsrpt"), "{signature}");
        // The mail as a report receiver's parser reads it (RFC 8460 §5.3).
        let read = mail_auth::report::tlsrpt::TlsReport::parse_rfc5322(&content, 1 << 20)
            .expect("a TLS report mail");
        assert_eq!(read.policies[0].policy.policy_domain, "rcpt.test");
        mailed.push(gunzip(&attachment(&message)));
    }
    mailed.sort();
    assert_eq!(mailed, expected);

    // A stop between the spool's yes to a report's mail and the note of it in NAME.json.done
    // (the file back in the directory, its notes gone): the next start tries the report again,
    // and the spool answers its mail with what it admitted the first time (the same report and
    // address: one idempotency key): nothing is sent twice.
    let (first_name, _) = &files[0];
    std::fs::rename(sent.join(first_name), reports.join(first_name)).unwrap();
    std::fs::remove_file(sent.join(format!("{first_name}.done"))).unwrap();
    let c = args("1d");
    let serve = Serve::routed(&spool, &c.iter().map(String::as_str).collect::<Vec<_>>());
    wait_until(Duration::from_secs(30), "the report sent again", || sent.join(first_name).exists());
    let (code, said) = serve.terminate();
    assert_eq!(code, Some(0), "{said}");
    assert!(said.contains("spooled by an earlier attempt"), "{said}");
    let received = common::campaign::records(&spool.join("delivery.jsonl"))
        .into_iter()
        .filter(|r| r["status"] == "received" && r["origin"] == "volley:tls-reports")
        .count();
    assert_eq!(received, 2, "one report mail per report and address");
    assert_eq!(common::dumped(&dir.join("sink3")).len(), 2);
}

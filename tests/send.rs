//! `volley send` end to end, as a user runs it: the binary, a local DNS server and sinks on
//! 127.0.0.x addresses. Each test's sinks share a port picked for it; every process is bounded
//! in time.

mod common;

use common::campaign::{OutputWithin, SHORT};

use common::campaign::{finals, records, run, stderr};

use std::collections::{BTreeMap, HashMap};
use std::io::Write as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use mailvolley::sink::{SinkConfig, SinkHandle};
use mailvolley::testkit::dkim::DkimResult;
use mailvolley::testkit::dns::{DnsStub, Zone};
use serde_json::Value;

const VOLLEY: &str = env!("CARGO_BIN_EXE_volley");
/// The unsubscribe secret of the tests' campaigns, given as users should: in the environment.
const SECRET: &str = "test-secret-0123456789abcdef";
const SECRET_ENV: &str = mailvolley::send::unsubscribe::SECRET_ENV;

/// How a test sets up one of its sinks.
type Configure = Box<dyn FnOnce(&mut SinkConfig)>;

/// A test's world: its DNS server, its sinks (by last octet), its directory, its port.
struct World {
    dns: DnsStub,
    sinks: BTreeMap<u8, SinkHandle>,
    dir: PathBuf,
    port: u16,
}

impl World {
    /// Serves `zone` and starts a sink on 127.0.0.x for each `(x, configure)`.
    fn new(name: &str, zone: &str, sinks: Vec<(u8, Configure)>) -> World {
        let dir = common::temp_dir(name);
        let dns = DnsStub::start("127.0.0.1:0".parse().unwrap(), zone.parse::<Zone>().unwrap()).unwrap();
        // A port free on 127.0.0.1 is, in practice, free on the other 127.0.0.x addresses.
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let mut handles = BTreeMap::new();
        for (x, configure) in sinks {
            let dump = dir.join(format!("sink{x}"));
            std::fs::create_dir_all(&dump).unwrap();
            let mut config = SinkConfig {
                listen: SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, 0, 0, x)), port),
                threads: 1,
                dump: Some(dump),
                idle_timeout: Duration::from_secs(30),
                ..SinkConfig::default()
            };
            configure(&mut config);
            handles.insert(x, mailvolley::sink::start(config).expect("sink starts on 127.0.0.x"));
        }
        World { dns, sinks: handles, dir, port }
    }

    fn file(&self, name: &str, content: &str) -> PathBuf {
        let path = self.dir.join(name);
        std::fs::write(&path, content).unwrap();
        path
    }

    fn log(&self) -> PathBuf {
        self.dir.join("log.jsonl")
    }

    /// `volley send` with the world's DNS and port, and `args`.
    fn send(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(VOLLEY);
        cmd.arg("send")
            .args(["--dns-server", &self.dns.addr().to_string()])
            .args(["--smtp-port", &self.port.to_string()])
            .args(["--dns-timeout", "500ms", "--threads", "2", "--quiet"])
            .args(args)
            .stdin(Stdio::null());
        cmd
    }

    /// Messages each sink has written, by last octet: (envelope, content).
    fn dumped(&self) -> BTreeMap<u8, Vec<(String, String)>> {
        self.sinks
            .keys()
            .map(|x| {
                let msgs = common::dumped(&self.dir.join(format!("sink{x}")))
                    .into_iter()
                    .map(|(env, content)| (env, String::from_utf8_lossy(&content).into_owned()))
                    .collect();
                (*x, msgs)
            })
            .collect()
    }
}

fn status_of(finals: &BTreeMap<u64, Value>, line: u64) -> &str {
    finals.get(&line).and_then(|r| r["status"].as_str()).unwrap_or("none")
}

const MESSAGE: &str =
    "From: News <news@example.com>\nSubject: Hello {{ name }}\n\nDear {{ name }},\nwelcome.\n";

#[test]
fn a_campaign_follows_every_routing_rule_and_logs_each_recipient_once() {
    let zone = "
        big.test MX 10 mx1.big.test
        big.test MX 20 mx2.big.test
        hosted.test MX 20 mx2.big.test
        hosted.test MX 10 mx1.big.test
        mx1.big.test A 127.0.0.2
        mx2.big.test A 127.0.0.3
        implicit.test A 127.0.0.4
        null.test MX 0 .
        dangling.test MX 10 nowhere.test
    ";
    let w = World::new(
        "routing",
        zone,
        vec![(2, Box::new(|_| {})), (3, Box::new(|_| {})), (4, Box::new(|_| {}))],
    );
    let csv = "email,name\n\
        ann@big.test,Ann\n\
        bob@hosted.test,Bob\n\
        cy@implicit.test,Cy\n\
        dee@null.test,Dee\n\
        eve@missing.test,Eve\n\
        not-an-address,F\n\
        ANN@big.test,Again\n\
        gus@big.test,\"Gus\r\nBcc: victim@evil.test\"\n\
        hal@big.test\n\
        ida@dangling.test,Ida\n";
    let list = w.file("list.csv", csv);
    let msg = w.file("msg.txt", MESSAGE);
    let log = w.log();
    let mut cmd = w.send(&["--recipients", list.to_str().unwrap(), "--message", msg.to_str().unwrap()]);
    cmd.args(["--log", log.to_str().unwrap(), "--json", "--max-age", "1s", "--retry-after", "300ms"]);
    let out = run(cmd, Duration::from_secs(60));
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let all = records(&log);
    assert_eq!(all[0]["status"], "run");
    let f = finals(&all);
    assert_eq!(f.len(), 10, "every row has exactly one final record: {f:?}");
    let expect = [
        (2, "delivered"),
        (3, "delivered"),
        (4, "delivered"),
        (5, "bounced"),
        (6, "bounced"),
        (7, "rejected"),
        (8, "rejected"),
        (9, "rejected"),
        (11, "rejected"),
        (12, "expired"),
    ];
    for (line, status) in expect {
        assert_eq!(status_of(&f, line), status, "line {line}: {:?}", f.get(&line));
    }
    assert!(f[&5]["reason"].as_str().unwrap().contains("null MX"));
    assert!(f[&6]["reason"].as_str().unwrap().contains("NXDOMAIN"));
    assert!(f[&7]["reason"].as_str().unwrap().contains("invalid address"));
    assert!(f[&8]["reason"].as_str().unwrap().contains("duplicate"), "case-insensitive duplicate");
    assert!(f[&9]["reason"].as_str().unwrap().contains("header injection"));
    // The quoted field above spans two lines: the next row starts on line 11.
    assert!(f[&11]["reason"].as_str().unwrap().contains("fields where the header has"));
    assert!(f[&12]["reason"].as_str().unwrap().contains("no MX host"), "{}", f[&12]);
    assert!(f[&12]["attempts"].as_u64().unwrap() >= 2, "DNS failures are retried before expiring");
    // Preference 10 first; both domains of the MX set went to the same host.
    assert_eq!((f[&2]["mx"].as_str(), f[&2]["ip"].as_str()), (Some("mx1.big.test"), Some("127.0.0.2")));
    assert_eq!(f[&3]["mx"], "mx1.big.test");
    assert_eq!((f[&4]["mx"].as_str(), f[&4]["ip"].as_str()), (Some("implicit.test"), Some("127.0.0.4")));
    let dumped = w.dumped();
    assert_eq!(dumped[&2].len(), 2);
    assert_eq!(dumped[&3].len(), 0, "the backup MX was not needed");
    assert_eq!(dumped[&4].len(), 1);
    let (env, content) = &dumped[&4][0];
    assert!(env.contains("cy@implicit.test"), "{env}");
    for want in [
        "Subject: Hello Cy\r\n",
        "To: <cy@implicit.test>\r\n",
        "Message-ID: <",
        "@example.com>\r\n",
        "Date: ",
        "Dear Cy,\r\n",
    ] {
        assert!(content.contains(want), "{want:?} missing in\n{content}");
    }
    assert!(
        !dumped.values().flatten().any(|(_, c)| c.contains("victim@evil.test")),
        "no injected header was sent"
    );
    assert_eq!(report["recipients"]["delivered"], 3);
    assert_eq!(report["recipients"]["rejected"], 4);
    assert_eq!(report["unfinished"], 0);
    let domains: Vec<&str> =
        report["domains"].as_array().unwrap().iter().map(|d| d["domain"].as_str().unwrap()).collect();
    assert!(domains.contains(&"big.test") && domains.contains(&"null.test"), "{domains:?}");
}

#[test]
fn a_dead_first_mx_and_a_refusing_greeting_fall_through_to_the_next_host() {
    let zone = "
        dead.test MX 10 down.test
        dead.test MX 20 up.test
        busy.test MX 10 busy.mx.test
        busy.test MX 20 up.test
        down.test A 127.0.0.9
        busy.mx.test A 127.0.0.3
        up.test A 127.0.0.2
    ";
    let w = World::new(
        "fallthrough",
        zone,
        vec![
            (2, Box::new(|_| {})),
            (3, Box::new(|c: &mut SinkConfig| c.faults.add_fail("greeting=421").unwrap())),
        ],
    );
    let list = w.file("list.csv", "email\na@dead.test\nb@busy.test\n");
    let msg = w.file("msg.txt", "From: a@example.com\nSubject: x\n\nbody\n");
    let mut cmd = w.send(&["--recipients", list.to_str().unwrap(), "--message", msg.to_str().unwrap()]);
    cmd.args(["--log", w.log().to_str().unwrap(), "--connect-timeout", "2s"]);
    let out = run(cmd, Duration::from_secs(60));
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let f = finals(&records(&w.log()));
    for line in [2, 3] {
        assert_eq!(status_of(&f, line), "delivered", "{}", f[&line]);
        assert_eq!(f[&line]["mx"], "up.test");
        assert_eq!(f[&line]["attempts"], 1, "one attempt: the next host is part of it");
    }
    assert_eq!(w.dumped()[&2].len(), 2);
}

#[test]
fn greylisting_is_overcome_by_the_retry() {
    let zone = "grey.test MX 10 mx.grey.test\nmx.grey.test A 127.0.0.2\n";
    let w = World::new("greylist", zone, vec![(2, Box::new(|c: &mut SinkConfig| c.greylist = true))]);
    let rows: String =
        (0..20).map(|i| format!("{{\"email\":\"u{i}@grey.test\",\"name\":\"U{i}\"}}\n")).collect();
    let list = w.file("list.jsonl", &rows);
    let msg = w.file("msg.txt", MESSAGE);
    let mut cmd = w.send(&["--recipients", list.to_str().unwrap(), "--message", msg.to_str().unwrap()]);
    cmd.args(["--log", w.log().to_str().unwrap(), "--retry-after", "200ms"]);
    let out = run(cmd, Duration::from_secs(60));
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let all = records(&w.log());
    let f = finals(&all);
    assert_eq!(f.len(), 20);
    for (line, r) in &f {
        assert_eq!(r["status"], "delivered", "line {line}: {r}");
        assert_eq!(r["attempts"], 2, "{r}");
    }
    let deferred: Vec<&Value> = all.iter().filter(|r| r["status"] == "deferred").collect();
    assert_eq!(deferred.len(), 20, "one deferral each");
    assert_eq!((deferred[0]["code"].as_u64(), deferred[0]["enhanced"].as_str()), (Some(451), Some("4.7.1")));
    assert_eq!(w.dumped()[&2].len(), 20, "each accepted once");
}

#[test]
fn a_relay_with_starttls_and_auth_carries_everything() {
    let users = std::sync::Arc::new(mailvolley::sink::auth::Users::single("relay-user", "s3cret"));
    let tls = mailvolley::tls::ServerTls::self_signed(&["localhost".into()]).unwrap();
    let w = World::new(
        "relay",
        "",
        vec![(
            2,
            Box::new(move |c: &mut SinkConfig| {
                c.tls = Some(tls);
                c.starttls = true;
                c.require_tls = true;
                c.auth = Some(users);
            }),
        )],
    );
    let rows: String = (0..30).map(|i| format!("u{i}@d{}.test,N{i}\n", i % 7)).collect();
    let list = w.file("list.csv", &format!("email,name\n{rows}"));
    let msg = w.file("msg.txt", MESSAGE);
    let relay = format!("127.0.0.2:{}", w.port);
    let mut cmd = Command::new(VOLLEY);
    cmd.args(["send", "--quiet", "--relay", &relay, "--starttls", "required", "--auth-user", "relay-user"])
        .args(["--recipients", list.to_str().unwrap(), "--message", msg.to_str().unwrap()])
        .args(["--log", w.log().to_str().unwrap()])
        .env("VOLLEY_AUTH_PASSWORD", "s3cret");
    let out = run(cmd, Duration::from_secs(60));
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let log_text = std::fs::read_to_string(w.log()).unwrap();
    assert!(!log_text.contains("s3cret") && !stderr(&out).contains("s3cret"), "the secret is never shown");
    let f = finals(&records(&w.log()));
    assert_eq!(f.len(), 30);
    for r in f.values() {
        assert_eq!(r["status"], "delivered", "{r}");
        assert_eq!(r["mx"], "127.0.0.2");
        assert!(r["tls"].as_str().unwrap().starts_with("TLSv1"), "{r}");
    }
    assert_eq!(w.dumped()[&2].len(), 30);
    assert_eq!(w.dns.queries(), 0, "a relay needs no MX lookups");

    // A wrong password: refused, given up, every recipient deferred then expired, exit 0 (all final).
    let log2 = w.dir.join("log2.jsonl");
    let mut cmd = Command::new(VOLLEY);
    cmd.args(["send", "--quiet", "--relay", &relay, "--starttls", "required", "--auth-user", "relay-user"])
        .args(["--recipients", list.to_str().unwrap(), "--message", msg.to_str().unwrap()])
        .args(["--log", log2.to_str().unwrap(), "--max-age", "1s", "--retry-after", "300ms"])
        .env("VOLLEY_AUTH_PASSWORD", "wrong");
    let out = run(cmd, Duration::from_secs(60));
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let f = finals(&records(&log2));
    assert_eq!(f.len(), 30);
    assert!(
        f.values().all(|r| r["status"] == "expired" && r["reason"].as_str().unwrap().contains("535")),
        "{f:?}"
    );
}

/// A campaign that meets a certificate it refuses keeps trying on the retry schedule (a
/// certificate gets fixed), each attempt a connection the server sees, and files the failure
/// as `tls_required` with words a person can act on.
#[test]
fn a_refused_certificate_is_retried_on_the_schedule_one_connection_per_attempt() {
    let certified = rcgen::generate_simple_self_signed(vec!["relay.volley.test".to_owned()]).unwrap();
    let dir = common::temp_dir("certretry-keys");
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert, certified.cert.pem()).unwrap();
    std::fs::write(&key, certified.key_pair.serialize_pem()).unwrap();
    let tls = mailvolley::tls::ServerTls::from_files(&cert, &key).unwrap();
    let mut w = World::new(
        "certretry",
        "",
        vec![(
            2,
            Box::new(move |c: &mut SinkConfig| {
                c.tls = Some(tls);
                c.starttls = true;
            }),
        )],
    );
    let list = w.file("list.csv", "email,name\na@x.test,A\nb@x.test,B\nc@y.test,C\n");
    let msg = w.file("msg.txt", MESSAGE);
    // Connected to by address: the certificate names relay.volley.test, not 127.0.0.2.
    let relay = format!("127.0.0.2:{}", w.port);
    let mut cmd = Command::new(VOLLEY);
    cmd.args([
        "send",
        "--quiet",
        "--relay",
        &relay,
        "--starttls",
        "verify",
        "--ca-file",
        cert.to_str().unwrap(),
    ])
    .args(["--recipients", list.to_str().unwrap(), "--message", msg.to_str().unwrap()])
    .args(["--log", w.log().to_str().unwrap(), "--retry-after", "400ms", "--retry-max", "400ms"])
    .args(["--max-age", "2500ms", "--reconnect-backoff", "50ms"]);
    let out = run(cmd, Duration::from_secs(60));
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let all = records(&w.log());
    let f = finals(&all);
    assert_eq!(f.len(), 3);
    for r in f.values() {
        assert_eq!(
            (r["status"].as_str(), r["category"].as_str()),
            (Some("expired"), Some("tls_required")),
            "{r}"
        );
        assert!(r["reason"].as_str().unwrap().contains("not for the name connected to"), "{r}");
    }
    let attempts = all.iter().filter_map(|r| r["attempts"].as_u64()).max().unwrap_or(0);
    let deferred = all.iter().filter(|r| r["status"] == "deferred").count();
    let connections = w.sinks.remove(&2).unwrap().stop().unwrap().connections;
    assert!(
        attempts >= 3 && deferred >= 6,
        "retried on the schedule: {attempts} attempts, {deferred} deferrals"
    );
    assert!(
        connections >= attempts,
        "{connections} connections for {attempts} attempts: every attempt made one"
    );
    assert!(
        connections <= 3 * attempts + 3,
        "not hammered: {connections} connections for {attempts} attempts"
    );
}

/// RFC 5321 §5.1: connections spread over MX hosts of equal preference (they all went to one,
/// shuffled once per run).
#[test]
fn connections_spread_over_equal_preference_mx_hosts() {
    let zone = "spread.test MX 10 mx1.spread.test\nspread.test MX 10 mx2.spread.test\n\
                mx1.spread.test A 127.0.0.2\nmx2.spread.test A 127.0.0.3\n";
    let w = World::new(
        "spread",
        zone,
        vec![(2, Box::new(|_: &mut SinkConfig| {})), (3, Box::new(|_: &mut SinkConfig| {}))],
    );
    let rows: String = (0..40).map(|i| format!("r{i}@spread.test,R{i}\n")).collect();
    let list = w.file("list.csv", &format!("email,name\n{rows}"));
    let msg = w.file("msg.txt", MESSAGE);
    let mut cmd = w.send(&["--recipients", list.to_str().unwrap(), "--message", msg.to_str().unwrap()]);
    cmd.args(["--log", w.log().to_str().unwrap(), "--messages-per-connection", "1", "--connections", "2"]);
    let out = run(cmd, Duration::from_secs(30));
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let dumped = w.dumped();
    let (a, b) = (dumped[&2].len(), dumped[&3].len());
    assert_eq!(a + b, 40);
    assert!(a >= 10 && b >= 10, "40 connections of one message each: {a} to mx1, {b} to mx2");
}

/// A record's `time` is when its outcome was decided, as its `queue_ms` is: an outcome held
/// for a checkpoint (here the server takes 1.5 s to answer the checkpoint EHLO) is not stamped
/// when it was finally written.
#[test]
fn a_held_outcomes_record_is_stamped_when_it_was_decided() {
    let w = World::new(
        "stamps",
        "",
        vec![(
            2,
            Box::new(|c: &mut SinkConfig| {
                c.greylist = true;
                c.faults.add_delay("ehlo=1500ms").unwrap();
            }),
        )],
    );
    let list = w.file("list.csv", "email,name\ngrey@x.test,G\n");
    let msg = w.file("msg.txt", MESSAGE);
    let relay = format!("127.0.0.2:{}", w.port);
    let mut cmd = Command::new(VOLLEY);
    cmd.args(["send", "--quiet", "--relay", &relay, "--retry-after", "200ms", "--max-age", "30s"])
        .args(["--recipients", list.to_str().unwrap(), "--message", msg.to_str().unwrap()])
        .args(["--log", w.log().to_str().unwrap()]);
    let out = run(cmd, Duration::from_secs(60));
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let all = records(&w.log());
    let time = |r: &Value| humantime::parse_rfc3339(r["time"].as_str().unwrap()).unwrap();
    let started = time(&all[0]);
    for r in all.iter().filter(|r| r["status"] == "deferred" || r["status"] == "delivered") {
        let since_start = time(r).duration_since(started).unwrap().as_millis() as i64;
        let queued = r["queue_ms"].as_i64().unwrap();
        assert!(
            (since_start - queued).abs() < 500,
            "{r}: {since_start} ms after the start, queue_ms {queued}"
        );
    }
    assert_eq!(finals(&all)[&2]["status"], "delivered");
}

/// `--log /dev/null` is how to run without a log (fsync on it fails with EINVAL: not an error).
#[test]
fn a_run_without_a_log_writes_to_dev_null() {
    let (w, list, msg, relay) = relay_campaign("devnull");
    let mut cmd = Command::new(VOLLEY);
    cmd.args(["send", "--quiet", "--relay", &relay, "--log", "/dev/null"]).args([
        "--recipients",
        list.to_str().unwrap(),
        "--message",
        msg.to_str().unwrap(),
    ]);
    let out = run(cmd, Duration::from_secs(30));
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(w.dumped()[&2].len(), 12);
}

/// A world with one plain sink on 127.0.0.2 to use as the relay, twelve rows (`u0@d0.test`
/// ... `u11@d2.test`, line = index + 2) and `MESSAGE`: (world, list, message, relay address).
fn relay_campaign(name: &str) -> (World, PathBuf, PathBuf, String) {
    let w = World::new(name, "", vec![(2, Box::new(|_| {}))]);
    let rows: String = (0..12).map(|i| format!("u{i}@d{}.test,N{i}\n", i % 3)).collect();
    let list = w.file("list.csv", &format!("email,name\n{rows}"));
    let msg = w.file("msg.txt", MESSAGE);
    let relay = format!("127.0.0.2:{}", w.port);
    (w, list, msg, relay)
}

/// `--dkim` with an RSA and an Ed25519 key and `--unsubscribe-url`: every message the sink
/// received carries two signatures that mail-auth's verifier passes and RFC 8058 headers whose
/// token `volley token verify` resolves to that recipient, for a raw template and a built MIME
/// message alike; a tampered copy fails; the secret shows nowhere; a bad key stops the run
/// before anything is sent.
#[test]
fn dkim_signed_campaigns_verify_and_a_bad_key_sends_nothing() {
    let keys = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/dkim");
    let key = |spec: &str, file: &str| format!("{spec}:{}", keys.join(file).display());
    let (w, list, msg, relay) = relay_campaign("dkim");
    let html = w.file("body.html", "<p>Dear {{ name }}</p>\n");
    let (rsa, ed) = (key("example.com:rsa", "rsa2048.pem"), key("example.com:ed", "ed25519.pem"));
    // The public keys as openssl printed them, not as volley publishes them.
    let txt: Vec<_> = [("rsa", "rsa", "rsa2048.p"), ("ed", "ed25519", "ed25519.p")]
        .iter()
        .map(|(selector, k, file)| {
            let p = std::fs::read_to_string(keys.join(file)).unwrap();
            (format!("{selector}._domainkey.example.com"), format!("v=DKIM1; k={k}; p={}", p.trim()))
        })
        .collect();
    let verify = |content: &[u8]| {
        mailvolley::testkit::dkim::verify(txt.iter().map(|(n, r)| (n.clone(), r.as_str())), content)
    };
    let message_args: [Vec<&str>; 2] = [
        vec!["--message", msg.to_str().unwrap()],
        vec![
            "--subject",
            "Hi {{ name }}",
            "--html",
            html.to_str().unwrap(),
            "--from",
            "News <news@example.com>",
        ],
    ];
    for (run_no, args) in message_args.iter().enumerate() {
        let log = w.dir.join(format!("log{run_no}.jsonl"));
        let mut cmd = Command::new(VOLLEY);
        cmd.args(["send", "--quiet", "--relay", &relay, "--dkim", &rsa, "--dkim", &ed])
            .args(["--recipients", list.to_str().unwrap(), "--log", log.to_str().unwrap()])
            .args(["--campaign", "spring-1", "--unsubscribe-url", "https://example.com/u/{{ token }}"])
            .args(["--unsubscribe-mailto", "unsub@example.com"])
            .env(SECRET_ENV, SECRET)
            .args(args);
        let out = run(cmd, Duration::from_secs(60));
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        assert!(finals(&records(&log)).values().all(|r| r["status"] == "delivered"));
        let shown = [
            std::fs::read_to_string(&log).unwrap(),
            stderr(&out),
            String::from_utf8_lossy(&out.stdout).into(),
        ];
        assert!(shown.iter().all(|s| !s.contains(SECRET)), "the secret leaked");
    }
    let dumped = common::dumped(&w.dir.join("sink2"));
    assert_eq!(dumped.len(), 24);
    for (envelope, content) in &dumped {
        let results = verify(content);
        assert_eq!(
            results,
            [DkimResult::Pass, DkimResult::Pass],
            "{envelope}\n{}",
            String::from_utf8_lossy(content)
        );
        let text = String::from_utf8_lossy(content);
        let tampered = text.replacen("Dear N", "Dear X", 1);
        assert!(verify(tampered.as_bytes()).iter().all(|r| *r != DkimResult::Pass), "{envelope}");
        // RFC 8058: an HTTPS URI whose token names this recipient, the one-click header, both
        // signed.
        let unfolded = text.replace("\r\n ", " ").replace("\r\n\t", " ");
        assert!(unfolded.contains("\r\nList-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n"), "{text}");
        let value =
            unfolded.split("\r\nList-Unsubscribe: <https://example.com/u/").nth(1).expect("List-Unsubscribe");
        let token = &value[..value.find('>').unwrap()];
        assert!(
            value.contains(&format!(", <mailto:unsub@example.com?subject=unsubscribe%20{token}>")),
            "{value}"
        );
        let out = Command::new(VOLLEY)
            .args(["token", "verify", "--json", token])
            .env(SECRET_ENV, SECRET)
            .output_within(SHORT);
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        let verified: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(verified["campaign"], "spring-1");
        let recipient = verified["recipient"].as_str().unwrap();
        assert!(envelope.contains(&format!("<{recipient}>")), "{recipient} for {envelope}");
        let signed = unfolded.split("DKIM-Signature:").skip(1).all(|s| {
            s.split("h=").nth(1).is_some_and(|h| {
                let h = h.split(';').next().unwrap().to_ascii_lowercase();
                h.contains("list-unsubscribe") && h.contains("list-unsubscribe-post")
            })
        });
        assert!(signed, "{text}");
    }
    // A token altered, or checked with another secret, is refused (exit 1).
    let good = Command::new(VOLLEY)
        .args(["token", "make", "--campaign", "spring-1", "--recipient", "a@b.test"])
        .env(SECRET_ENV, SECRET)
        .output_within(SHORT);
    let good = String::from_utf8(good.stdout).unwrap();
    let verify_with = |token: &str, secret: &str| {
        Command::new(VOLLEY)
            .args(["token", "verify", token.trim()])
            .env(SECRET_ENV, secret)
            .output_within(SHORT)
    };
    let ok = verify_with(&good, SECRET);
    assert_eq!(
        (ok.status.code(), String::from_utf8_lossy(&ok.stdout).into_owned()),
        (Some(0), "campaign: spring-1\nrecipient: a@b.test\n".into())
    );
    assert_eq!(verify_with(&good, "another secret, sixteen+ bytes").status.code(), Some(1));
    assert_eq!(verify_with(&good.replacen('.', "x.", 1), SECRET).status.code(), Some(1));
    let no_secret = Command::new(VOLLEY)
        .args(["token", "verify", good.trim()])
        .env_remove(SECRET_ENV)
        .output_within(SHORT);
    assert_eq!(no_secret.status.code(), Some(2), "{}", stderr(&no_secret));

    // The dry run shows the signed message and the records to publish.
    let mut cmd = Command::new(VOLLEY);
    cmd.args(["send", "--dry-run", "--relay", &relay, "--dkim", &rsa, "--dkim", &ed])
        .args(["--recipients", list.to_str().unwrap(), "--message", msg.to_str().unwrap()])
        .args(["--log", w.dir.join("dry.jsonl").to_str().unwrap()]);
    let out = run(cmd, Duration::from_secs(30));
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(text.matches("DKIM-Signature: v=1;").count(), 2, "{text}");
    for (name, record) in &txt {
        assert!(text.contains(&format!("TXT record {name}: \"{record}\"")), "{name} in {text}");
    }

    // A key that is not a DKIM key: exit 2 at start, the file named, nothing sent, no log.
    let log = w.dir.join("bad.jsonl");
    let mut cmd = Command::new(VOLLEY);
    cmd.args(["send", "--quiet", "--relay", &relay, "--dkim", &key("example.com:s", "ec-p256.pem")])
        .args(["--recipients", list.to_str().unwrap(), "--message", msg.to_str().unwrap()])
        .args(["--log", log.to_str().unwrap()]);
    let out = run(cmd, Duration::from_secs(30));
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("ec-p256.pem") && stderr(&out).contains("RSA"), "{}", stderr(&out));
    assert_eq!(common::dumped(&w.dir.join("sink2")).len(), 24, "nothing more was sent");
    assert!(!log.exists());

    // --unsubscribe-url without a secret, or with an http:// URL: the same.
    for (url, secret) in
        [("https://example.com/u/{{ token }}", None), ("http://example.com/u/{{ token }}", Some(SECRET))]
    {
        let mut cmd = Command::new(VOLLEY);
        cmd.args(["send", "--quiet", "--relay", &relay, "--unsubscribe-url", url])
            .args(["--recipients", list.to_str().unwrap(), "--message", msg.to_str().unwrap()])
            .args(["--log", log.to_str().unwrap()])
            .env_remove(SECRET_ENV);
        if let Some(s) = secret {
            cmd.env(SECRET_ENV, s);
        }
        let out = run(cmd, Duration::from_secs(30));
        assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
        assert!(
            stderr(&out).contains(if secret.is_none() { SECRET_ENV } else { "https://" }),
            "{}",
            stderr(&out)
        );
        assert!(!log.exists());
    }
    assert_eq!(common::dumped(&w.dir.join("sink2")).len(), 24, "nothing more was sent");
}

/// `--suppress`: listed addresses (any case) and domains get their one final record,
/// `suppressed`, and nothing is sent to them; `--resume` leaves them alone; a bad list entry
/// stops the run before anything is sent.
#[test]
fn suppressed_addresses_and_domains_are_logged_and_never_sent_to() {
    let (w, list, msg, relay) = relay_campaign("suppress");
    let suppress = w.file("suppress.txt", "# unsubscribed\nU3@D0.TEST\n@d1.test\n");
    let send = |extra: &[&str]| {
        let mut cmd = Command::new(VOLLEY);
        cmd.args(["send", "--relay", &relay, "--suppress", suppress.to_str().unwrap()])
            .args(["--recipients", list.to_str().unwrap(), "--message", msg.to_str().unwrap()])
            .args(extra);
        run(cmd, Duration::from_secs(60))
    };
    let out = send(&["--log", w.log().to_str().unwrap(), "--quiet"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("suppressed 5"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let f = finals(&records(&w.log()));
    assert_eq!(f.len(), 12);
    for i in 0..12u64 {
        let want = if i == 3 || i % 3 == 1 { "suppressed" } else { "delivered" };
        assert_eq!(status_of(&f, i + 2), want, "u{i}: {:?}", f.get(&(i + 2)));
    }
    assert!(f[&5]["reason"].as_str().unwrap().contains("address"), "{}", f[&5]);
    let sent: Vec<_> = w.dumped()[&2].iter().map(|(env, _)| env.clone()).collect();
    assert_eq!(sent.len(), 7);
    assert!(sent.iter().all(|e| !e.contains("u3@") && !e.contains("@d1.test")), "{sent:?}");

    // Resumed: every recipient is final, nothing more is sent.
    let out = send(&["--resume", w.log().to_str().unwrap(), "--quiet"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(w.dumped()[&2].len(), 7);
    assert_eq!(finals(&records(&w.log())).len(), 12);

    // The dry run counts them; a bad entry stops the run at start (exit 2), naming the line.
    let out = send(&["--dry-run", "--log", w.dir.join("dry.jsonl").to_str().unwrap()]);
    assert!(
        String::from_utf8_lossy(&out.stdout)
            .contains("would send: 7, bounced: 0, rejected: 0, suppressed: 5")
    );
    std::fs::write(&suppress, "ok@x.test\nnot an address\n").unwrap();
    let out = send(&["--log", w.dir.join("bad.jsonl").to_str().unwrap(), "--quiet"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("line 2"), "{}", stderr(&out));
    assert_eq!(w.dumped()[&2].len(), 7);
}

#[test]
fn dry_run_renders_and_resolves_but_sends_nothing() {
    let zone = "ok.test MX 10 mx.ok.test\nmx.ok.test A 127.0.0.2\nnull.test MX 0 .\n";
    let w = World::new("dryrun", zone, vec![(2, Box::new(|_| {}))]);
    let list = w.file("list.csv", "email,name\na@ok.test,Ann\nb@null.test,Bob\nc@ok.test\n");
    let msg = w.file("msg.txt", MESSAGE);
    let mut cmd =
        w.send(&["--recipients", list.to_str().unwrap(), "--message", msg.to_str().unwrap(), "--dry-run"]);
    cmd.args(["--log", w.log().to_str().unwrap()]);
    let out = run(cmd, Duration::from_secs(30));
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    for want in [
        "Subject: Hello Ann",
        "rows: 3, would send: 1, bounced: 1, rejected: 1, suppressed: 0",
        "line 4:",
        "undeliverable: 1",
        "null MX",
        "destinations after MX rollup: 1",
    ] {
        assert!(text.contains(want), "{want:?} missing in\n{text}");
    }
    assert!(!w.log().exists(), "a dry run writes no log");
    assert_eq!(w.dumped()[&2].len(), 0);
}

#[test]
fn resume_refuses_a_recipients_file_that_changed_and_sends_nothing() {
    let zone = "ok.test MX 10 mx.ok.test\nmx.ok.test A 127.0.0.2\n";
    let w = World::new("resume-changed", zone, vec![(2, Box::new(|_| {}))]);
    let list = w.file("list.csv", "email,name\na@ok.test,Ann\nb@ok.test,Bob\n");
    let msg = w.file("msg.txt", MESSAGE);
    let (list_arg, msg_arg) = (list.to_str().unwrap(), msg.to_str().unwrap());
    let mut cmd = w.send(&["--recipients", list_arg, "--message", msg_arg]);
    cmd.args(["--log", w.log().to_str().unwrap()]);
    let out = run(cmd, Duration::from_secs(30));
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let run_record = &records(&w.log())[0];
    assert!(run_record["input_digest"].as_str().is_some_and(|d| d.starts_with("39:")), "{run_record}");
    // The same file resumes (nothing left to send); one with a row inserted does not: line 2
    // would now be someone else.
    let resume = |w: &World| {
        let mut cmd = w.send(&["--recipients", list_arg, "--message", msg_arg]);
        cmd.args(["--resume", w.log().to_str().unwrap()]);
        run(cmd, Duration::from_secs(30))
    };
    let out = resume(&w);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    std::fs::write(&list, "email,name\nnew@ok.test,Nia\na@ok.test,Ann\nb@ok.test,Bob\n").unwrap();
    let out = resume(&w);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("is not the one the campaign started with"), "{}", stderr(&out));
    assert_eq!(w.dumped()[&2].len(), 2, "nothing more was sent");
}

/// Internationalised addresses and content a 7-bit server takes: a sink without SMTPUTF8 and
/// 8BITMIME gets a Unicode domain as its A-label (one DNS query for it), one message for the
/// three spellings of one address, a non-ASCII local part bounced as `needs_smtputf8`, a long
/// line and 8-bit text as quoted-printable, a UTF-8 Subject as encoded-words; a message that
/// declares itself 8-bit is bounced `needs_8bitmime`.
#[test]
fn idn_long_lines_and_8bit_reach_a_7bit_server_as_it_can_take_them() {
    let zone = "xn--bcher-kva.test MX 10 mx.buecher.test\nmx.buecher.test A 127.0.0.2\n";
    let seven_bit = |c: &mut SinkConfig| {
        c.eight_bit_mime = false;
        c.smtputf8 = false;
    };
    let w = World::new("idn", zone, vec![(2, Box::new(seven_bit))]);
    let list = w.file(
        "list.csv",
        "email,name\nann@bücher.test,Ann\nann@BÜCHER.test,Ann2\nann@xn--bcher-kva.test,Ann3\njörg@bücher.test,Jörg\nbob@Bücher.test,Bob\n",
    );
    let long = "z".repeat(5000);
    let msg = w.file(
        "msg.txt",
        &format!("From: News <news@example.com>\nSubject: Grüße, {{{{ name }}}}\n\nDear {{{{ name }}}},\n{long}\nSchöne Grüße\n"),
    );
    let mut cmd =
        w.send(&["--recipients", list.to_str().unwrap(), "--message", msg.to_str().unwrap(), "--json"]);
    cmd.args(["--log", w.log().to_str().unwrap()]);
    let out = run(cmd, Duration::from_secs(30));
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let f = finals(&records(&w.log()));
    let statuses: Vec<&str> = (2..=6).map(|l| status_of(&f, l)).collect();
    assert_eq!(statuses, ["delivered", "rejected", "rejected", "bounced", "delivered"], "{f:?}");
    assert!(f[&3]["reason"].as_str().unwrap().contains("duplicate"), "{:?}", f[&3]);
    assert_eq!(f[&5]["category"], "needs_smtputf8", "{:?}", f[&5]);
    assert_eq!(f[&2]["rcpt"], "ann@xn--bcher-kva.test");

    let dumped = &w.dumped()[&2];
    assert_eq!(dumped.len(), 2, "one message per recipient, none for the duplicates");
    for (envelope, content) in dumped {
        assert!(envelope.is_ascii() && envelope.contains("@xn--bcher-kva.test>"), "{envelope}");
        assert!(content.is_ascii(), "7-bit content: {content}");
        assert!(content.lines().all(|l| l.len() <= 998), "no line over 998 octets");
        assert!(content.contains("Content-Transfer-Encoding: quoted-printable\r\n"), "{content}");
        assert!(content.contains("\r\nSubject: =?utf-8?B?"), "{content}");
        assert!(content.contains("Sch=C3=B6ne Gr=C3=BC=C3=9Fe"), "{content}");
    }
    let questions = w.dns.questions();
    let mx: Vec<&String> = questions.iter().filter(|q| q.ends_with(" MX")).collect();
    assert_eq!(mx, ["xn--bcher-kva.test MX"], "one query, for the A-label: {questions:?}");
    assert!(questions.iter().all(|q| q.is_ascii()), "{questions:?}");
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let domains: Vec<&str> =
        report["domains"].as_array().unwrap().iter().map(|d| d["domain"].as_str().unwrap()).collect();
    assert_eq!(domains, ["xn--bcher-kva.test"], "one domain in the report");

    // A message that says it is 8-bit is not rewritten: it needs a server with 8BITMIME.
    let declared = w.file(
        "declared.txt",
        "From: a@example.com\nContent-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: 8bit\n\nZoë\n",
    );
    let one = w.file("one.csv", "email\nzoe@bücher.test\n");
    let mut cmd = w.send(&["--recipients", one.to_str().unwrap(), "--message", declared.to_str().unwrap()]);
    cmd.args(["--log", w.dir.join("declared.jsonl").to_str().unwrap()]);
    let out = run(cmd, Duration::from_secs(30));
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let f = finals(&records(&w.dir.join("declared.jsonl")));
    assert_eq!((status_of(&f, 2), f[&2]["category"].as_str()), ("bounced", Some("needs_8bitmime")), "{f:?}");
    assert_eq!(w.dumped()[&2].len(), 2, "nothing more reached the server");
}

/// Input as users have it: a spreadsheet's `;`-separated export with an `E-Mail` column; an
/// empty file; a header row alone; a JSONL map printed whole.
#[test]
fn semicolon_csv_empty_files_and_whole_maps_behave_as_a_user_expects() {
    let zone = "x.test MX 10 mx.x.test\nmx.x.test A 127.0.0.2\n";
    let w = World::new("input", zone, vec![(2, Box::new(|_: &mut SinkConfig| {}))]);
    let msg = w.file("msg.txt", MESSAGE);
    let send = |list: &Path, log: &str| {
        let mut cmd = w.send(&["--recipients", list.to_str().unwrap(), "--message", msg.to_str().unwrap()]);
        cmd.args(["--log", w.dir.join(log).to_str().unwrap()]);
        run(cmd, Duration::from_secs(30))
    };
    let list = w.file("excel.csv", "name;E-Mail;Betrag\nAnn;ann@x.test;\"1,50\"\nBo;bo@x.test;2,00\nCy;;3\n");
    let out = send(&list, "excel.jsonl");
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let f = finals(&records(&w.dir.join("excel.jsonl")));
    assert_eq!(
        (status_of(&f, 2), status_of(&f, 3), status_of(&f, 4)),
        ("delivered", "delivered", "rejected")
    );
    let dumped = &w.dumped()[&2];
    assert_eq!(dumped.len(), 2);
    assert!(dumped.iter().any(|(_, m)| m.contains("Dear Ann,")), "{dumped:?}");

    let empty = w.file("empty.csv", "");
    let out = send(&empty, "empty.jsonl");
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("the recipients file is empty"), "{}", stderr(&out));
    assert!(!w.dir.join("empty.jsonl").exists(), "a run refused at the start leaves no log");

    let header = w.file("header.csv", "email,name\n");
    let out = send(&header, "header.jsonl");
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(stderr(&out).contains("has no recipient rows"), "{}", stderr(&out));

    let nested = w.file("nested.jsonl", "{\"email\":\"m@x.test\",\"name\":{\"first\":\"Jo\"}}\n");
    let out = send(&nested, "nested.log");
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let f = finals(&records(&w.dir.join("nested.log")));
    assert_eq!(status_of(&f, 1), "rejected");
    assert!(f[&1]["reason"].as_str().unwrap().contains("`name` is a whole map"), "{:?}", f[&1]);
    assert_eq!(f[&1]["rcpt"], "m@x.test");
    assert_eq!(w.dumped()[&2].len(), 2, "nothing of it was sent");
}

/// A world whose one MX host (127.0.0.2) answers each DATA after 20 ms, slow enough that a
/// signal lands mid-campaign, and `n` recipients `r{i}@slow.test` (line = i + 2) with
/// `MESSAGE`: (world, list, message).
fn slow_campaign(name: &str, n: usize) -> (World, PathBuf, PathBuf) {
    let zone = "slow.test MX 10 mx.slow.test\nmx.slow.test A 127.0.0.2\n";
    let w = World::new(
        name,
        zone,
        vec![(2, Box::new(|c: &mut SinkConfig| c.faults.add_delay("data=20ms").unwrap()))],
    );
    let rows: String = (0..n).map(|i| format!("r{i}@slow.test,R{i}\n")).collect();
    let list = w.file("list.csv", &format!("email,name\n{rows}"));
    let msg = w.file("msg.txt", MESSAGE);
    (w, list, msg)
}

/// The name the kernel has for process `pid` (`/proc/PID/comm`): the test must kill volley
/// itself, not a wrapper around it.
fn comm(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default().trim().to_owned()
}

/// The campaign: one destination whose DATA answers after 5 ms, the default 10
/// connections of 8 transactions in flight and 100 messages each (CHUNKING: no 354 proves a
/// session in step, so outcomes wait for checkpoints), killed mid-run. Duplicates may be at
/// most what was in flight plus 100 ms of the server's acceptances.
#[test]
fn kill_9_then_resume_sends_every_recipient_once_except_the_measured_window() {
    let n = 6000;
    let zone = "slow.test MX 10 mx.slow.test\nmx.slow.test A 127.0.0.2\n";
    let w = World::new(
        "resume",
        zone,
        vec![(2, Box::new(|c: &mut SinkConfig| c.faults.add_delay("data=5ms").unwrap()))],
    );
    let rows: String = (0..n).map(|i| format!("r{i}@slow.test,R{i}\n")).collect();
    let list = w.file("list.csv", &format!("email,name\n{rows}"));
    let msg = w.file("msg.txt", MESSAGE);
    let (connections, depth) = (10, 8);
    let args = ["--recipients", list.to_str().unwrap(), "--message", msg.to_str().unwrap()];
    let mut cmd = w.send(&args);
    cmd.args(["--log", w.log().to_str().unwrap()]).stdout(Stdio::null()).stderr(Stdio::null());
    let started = Instant::now();
    let mut child = cmd.spawn().unwrap();
    let deadline = started + Duration::from_secs(30);
    loop {
        let delivered = std::fs::read_to_string(w.log()).unwrap_or_default().matches("\"delivered\"").count();
        // Past start-up, so the last second's acceptances show the steady rate.
        if delivered >= n / 5 && started.elapsed() >= Duration::from_millis(1500) {
            break;
        }
        assert!(Instant::now() < deadline, "the first run made no progress");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(comm(child.id()), "volley", "the process killed is volley itself");
    let killed_at = std::time::SystemTime::now();
    child.kill().unwrap(); // SIGKILL: no chance to sync or finish anything
    child.wait().unwrap();
    let first = finals(&records(&w.log()));
    assert!(first.len() < n, "killed mid-campaign");
    // The server's acceptances in the second before the kill, from its dump files' times.
    std::thread::sleep(Duration::from_millis(200)); // what was in flight lands
    let last_second = std::fs::read_dir(w.dir.join("sink2"))
        .unwrap()
        .filter_map(|e| e.ok()?.metadata().ok()?.modified().ok())
        .filter(|t| killed_at.duration_since(*t).is_ok_and(|ago| ago <= Duration::from_secs(1)))
        .count();

    let mut cmd = w.send(&args);
    cmd.args(["--resume", w.log().to_str().unwrap()]);
    let out = run(cmd, Duration::from_secs(60));
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let all = records(&w.log());
    let f = finals(&all);
    assert_eq!(f.len(), n, "every recipient has exactly one final record after the resume");
    assert!(f.values().all(|r| r["status"] == "delivered"));
    let campaigns: Vec<&Value> =
        all.iter().filter(|r| r["status"] == "run").map(|r| &r["campaign"]).collect();
    assert_eq!(campaigns.len(), 2);
    assert_eq!(campaigns[0], campaigns[1], "the resumed run keeps the campaign (and so the Message-IDs)");

    // Against what the server accepted: a recipient accepted twice must be one whose final
    // record the killed run had not made durable (the window), and nobody else.
    let mut accepted: HashMap<String, usize> = HashMap::new();
    for (env, _) in &w.dumped()[&2] {
        let rcpt = env.lines().find_map(|l| l.strip_prefix("RCPT TO:")).unwrap_or(env).trim().to_owned();
        *accepted.entry(rcpt).or_default() += 1;
    }
    if accepted.len() != n {
        // Seen once under the full suite's load and not reproduced since: say exactly who.
        let expected: Vec<String> = (0..n).map(|i| format!("<r{i}@slow.test>")).collect();
        let missing: Vec<&String> = expected.iter().filter(|r| !accepted.contains_key(*r)).collect();
        let extra: Vec<&String> = accepted.keys().filter(|r| !expected.contains(r)).collect();
        let logged: Vec<&Value> = missing
            .iter()
            .filter_map(|r| all.iter().find(|rec| rec["rcpt"].as_str() == Some(r.trim_matches(['<', '>']))))
            .collect();
        panic!(
            "accepted {} of {n}: missing {missing:?}, extra {extra:?}; their records: {logged:?}",
            accepted.len()
        );
    }
    let twice: Vec<&String> = accepted.iter().filter(|(_, c)| **c > 1).map(|(r, _)| r).collect();
    let line_of = |rcpt: &str| {
        rcpt.trim_matches(['<', '>'])
            .trim_start_matches('r')
            .split('@')
            .next()
            .unwrap()
            .parse::<u64>()
            .unwrap()
            + 2
    };
    for rcpt in &twice {
        assert!(
            !first.contains_key(&line_of(rcpt)),
            "{rcpt} was resent although its final record was durable"
        );
    }
    assert!(accepted.values().all(|c| *c <= 2));
    let bound = connections * depth + last_second.div_ceil(10);
    eprintln!(
        "resend window: {} of {n} recipients accepted twice (in flight or unsynced at the kill); \
         bound {bound} ({connections} x {depth} in flight + 100 ms of {last_second}/s)",
        twice.len()
    );
    assert!(twice.len() <= bound, "{} accepted twice, more than {bound}", twice.len());
    let text = std::fs::read_to_string(w.log()).unwrap();
    assert!(text.lines().all(|l| serde_json::from_str::<Value>(l).is_ok()), "the log is valid JSONL");
}

/// A second run on a log that a first is still writing refuses at once and sends nothing; the
/// first goes on undisturbed. `--resume` refuses a file that is not a volley log.
#[test]
fn a_second_run_on_a_log_in_use_is_refused_and_so_is_a_file_that_is_no_log() {
    let n = 300;
    let (w, list, msg) = slow_campaign("inuse", n);
    let args =
        ["--recipients", list.to_str().unwrap(), "--message", msg.to_str().unwrap(), "--connections", "4"];
    let mut cmd = w.send(&args);
    cmd.args(["--log", w.log().to_str().unwrap()]).stdout(Stdio::null()).stderr(Stdio::null());
    let child = cmd.spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::fs::read_to_string(w.log()).unwrap_or_default().matches("\"delivered\"").count() < 20 {
        assert!(Instant::now() < deadline, "the first run made no progress");
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut second = w.send(&args);
    second.args(["--resume", w.log().to_str().unwrap()]);
    let out = run(second, Duration::from_secs(30));
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let pid = child.id();
    assert!(stderr(&out).contains(&format!("is in use by process {pid}")), "{}", stderr(&out));
    let first = common::campaign::wait_within(child, SHORT);
    assert!(first.status.success(), "the first run finishes as if alone");
    let all = records(&w.log());
    assert_eq!(all.iter().filter(|r| r["status"] == "run").count(), 1, "the refused run wrote nothing");
    assert_eq!(finals(&all).len(), n);
    assert_eq!(w.dumped()[&2].len(), n, "nobody got the message twice");
    let text = std::fs::read_to_string(w.log()).unwrap();
    assert!(text.lines().all(|l| serde_json::from_str::<Value>(l).is_ok()), "no torn lines");

    for (name, content) in [("empty.jsonl", ""), ("other.jsonl", "hello\n{\"x\": 1}\n")] {
        let other = w.file(name, content);
        let mut cmd = w.send(&args);
        cmd.args(["--resume", other.to_str().unwrap()]);
        let out = run(cmd, Duration::from_secs(30));
        assert_eq!(out.status.code(), Some(2), "{name}: {}", stderr(&out));
        assert!(stderr(&out).contains("has no `run` record"), "{name}: {}", stderr(&out));
        assert_eq!(std::fs::read_to_string(&other).unwrap(), content, "{name} left as it was");
    }
    assert_eq!(w.dumped()[&2].len(), n, "nothing more was sent");

    // A last line a killed run left half-written is cut, and the user told, on --resume.
    std::fs::OpenOptions::new()
        .append(true)
        .open(w.log())
        .unwrap()
        .write_all(b"{\"status\":\"deliv")
        .unwrap();
    let mut cmd = w.send(&args);
    cmd.args(["--resume", w.log().to_str().unwrap()]);
    let out = run(cmd, Duration::from_secs(30));
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(stderr(&out).contains("cut 16 octets of a last line"), "{}", stderr(&out));
    let text = std::fs::read_to_string(w.log()).unwrap();
    assert!(text.lines().all(|l| serde_json::from_str::<Value>(l).is_ok()), "valid JSONL again");
    assert_eq!(w.dumped()[&2].len(), n, "everyone was final: nothing resent");
}

#[test]
fn sigterm_stops_gracefully_every_accepted_message_is_logged_and_resume_sends_the_rest_once() {
    let n = 400;
    let (w, list, msg) = slow_campaign("sigterm", n);
    // A shallow pipeline, so that far fewer than n are in flight when the signal lands; DATA
    // rather than BDAT, so that each 354 proves the session in step and outcomes reach the log
    // as they happen (under CHUNKING they may wait for a checkpoint, up to 256 transactions).
    let (list, msg) = (list.to_str().unwrap(), msg.to_str().unwrap());
    let args = [
        "--recipients",
        list,
        "--message",
        msg,
        "--connections",
        "4",
        "--pipeline-depth",
        "2",
        "--no-chunking",
    ];
    let mut cmd = w.send(&args);
    cmd.args(["--log", w.log().to_str().unwrap()]).stdout(Stdio::piped()).stderr(Stdio::piped());
    let child = cmd.spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::fs::read_to_string(w.log()).unwrap_or_default().matches("\"delivered\"").count() < n / 4 {
        assert!(Instant::now() < deadline, "the run made no progress");
        std::thread::sleep(Duration::from_millis(20));
    }
    // SAFETY: kill(2) on our own child's pid.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
    let out = common::campaign::wait_within(child, SHORT);
    assert_eq!(
        out.status.code(),
        Some(1),
        "stopped early: {}{}",
        stderr(&out),
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(stderr(&out).contains("stopping"), "{}", stderr(&out));
    let first = finals(&records(&w.log()));
    assert!(first.len() < n, "stopped mid-campaign");
    // Graceful: transactions in flight finished and the log was synced, so the server accepted
    // exactly the recipients the log calls delivered: no window, unlike a kill -9.
    let accepted = w.dumped()[&2].len();
    let delivered = first.values().filter(|r| r["status"] == "delivered").count();
    assert_eq!(accepted, delivered, "every message the server accepted is in the log");
    assert_eq!(delivered, first.len(), "every final record is a delivery");

    let mut cmd = w.send(&args);
    cmd.args(["--resume", w.log().to_str().unwrap()]);
    let out = run(cmd, Duration::from_secs(60));
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(finals(&records(&w.log())).len(), n);
    assert_eq!(w.dumped()[&2].len(), n, "the resume sent each of the rest once, and nobody twice");
}

#[test]
fn a_log_that_cannot_be_written_stops_the_run_and_loses_nothing() {
    let zone = "d.test MX 10 mx.d.test\nmx.d.test A 127.0.0.2\n";
    // Slow enough that the log fills long before the campaign ends.
    let w = World::new(
        "logfull",
        zone,
        vec![(2, Box::new(|c: &mut SinkConfig| c.faults.add_delay("data=10ms").unwrap()))],
    );
    let n = 2000;
    let rows: String = (0..n).map(|i| format!("r{i}@d.test,R{i}\n")).collect();
    let list = w.file("list.csv", &format!("email,name\n{rows}"));
    let msg = w.file("msg.txt", MESSAGE);
    let args =
        ["--recipients", list.to_str().unwrap(), "--message", msg.to_str().unwrap(), "--connections", "2"];

    // A full disk from the first write: a clear error before anything is sent.
    let mut cmd = w.send(&args);
    cmd.args(["--log", "/dev/full"]);
    let out = run(cmd, Duration::from_secs(30));
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(stderr(&out).contains("No space left"), "{}", stderr(&out));
    assert_eq!(w.dumped()[&2].len(), 0);

    // A file size limit reached mid-run: sending stops, what could not be written is on stderr.
    let mut cmd = w.send(&args);
    cmd.args(["--log", w.log().to_str().unwrap()]);
    limit_file_size(&mut cmd, 6_000);
    let out = run(cmd, Duration::from_secs(30));
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(err.contains("cannot write the delivery log"), "{err}");
    let logged: Vec<Value> = records(&w.log());
    let unrecorded: Vec<Value> = err
        .lines()
        .filter_map(|l| l.strip_prefix("volley: unrecorded: "))
        .map(|j| serde_json::from_str(j).unwrap())
        .collect();
    let mut recorded: HashMap<String, usize> = HashMap::new();
    for r in logged.iter().chain(&unrecorded).filter(|r| r["status"] == "delivered") {
        *recorded.entry(r["rcpt"].as_str().unwrap().to_owned()).or_default() += 1;
    }
    let accepted = w.dumped()[&2].len();
    assert!(accepted < n / 2, "sending stopped early ({accepted} accepted)");
    assert_eq!(recorded.len(), accepted, "every accepted message is in the log or on stderr");
}

/// Runs the command under RLIMIT_FSIZE.
fn limit_file_size(cmd: &mut Command, bytes: u64) {
    use std::os::unix::process::CommandExt;
    // SAFETY: setrlimit is async-signal-safe and touches only the child.
    unsafe {
        cmd.pre_exec(move || {
            let limit = libc::rlimit { rlim_cur: bytes, rlim_max: bytes };
            if libc::setrlimit(libc::RLIMIT_FSIZE, &limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Provider-like refusals get their category in the log and the report: RFC 3463 codes first,
/// then the shipped text rules, then the user's `--bounce-rules` (tried first); deferrals that
/// run out of time keep theirs; a bad rules file stops the run before anything is sent.
#[test]
fn refusals_are_classified_in_the_log_and_the_report() {
    use common::scripted::{Fault, Script, Scripted};
    let server = Scripted::start(
        Script::new(&["PIPELINING"], "250 2.0.0 Ok: queued", Fault::None)
            .rcpt_reply("unknown", "550 5.1.1 The email account that you tried to reach does not exist.")
            .rcpt_reply("full", "552 5.2.2 The email account that you tried to reach is over quota.")
            .rcpt_reply("listed", "550 5.7.1 Part of their network is on our block list (S3150).")
            .rcpt_reply("unauth", "550 5.7.26 This mail has been blocked because the sender is unauthenticated.")
            .rcpt_reply("volume", "451 4.7.0 [TSS04] Messages from 192.0.2.1 temporarily deferred due to unexpected volume or user complaints")
            .rcpt_reply("frozen", "550 5.0.0 Mailbox frozen by the administrator"),
    );
    let dir = common::temp_dir("bounce-classes");
    let list = dir.join("list.csv");
    // `volume` last, over one connection: its [TSS04] refusal suspends the relay (the shipped
    // reaction), and a row still unsent then would be held back instead of classified. In
    // order on one connection, every other row has had its reply by then.
    let rows = ["ok", "unknown", "full", "listed", "unauth", "frozen", "volume"];
    let csv: String = rows.iter().map(|r| format!("{r}@x.test\n")).collect();
    std::fs::write(&list, format!("email\n{csv}")).unwrap();
    let msg = dir.join("msg.txt");
    std::fs::write(&msg, "From: a@example.com\nSubject: s\n\nbody\n").unwrap();
    let rules = dir.join("rules.toml");
    std::fs::write(&rules, "[[rule]]\ncategory = \"mailbox_full\"\ntext = [\"mailbox frozen\"]\n").unwrap();
    let send = |log: &Path, rules: &Path| {
        let mut cmd = Command::new(VOLLEY);
        cmd.args(["send", "--quiet", "--json", "--relay", &server.addr.to_string()])
            .args(["--recipients", list.to_str().unwrap(), "--message", msg.to_str().unwrap()])
            .args(["--log", log.to_str().unwrap(), "--bounce-rules", rules.to_str().unwrap()])
            .args(["--retry-after", "100ms", "--retry-max", "100ms", "--max-age", "400ms"])
            .args(["--connections", "1"]);
        run(cmd, Duration::from_secs(60))
    };
    let log = dir.join("log.jsonl");
    let out = send(&log, &rules);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let all = records(&log);
    let f = finals(&all);
    let want = [
        ("delivered", None),
        ("bounced", Some("invalid_recipient")),
        ("bounced", Some("mailbox_full")),
        ("bounced", Some("spam_block")),
        ("bounced", Some("policy")),
        ("bounced", Some("mailbox_full")),
        ("expired", Some("rate_limited")),
    ];
    for (i, (status, category)) in want.iter().enumerate() {
        let r = &f[&(i as u64 + 2)];
        assert_eq!((r["status"].as_str(), r["category"].as_str()), (Some(*status), *category), "{r}");
    }
    let deferred: Vec<_> = all.iter().filter(|r| r["status"] == "deferred").collect();
    assert!(!deferred.is_empty() && deferred.iter().all(|r| r["category"] == "rate_limited"), "{deferred:?}");
    // The shipped reaction to Yahoo's [TSS04]: the destination is suspended (for an hour, past
    // the test's --max-age, so the retry expires at once).
    let shaping: Vec<_> = all.iter().filter(|r| r["status"] == "shaping").collect();
    assert_eq!(shaping.len(), 1, "{shaping:?}");
    assert_eq!(
        (shaping[0]["rule"].as_str(), shaping[0]["action"].as_str()),
        (Some("yahoo-tss04"), Some("suspended"))
    );
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let c = &report["categories"];
    assert_eq!(c["mailbox_full"]["bounced"], 2, "{c}");
    assert_eq!(c["rate_limited"]["expired"], 1, "{c}");
    assert_eq!(c["rate_limited"]["deferred"].as_u64(), Some(deferred.len() as u64), "{c}");
    assert_eq!(c["invalid_recipient"]["bounced"], 1, "{c}");

    // A rules file that does not parse: exit 2, its name and line, nothing sent.
    std::fs::write(&rules, "[[rule]]\ncategory = \"mailbox_ful\"\n").unwrap();
    let sessions = server.counts.sessions.load(std::sync::atomic::Ordering::Relaxed);
    let out = send(&dir.join("bad.jsonl"), &rules);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("rules.toml") && stderr(&out).contains("mailbox_ful"), "{}", stderr(&out));
    assert_eq!(server.counts.sessions.load(std::sync::atomic::Ordering::Relaxed), sessions);
}

/// `send --plot`: a campaign with deliveries to two domains is drawn with their queue times.
#[test]
fn a_campaign_is_drawn_with_its_busiest_destinations() {
    let zone = "one.test MX 10 mx.test\ntwo.test MX 10 mx.test\nmx.test A 127.0.0.2\n";
    let w = World::new("plot", zone, vec![(2, Box::new(|_| {}))]);
    let rows: String =
        (0..300).map(|i| format!("u{i}@{}.test\n", if i % 3 == 0 { "one" } else { "two" })).collect();
    let list = w.file("list.csv", &format!("email\n{rows}"));
    let msg = w.file("msg.txt", "From: a@example.com\nSubject: x\n\nbody\n");
    let svg = w.dir.join("campaign.svg");
    let mut cmd = w.send(&["--recipients", list.to_str().unwrap(), "--message", msg.to_str().unwrap()]);
    cmd.args(["--log", w.log().to_str().unwrap(), "--plot", svg.to_str().unwrap()]);
    let out = run(cmd, Duration::from_secs(60));
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let drawn = std::fs::read_to_string(&svg).unwrap();
    assert!(drawn.starts_with("<svg") && drawn.trim_end().ends_with("</svg>"));
    for text in [
        "attempts per second, by outcome",
        "delivered",
        "bounced",
        "queue time by percentile",
        "one.test",
        "two.test",
    ] {
        assert!(drawn.contains(text), "{text}");
    }
}

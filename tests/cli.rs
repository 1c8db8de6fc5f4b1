//! `volley bench` as a user runs it: flags, usage errors, signals, what it puts on the wire.

mod common;

use common::campaign::{OutputWithin, SHORT};

use std::collections::HashSet;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::scripted::{Fault, Script, Scripted};

fn volley(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_volley")).args(args).output_within(SHORT)
}

fn text(out: &Output) -> (String, String) {
    (String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn nonsense_gets_a_usage_error() {
    let cases: &[(&[&str], &str)] = &[
        (&["--recipients", "0"], "--recipients"),
        (&["--threads", "0"], "--threads"),
        (&["--connections", "0"], "--connections"),
        (&["--messages", "0"], "--messages"),
        (&["--size", "100"], "300"),
        (&["--size", "5k..1k"], "--size"),
        (&["--rate", "0"], "--rate"),
        (&["--duration", "0s"], "--duration"),
        (&["--to", "user{5..1}@x.test"], "--to"),
        (&["--to", "/no/such/file"], "--to"),
        (&["--from", "not an address"], "--from"),
        (&["--message", "/no/such/file"], "--message"),
        (&["--size", "2k", "--message", "Cargo.toml"], "--message"),
        (&["--pipeline-depth", "0"], "--pipeline-depth"),
        (&["--starttls", "sometimes"], "--starttls"),
        (&["--tls", "--starttls", "opportunistic"], "--tls"),
        (&["--insecure"], "--insecure"),
        (&["--ca-file", "Cargo.toml"], "--ca-file"),
        (&["--starttls", "verify", "--ca-file", "/no/such/ca.pem"], "/no/such/ca.pem"),
        (&["--auth-user", "bob"], "VOLLEY_AUTH_PASSWORD"),
        (&["--auth-user", "bob", "--auth-password-file", "/no/such/file"], "--auth-password-file"),
        (&["--auth-mech", "PLAIN"], "--auth-user"),
        // There is no way to put a password on the command line.
        (&["--auth-user", "bob", "--auth-password", "x"], "--auth-password"),
    ];
    for (args, mentions) in cases {
        let mut all = vec!["bench", "--quiet"];
        all.extend_from_slice(args);
        let out = volley(&all);
        let (_, err) = text(&out);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(mentions), "{args:?} should mention {mentions}: {err}");
    }
}

#[test]
fn help_documents_the_exit_codes() {
    let (out, _) = text(&volley(&["bench", "--help"]));
    for code in ["0 at least one", "1 the target is unreachable", "2 usage error", "3 protocol violation"] {
        assert!(out.contains(code), "{code}: {out}");
    }
}

#[test]
fn sigterm_stops_gracefully_with_a_full_report() {
    let child = Command::new(env!("CARGO_BIN_EXE_volley"))
        .args([
            "bench",
            "--duration",
            "60s",
            "--quiet",
            "--connections",
            "2",
            "--threads",
            "1",
            "--sink-threads",
            "1",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    let started = Instant::now();
    // SAFETY: signalling our own child.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
    let out = common::campaign::wait_within(child, SHORT);
    let (stdout, stderr) = text(&out);
    assert!(started.elapsed() < Duration::from_secs(15), "stopped promptly");
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    assert!(stdout.contains("outcomes    delivered") && stdout.contains("unsent 0"), "{stdout}");
    assert!(stdout.contains("latency (ms)"), "{stdout}");
}

#[test]
fn recipients_sender_and_sizes_are_what_was_asked_for() {
    let dir = common::temp_dir("cli-content");
    let sink = common::sink(|c| c.dump = Some(dir.clone()));
    let target = sink.local_addr().to_string();
    let out = volley(&[
        "bench",
        "--target",
        &target,
        "--messages",
        "20",
        "--quiet",
        "--threads",
        "1",
        "--connections",
        "1",
        "--from",
        "sender@volley.test",
        "--to",
        "u{1..5}@x.test",
        "--recipients",
        "2",
        "--size",
        "1k..3k",
    ]);
    assert!(out.status.success(), "{:?}", text(&out));
    let mut ids = HashSet::new();
    let mut rcpts = Vec::new();
    for (envelope, content) in common::dumped(&dir) {
        assert!(envelope.starts_with("MAIL FROM:<sender@volley.test>"), "{envelope}");
        rcpts.extend(envelope.lines().skip(1).map(str::to_owned));
        assert!((1000..=3000).contains(&content.len()), "size {}", content.len());
        let content = String::from_utf8(content).unwrap();
        let id = content.lines().find(|l| l.starts_with("Message-ID:")).expect("a Message-ID").to_owned();
        assert!(id.ends_with("@volley.test>"), "{id}");
        assert!(content.contains("\r\nDate: "), "a Date");
        assert!(ids.insert(id), "Message-IDs are unique");
    }
    assert_eq!(ids.len(), 20);
    let mut counts = std::collections::HashMap::new();
    for r in &rcpts {
        *counts.entry(r.as_str()).or_insert(0) += 1;
    }
    assert_eq!(counts.len(), 5, "the pattern's five addresses: {counts:?}");
    assert!(counts.values().all(|&n| n == 8), "40 recipients cycled evenly: {counts:?}");
}

#[test]
fn a_message_file_is_sent_as_is_with_a_new_id_and_date() {
    let dir = common::temp_dir("cli-message");
    let file = dir.join("message.eml");
    std::fs::write(
        &file,
        "From: a@x.test\nMessage-ID: <old@x.test>\nSubject: hello\n\nline one\n.line two\n",
    )
    .unwrap();
    let dumps = dir.join("dumps");
    std::fs::create_dir_all(&dumps).unwrap();
    let sink = common::sink(|c| c.dump = Some(dumps.clone()));
    let target = sink.local_addr().to_string();
    let file_arg = file.to_string_lossy().into_owned();
    for extra in [&[][..], &["--no-chunking"][..]] {
        let mut args =
            vec!["bench", "--target", &target, "--messages", "3", "--quiet", "--message", &file_arg];
        args.extend_from_slice(extra);
        let out = volley(&args);
        assert!(out.status.success(), "{:?}", text(&out));
    }
    let dumped = common::dumped(&dumps);
    assert_eq!(dumped.len(), 6);
    for (_, content) in dumped {
        let content = String::from_utf8(content).unwrap();
        assert!(!content.contains("old@x.test"), "the file's Message-ID is replaced: {content}");
        assert!(content.starts_with("Message-ID: <"), "{content}");
        assert!(
            content.ends_with("From: a@x.test\r\nSubject: hello\r\n\r\nline one\r\n.line two\r\n"),
            "{content:?}"
        );
    }
}

#[test]
fn source_address_is_bound() {
    let server = Scripted::start(Script::new(&["PIPELINING"], "250 2.0.0 Ok", Fault::None));
    let target = server.addr.to_string();
    let out =
        volley(&["bench", "--target", &target, "--messages", "5", "--quiet", "--source-addr", "127.0.0.2"]);
    assert!(out.status.success(), "{:?}", text(&out));
    let peers = server.counts.peers.lock().unwrap().clone();
    assert!(!peers.is_empty() && peers.iter().all(|p| p.ip().to_string() == "127.0.0.2"), "{peers:?}");
}

#[test]
fn warmup_is_left_out_of_the_figures() {
    let out = volley(&[
        "bench",
        "--rate",
        "400",
        "--duration",
        "2s",
        "--warmup",
        "1s",
        "--json",
        "--quiet",
        "--threads",
        "1",
    ]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    let field = |json: &str, key: &str| -> u64 {
        let at = json.find(key).unwrap_or_else(|| panic!("{key} in {json}")) + key.len();
        json[at..]
            .chars()
            .skip_while(|c| !c.is_ascii_digit())
            .take_while(char::is_ascii_digit)
            .collect::<String>()
            .parse()
            .unwrap()
    };
    let delivered = field(&stdout, "\"delivered\":");
    let message = &stdout[stdout.find("\"message\":").unwrap()..];
    let measured = field(message, "\"count\":");
    assert_eq!(delivered, 800, "two seconds at 400/s, all sent: {stdout}");
    assert!((300..=500).contains(&measured), "about the second half is measured: {measured} of {delivered}");
}

#[test]
fn a_server_offering_starttls_is_noted() {
    let server = Scripted::start(Script::new(&["PIPELINING", "STARTTLS"], "250 2.0.0 Ok", Fault::None));
    let target = server.addr.to_string();
    let out = volley(&["bench", "--target", &target, "--messages", "5", "--quiet"]);
    let (stdout, _) = text(&out);
    assert!(stdout.contains("the server offers STARTTLS"), "{stdout}");
}

#[test]
fn tls_and_auth_against_the_built_in_sink() {
    let runs: &[&[&str]] = &[
        &["--starttls", "required"],
        &["--starttls", "opportunistic"],
        &["--tls"],
        &["--starttls", "verify", "--insecure"],
    ];
    for args in runs {
        let mut all = vec!["bench", "--messages", "200", "--quiet"];
        all.extend_from_slice(args);
        let out = volley(&all);
        let (stdout, stderr) = text(&out);
        assert_eq!(out.status.code(), Some(0), "{args:?}: {stdout}{stderr}");
        assert!(stdout.contains("delivered 200,"), "{args:?}: {stdout}");
        assert!(stdout.contains("tls         ") && stdout.contains("TLSv1.3"), "{args:?}: {stdout}");
        if args.contains(&"--insecure") {
            assert!(stderr.contains("WARNING: --insecure"), "{stderr}");
        }
    }
    // The built-in sink's certificate is self-signed: `verify` refuses it, loudly, exit 1.
    let out = volley(&["bench", "--messages", "20", "--quiet", "--starttls", "verify"]);
    let (stdout, _) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("TLS certificate refused"), "{stdout}");
}

#[test]
fn auth_secrets_come_from_the_environment_or_a_file_and_are_never_shown() {
    let dir = common::temp_dir("cli-auth");
    let file = dir.join("password");
    std::fs::write(&file, "file-secret\n").unwrap();
    let file = file.to_string_lossy().into_owned();
    let base = ["bench", "--messages", "100", "--starttls", "required", "--auth-user", "bob", "--json"];
    let out = Command::new(env!("CARGO_BIN_EXE_volley"))
        .args(base)
        .env("VOLLEY_AUTH_PASSWORD", "env-secret")
        .output_within(SHORT);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stdout}{stderr}");
    assert!(stdout.contains("\"authenticated_sessions\":"), "{stdout}");
    assert!(!stdout.contains("env-secret") && !stderr.contains("env-secret"));
    let mut args = base.to_vec();
    args.extend(["--auth-password-file", &file]);
    let out = volley(&args);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stdout}{stderr}");
    assert!(!stdout.contains("file-secret") && !stderr.contains("file-secret"));
    // Over plaintext the credentials are not sent at all.
    let out = Command::new(env!("CARGO_BIN_EXE_volley"))
        .args(["bench", "--messages", "10", "--quiet", "--auth-user", "bob"])
        .env("VOLLEY_AUTH_PASSWORD", "env-secret")
        .output_within(SHORT);
    let (stdout, _) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("not encrypted"), "{stdout}");
}

/// `bench --metrics-listen`: Prometheus can scrape a run while it goes on, and the counters
/// grow with it.
#[test]
fn bench_serves_metrics_while_it_runs() {
    use std::io::{Read as _, Write as _};
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let listen = format!("127.0.0.1:{port}");
    let child = Command::new(env!("CARGO_BIN_EXE_volley"))
        .args(["bench", "--duration", "60s", "--quiet", "--connections", "2", "--threads", "1"])
        .args(["--sink-threads", "1", "--metrics-listen", &listen])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let scrape = || -> Option<u64> {
        let mut conn = std::net::TcpStream::connect(&listen).ok()?;
        conn.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
        conn.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").ok()?;
        let mut text = String::new();
        conn.read_to_string(&mut text).ok()?;
        assert!(text.starts_with("HTTP/1.0 200") || text.starts_with("HTTP/1.1 200"), "{text}");
        assert!(text.contains("application/openmetrics-text"), "{text}");
        let line =
            text.lines().find(|l| l.starts_with(r#"volley_engine_messages_total{outcome="delivered"}"#))?;
        line.rsplit(' ').next()?.parse().ok()
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    let first = loop {
        match scrape() {
            Some(n) if n > 0 => break n,
            _ => {
                assert!(Instant::now() < deadline, "no delivered count on /metrics");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    };
    std::thread::sleep(Duration::from_millis(600));
    let second = scrape().unwrap();
    assert!(second > first, "{first} then {second}: the counter follows the run");
    // SAFETY: signalling our own child.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
    let out = common::campaign::wait_within(child, SHORT);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
}

/// `bench --plot` draws the run; `volley plot` draws it again from `--json`, and compares two.
#[test]
fn a_run_is_drawn_by_bench_and_again_by_plot_from_its_json() {
    let dir = common::temp_dir("plot");
    let svg = dir.join("run.svg");
    let out = volley(&[
        "bench",
        "--duration",
        "2500ms",
        "--connections",
        "2",
        "--threads",
        "1",
        "--sink-threads",
        "1",
        "--quiet",
        "--json",
        "--plot",
        svg.to_str().unwrap(),
    ]);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let json = dir.join("run.json");
    std::fs::write(&json, &stdout).unwrap();
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert!(report["timeline"].as_array().is_some_and(|t| t.len() >= 2), "{stdout}");
    assert!(report["latency_curves"]["message"].as_array().is_some_and(|c| c.len() > 10));
    let drawn = std::fs::read_to_string(&svg).unwrap();
    assert!(drawn.starts_with("<svg") && drawn.trim_end().ends_with("</svg>"));
    for series in
        ["connect", "ehlo", "rcpt", "end-of-data", "message", "messages per second", "p99 (ms)", "99.9%"]
    {
        assert!(
            drawn.contains(&format!(">{series}<")) || drawn.contains(&format!(">\n{series}\n<")),
            "{series}"
        );
    }
    // Phase lines, their legend marks, and the two timelines.
    assert!(drawn.matches("<polyline").count() >= 2 * 9 + 2, "{}", drawn.matches("<polyline").count());
    let again = dir.join("again.svg");
    let out =
        volley(&["plot", json.to_str().unwrap(), json.to_str().unwrap(), "-o", again.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out).1);
    assert!(std::fs::read_to_string(&again).unwrap().contains("message latency by percentile"));
    let out = volley(&["plot", svg.to_str().unwrap(), "-o", again.to_str().unwrap()]);
    assert_ne!(out.status.code(), Some(0), "a picture is not a run");
    assert!(text(&out).1.contains("run.svg"), "{}", text(&out).1);
    std::fs::remove_dir_all(&dir).unwrap();
}

//! `volley serve` as a user runs it: the real binary taking submissions over SMTP (volley bench
//! as the application, AUTH over STARTTLS), delivering to volley's sink, stopped by SIGTERM or
//! killed with SIGKILL and started again on the same spool.

mod common;

use std::collections::HashMap;
use std::io::{BufRead as _, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime};

use common::campaign::{records, run, stderr};
use common::{Raw, sink};
use mailvolley::serve::spool::Spool;
use serde_json::Value;

/// A running `volley serve`, SIGKILLed if the test ends without stopping it.
struct Serve {
    child: Option<Child>,
    smtp: SocketAddr,
    lines: mpsc::Receiver<String>,
}

impl Serve {
    /// Starts `volley serve` on `spool`, delivering to `relay`, and waits for its listener.
    fn start(spool: &Path, relay: SocketAddr, extra: &[&str]) -> Serve {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_volley"));
        cmd.args(["serve", "--spool", spool.to_str().unwrap(), "--smtp-listen", "127.0.0.1:0"])
            .args(["--relay", &relay.to_string(), "--threads", "1", "--retry-after", "1s"])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().unwrap();
        let (tx, lines) = mpsc::channel();
        let err = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let line = lines.recv_timeout(deadline.saturating_duration_since(Instant::now()));
            let line = line.unwrap_or_else(|_| panic!("volley serve did not start: {:?}", child.try_wait()));
            if let Some(rest) = line.strip_prefix("volley serve: SMTP on ") {
                let addr = rest.split([',', ' ']).next().unwrap().parse().unwrap();
                return Serve { child: Some(child), smtp: addr, lines };
            }
        }
    }

    fn pid(&self) -> i32 {
        self.child.as_ref().unwrap().id() as i32
    }

    /// SIGTERM, then its exit code (within 30 s) and what it said.
    fn terminate(mut self) -> (Option<i32>, String) {
        // SAFETY: sending a signal to our own child.
        unsafe { libc::kill(self.pid(), libc::SIGTERM) };
        let mut child = self.child.take().unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("volley serve did not stop within 30 s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        (status.code(), self.lines.try_iter().collect::<Vec<_>>().join("\n"))
    }

    /// SIGKILL, checking first that the process is volley itself, not a wrapper.
    fn kill_9(mut self) {
        let comm = std::fs::read_to_string(format!("/proc/{}/comm", self.pid())).unwrap();
        assert_eq!(comm.trim(), "volley", "the pid is volley's own");
        let mut child = self.child.take().unwrap();
        child.kill().unwrap();
        child.wait().unwrap();
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// `volley bench` submitting to `target` as the application would.
fn bench(target: SocketAddr, args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_volley"));
    cmd.args(["bench", "--target", &target.to_string(), "--json", "--threads", "1"]).args(args);
    cmd
}

fn json(out: &std::process::Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", stderr(out)))
}

/// Message-IDs the sink's dump holds, with how many times each came.
fn message_ids(dump: &Path) -> HashMap<String, usize> {
    let mut ids = HashMap::new();
    for (_, content) in common::dumped(dump) {
        let text = String::from_utf8_lossy(&content);
        let id = text.lines().find_map(|l| l.strip_prefix("Message-ID: ")).expect("a Message-ID").to_owned();
        *ids.entry(id).or_default() += 1;
    }
    ids
}

fn count(records: &[Value], status: &str) -> usize {
    records.iter().filter(|r| r["status"] == status).count()
}

/// Waits until `done` holds, failing the test past `limit`.
fn wait_until(limit: Duration, what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !done() {
        assert!(Instant::now() < deadline, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn users_file(dir: &Path) -> PathBuf {
    let path = dir.join("users");
    std::fs::write(&path, "app:s3cret-pass\n").unwrap();
    path
}

#[test]
fn submissions_over_starttls_with_auth_are_delivered_once_and_logged() {
    let dir = common::temp_dir("serve-auth");
    let dump = dir.join("dump");
    std::fs::create_dir_all(&dump).unwrap();
    let sink = sink(|c| c.dump = Some(dump.clone()));
    let users = users_file(&dir);
    let spool = dir.join("spool");
    let serve = Serve::start(&spool, sink.local_addr(), &["--users", users.to_str().unwrap()]);

    let mut cmd = bench(serve.smtp, &["--messages", "100", "--recipients", "2"]);
    cmd.args(["--starttls", "required", "--auth-user", "app"]).env("VOLLEY_AUTH_PASSWORD", "s3cret-pass");
    let out = run(cmd, Duration::from_secs(60));
    let report = json(&out);
    assert_eq!(report["delivered"], 100, "every submission got its 250: {}", stderr(&out));

    let log = spool.join("delivery.jsonl");
    wait_until(Duration::from_secs(30), "200 delivered records", || {
        count(&records(&log), "delivered") >= 200
    });
    let (code, said) = serve.terminate();
    assert_eq!(code, Some(0), "a clean stop: {said}");
    let all = records(&log);
    assert_eq!(count(&all, "received"), 100);
    assert_eq!(count(&all, "delivered"), 200, "two recipients each, once");
    let received = all.iter().find(|r| r["status"] == "received").unwrap();
    assert_eq!(received["origin"], "app", "the submitting user is named");
    assert_eq!(received["recipients"], 2);

    let ids = message_ids(&dump);
    assert_eq!(ids.len(), 100);
    assert!(ids.values().all(|&n| n == 2), "each message once to each of its two recipients");
    let (envelope, content) = &common::dumped(&dump)[0];
    assert!(envelope.starts_with("MAIL FROM:<"), "{envelope}");
    let text = String::from_utf8_lossy(content);
    assert!(text.starts_with("Received: from "), "a trace header: {text}");
    assert!(text.contains("(volley) with ESMTPSA;"), "over TLS, authenticated: {text}");
    let spool = Spool::open(&spool).unwrap();
    assert!(spool.waiting().unwrap().is_empty(), "everything final: the spool is empty");
    drop(spool);
    sink.stop().unwrap();
}

#[test]
fn strangers_plaintext_passwords_and_a_second_process_are_refused() {
    let dir = common::temp_dir("serve-refuse");
    let sink = sink(|_| {});
    let users = users_file(&dir);
    let spool = dir.join("spool");
    let serve = Serve::start(&spool, sink.local_addr(), &["--users", users.to_str().unwrap()]);

    let mut c = Raw::greeted(serve.smtp);
    c.send("EHLO client.test\r\n");
    let ehlo = c.reply();
    assert!(ehlo.text.contains("STARTTLS"));
    assert!(!ehlo.text.contains("AUTH"), "no AUTH offered in plaintext: {ehlo:?}");
    assert_eq!(c.cmd("AUTH PLAIN AGFwcABzM2NyZXQtcGFzcw=="), 530, "no password in plaintext");
    assert_eq!(c.cmd("MAIL FROM:<a@example.com>"), 530, "no AUTH, not trusted: no relay");

    // The wrong password, over TLS: 535, and nothing accepted.
    let mut cmd = bench(serve.smtp, &["--messages", "3", "--retries", "0"]);
    cmd.args(["--starttls", "required", "--auth-user", "app"]).env("VOLLEY_AUTH_PASSWORD", "wrong");
    let out = run(cmd, Duration::from_secs(60));
    assert_eq!(json(&out)["delivered"], 0, "{}", stderr(&out));

    // A second serve on the same spool stops with a clear error.
    let mut second = Command::new(env!("CARGO_BIN_EXE_volley"));
    second.args(["serve", "--spool", spool.to_str().unwrap(), "--smtp-listen", "127.0.0.1:0"]);
    second.args(["--relay", &sink.local_addr().to_string(), "--trusted-networks", "127.0.0.1"]);
    let out = run(second, Duration::from_secs(20));
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("in use by"), "{}", stderr(&out));

    let (code, said) = serve.terminate();
    assert_eq!(code, Some(0), "{said}");
    assert_eq!(count(&records(&spool.join("delivery.jsonl")), "received"), 0);
    assert_eq!(sink.stop().unwrap().messages_accepted, 0);

    // Trusted networks that do not hold the client: relay access denied.
    let sink = common::sink(|_| {});
    let serve = Serve::start(&spool, sink.local_addr(), &["--trusted-networks", "10.0.0.0/8"]);
    let mut c = Raw::greeted(serve.smtp);
    c.ehlo();
    assert_eq!(c.cmd("MAIL FROM:<a@example.com>"), 554);
    drop(serve);
    sink.stop().unwrap();
}

#[test]
fn kill_9_under_load_then_restart_delivers_every_accepted_message() {
    let dir = common::temp_dir("serve-kill");
    let dump = dir.join("dump");
    std::fs::create_dir_all(&dump).unwrap();
    let sink = sink(|c| c.dump = Some(dump.clone()));
    let spool = dir.join("spool");
    let serve = Serve::start(&spool, sink.local_addr(), &["--trusted-networks", "127.0.0.1"]);

    // The application submits for a while; volley serve is killed in the middle of it.
    let mut cmd = bench(serve.smtp, &["--duration", "4s", "--retries", "0", "--connections", "8"]);
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let submitting = cmd.spawn().unwrap();
    wait_until(Duration::from_secs(20), "deliveries under way", || {
        std::fs::read_dir(&dump).map_or(0, |d| d.count()) >= 300
    });
    let killed_at = SystemTime::now();
    serve.kill_9();
    let out = submitting.wait_with_output().unwrap();
    let acknowledged = json(&out)["delivered"].as_u64().unwrap();
    assert!(acknowledged >= 300, "{}", stderr(&out));
    // What the sink received in the second before the kill: the most that can be in flight.
    std::thread::sleep(Duration::from_millis(200));
    let last_second = std::fs::read_dir(&dump)
        .unwrap()
        .filter_map(|e| e.ok()?.metadata().ok()?.modified().ok())
        .filter(|t| killed_at.duration_since(*t).is_ok_and(|ago| ago <= Duration::from_secs(1)))
        .count();

    // Started again, it delivers what the spool holds.
    let serve = Serve::start(&spool, sink.local_addr(), &["--trusted-networks", "127.0.0.1"]);
    wait_until(Duration::from_secs(60), "the spool delivered", || {
        message_ids(&dump).len() as u64 >= acknowledged
    });
    std::thread::sleep(Duration::from_millis(500));
    let (code, said) = serve.terminate();
    assert_eq!(code, Some(0), "{said}");
    let ids = message_ids(&dump);
    let twice = ids.values().filter(|&&n| n > 1).count();
    eprintln!(
        "kill -9: {acknowledged} acknowledged, {} delivered, {twice} delivered twice (the sink took {last_second} \
         in the last second before the kill)",
        ids.len()
    );
    assert!(ids.len() as u64 >= acknowledged, "every message that got a 250 is delivered");
    assert!(ids.values().all(|&n| n <= 2), "none more than twice");
    assert!(
        twice <= last_second.max(1),
        "duplicates only from the in-flight window: {twice} > {last_second}"
    );
    let spool = Spool::open(&spool).unwrap();
    assert!(spool.waiting().unwrap().is_empty(), "nothing left waiting");
    sink.stop().unwrap();
}

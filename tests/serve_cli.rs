//! `volley serve` as a user runs it: the real binary taking submissions over SMTP (volley bench
//! as the application, AUTH over STARTTLS), delivering to volley's sink, stopped by SIGTERM or
//! killed with SIGKILL and started again on the same spool.

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use common::campaign::{records, run, stderr};
use common::serve::{Serve, http, wait_until};
use common::{Raw, sink};
use mailvolley::serve::spool;
use serde_json::Value;

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
    let spool = spool::open(&spool).unwrap();
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
    let out = common::campaign::wait_within(submitting, Duration::from_secs(60));
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
    let spool = spool::open(&spool).unwrap();
    assert!(spool.waiting().unwrap().is_empty(), "nothing left waiting");
    sink.stop().unwrap();
}

#[test]
fn the_http_api_takes_json_once_durable_and_refuses_what_it_cannot_send() {
    let dir = common::temp_dir("serve-http");
    let dump = dir.join("dump");
    std::fs::create_dir_all(&dump).unwrap();
    let sink = sink(|c| c.dump = Some(dump.clone()));
    let keys = dir.join("keys");
    std::fs::write(&keys, "app:app-key-0123456789\n").unwrap();
    let spool = dir.join("spool");
    let extra =
        ["--api-keys", keys.to_str().unwrap(), "--http-listen", "127.0.0.1:0", "--max-message-size", "20000"];
    let serve = Serve::start(&spool, sink.local_addr(), &extra);
    let api = serve.http.expect("the HTTP API runs");
    let auth = ("Authorization", "Bearer app-key-0123456789");
    let post = |headers: &[(&str, &str)], body: &str| {
        let (status, head, body) = http(api, "POST", "/api/v1/messages", headers, body);
        let json: Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"));
        (status, head, json)
    };

    let built = r#"{"envelope_sender": "app@example.com",
        "recipients": [{"email": "ann@example.net", "name": "Ann"},
                       {"email": "bob@example.net", "substitutions": {"name": "Bob", "code": "7"}}],
        "content": {"from": "App <app@example.com>", "subject": "Hi {{ name }}",
                    "text": "Hello {{ name }}, your code is {{ code }}.\n", "reply_to": "help@example.com",
                    "headers": {"X-Campaign": "welcome"},
                    "attachments": [{"filename": "note.txt", "data": "aGVsbG8gYXR0YWNobWVudA=="}]},
        "substitutions": {"code": "42"}}"#;
    let (status, _, answer) = post(&[auth], built);
    assert_eq!(status, 202, "{answer}");
    assert_eq!(answer["recipients"].as_array().unwrap().len(), 2);
    assert_eq!(answer["recipients"][1]["email"], "bob@example.net");

    let raw = r#"{"recipients": [{"email": "cat@example.net"}],
        "content": "From: app@example.com\nSubject: raw\n\nHello {{ email }}\n"}"#;
    let (status, _, answer) = post(&[auth], raw);
    assert_eq!(status, 202, "{answer}");

    // The same Idempotency-Key twice: one message, the first answer twice.
    let once = r#"{"recipients": [{"email": "dan@example.net"}], "content": {"from": "app@example.com", "text": "once"}}"#;
    let (s1, _, first) = post(&[auth, ("Idempotency-Key", "order-1")], once);
    let (s2, _, second) = post(&[auth, ("Idempotency-Key", "order-1")], once);
    assert_eq!((s1, s2), (202, 202));
    assert_eq!(first, second, "the first answer again");

    // What cannot be taken is refused whole, with a reason and the field at fault.
    let (status, _, _) = post(&[], once);
    assert_eq!(status, 401, "no key");
    let (status, _, _) = post(&[("Authorization", "Bearer not-a-key-at-all")], once);
    assert_eq!(status, 403, "a wrong key");
    let (status, _, e) = post(&[auth], "{\"recipients\": [");
    assert_eq!((status, e["error"]["code"].as_str()), (400, Some("malformed")));
    let injected = r#"{"recipients": [{"email": "eve@example.net"}],
        "content": {"from": "app@example.com", "subject": "hi\r\nBcc: victim@example.org", "text": "x"}}"#;
    let (status, _, e) = post(&[auth], injected);
    assert_eq!((status, e["error"]["field"].as_str()), (422, Some("content.subject")), "{e}");
    let bad_address = r#"{"recipients": [{"email": "ok@example.net"}, {"email": "no-at-sign"}],
        "content": {"from": "app@example.com", "text": "x"}}"#;
    let (status, _, e) = post(&[auth], bad_address);
    assert_eq!((status, e["error"]["field"].as_str()), (422, Some("recipients[1].email")), "{e}");
    let undefined = r#"{"recipients": [{"email": "ok@example.net"}], "content": {"from": "app@example.com", "text": "{{ nope }}"}}"#;
    let (status, _, e) = post(&[auth], undefined);
    assert_eq!((status, e["error"]["field"].as_str()), (422, Some("recipients[0]")), "{e}");
    let huge = format!(
        r#"{{"recipients": [{{"email": "ok@example.net"}}], "content": {{"from": "app@example.com", "text": "{}"}}}}"#,
        "x".repeat(40_000)
    );
    let (status, _, e) = post(&[auth], &huge);
    assert_eq!((status, e["error"]["code"].as_str()), (413, Some("too_large")));
    let (status, _, body) = http(api, "GET", "/healthz", &[], "");
    assert_eq!((status, body.as_str()), (200, "ok\n"));

    let log = spool.join("delivery.jsonl");
    wait_until(Duration::from_secs(30), "4 delivered records", || count(&records(&log), "delivered") >= 4);
    let (code, said) = serve.terminate();
    assert_eq!(code, Some(0), "{said}");
    let all = records(&log);
    assert_eq!(
        count(&all, "delivered"),
        4,
        "Ann, Bob, the raw one, and the keyed one once: nothing refused was sent"
    );
    assert_eq!(count(&all, "received"), 4);
    let keyed: Vec<&Value> = all.iter().filter(|r| r["idempotency_key"] == "order-1").collect();
    assert_eq!(keyed.len(), 1, "the received record names the key");
    let dumped = common::dumped(&dump);
    assert_eq!(dumped.len(), 4);
    let bob = dumped
        .iter()
        .find(|(env, _)| env.contains("bob@example.net"))
        .map(|(_, c)| String::from_utf8_lossy(c).into_owned())
        .unwrap();
    for expected in [
        "Subject: Hi Bob",
        "Hello Bob, your code is 7.",
        "Reply-To: help@example.com",
        "X-Campaign: welcome",
        "filename=\"note.txt\"",
        "with HTTP;",
    ] {
        assert!(bob.contains(expected), "{expected:?} in {bob}");
    }
    let ann = dumped
        .iter()
        .find(|(env, _)| env.contains("ann@example.net"))
        .map(|(_, c)| String::from_utf8_lossy(c).into_owned())
        .unwrap();
    assert!(ann.contains("your code is 42."), "the request's substitutions under the recipient's: {ann}");
    sink.stop().unwrap();
}

#[test]
fn a_spool_short_of_space_says_try_later_and_keeps_nothing_half() {
    let dir = common::temp_dir("serve-full");
    let sink = sink(|_| {});
    let keys = dir.join("keys");
    std::fs::write(&keys, "app:app-key-0123456789\n").unwrap();
    let spool = dir.join("spool");
    let extra = [
        "--trusted-networks",
        "127.0.0.1",
        "--api-keys",
        keys.to_str().unwrap(),
        "--http-listen",
        "127.0.0.1:0",
        // More than any disk has: every message finds the spool short of space.
        "--min-free-space",
        "18446744073709551615",
    ];
    let serve = Serve::start(&spool, sink.local_addr(), &extra);
    let mut c = Raw::greeted(serve.smtp);
    c.ehlo();
    let reply = common::data_transaction(&mut c, b"Subject: x\r\n\r\nx\r\n.\r\n");
    assert_eq!(reply.code, 452, "{reply:?}");
    assert_eq!(reply.enhanced.map(|e| (e.class, e.subject, e.detail)), Some((4, 3, 1)), "{reply:?}");
    assert_eq!(c.cmd("NOOP"), 250, "the session goes on");
    drop(c);
    let body = r#"{"recipients": [{"email": "a@example.net"}], "content": {"from": "app@example.com", "text": "x"}}"#;
    let (status, head, answer) = http(
        serve.http.unwrap(),
        "POST",
        "/api/v1/messages",
        &[("Authorization", "Bearer app-key-0123456789")],
        body,
    );
    assert_eq!(status, 503, "{answer}");
    assert!(head.contains("retry-after: 30"), "{head}");
    assert!(answer.contains("spool_full"), "{answer}");
    let (code, said) = serve.terminate();
    assert_eq!(code, Some(0), "{said}");
    assert_eq!(count(&records(&spool.join("delivery.jsonl")), "received"), 0);
    assert!(spool::open(&spool).unwrap().waiting().unwrap().is_empty());
    assert_eq!(sink.stop().unwrap().messages_accepted, 0);
}

/// SIGTERM: a client waiting between commands hears 421 at once, and one in the middle of a
/// transaction finishes it (its message taken and delivered) before hearing the same.
#[test]
fn a_stop_tells_waiting_clients_421_and_lets_a_transaction_under_way_finish() {
    let dir = common::temp_dir("serve-stop");
    let sink = sink(|_| {});
    let spool = dir.join("spool");
    let serve = Serve::start(&spool, sink.local_addr(), &["--trusted-networks", "127.0.0.1"]);
    let mut idle = Raw::greeted(serve.smtp);
    idle.ehlo();
    let mut busy = Raw::greeted(serve.smtp);
    busy.ehlo();
    busy.send("MAIL FROM:<app@example.com>\r\nRCPT TO:<u@example.net>\r\n");
    assert_eq!(busy.codes(2), vec![250, 250]);

    // SAFETY: sending a signal to our own child.
    unsafe { libc::kill(serve.pid(), libc::SIGTERM) };
    let reply = idle.try_reply().expect("a 421 before the connection closes");
    assert_eq!(reply.code, 421, "{reply:?}");
    assert!(reply.text.contains("shutting down"), "{reply:?}");
    assert!(idle.closed(), "then closed");

    busy.send("DATA\r\n");
    assert_eq!(busy.reply().code, 354);
    busy.send("Subject: last\r\n\r\nunder way at the stop\r\n.\r\n");
    assert_eq!(busy.reply().code, 250, "the transaction under way is taken");
    assert_eq!(busy.cmd("MAIL FROM:<app@example.com>"), 421, "and no other");
    let (code, said) = serve.exited();
    assert_eq!(code, Some(0), "{said}");
    let log = records(&spool.join("delivery.jsonl"));
    assert_eq!(count(&log, "received"), 1, "{log:?}");
    let left = spool::open(&spool).unwrap().waiting().unwrap().len();
    assert_eq!(count(&log, "delivered") + left, 1, "delivered, or in the spool for the next start");
    sink.stop().unwrap();
}

/// A tmpfs of `size` mounted on `dir` for as long as it lives.
struct Tmpfs(PathBuf);

impl Tmpfs {
    /// `None` where this process may not mount (not root, or a container without the right).
    fn mount(dir: &Path, size: &str) -> Option<Tmpfs> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return None;
        }
        std::fs::create_dir_all(dir).unwrap();
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs", dir.to_str().unwrap()])
            .status()
            .ok()?;
        status.success().then(|| Tmpfs(dir.to_owned()))
    }

    fn grow(&self, size: &str) {
        let status = Command::new("mount")
            .args(["-o", &format!("remount,size={size}"), self.0.to_str().unwrap()])
            .status()
            .unwrap();
        assert!(status.success());
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

/// The disk really full (the spool on a small tmpfs, no --min-free-space to stop short of
/// it): submissions are answered "try later", serve stops by itself with a clear reason (its
/// store must be opened anew), and once there is room again a restart delivers every message
/// that got a 250, once, and none the client was told was refused.
#[test]
fn a_full_disk_is_answered_try_later_and_a_restart_delivers_exactly_what_was_accepted() {
    let dir = common::temp_dir("serve-enospc");
    let Some(disk) = Tmpfs::mount(&dir.join("disk"), "16m") else {
        eprintln!("skipped: mounting a tmpfs needs root and the right to mount (CI has both)");
        return;
    };
    let spool = dir.join("disk/spool");
    let log = dir.join("delivery.jsonl");
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let args = ["--trusted-networks", "127.0.0.1", "--min-free-space", "0", "--log", log.to_str().unwrap()];
    let serve = Serve::start(&spool, dead, &args);
    let cmd =
        bench(serve.smtp, &["--messages", "20000", "--size", "2000", "--connections", "4", "--retries", "0"]);
    let out = run(cmd, Duration::from_secs(120));
    let report = json(&out);
    let acknowledged = report["delivered"].as_u64().unwrap();
    assert!(acknowledged > 1000, "the disk held some: {report}");
    assert!(report["deferred"].as_u64().unwrap() > 0, "then said try later: {report}");
    assert_eq!(report["bounced"], 0, "never a permanent refusal: {report}");
    let (code, said) = serve.exited();
    assert_eq!(code, Some(3), "{said}");
    assert!(said.contains("the spool cannot be written") && said.contains("No space left"), "{said}");
    assert_eq!(count(&records(&log), "received") as u64, acknowledged, "one received record per 250");

    disk.grow("64m");
    let dump = dir.join("dump");
    std::fs::create_dir_all(&dump).unwrap();
    let sink = sink(|c| c.dump = Some(dump.clone()));
    let serve = Serve::start(&spool, sink.local_addr(), &args);
    wait_until(Duration::from_secs(60), "the spool delivered", || {
        std::fs::read_dir(&dump).map_or(0, |d| d.count()) as u64 >= acknowledged
    });
    std::thread::sleep(Duration::from_millis(500));
    let (code, said) = serve.terminate();
    assert_eq!(code, Some(0), "{said}");
    let ids = message_ids(&dump);
    // Beyond those, only messages whose fate the client could not know: answered "try later"
    // because the write failed, yet on disk when the store was opened again (the store
    // reports a batch failed that it had written whole; a client that tries again sends a
    // duplicate, never loses one), or with no answer at all.
    let told_later: u64 = ["451", "452"].iter().filter_map(|c| report["final_reply_codes"][c].as_u64()).sum();
    let unknown = told_later + report["uncertain"].as_u64().unwrap();
    assert!(
        (acknowledged..=acknowledged + unknown).contains(&(ids.len() as u64)),
        "every message that got a 250, and no other but those told later: {} delivered, {report}",
        ids.len()
    );
    assert!(ids.values().all(|&n| n == 1), "each once");
    assert!(spool::open(&spool).unwrap().waiting().unwrap().is_empty());
    sink.stop().unwrap();
}

#[test]
fn a_config_file_gives_flags_and_the_command_line_overrides_it() {
    let dir = common::temp_dir("serve-config");
    let sink = sink(|_| {});
    let config = dir.join("serve.toml");
    // The file trusts nobody on loopback; the command line trusts 127.0.0.1, and wins.
    std::fs::write(&config, "trusted_networks = [\"10.0.0.0/8\"]\nmax_message_size = 100\nquiet = true\n")
        .unwrap();
    let spool = dir.join("spool");
    let serve = Serve::start(
        &spool,
        sink.local_addr(),
        &["--config", config.to_str().unwrap(), "--trusted-networks", "127.0.0.1"],
    );
    let mut c = Raw::greeted(serve.smtp);
    c.send("EHLO client.test\r\n");
    assert!(c.reply().text.contains("SIZE 100"), "the file's --max-message-size");
    assert_eq!(c.cmd("MAIL FROM:<a@example.com>"), 250, "the command line's --trusted-networks");
    drop(c);
    let (code, said) = serve.terminate();
    assert_eq!(code, Some(0), "{said}");
    sink.stop().unwrap();
}

#[test]
fn sighup_reloads_keys_users_shaping_and_bounce_rules_without_dropping_a_connection() {
    let dir = common::temp_dir("serve-hup");
    // Every recipient refused with a generic code, so categories come from the text rules.
    let sink = sink(|c| c.faults.add_fail("rcpt=554").unwrap());
    let write = |name: &str, text: &str| {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    };
    let keys = write("keys", "web:key-one-0123456789\n");
    let users = write("users", "app:pass-one-123\n");
    let shaping = write("shaping.toml", "# nothing yet\n");
    let bounce = write("bounce.toml", "# nothing yet\n");
    let spool = dir.join("spool");
    let path = |p: &PathBuf| p.to_str().unwrap().to_owned();
    let (keys_s, users_s, shaping_s, bounce_s) = (path(&keys), path(&users), path(&shaping), path(&bounce));
    let extra = [
        "--api-keys",
        &keys_s,
        "--users",
        &users_s,
        "--shaping",
        &shaping_s,
        "--bounce-rules",
        &bounce_s,
        "--http-listen",
        "127.0.0.1:0",
        "--dsn",
        "off",
    ];
    let serve = Serve::start(&spool, sink.local_addr(), &extra);
    let api = serve.http.unwrap();
    let log = spool.join("delivery.jsonl");
    let post = |key: &str, rcpt: &str| {
        let body = format!(
            r#"{{"recipients": [{{"email": "{rcpt}"}}], "content": {{"from": "app@example.com", "text": "hi"}}}}"#
        );
        http(api, "POST", "/api/v1/messages", &[("Authorization", &format!("Bearer {key}"))], &body).0
    };
    let submit = |password: &str| {
        let mut cmd = bench(serve.smtp, &["--messages", "1", "--retries", "0"]);
        cmd.args(["--starttls", "required", "--auth-user", "app"]).env("VOLLEY_AUTH_PASSWORD", password);
        json(&run(cmd, Duration::from_secs(60)))["delivered"].as_u64().unwrap()
    };
    let bounced =
        |rcpt: &str| records(&log).into_iter().find(|r| r["rcpt"] == rcpt && r["status"] == "bounced");

    // A session open across the reload.
    let mut open = Raw::greeted(serve.smtp);
    open.ehlo();
    assert_eq!(post("key-one-0123456789", "first@example.net"), 202);
    assert_eq!(submit("pass-one-123"), 1);
    wait_until(Duration::from_secs(20), "first bounced", || bounced("first@example.net").is_some());
    assert_ne!(bounced("first@example.net").unwrap()["category"], "spam_block");

    std::fs::write(&keys, "web:key-two-0123456789\n").unwrap();
    std::fs::write(&users, "app:pass-two-456\n").unwrap();
    std::fs::write(&shaping, "[[reaction]]\nname = \"sink-refuses\"\ntext = [\"injected failure\"]\naction = \"suspend\"\nfor = \"1m\"\n").unwrap();
    std::fs::write(&bounce, "[[rule]]\ncategory = \"spam_block\"\ntext = [\"injected failure\"]\n").unwrap();
    let hup = |serve: &Serve| {
        // SAFETY: sending a signal to our own child.
        unsafe { libc::kill(serve.pid(), libc::SIGHUP) };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let line = serve
                .lines
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
                .expect("a word on SIGHUP");
            if line.contains("SIGHUP") {
                return line;
            }
        }
    };
    let said = hup(&serve);
    assert!(said.contains("reloaded 1 API keys, 1 users, shaping rules"), "{said}");

    assert_eq!(post("key-one-0123456789", "x@example.net"), 403, "the old key is gone");
    assert_eq!(post("key-two-0123456789", "second@example.net"), 202);
    assert_eq!(submit("pass-one-123"), 0, "the old password is refused");
    assert_eq!(submit("pass-two-456"), 1);
    wait_until(Duration::from_secs(20), "second bounced", || bounced("second@example.net").is_some());
    assert_eq!(bounced("second@example.net").unwrap()["category"], "spam_block", "the new bounce rule");
    wait_until(Duration::from_secs(20), "the new reaction", || {
        records(&log).iter().any(|r| r["status"] == "shaping" && r["rule"] == "sink-refuses")
    });
    assert_eq!(open.cmd("NOOP"), 250, "the session open across the reload goes on");

    // A mistake in one file: nothing is reloaded, the service goes on as it was.
    std::fs::write(&keys, "web:key-three-0123456789\n").unwrap();
    std::fs::write(&users, "no colon here\n").unwrap();
    let said = hup(&serve);
    assert!(said.contains("nothing reloaded") && said.contains("--users"), "{said}");
    assert_eq!(post("key-three-0123456789", "y@example.net"), 403, "not half reloaded");
    assert_eq!(post("key-two-0123456789", "third@example.net"), 202);
    drop(open);
    let (code, said) = serve.terminate();
    assert_eq!(code, Some(0), "SIGHUP never stops it: {said}");
    sink.stop().unwrap();
}

/// A message's status is for the key named as its origin, which over SMTP is the user: one name
/// for both is refused at the start.
#[test]
fn an_api_key_and_a_user_of_one_name_are_refused() {
    let dir = common::temp_dir("serve-names");
    std::fs::write(dir.join("keys"), "app:app-key-0123456789\n").unwrap();
    std::fs::write(dir.join("users"), "app:a-password\n").unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_volley"));
    cmd.args(["serve", "--spool", dir.join("spool").to_str().unwrap(), "--smtp-listen", "127.0.0.1:0"])
        .args(["--http-listen", "127.0.0.1:0", "--relay", "127.0.0.1:9"])
        .args([
            "--api-keys",
            dir.join("keys").to_str().unwrap(),
            "--users",
            dir.join("users").to_str().unwrap(),
        ]);
    let out = run(cmd, Duration::from_secs(20));
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("`app` is both an --api-keys name and a --users user"), "{}", stderr(&out));
}

//! Webhooks as an application sees them: `volley serve --webhook` (the real binary) POSTing
//! every record of its log to a receiver that is down, then answers 503, then takes them;
//! across a kill -9 and a restart; a receiver refusing with 400; signatures checked with the secret and with
//! `volley webhook verify`.

mod common;

use common::campaign::{OutputWithin, SHORT};

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::campaign::{records, stderr};
use common::serve::{Serve, http, wait_until};
use common::sink;
use common::webhook::{Got, Receiver, free_addr};
use mailvolley::serve::webhook::sign::Secret;
use serde_json::Value;

const SECRET: &str = "whsec-test-0123456789";

/// Every event the receiver answered 2xx, by id (each id's copies must be the same event).
fn taken(got: &[Got]) -> BTreeMap<u64, Value> {
    let mut events: BTreeMap<u64, Value> = BTreeMap::new();
    for g in got.iter().filter(|g| g.status == 200) {
        let body: Value = serde_json::from_slice(&g.body).unwrap();
        for e in body["events"].as_array().unwrap() {
            let id = e["id"].as_u64().unwrap();
            if let Some(before) = events.insert(id, e.clone()) {
                assert_eq!(before, *e, "a duplicate is the same event");
            }
        }
    }
    events
}

fn metric(api: SocketAddr, name: &str) -> u64 {
    let (_, _, text) = http(api, "GET", "/metrics", &[], "");
    text.lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

fn start(spool: &Path, relay: SocketAddr, dir: &Path, hook: SocketAddr) -> Serve {
    let keys = dir.join("keys");
    let secret = dir.join("secret");
    let url = format!("http://{hook}/hooks/volley?token=abc");
    let args = [
        "--api-keys",
        keys.to_str().unwrap(),
        "--http-listen",
        "127.0.0.1:0",
        "--webhook",
        &url,
        "--webhook-secret-file",
        secret.to_str().unwrap(),
        "--webhook-batch",
        "4",
        "--dsn",
        "off",
    ];
    Serve::start(spool, relay, &args)
}

#[test]
fn every_record_reaches_the_webhook_signed_once_it_is_up_across_a_restart_and_a_refusal_drops() {
    let dir = common::temp_dir("serve-webhook");
    std::fs::write(dir.join("keys"), "app:app-key-0123456789\n").unwrap();
    std::fs::write(dir.join("secret"), format!("{SECRET}\n")).unwrap();
    let sink = sink(|_| {});
    let spool = dir.join("spool");
    let log = spool.join("delivery.jsonl");
    let hook = free_addr();
    let serve = start(&spool, sink.local_addr(), &dir, hook);
    let api = serve.http.unwrap();
    let post = |api: SocketAddr, rcpt: &str| {
        let body = format!(
            r#"{{"recipients": [{{"email": "{rcpt}"}}], "content": {{"from": "app@example.com", "text": "hi"}}}}"#
        );
        let (status, _, answer) =
            http(api, "POST", "/api/v1/messages", &[("Authorization", "Bearer app-key-0123456789")], &body);
        assert_eq!(status, 202, "{answer}");
    };
    let delivered = |n: usize| {
        let log = log.clone();
        move || records(&log).iter().filter(|r| r["status"] == "delivered").count() >= n
    };

    // The receiver is down: the records wait in the spool, counted as its backlog.
    for rcpt in ["a@example.net", "b@example.net", "c@example.net"] {
        post(api, rcpt);
    }
    wait_until(Duration::from_secs(20), "3 delivered", delivered(3));
    wait_until(Duration::from_secs(20), "6 events waiting", || {
        metric(api, "volley_webhook_events_waiting") == 6
    });
    wait_until(Duration::from_secs(20), "failed requests counted", || {
        metric(api, "volley_webhook_failed_requests_total") >= 1
    });
    let (_, _, text) = http(api, "GET", "/metrics", &[], "");
    assert!(!text.contains("token=abc"), "no query (a token) in a label");

    // Up, but 503 twice: kept and tried again (backoff), then taken.
    let receiver = Receiver::start(hook);
    receiver.answer(&[503, 503], 200);
    wait_until(Duration::from_secs(30), "6 events taken", || taken(&receiver.got()).len() == 6);
    let got = receiver.got();
    assert!(got.iter().filter(|g| g.status == 503).count() == 2);
    let secret = Secret::from_file_text(SECRET).unwrap();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    for g in &got {
        assert!(g.head.starts_with("post /hooks/volley?token=abc http/1.1"), "{}", g.head);
        assert_eq!(g.header("content-type").as_deref(), Some("application/json"));
        let signature = g.header("x-volley-signature").expect("signed");
        assert_eq!(secret.verify(&signature, &g.body, now, 300), Ok(()), "{signature}");
        assert!(serde_json::from_slice::<Value>(&g.body).unwrap()["events"].as_array().unwrap().len() <= 4);
    }
    // The same check from the command line, and a wrong secret refused.
    let body_file = dir.join("body.json");
    std::fs::write(&body_file, &got[0].body).unwrap();
    let verify = |secret_file: &Path| {
        Command::new(env!("CARGO_BIN_EXE_volley"))
            .args(["webhook", "verify", "--secret-file", secret_file.to_str().unwrap(), "--tolerance", "1h"])
            .args(["--signature", &got[0].header("x-volley-signature").unwrap(), body_file.to_str().unwrap()])
            .output_within(SHORT)
    };
    let out = verify(&dir.join("secret"));
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    std::fs::write(dir.join("wrong"), "not-the-secret\n").unwrap();
    assert_eq!(verify(&dir.join("wrong")).status.code(), Some(1));

    // Each record of the log is one event, its offset the id.
    let events = taken(&got);
    let statuses: BTreeSet<(String, String)> = events
        .values()
        .map(|e| (e["status"].as_str().unwrap().to_owned(), e["rcpt"].as_str().unwrap_or("").to_owned()))
        .collect();
    assert_eq!(events.values().filter(|e| e["status"] == "received").count(), 3);
    assert!(statuses.contains(&("delivered".into(), "b@example.net".into())));
    let text = std::fs::read(&log).unwrap();
    for (id, e) in &events {
        let at = usize::try_from(*id).unwrap();
        let line = &text[at..at + text[at..].iter().position(|&b| b == b'\n').unwrap()];
        let record: Value = serde_json::from_slice(line).unwrap();
        assert_eq!(record["status"], e["status"], "the id is the record's offset in the log");
    }
    wait_until(Duration::from_secs(10), "backlog gone", || metric(api, "volley_webhook_events_waiting") == 0);

    // Down again; two more; serve is killed (-9) before the receiver is back: nothing is lost
    // (what the spool had not yet recorded is caught up from the log).
    receiver.stop();
    post(api, "d@example.net");
    post(api, "e@example.net");
    wait_until(Duration::from_secs(20), "5 delivered", delivered(5));
    serve.kill_9();
    let serve = start(&spool, sink.local_addr(), &dir, hook);
    let api = serve.http.unwrap();
    // The 4 new ones, and any taken before whose forgetting the kill undid (sent again, with
    // the same id: at least once).
    let waiting = metric(api, "volley_webhook_events_waiting");
    assert!(waiting >= 4, "queued in the spool across the kill: {waiting}");
    let receiver = Receiver::start(hook);
    let new = |got: &BTreeMap<u64, Value>| got.keys().filter(|id| !events.contains_key(id)).count();
    wait_until(Duration::from_secs(30), "4 more events", || new(&taken(&receiver.got())) == 4);
    let again = taken(&receiver.got());
    for (id, e) in &again {
        assert!(events.get(id).is_none_or(|before| before == e), "a duplicate is the same event: {id}");
    }
    assert_eq!(again.len() as u64, waiting, "every event waiting, once");

    // A receiver that refuses (400): dropped and counted, never sent again.
    receiver.answer(&[400], 200);
    post(api, "f@example.net");
    wait_until(Duration::from_secs(30), "2 dropped", || {
        let (_, _, text) = http(api, "GET", "/metrics", &[], "");
        text.lines()
            .any(|l| l.contains("volley_webhook_events_total") && l.contains("dropped") && l.ends_with(" 2"))
    });
    post(api, "g@example.net");
    wait_until(Duration::from_secs(30), "g's events", || {
        taken(&receiver.got()).values().filter(|e| e["rcpt"] == "g@example.net").count() == 1
    });
    assert!(!taken(&receiver.got()).values().any(|e| e["rcpt"] == "f@example.net"), "dropped for good");

    // The secret rolled: a second line and SIGHUP; requests carry a v1 for each.
    std::fs::write(dir.join("secret"), format!("whsec-new-0123456789\n{SECRET}\n")).unwrap();
    // SAFETY: sending a signal to our own child.
    unsafe { libc::kill(serve.pid(), libc::SIGHUP) };
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut seen = String::new();
    loop {
        let line =
            serve.lines.recv_timeout(deadline.saturating_duration_since(Instant::now())).expect("reloaded");
        seen.push_str(&line);
        seen.push('\n');
        if line.contains("SIGHUP") {
            assert!(line.contains("the webhook secret"), "{line}");
            break;
        }
    }
    post(api, "h@example.net");
    wait_until(Duration::from_secs(30), "h's events", || {
        taken(&receiver.got()).values().any(|e| e["rcpt"] == "h@example.net")
    });
    let last = receiver
        .got()
        .into_iter()
        .rev()
        .find(|g| String::from_utf8_lossy(&g.body).contains("h@example.net"))
        .unwrap();
    let signature = last.header("x-volley-signature").unwrap();
    assert_eq!(signature.matches("v1=").count(), 2, "{signature}");
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let new = Secret::from_file_text("whsec-new-0123456789").unwrap();
    assert_eq!(secret.verify(&signature, &last.body, now, 300), Ok(()), "a receiver with the old secret");
    assert_eq!(new.verify(&signature, &last.body, now, 300), Ok(()), "a receiver with the new one");
    let (code, said) = serve.terminate();
    assert_eq!(code, Some(0), "{said}");
    let said = seen + &said;
    assert!(said.contains("refused 2 events with 400"), "{said}");
    receiver.stop();
    sink.stop().unwrap();
}

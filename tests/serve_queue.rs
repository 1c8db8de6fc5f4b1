//! Queue control as an operator runs it: `volley queue` against a running `volley serve`
//! (the real binaries), delivering to volley's sink, which greylists every recipient's first
//! try so that retries wait an hour unless brought forward. Suspend holds a domain back, across
//! a restart; retry-now and resume bring recipients forward; bounce ends them `admin`.

mod common;

use common::campaign::{OutputWithin, SHORT};

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use common::campaign::{records, stderr};
use common::serve::{Serve, http, wait_until};
use common::sink;
use serde_json::Value;

/// `volley queue` with the admin key in `key_file`; its output.
fn queue(api: SocketAddr, key_file: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_volley"))
        .args(["queue", "--api", &format!("http://{api}"), "--api-key-file", key_file.to_str().unwrap()])
        .args(args)
        .output_within(SHORT)
}

/// `volley queue ... --json`, which must succeed; its answer.
fn queue_json(api: SocketAddr, key_file: &Path, args: &[&str]) -> Value {
    let out = queue(api, key_file, &[args, &["--json"]].concat());
    assert!(out.status.success(), "volley queue {args:?}: {}", stderr(&out));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The log's records for `rcpt`'s recipient, by status.
fn statuses(log: &Path, rcpt: &str) -> Vec<String> {
    records(log)
        .iter()
        .filter(|r| r["rcpt"] == rcpt)
        .map(|r| r["status"].as_str().unwrap().to_owned())
        .collect()
}

struct Files {
    keys: PathBuf,
    admin_keys: PathBuf,
    admin_key: PathBuf,
    app_key: PathBuf,
}

fn files(dir: &Path) -> Files {
    let write = |name: &str, text: &str| {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    };
    Files {
        keys: write("keys", "app:app-key-0123456789\nother:other-key-0123456789\n"),
        admin_keys: write("admin-keys", "ops:ops-key-0123456789\n"),
        admin_key: write("ops.key", "ops-key-0123456789\n"),
        app_key: write("app.key", "app-key-0123456789\n"),
    }
}

fn start(spool: &Path, relay: SocketAddr, f: &Files) -> Serve {
    let args = [
        "--api-keys",
        f.keys.to_str().unwrap(),
        "--admin-keys",
        f.admin_keys.to_str().unwrap(),
        "--http-listen",
        "127.0.0.1:0",
        "--retry-after",
        "1h",
        "--retry-max",
        "2h",
        "--dsn",
        "off",
    ];
    Serve::start(spool, relay, &args)
}

#[test]
fn a_suspended_domain_is_held_across_a_restart_then_resumed_retried_and_bounced() {
    let dir = common::temp_dir("serve-queue");
    let dump = dir.join("dump");
    std::fs::create_dir_all(&dump).unwrap();
    let sink = sink(|c| {
        c.greylist = true;
        c.dump = Some(dump.clone());
    });
    let f = files(&dir);
    let spool = dir.join("spool");
    let log = spool.join("delivery.jsonl");
    let serve = start(&spool, sink.local_addr(), &f);
    let api = serve.http.expect("the API runs");

    // Who may do what: an application's key cannot steer the queue; bounce needs --yes.
    let out = queue(api, &f.app_key, &["suspend", "held.test"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("--admin-keys"), "{}", stderr(&out));
    let out = queue(api, &f.admin_key, &["bounce", "gone.test"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let out = queue(api, &f.admin_key, &["resume", "never.test"]);
    assert_eq!(out.status.code(), Some(1), "not suspended: {}", stderr(&out));

    let suspended = queue_json(api, &f.admin_key, &["suspend", "held.test"]);
    assert_eq!(suspended["suspended"]["dest"], "held.test");
    assert!(suspended["suspended"]["until"].is_null(), "until resumed");
    let timed = queue_json(api, &f.admin_key, &["suspend", "gone.test", "--for", "2h"]);
    assert!(timed["suspended"]["until"].is_string());

    let post = |rcpt: &str| {
        let body = format!(
            r#"{{"recipients": [{{"email": "{rcpt}"}}], "content": {{"from": "app@example.com", "text": "hi"}}}}"#
        );
        let auth = ("Authorization", "Bearer app-key-0123456789");
        let (status, _, answer) = http(api, "POST", "/api/v1/messages", &[auth], &body);
        assert_eq!(status, 202, "{answer}");
    };
    for rcpt in ["ann@ok.test", "bob@held.test", "cat@gone.test", "dan@gone.test"] {
        post(rcpt);
    }
    // Ann is tried (greylisted: deferred for an hour); Bob, Cat and Dan are held, untried.
    wait_until(Duration::from_secs(20), "ann deferred", || statuses(&log, "ann@ok.test") == ["deferred"]);
    std::thread::sleep(Duration::from_millis(500));
    for held in ["bob@held.test", "cat@gone.test", "dan@gone.test"] {
        assert!(statuses(&log, held).is_empty(), "{held} untried: {:?}", statuses(&log, held));
    }

    let list = queue_json(api, &f.admin_key, &["list"]);
    assert_eq!(list["waiting"], 4, "{list:#}");
    let relay = &list["destinations"][0];
    assert_eq!(relay["waiting"], 4, "every domain routes to the relay: {list:#}");
    assert_eq!(relay["domains"]["gone.test"], 2);
    assert_eq!(list["suspended"].as_array().unwrap().len(), 2);
    let show = queue_json(api, &f.admin_key, &["show", "held.test"]);
    let rows = show["destinations"].as_array().unwrap();
    assert_eq!(rows.len(), 1, "{show:#}");
    assert_eq!(rows[0]["recipients"][0]["rcpt"], "bob@held.test");
    assert_eq!(rows[0]["waiting"], 1, "only what DEST names");
    let table = queue(api, &f.admin_key, &["list"]);
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(text.contains("DESTINATION") && text.contains("suspended: held.test until resumed"), "{text}");

    // Ann's hour-long wait, brought forward: the second try passes the greylist.
    let retried = queue_json(api, &f.admin_key, &["retry-now", "ok.test"]);
    assert_eq!(retried["recipients"], 1, "{retried}");
    wait_until(Duration::from_secs(20), "ann delivered", || {
        statuses(&log, "ann@ok.test").contains(&"delivered".into())
    });

    // Suspensions are kept in the spool: after a restart Bob is still held.
    let (code, said) = serve.terminate();
    assert_eq!(code, Some(0), "{said}");
    let serve = start(&spool, sink.local_addr(), &f);
    let api = serve.http.unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    assert!(statuses(&log, "bob@held.test").is_empty(), "still held after the restart");
    let list = queue_json(api, &f.admin_key, &["list"]);
    let dests: Vec<&str> =
        list["suspended"].as_array().unwrap().iter().map(|s| s["dest"].as_str().unwrap()).collect();
    assert_eq!(dests, ["held.test", "gone.test"]);

    // Bounce drains gone.test: final records, category admin, nothing sent.
    let bounced = queue_json(api, &f.admin_key, &["bounce", "gone.test", "--yes"]);
    assert_eq!(bounced["recipients"], 2, "{bounced}");
    wait_until(Duration::from_secs(10), "cat and dan bounced", || {
        statuses(&log, "cat@gone.test") == ["bounced"] && statuses(&log, "dan@gone.test") == ["bounced"]
    });
    let cat = records(&log).into_iter().find(|r| r["rcpt"] == "cat@gone.test").unwrap();
    assert_eq!(cat["category"], "admin", "{cat}");
    assert_eq!(cat["attempts"].as_u64().unwrap_or(0), 0, "never tried: {cat}");

    // Resumed: Bob goes (greylisted: deferred an hour), then retry-now delivers him.
    let resumed = queue_json(api, &f.admin_key, &["resume", "held.test"]);
    assert_eq!(resumed["recipients"], 1, "{resumed}");
    wait_until(Duration::from_secs(20), "bob tried", || statuses(&log, "bob@held.test") == ["deferred"]);
    queue_json(api, &f.admin_key, &["retry-now", "held.test"]);
    wait_until(Duration::from_secs(20), "bob delivered", || {
        statuses(&log, "bob@held.test").contains(&"delivered".into())
    });

    let list = queue_json(api, &f.admin_key, &["list"]);
    assert_eq!(list["waiting"], 0, "{list:#}");
    let (code, said) = serve.terminate();
    assert_eq!(code, Some(0), "{said}");
    let sent: Vec<String> = common::dumped(&dump).into_iter().map(|(envelope, _)| envelope).collect();
    assert_eq!(sent.len(), 2, "Ann and Bob, once each: {sent:?}");
    assert!(sent.iter().all(|e| !e.contains("gone.test")), "nothing bounced was sent");
    sink.stop().unwrap();
}

/// `GET /api/v1/messages/ID`: each recipient's latest record (deferred with the reply and the
/// next attempt, then delivered), for the key that submitted it or an admin key, across a
/// restart.
#[test]
fn a_message_status_shows_each_recipient_latest_record_to_its_submitter() {
    let dir = common::temp_dir("serve-status");
    let sink = sink(|c| c.greylist = true);
    let f = files(&dir);
    let spool = dir.join("spool");
    let log = spool.join("delivery.jsonl");
    let serve = start(&spool, sink.local_addr(), &f);
    let api = serve.http.unwrap();
    let body = r#"{"recipients": [{"email": "ann@ok.test"}, {"email": "bob@ok.test"}],
                   "content": {"from": "app@example.com", "text": "hi"}}"#;
    let app = ("Authorization", "Bearer app-key-0123456789");
    let (status, _, answer) = http(api, "POST", "/api/v1/messages", &[app], body);
    assert_eq!(status, 202, "{answer}");
    let answer: Value = serde_json::from_str(&answer).unwrap();
    let first = answer["recipients"][0]["message"].as_u64().unwrap();
    wait_until(Duration::from_secs(20), "both deferred", || {
        statuses(&log, "ann@ok.test") == ["deferred"] && statuses(&log, "bob@ok.test") == ["deferred"]
    });
    let get = |api: SocketAddr, auth: &[(&str, &str)], id: &str| {
        let (status, _, body) = http(api, "GET", &format!("/api/v1/messages/{id}"), auth, "");
        (status, serde_json::from_str::<Value>(&body).unwrap_or(Value::Null))
    };
    let id = first.to_string();
    // Each recipient has its own message (one per recipient, as the API makes them).
    let (code, ann) = get(api, &[app], &id);
    assert_eq!(code, 200, "{ann}");
    let r = &ann["recipients"][0];
    assert_eq!(
        (r["email"].as_str(), r["status"].as_str(), r["attempts"].as_u64()),
        (Some("ann@ok.test"), Some("deferred"), Some(1)),
        "{ann:#}"
    );
    assert!(
        r["next_attempt"].is_string() && r["code"].as_u64().is_some_and(|c| (400..500).contains(&c)),
        "{ann:#}"
    );
    assert_eq!(ann["received"]["origin"], "app", "{ann:#}");
    assert_eq!(ann["in_spool"], true);

    let other = ("Authorization", "Bearer other-key-0123456789");
    assert_eq!(get(api, &[other], &id).0, 404, "not another application's");
    assert_eq!(get(api, &[("Authorization", "Bearer ops-key-0123456789")], &id).0, 200, "an admin's");
    assert_eq!(get(api, &[], &id).0, 401);
    assert_eq!(get(api, &[app], "x").0, 422);
    assert_eq!(get(api, &[app], "999999").0, 404);

    queue_json(api, &f.admin_key, &["retry-now", "ok.test"]);
    wait_until(Duration::from_secs(20), "ann delivered", || {
        statuses(&log, "ann@ok.test").contains(&"delivered".into())
    });
    wait_until(Duration::from_secs(10), "the status says so", || {
        let (_, ann) = get(api, &[app], &id);
        ann["recipients"][0]["status"] == "delivered" && ann["in_spool"] == false
    });
    let (code, said) = serve.terminate();
    assert_eq!(code, Some(0), "{said}");
    let serve = start(&spool, sink.local_addr(), &f);
    let (code, ann) = get(serve.http.unwrap(), &[app], &id);
    assert_eq!(code, 200, "{ann}");
    let r = &ann["recipients"][0];
    assert_eq!((r["status"].as_str(), r["attempts"].as_u64()), (Some("delivered"), Some(2)), "{ann:#}");
    assert!(r["next_attempt"].is_null() && r["time"].is_string() && r["reply"].is_string(), "{ann:#}");
    let (code, said) = serve.terminate();
    assert_eq!(code, Some(0), "{said}");
    sink.stop().unwrap();
}

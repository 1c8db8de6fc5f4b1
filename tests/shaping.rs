//! Traffic shaping of `volley send`, end to end: rates that hold, reactions to throttling
//! replies that suspend or slow a destination and let it recover, and the log and report
//! saying so. Durations are asserted only as lower bounds (a rate limit makes a run at least
//! that long); nothing here measures speed.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::campaign::{finals, records, run, stderr};
use common::scripted::{Fault, Script, Scripted};
use serde_json::Value;

const VOLLEY: &str = env!("CARGO_BIN_EXE_volley");

struct Campaign {
    dir: PathBuf,
    list: PathBuf,
    msg: PathBuf,
}

impl Campaign {
    fn new(name: &str, rows: &[String]) -> Campaign {
        let dir = common::temp_dir(&format!("shaping-{name}"));
        let list = dir.join("list.csv");
        std::fs::write(
            &list,
            format!("email\n{}", rows.iter().map(|r| format!("{r}\n")).collect::<String>()),
        )
        .unwrap();
        let msg = dir.join("msg.txt");
        std::fs::write(&msg, "From: a@example.com\nSubject: s\n\nbody\n").unwrap();
        Campaign { dir, list, msg }
    }

    fn file(&self, name: &str, text: &str) -> PathBuf {
        let path = self.dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    /// `volley send` through `relay`, logging to `log`, with the shipped shaping rules left
    /// out (tests name their own).
    fn send(&self, relay: &str, log: &Path, args: &[&str]) -> Command {
        let mut cmd = Command::new(VOLLEY);
        cmd.args(["send", "--quiet", "--json", "--no-shaping-defaults", "--relay", relay])
            .args(["--recipients", self.list.to_str().unwrap(), "--message", self.msg.to_str().unwrap()])
            .args(["--log", log.to_str().unwrap()])
            .args(args);
        cmd
    }
}

fn rows(n: usize, domain: &str) -> Vec<String> {
    (0..n).map(|i| format!("r{i}@{domain}")).collect()
}

fn report(out: &std::process::Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", stderr(out)))
}

#[test]
fn destination_connection_and_run_rates_hold() {
    let sink = common::sink(|_| {});
    let relay = sink.local_addr().to_string();
    let c = Campaign::new("rates", &rows(21, "x.test"));
    // 21 messages at 20/s: 20 intervals of 50 ms after the first.
    for (i, flags) in [["--destination-rate", "20/s"], ["--rate", "1200/min"]].iter().enumerate() {
        let log = c.dir.join(format!("rate{i}.jsonl"));
        let started = Instant::now();
        let out = run(c.send(&relay, &log, flags), Duration::from_secs(60));
        let took = started.elapsed();
        assert_eq!(out.status.code(), Some(0), "{flags:?}: {}", stderr(&out));
        assert_eq!(report(&out)["recipients"]["delivered"], 21, "{flags:?}");
        assert!(took >= Duration::from_millis(1000), "{flags:?}: 21 messages at 20/s took {took:?}");
    }
    // One message per connection and 4 connections a second: 6 connections take over a second.
    let c = Campaign::new("connection-rate", &rows(6, "x.test"));
    let log = c.dir.join("log.jsonl");
    let started = Instant::now();
    let flags = ["--connection-rate", "4/s", "--messages-per-connection", "1"];
    let out = run(c.send(&relay, &log, &flags), Duration::from_secs(60));
    let took = started.elapsed();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let r = report(&out);
    assert_eq!((r["recipients"]["delivered"].as_u64(), r["connections"].as_u64()), (Some(6), Some(6)));
    assert!(took >= Duration::from_millis(1250), "6 connections at 4/s took {took:?}");
}

#[test]
fn a_throttling_reply_suspends_the_destination_which_recovers_after() {
    // No PIPELINING: one transaction at a time, so the first recipient's refusal comes before
    // any other is sent.
    let server = Scripted::start(Script::new(&[], "250 2.0.0 Ok: queued", Fault::None).rcpt_reply(
        "volume",
        "421 4.7.0 [TSS04] Messages from 192.0.2.1 temporarily deferred due to unexpected volume or user complaints",
    ));
    let mut list = vec!["volume@x.test".to_owned()];
    list.extend(rows(12, "x.test"));
    let c = Campaign::new("suspend", &list);
    let rules = c.file(
        "shaping.toml",
        "[[reaction]]\nname = \"test-tss04\"\ntext = [\"[tss04]\"]\naction = \"suspend\"\nfor = \"1s\"\n",
    );
    let log = c.dir.join("log.jsonl");
    let flags = [
        "--shaping",
        rules.to_str().unwrap(),
        "--connections",
        "1",
        "--retry-after",
        "100ms",
        "--retry-max",
        "100ms",
        "--max-age",
        "2500ms",
    ];
    let out = run(c.send(&server.addr.to_string(), &log, &flags), Duration::from_secs(60));
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let all = records(&log);
    let f = finals(&all);
    assert_eq!(f.len(), 13, "one final record each");
    assert_eq!(
        (f[&2]["status"].as_str(), f[&2]["category"].as_str()),
        (Some("expired"), Some("rate_limited"))
    );
    for line in 3..=14 {
        assert_eq!(f[&line]["status"], "delivered", "{}", f[&line]);
    }
    // The suspension: a shaping record naming the destination, the rule and the reply...
    let shaping: Vec<&Value> = all.iter().filter(|r| r["status"] == "shaping").collect();
    assert!(!shaping.is_empty(), "no shaping record");
    let s = shaping[0];
    assert_eq!((s["rule"].as_str(), s["action"].as_str()), (Some("test-tss04"), Some("suspended")), "{s}");
    assert_eq!((s["destination"].as_str(), s["code"].as_u64()), (Some("127.0.0.1"), Some(421)), "{s}");
    assert!(s["until"].as_str().is_some() && s["reply"].as_str().unwrap().contains("[TSS04]"), "{s}");
    // ...the recipients waiting behind it deferred unattempted, to the end of the suspension...
    let held: Vec<&Value> = all
        .iter()
        .filter(|r| {
            r["status"] == "deferred" && r["reason"].as_str().is_some_and(|w| w.contains("suspended"))
        })
        .collect();
    assert!(!held.is_empty(), "nobody was held back");
    for r in &held {
        // No attempt counted for being held (the refused recipient keeps its own count), and
        // no message built for it yet (rendered and signed only when it is sent).
        assert!(r["line"] == 2 || (r.get("attempts").is_none() && r.get("size").is_none()), "{r}");
        assert_eq!(r["category"], "rate_limited", "{r}");
        assert!(r["retry_in_s"].as_u64().is_some(), "{r}");
    }
    // ...and the report.
    let rep = report(&out);
    let entry = &rep["shaping"][0];
    assert_eq!(
        (entry["rule"].as_str(), entry["action"].as_str()),
        (Some("test-tss04"), Some("suspended")),
        "{rep}"
    );
    assert!(
        entry["times"].as_u64().unwrap() >= 1 && rep["suspended_unattempted"].as_u64().unwrap() >= 1,
        "{rep}"
    );
    assert_eq!(server.accepted(), 12, "every other recipient delivered once");
}

#[test]
fn a_slowing_reaction_paces_the_destination_then_lifts() {
    let server =
        Scripted::start(Script::new(&["PIPELINING"], "250 2.0.0 Ok: queued", Fault::None).rcpt_reply(
            "slowme",
            "451 4.7.650 The mail server [192.0.2.1] has been temporarily rate limited due to IP reputation.",
        ));
    let mut list = vec!["slowme@x.test".to_owned()];
    list.extend(rows(10, "x.test"));
    let c = Campaign::new("slow", &list);
    let rules = c.file(
        "shaping.toml",
        "[[reaction]]\nname = \"test-slow\"\nenhanced = \"4.7.650\"\naction = \"slow\"\nrate = \"5/s\"\nconnections = 1\nfor = \"30s\"\n",
    );
    let log = c.dir.join("log.jsonl");
    let flags = ["--shaping", rules.to_str().unwrap(), "--connections", "1", "--max-age", "1s"];
    let flags: Vec<&str> =
        flags.into_iter().chain(["--retry-after", "100ms", "--retry-max", "100ms"]).collect();
    let started = Instant::now();
    let out = run(c.send(&server.addr.to_string(), &log, &flags), Duration::from_secs(60));
    let took = started.elapsed();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let all = records(&log);
    let s = all.iter().find(|r| r["status"] == "shaping").expect("a shaping record");
    assert_eq!(
        (s["rule"].as_str(), s["action"].as_str()),
        (Some("test-slow"), Some("slowed to 5/s, 1 connection")),
        "{s}"
    );
    let rep = report(&out);
    assert_eq!(rep["recipients"]["delivered"], 10, "{rep}");
    // Pipelined behind the refused RCPT, a few may have gone before the reaction; the rest,
    // at least 6, went at 5 a second.
    assert!(took >= Duration::from_millis(1000), "10 messages slowed to 5/s took {took:?}");
}

#[test]
fn shaping_rules_set_a_destinations_limits_and_bad_rules_send_nothing() {
    let server = Scripted::start(Script::new(&["PIPELINING"], "250 2.0.0 Ok: queued", Fault::None));
    let c = Campaign::new("rules", &rows(3, "x.test"));
    let relay = server.addr.to_string();
    let rules = c.file(
        "shaping.toml",
        "[[destination]]\nname = \"local-relay\"\nmx = [\"127.0.0.1\"]\nconnections = 2\nmessages_per_connection = 7\nrate = \"100/s\"\n",
    );
    let out = run(
        c.send(&relay, &c.dir.join("dry.jsonl"), &["--dry-run", "--shaping", rules.to_str().unwrap()]),
        Duration::from_secs(60),
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("destination 127.0.0.1: 2 connections, 7 messages per connection, 100/s messages (shaping rule local-relay)"),
        "{text}"
    );
    for (bad, says) in [
        ("[[destination]]\nname = \"x\"\nmx = [\"a\"]\nrate = \"fast\"\n", "COUNT/UNIT"),
        ("[[reaction]]\nname = \"r\"\ncode = 421\naction = \"slow\"\nfor = \"1m\"\n", "needs a rate"),
    ] {
        std::fs::write(&rules, bad).unwrap();
        let out = run(
            c.send(&relay, &c.dir.join("bad.jsonl"), &["--shaping", rules.to_str().unwrap()]),
            Duration::from_secs(60),
        );
        assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
        assert!(stderr(&out).contains("shaping.toml") && stderr(&out).contains(says), "{}", stderr(&out));
    }
    let out = run(c.send(&relay, &c.dir.join("bad2.jsonl"), &["--rate", "lots"]), Duration::from_secs(60));
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert_eq!(server.counts.sessions.load(std::sync::atomic::Ordering::Relaxed), 0, "nothing sent");
}

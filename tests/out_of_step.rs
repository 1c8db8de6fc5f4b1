//! The engine against servers that misbehave over real sockets: replies out of step with the
//! commands must never count a refused message delivered, and a server that refuses some
//! connections must not fail messages that other connections can deliver.

mod common;

use std::net::SocketAddr;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::scripted::{Fault, Script, Scripted};
use mailvolley::bench::{self, BenchSource, Content, Plan};
use mailvolley::engine::{self, Destination, EngineConfig, Report, RetryPolicy};
use mailvolley::proto::{ClientConfig, Domain, Timeouts};
use mailvolley::sink::Faults;

fn config(retries: u32) -> EngineConfig {
    let mut client = ClientConfig::new(Domain::new("test.invalid").unwrap());
    client.timeouts = Timeouts::uniform(Duration::from_secs(5), Duration::from_secs(5));
    let mut config = EngineConfig::new(client);
    config.threads = 2;
    config.retry = RetryPolicy::Immediate { retries };
    config.reconnect_backoff = Duration::from_millis(10);
    config.reconnect_backoff_max = Duration::from_millis(200);
    config.failing_after = Duration::from_millis(300);
    config
}

/// Runs the engine with `plan` against one destination, within a minute.
fn run_plan(addr: SocketAddr, connections: usize, plan: Plan, config: EngineConfig) -> Report {
    let destination = Arc::new(Destination::new(0, "target", vec![addr], connections));
    let content = Content::new(bench::default_content(1000, 1)).unwrap();
    let source = BenchSource::new(plan, Arc::clone(&destination), content);
    let running = engine::start(config, Box::new(source)).unwrap();
    common::join_within(running, Duration::from_secs(60))
}

/// Sends `messages` and checks each has exactly one outcome.
fn run(addr: SocketAddr, connections: usize, messages: u64, config: EngineConfig) -> Report {
    let report = run_plan(addr, connections, Plan { messages: Some(messages), ..Plan::default() }, config);
    let s = &report.stats;
    assert_eq!(
        s.delivered + s.deferred + s.bounced + s.uncertain + s.unsent,
        messages,
        "accounted: {}",
        brief(&report)
    );
    report
}

/// The counters of a report, without the histograms.
fn brief(r: &Report) -> String {
    let s = &r.stats;
    format!(
        "delivered {} deferred {} bounced {} uncertain {} unsent {} retries {} violations {} sessions {} errors {:?} last {:?}",
        s.delivered,
        s.deferred,
        s.bounced,
        s.uncertain,
        s.unsent,
        s.retries,
        s.violations,
        s.connections,
        s.session_errors,
        s.last_violation
    )
}

const MODES: [(&str, &[&str]); 3] = [
    ("PIPELINING+CHUNKING", &["PIPELINING", "CHUNKING", "ENHANCEDSTATUSCODES", "SIZE 10000000"]),
    ("PIPELINING+DATA", &["PIPELINING", "ENHANCEDSTATUSCODES", "8BITMIME"]),
    ("neither", &[]),
];

const FAULTS: [Fault; 3] = [Fault::DuplicateEveryReply, Fault::StrayAfterEhlo, Fault::StrayMidPipeline];

#[test]
fn a_refusing_server_out_of_step_gets_nothing_counted_delivered() {
    for (mode, caps) in MODES {
        for fault in FAULTS {
            let server = Scripted::start(Script::new(caps, "554 5.7.1 rejected", fault));
            let report = run(server.addr, 2, 30, config(1));
            let s = &report.stats;
            assert_eq!(server.accepted(), 0, "the server accepted nothing");
            assert_eq!(s.delivered, 0, "{mode}, {fault:?}: {}", brief(&report));
            assert!(s.violations > 0, "{mode}, {fault:?}: the violation was seen: {}", brief(&report));
        }
    }
}

#[test]
fn an_accepting_server_out_of_step_makes_outcomes_uncertain_not_delivered_twice() {
    // The same faults with a server that accepts: an outcome read from the shifted stretch is
    // uncertain, and uncertain messages are not retried (that could deliver them twice).
    let server = Scripted::start(Script::new(MODES[0].1, "250 2.0.0 Ok: queued", Fault::StrayMidPipeline));
    let report = run(server.addr, 1, 40, config(3));
    let s = &report.stats;
    let accepted = server.accepted();
    assert!(s.violations > 0 && s.uncertain > 0, "{}", brief(&report));
    assert!(s.delivered <= accepted, "never more delivered than accepted: {accepted}, {}", brief(&report));
    // Whatever the server took is delivered or uncertain: never deferred and sent again.
    assert!(accepted <= s.delivered + s.uncertain, "{accepted} accepted: {}", brief(&report));
}

#[test]
fn an_honest_server_shows_no_violation() {
    for (mode, caps) in MODES {
        let server = Scripted::start(Script::new(caps, "250 2.0.0 Ok: queued", Fault::None));
        let report = run(server.addr, 2, 300, config(1));
        let s = &report.stats;
        assert_eq!((s.delivered, s.uncertain, s.violations), (300, 0, 0), "{mode}: {}", brief(&report));
        assert_eq!(server.accepted(), 300, "{mode}");
    }
}

#[test]
fn cli_bench_reports_a_protocol_violation_loudly_and_exits_3() {
    let server = Scripted::start(Script::new(MODES[0].1, "554 5.7.1 rejected", Fault::StrayAfterEhlo));
    let target = server.addr.to_string();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_volley"));
    cmd.args([
        "bench",
        "--target",
        &target,
        "--messages",
        "20",
        "--connections",
        "2",
        "--quiet",
        "--retries",
        "0",
    ]);
    let out = common::campaign::run(cmd, Duration::from_secs(120));
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.status.code(), Some(3), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("PROTOCOL VIOLATION") && stderr.contains("PROTOCOL VIOLATION"),
        "{stdout}\n{stderr}"
    );
    assert!(stdout.contains("outcomes    delivered 0,"), "{stdout}");
}

#[test]
fn a_server_capping_connections_gets_every_message_delivered_over_the_rest() {
    let sink = common::sink(|c| {
        c.threads = 2;
        c.max_connections = Some(4);
    });
    let target = sink.local_addr().to_string();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_volley"));
    cmd.args(["bench", "--target", &target, "--messages", "2000", "--connections", "10", "--quiet"]);
    let out = common::campaign::run(cmd, Duration::from_secs(120));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("outcomes    delivered 2000, deferred 0, bounced 0, uncertain 0"), "{stdout}");
    assert!(stdout.contains("server capped connections at 4"), "{stdout}");
    let counters = sink.stop().unwrap();
    assert_eq!(counters.messages_accepted, 2000, "each accepted once");
    assert!(counters.connections_refused > 0, "the cap was hit: {counters:?}");
}

#[test]
fn a_server_refusing_every_ehlo_defers_each_message_after_its_retries_no_sooner() {
    let sink = common::sink(|c| {
        let mut f = Faults::default();
        f.add_fail("ehlo=421").unwrap();
        c.faults = f;
    });
    let started = Instant::now();
    let report = run(sink.local_addr(), 2, 20, config(2));
    let s = &report.stats;
    assert_eq!((s.delivered, s.deferred), (0, 20), "{}", brief(&report));
    // Each message was charged an attempt per failed session once the destination was failing:
    // two retries each, no more, no fewer.
    assert_eq!(s.retries, 40, "{}", brief(&report));
    assert!(started.elapsed() >= Duration::from_millis(300), "not before the destination was failing");
    let counters = sink.stop().unwrap();
    assert_eq!(counters.transactions, 0);
}

#[test]
fn jobs_of_a_core_the_server_refuses_are_carried_by_the_others() {
    // One connection allowed, two cores: one core can never connect. Its jobs must go to the
    // other core's session, not wait for the end of the run (regression: they waited).
    let sink = common::sink(|c| {
        c.threads = 2;
        c.max_connections = Some(1);
    });
    let plan = Plan { duration: Some(Duration::from_secs(2)), ..Plan::default() };
    let report = run_plan(sink.local_addr(), 8, plan, config(3));
    let s = &report.stats;
    assert!(s.delivered > 1000 && s.deferred == 0 && s.uncertain == 0, "{}", brief(&report));
    assert_eq!(s.delivered + s.unsent, report.produced, "{}", brief(&report));
    let worst = s.histogram(engine::Metric::Message).max();
    assert!(worst < 1_000_000, "no job waited for the end of the run: worst {worst} µs");
    assert_eq!(sink.stop().unwrap().messages_accepted, s.delivered);
}

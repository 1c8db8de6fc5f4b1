//! The engine end to end against volley's own sink: every message accounted for, under every
//! server feature set and under injected faults.

mod common;

use common::join_within;

use std::net::SocketAddr;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mailvolley::bench::{self, BenchSource, Content, Plan};
use mailvolley::engine::{self, Destination, EngineConfig, Report, RetryPolicy};
use mailvolley::proto::{ClientConfig, Domain, Timeouts};
use mailvolley::sink::{Counters, Faults, SinkConfig};

struct Run {
    connections: usize,
    recipients: usize,
    plan: Plan,
    configure: fn(&mut EngineConfig),
}

impl Default for Run {
    fn default() -> Self {
        Run {
            connections: 4,
            recipients: 1,
            plan: Plan { messages: Some(2000), ..Plan::default() },
            configure: |_| {},
        }
    }
}

fn content(size: usize, recipients: usize) -> Content {
    Content::new(bench::default_content(size, recipients)).unwrap()
}

fn engine_config() -> EngineConfig {
    let mut client = ClientConfig::new(Domain::new("test.invalid").unwrap());
    client.depth = 16;
    client.timeouts = Timeouts::uniform(Duration::from_secs(10), Duration::from_secs(10));
    let mut config = EngineConfig::new(client);
    config.threads = 2;
    config.reconnect_backoff = Duration::from_millis(10);
    config.failing_after = Duration::from_millis(200);
    config
}

fn bench_against(addr: SocketAddr, run: &Run) -> Report {
    let mut config = engine_config();
    (run.configure)(&mut config);
    let destination = Arc::new(Destination::new(0, "sink", vec![addr], run.connections));
    let source = BenchSource::new(run.plan, Arc::clone(&destination), content(1000, run.recipients));
    let running = engine::start(config, Box::new(source)).unwrap();
    join_within(running, Duration::from_secs(60))
}

fn bench(sink: impl FnOnce(&mut SinkConfig), run: Run) -> (Report, Counters) {
    let s = common::sink(|c| {
        c.threads = 2;
        sink(c);
    });
    let report = bench_against(s.local_addr(), &run);
    std::thread::sleep(Duration::from_millis(50));
    (report, s.stop().unwrap())
}

fn accounted(report: &Report, produced: u64) {
    let s = &report.stats;
    assert_eq!(report.produced, produced);
    assert_eq!(s.delivered + s.deferred + s.bounced + s.unsent, produced, "{s:?}");
}

#[test]
fn every_message_accounted_for_with_every_feature_set() {
    for (pipelining, chunking) in [(true, true), (true, false), (false, false), (false, true)] {
        let (report, sink) = bench(
            |c| {
                c.pipelining = pipelining;
                c.chunking = chunking;
            },
            Run::default(),
        );
        let s = &report.stats;
        accounted(&report, 2000);
        assert_eq!(s.delivered, 2000, "pipelining {pipelining} chunking {chunking}: {s:?}");
        assert_eq!(sink.messages_accepted, s.delivered, "sink and client agree");
        assert_eq!(sink.bytes, 2000 * 1000);
        assert_eq!(s.histogram(engine::Metric::Message).len(), 2000);
        assert_eq!(s.connections, 4);
    }
}

#[test]
fn faults_retry_transient_and_bounce_permanent() {
    let (report, sink) = bench(
        |c| {
            let mut f = Faults::default();
            f.add_fail("rcpt=451:0.1").unwrap();
            f.add_fail("data=554:0.05").unwrap();
            f.add_fail("data=452:0.05").unwrap();
            c.faults = f;
            c.seed = 11;
        },
        Run { configure: |c| c.retry = RetryPolicy::Immediate { retries: 6 }, ..Run::default() },
    );
    let s = &report.stats;
    accounted(&report, 2000);
    assert_eq!(sink.messages_accepted, s.delivered, "delivered only with a 2xx");
    assert!(s.bounced > 40 && s.bounced < 200, "about 5% bounced: {s:?}");
    assert!(s.retries > 200, "4xx were retried: {s:?}");
    assert_eq!(s.deferred, 0, "six retries are plenty at these rates: {s:?}");
    assert_eq!(s.delivered + s.bounced, 2000);
}

#[test]
fn service_closing_and_disconnects_mid_pipeline_lose_nothing() {
    let (report, sink) = bench(
        |c| {
            let mut f = Faults::default();
            f.add_fail("mail=421:0.01").unwrap();
            f.add_disconnect("rcpt=0.01").unwrap();
            f.add_disconnect("data=0.01").unwrap();
            c.faults = f;
            c.seed = 5;
        },
        Run { configure: |c| c.retry = RetryPolicy::Immediate { retries: 8 }, ..Run::default() },
    );
    let s = &report.stats;
    accounted(&report, 2000);
    assert_eq!(s.delivered, 2000, "all eventually delivered: {s:?}");
    assert_eq!(sink.messages_accepted, 2000, "and none twice: {sink:?}");
    assert!(sink.injected_disconnects > 0 && s.connections > 4, "sessions were cut and reopened");
    assert!(s.session_errors.contains_key("421 service closing"), "{:?}", s.session_errors);
}

#[test]
fn partial_recipient_failures_retry_only_those_recipients() {
    let (report, sink) = bench(
        |c| {
            let mut f = Faults::default();
            f.add_fail("rcpt=450:0.2").unwrap();
            c.faults = f;
            c.seed = 3;
        },
        Run {
            recipients: 3,
            plan: Plan { messages: Some(500), ..Plan::default() },
            configure: |c| c.retry = RetryPolicy::Immediate { retries: 10 },
            ..Run::default()
        },
    );
    let s = &report.stats;
    accounted(&report, 500);
    assert_eq!(s.recipients.delivered, 1500, "every recipient delivered once: {s:?}");
    assert_eq!(s.recipients.deferred + s.recipients.bounced, 0);
    assert!(sink.messages_accepted > 500, "retries of deferred recipients are extra transactions");
}

#[test]
fn unreachable_target_defers_everything() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let run = Run {
        plan: Plan { messages: Some(50), ..Plan::default() },
        configure: |c| c.retry = RetryPolicy::Immediate { retries: 1 },
        ..Run::default()
    };
    let report = bench_against(port, &run);
    let s = &report.stats;
    accounted(&report, 50);
    assert_eq!((s.delivered, s.deferred), (0, 50), "{s:?}");
    assert!(s.connect_failures > 0);
    assert!(s.last_connect_error.as_deref().unwrap_or("").contains("refused"), "{s:?}");
}

/// A dead destination's jobs are deferred as they come, with the last connection's error, while
/// the engine waits to try it again: not held until the next attempt, a pool's backlog per
/// reconnect, which would take minutes for these (and hold every other destination back).
#[test]
fn a_dead_destination_defers_jobs_as_they_come_between_connection_attempts() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let run = Run {
        plan: Plan { messages: Some(20_000), ..Plan::default() },
        configure: |c| {
            c.retry = RetryPolicy::Immediate { retries: 0 };
            c.failing_after = Duration::ZERO;
            c.reconnect_backoff = Duration::from_secs(3);
            c.reconnect_backoff_max = Duration::from_secs(3);
        },
        ..Run::default()
    };
    let report = bench_against(port, &run);
    let s = &report.stats;
    accounted(&report, 20_000);
    assert_eq!((s.delivered, s.deferred), (0, 20_000), "{s:?}");
    // Held for the next attempt, each failed connection would defer at most a pool's backlog.
    let backlog = engine_config().pool_backlog as u64;
    assert!(s.connect_failures * backlog < 20_000, "more deferred than backlogs held: {s:?}");
    assert!(s.last_connect_error.as_deref().unwrap_or("").contains("refused"), "{s:?}");
}

#[test]
fn reply_timeouts_defer() {
    let (report, _sink) = bench(
        |c| {
            let mut f = Faults::default();
            f.add_delay("data=400ms").unwrap();
            c.faults = f;
        },
        Run {
            plan: Plan { messages: Some(20), ..Plan::default() },
            configure: |c| {
                c.retry = RetryPolicy::Immediate { retries: 0 };
                c.client.timeouts.end_of_data = Duration::from_millis(100);
            },
            ..Run::default()
        },
    );
    let s = &report.stats;
    accounted(&report, 20);
    assert_eq!(s.delivered, 0, "{s:?}");
    assert_eq!(s.failures.get("timeout").copied().unwrap_or(0), s.deferred, "{s:?}");
}

#[test]
fn max_messages_per_connection_reconnects() {
    let (report, sink) = bench(
        |_| {},
        Run {
            connections: 2,
            plan: Plan { messages: Some(100), ..Plan::default() },
            configure: |c| c.client.max_messages = 10,
            ..Run::default()
        },
    );
    assert_eq!(report.stats.delivered, 100);
    assert!(sink.connections >= 10, "{sink:?}");
}

#[test]
fn open_loop_holds_the_rate() {
    let rate = 2000.0;
    let started = Instant::now();
    let (report, sink) = bench(
        |_| {},
        Run {
            plan: Plan { duration: Some(Duration::from_secs(2)), rate: Some(rate), ..Plan::default() },
            ..Run::default()
        },
    );
    let elapsed = started.elapsed().as_secs_f64();
    accounted(&report, 4000);
    assert_eq!(report.stats.delivered, 4000);
    assert_eq!(sink.messages_accepted, 4000);
    // Every message was due on the schedule; the run takes the schedule's length, not less.
    assert!(elapsed >= 2.0, "{elapsed}");
    let achieved = 4000.0 / elapsed;
    assert!(achieved > rate * 0.85, "achieved {achieved:.0} msg/s for {rate}");
}

fn volley(args: &[&str]) -> std::process::Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_volley"));
    cmd.args(args);
    common::campaign::run(cmd, Duration::from_secs(120))
}

#[test]
fn cli_bench_against_own_sink_reports_json() {
    let out =
        volley(&["bench", "--messages", "3000", "--connections", "4", "--json", "--quiet", "--threads", "2"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let json = String::from_utf8(out.stdout).unwrap();
    assert!(json.contains("\"delivered\":3000"), "{json}");
    assert!(json.contains("\"messages_accepted\":3000"), "sink agrees: {json}");
}

#[test]
fn cli_bench_unreachable_target_fails_clearly() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let target = format!("127.0.0.1:{port}");
    let out = volley(&["bench", "--target", &target, "--messages", "10", "--quiet"]);
    assert_eq!(out.status.code(), Some(1), "unreachable is exit code 1, as documented (regression: was 2)");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("target unreachable") && err.contains(&target), "{err}");
}

#[test]
fn cli_bench_writes_hgrm() {
    let dir = common::temp_dir("hgrm");
    let file = dir.join("latency.hgrm");
    let out = volley(&["bench", "--messages", "500", "--quiet", "--hgrm", file.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(text.contains("Total count    =          500"), "{text}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("delivered 500"), "{stdout}");
}

/// Starts an endless closed-loop run against a sink that holds each message `delay`.
fn endless_run(addr: SocketAddr) -> engine::Running {
    let destination = Arc::new(Destination::new(0, "sink", vec![addr], 4));
    let plan = Plan { duration: Some(Duration::from_secs(60)), ..Plan::default() };
    let source = BenchSource::new(plan, Arc::clone(&destination), content(1000, 1));
    let mut config = engine_config();
    // Small queues: what is queued when the run stops must drain through a slow sink quickly.
    config.queue_capacity = 64;
    config.pool_backlog = 16;
    engine::start(config, Box::new(source)).unwrap()
}

#[test]
fn graceful_stop_sends_everything_produced() {
    let s = common::sink(|c| {
        c.threads = 2;
        let mut f = Faults::default();
        f.add_delay("data=20ms").unwrap();
        c.faults = f;
    });
    let running = endless_run(s.local_addr());
    std::thread::sleep(Duration::from_millis(300));
    running.stop_producing();
    let report = join_within(running, Duration::from_secs(30));
    let sink = s.stop().unwrap();
    let st = &report.stats;
    assert!(report.produced > 0);
    assert_eq!((st.delivered, st.deferred, st.unsent), (report.produced, 0, 0), "{st:?}");
    assert_eq!(sink.messages_accepted, report.produced);
}

#[test]
fn abort_accounts_for_every_job() {
    // Guards the invariant behind a fixed bug: a job the producer pushed after its core had
    // counted its leftovers went uncounted. (That race needs a queue with room at the core's last
    // look, so this test does not reproduce it reliably; it checks the books on every abort.)
    for _ in 0..5 {
        let s = common::sink(|c| {
            c.threads = 2;
            let mut f = Faults::default();
            f.add_delay("data=50ms").unwrap();
            c.faults = f;
        });
        let running = endless_run(s.local_addr());
        std::thread::sleep(Duration::from_millis(200));
        running.abort();
        let report = join_within(running, Duration::from_secs(10));
        accounted(&report, report.produced);
        assert!(report.stats.unsent > 0, "the queues were full when the run was cut");
        s.stop().unwrap();
    }
}

#[test]
fn connection_limits_hold_across_cores_for_every_destination() {
    // Three destinations, limits 1, 2 and 3, on two cores: each sink refuses (421) any
    // connection beyond the limit, so a single refusal would mean the limit was exceeded.
    let limits = [1usize, 2, 3];
    let sinks: Vec<_> = limits
        .iter()
        .map(|&limit| {
            common::sink(|c| {
                c.threads = 2;
                c.max_connections = Some(limit);
            })
        })
        .collect();
    let destinations: Vec<Arc<Destination>> = sinks
        .iter()
        .zip(limits)
        .enumerate()
        .map(|(index, (s, limit))| {
            Arc::new(Destination::new(index, format!("d{index}"), vec![s.local_addr()], limit))
        })
        .collect();
    let source =
        RoundRobin { destinations: destinations.clone(), content: content(1000, 1), next: 0, jobs: 3000 };
    let running = engine::start(engine_config(), Box::new(source)).unwrap();
    let report = join_within(running, Duration::from_secs(30));
    accounted(&report, 3000);
    assert_eq!(report.stats.delivered, 3000, "{:?}", report.stats);
    for (s, limit) in sinks.into_iter().zip(limits) {
        let c = s.stop().unwrap();
        assert_eq!(c.connections_refused, 0, "limit {limit} exceeded: {c:?}");
        assert_eq!(c.messages_accepted, 1000);
        assert_eq!(c.connections, limit as u64, "every allowed connection used, no more");
    }
}

/// Hands out `jobs` jobs over `destinations` in turn.
struct RoundRobin {
    destinations: Vec<Arc<Destination>>,
    content: Content,
    next: u64,
    jobs: u64,
}

impl engine::JobSource for RoundRobin {
    fn next(&mut self, now: Instant) -> engine::Next {
        if self.next == self.jobs {
            return engine::Next::Done;
        }
        self.next += 1;
        let d = &self.destinations[(self.next % self.destinations.len() as u64) as usize];
        engine::Next::Job(engine::Job {
            id: self.next,
            destination: Arc::clone(d),
            message: mailvolley::engine::Payload::Ready(self.content.next_message()),
            due: now,
            attempts: 0,
            last_conn: 0,
            partial: false,
        })
    }
}

/// Hands out one job per entry of `order`, to the destination it names.
struct Listed {
    destinations: Vec<Arc<Destination>>,
    order: Vec<usize>,
    content: Content,
    next: usize,
}

impl engine::JobSource for Listed {
    fn next(&mut self, now: Instant) -> engine::Next {
        let Some(&d) = self.order.get(self.next) else { return engine::Next::Done };
        self.next += 1;
        engine::Next::Job(engine::Job {
            id: self.next as u64,
            destination: Arc::clone(&self.destinations[d]),
            message: mailvolley::engine::Payload::Ready(self.content.next_message()),
            due: now,
            attempts: 0,
            last_conn: 0,
            partial: false,
        })
    }
}

#[test]
fn a_destination_with_one_message_gets_a_short_session_and_a_busy_one_keeps_its_own() {
    // 40 destinations of one message each on one sink, and one of 40 messages on another,
    // interleaved. Each single message goes in a session of its own that pipelines QUIT
    // behind the content: no checkpoint EHLO, so the sink says 250 four times a session
    // (EHLO, MAIL, RCPT, BDAT) and 221 once. The busy destination's messages share its one
    // allowed session.
    let singles = common::sink(|c| c.threads = 2);
    let busy = common::sink(|c| {
        c.threads = 2;
        c.max_connections = Some(1);
    });
    let mut destinations: Vec<Arc<Destination>> = (0..40)
        .map(|i| Arc::new(Destination::new(i, format!("d{i}"), vec![singles.local_addr()], 2)))
        .collect();
    destinations.push(Arc::new(Destination::new(40, "busy", vec![busy.local_addr()], 1)));
    let order = (0..40).flat_map(|i| [i, 40]).collect();
    let source = Listed { destinations, order, content: content(300, 1), next: 0 };
    let running = engine::start(engine_config(), Box::new(source)).unwrap();
    let report = join_within(running, Duration::from_secs(30));
    accounted(&report, 80);
    assert_eq!(report.stats.delivered, 80, "{:?}", report.stats);
    std::thread::sleep(Duration::from_millis(50));
    let c = singles.stop().unwrap();
    assert_eq!((c.connections, c.messages_accepted), (40, 40), "{c:?}");
    assert_eq!((c.replies[250], c.replies[221]), (160, 40), "no checkpoint EHLO: {c:?}");
    let c = busy.stop().unwrap();
    assert_eq!((c.connections, c.connections_refused, c.messages_accepted), (1, 0, 40), "{c:?}");
}

#[test]
fn many_destinations_share_a_cores_sessions_and_idle_ones_never_hold_them_all() {
    // 300 destinations at once, each allowed 2 connections, on two cores of 3 sessions each:
    // never more than 6 connections at once (the sink turns away any past 12, twice that, so
    // a connection closing late on its side is no refusal), every message delivered, and idle
    // sessions never sit on all the room until their idle timeout (5 minutes here: the run
    // would not end within the test's minute).
    let s = common::sink(|c| {
        c.threads = 2;
        c.max_connections = Some(12);
    });
    let destinations: Vec<Arc<Destination>> =
        (0..300).map(|i| Arc::new(Destination::new(i, format!("d{i}"), vec![s.local_addr()], 2))).collect();
    let source =
        RoundRobin { destinations: destinations.clone(), content: content(300, 1), next: 0, jobs: 600 };
    let mut config = engine_config();
    config.sessions_per_core = 3;
    config.client.timeouts.idle = Duration::from_secs(300);
    let running = engine::start(config, Box::new(source)).unwrap();
    let report = join_within(running, Duration::from_secs(60));
    accounted(&report, 600);
    assert_eq!(report.stats.delivered, 600, "{:?}", report.stats);
    std::thread::sleep(Duration::from_millis(50));
    let c = s.stop().unwrap();
    assert_eq!(c.connections_refused, 0, "more sessions at once than the cores allow: {c:?}");
    assert!(c.connections >= 300, "a session per destination at least: {c:?}");
}

#[test]
fn messages_over_the_size_limit_bounce_without_being_sent() {
    let (report, sink) = bench(
        |c| c.max_size = 500,
        Run { plan: Plan { messages: Some(40), ..Plan::default() }, ..Run::default() },
    );
    let s = &report.stats;
    accounted(&report, 40);
    assert_eq!((s.delivered, s.bounced), (0, 40), "{s:?}");
    assert_eq!(s.failures.get("refused locally"), Some(&40));
    assert_eq!(sink.transactions, 0, "nothing was sent");
}

#[test]
fn cli_bench_exits_1_when_nothing_is_delivered() {
    let s = common::sink(|c| {
        let mut f = Faults::default();
        f.add_fail("mail=550").unwrap();
        c.faults = f;
    });
    let target = s.local_addr().to_string();
    let out = volley(&["bench", "--target", &target, "--messages", "50", "--quiet", "--threads", "1"]);
    assert_eq!(out.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("bounced 50"), "{stdout}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("nothing was delivered"));
}

#[test]
fn a_server_refusing_every_session_does_not_hang_the_run_regression() {
    // Jobs are handed to a session only once it is ready; a server refusing every greeting
    // used to leave them pending while the slot reconnected forever.
    for stage in ["greeting=554", "ehlo=421"] {
        let (report, sink) = bench(
            |c| {
                let mut f = Faults::default();
                f.add_fail(stage).unwrap();
                c.faults = f;
            },
            Run {
                plan: Plan { messages: Some(30), ..Plan::default() },
                configure: |c| c.retry = RetryPolicy::Immediate { retries: 2 },
                ..Run::default()
            },
        );
        let s = &report.stats;
        accounted(&report, 30);
        assert_eq!((s.delivered, s.deferred), (0, 30), "{stage}: {s:?}");
        assert_eq!(sink.transactions, 0);
    }
}

#[test]
fn a_server_that_hangs_up_right_after_ehlo_does_not_hang_the_run() {
    // A scripted misbehaving server: greets, answers EHLO and, in the same packet, says 421.
    // Sessions become ready and fail before carrying a transaction.
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    listener.set_nonblocking(true).unwrap();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let server_stop = Arc::clone(&stop);
    let server = std::thread::spawn(move || {
        let mut sessions = 0;
        while !server_stop.load(std::sync::atomic::Ordering::Relaxed) && sessions < 1000 {
            let Ok((mut conn, _)) = listener.accept() else {
                std::thread::sleep(Duration::from_millis(2));
                continue;
            };
            sessions += 1;
            conn.set_nonblocking(false).unwrap();
            conn.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
            let _ = conn.write_all(b"220 flaky ESMTP\r\n");
            let mut buf = [0u8; 512];
            if matches!(conn.read(&mut buf), Ok(n) if n > 0) {
                let _ = conn.write_all(b"250 flaky\r\n421 4.3.2 going away\r\n");
            }
        }
        sessions
    });
    let run = Run {
        plan: Plan { messages: Some(20), ..Plan::default() },
        configure: |c| c.retry = RetryPolicy::Immediate { retries: 2 },
        ..Run::default()
    };
    let report = bench_against(addr, &run);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let sessions = server.join().unwrap();
    let s = &report.stats;
    accounted(&report, 20);
    assert_eq!((s.delivered, s.deferred), (0, 20), "{s:?}");
    assert!(sessions >= 3, "each attempt was a session: {sessions}");
}

#[test]
fn jobs_composed_on_the_cores_are_sent_or_end_unsendable_without_being_sent() {
    // Every third job's composition fails: its recipient must come back as an unsendable
    // outcome with the reason, and nothing of it may reach the server.
    #[derive(Debug)]
    struct Recipe {
        n: u64,
        message: mailvolley::proto::client::Message,
    }
    impl engine::Compose for Recipe {
        fn compose(
            self: Box<Self>,
            _at: std::time::SystemTime,
        ) -> Result<mailvolley::proto::client::Message, engine::Unsendable> {
            if self.n % 3 == 0 {
                let recipients = self.message.envelope.recipients.clone();
                return Err(engine::Unsendable { recipients, reason: format!("recipe {} refused", self.n) });
            }
            Ok(self.message)
        }

        fn recipients(&self) -> Vec<mailvolley::proto::Address> {
            self.message.envelope.recipients.clone()
        }
    }
    struct Source {
        destination: Arc<Destination>,
        content: Content,
        next: u64,
    }
    impl engine::JobSource for Source {
        fn next(&mut self, now: Instant) -> engine::Next {
            if self.next == 300 {
                return engine::Next::Done;
            }
            self.next += 1;
            let recipe = Recipe { n: self.next, message: self.content.next_message() };
            engine::Next::Job(engine::Job {
                id: self.next,
                destination: Arc::clone(&self.destination),
                message: engine::Payload::Compose(Box::new(recipe)),
                due: now,
                attempts: 0,
                last_conn: 0,
                partial: false,
            })
        }
    }
    let s = common::sink(|c| c.threads = 2);
    let destination = Arc::new(Destination::new(0, "sink", vec![s.local_addr()], 4));
    let source = Source { destination: Arc::clone(&destination), content: content(500, 1), next: 0 };
    let mut config = engine_config();
    config.outcomes = true;
    let running = engine::start(config, Box::new(source)).unwrap();
    let queues = running.outcomes().to_vec();
    let mut outcomes = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !running.is_finished() && Instant::now() < deadline {
        queues.iter().for_each(|q| outcomes.extend(std::iter::from_fn(|| q.pop())));
        std::thread::sleep(Duration::from_millis(1));
    }
    queues.iter().for_each(|q| outcomes.extend(std::iter::from_fn(|| q.pop())));
    let report = join_within(running, Duration::from_secs(10));
    assert_eq!(outcomes.len(), 300);
    for o in &outcomes {
        if o.id % 3 == 0 {
            assert!(o.origin == engine::Origin::Unsendable && o.via.is_none() && o.reply.is_none(), "{o:?}");
            assert_eq!(o.error.as_deref(), Some(format!("recipe {} refused", o.id).as_str()));
        } else {
            assert!(
                o.origin == engine::Origin::Attempt && o.reply.as_ref().is_some_and(|r| r.code == 250),
                "{o:?}"
            );
        }
    }
    assert_eq!((report.stats.delivered, report.stats.unsendable), (200, 100));
    assert_eq!(s.stop().unwrap().messages_accepted, 200, "nothing unsendable was sent");
}

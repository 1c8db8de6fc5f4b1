//! Delivery on serve's spool, end to end over loopback against volley's sink: what is accepted
//! is delivered, recorded once in the log and leaves the spool; a deferral keeps its schedule
//! across a restart.

mod common;

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use mailvolley::deliver::bounce::Classifier;
use mailvolley::deliver::log::LogFile;
use mailvolley::deliver::route::Routes;
use mailvolley::deliver::shaping::{Defaults, ShapingRules};
use mailvolley::engine::{EngineConfig, Limits, Schedule};
use mailvolley::proto::{Address, ClientConfig, Domain};
use mailvolley::serve::run::{self, ServeConfig, Serving};
use mailvolley::serve::spool::{self, Accepted, Admission, MessageId, Status, of_recipient_id};

fn temp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("volley-serve-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn config(sink: std::net::SocketAddr, log: LogFile, first_retry: Duration) -> ServeConfig {
    let mut engine = EngineConfig::new(ClientConfig::new(Domain::new("serve.test").unwrap()));
    engine.threads = 1;
    engine.reconnect_backoff = Duration::from_millis(10);
    let shaping =
        ShapingRules::load(&[], false, Defaults { connections: 4, limits: Limits::default() }).unwrap();
    ServeConfig {
        engine,
        routes: Routes::relay("sink", vec![sink], shaping),
        schedule: Schedule { first: first_retry, max: first_retry * 4, max_age: Duration::from_secs(3600) },
        classifier: std::sync::Arc::new(Classifier::load(&[] as &[&str]).unwrap()),
        reactions: None,
        rate: None,
        log,
        progress: false,
        dkim: None,
        min_free_space: 0,
        dsn_from: Some("serve.test".into()),
        active_recipients: 100_000,
        webhooks: None,
        status_retention: Some(Duration::from_secs(3600)),
        limits: None,
        tls_reports: None,
    }
}

/// Takes a message in as intake does: durable, then handed to delivery.
fn accept(serving: &Serving, message: Accepted) -> MessageId {
    let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
    match runtime
        .block_on(serving.intake().accept(vec![message], None, mailvolley::serve::metrics::Via::Smtp))
        .unwrap()
    {
        Admission::New(ids) => ids[0],
        Admission::Replay(_) => panic!("no key, no replay"),
    }
}

fn message(n: usize, rcpts: usize) -> Accepted {
    Accepted {
        sender: Some(Address::new("app@example.com").unwrap()),
        recipients: (0..rcpts).map(|r| Address::new(&format!("u{n}-{r}@example.net")).unwrap()).collect(),
        content: format!("From: app@example.com\r\nSubject: {n}\r\n\r\nHello {n}\r\n").into_bytes().into(),
        received_ms: SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as u64,
        origin: "test".into(),
    }
}

/// Waits until `finals` recipients have their final record.
fn wait_for_finals(serving: &Serving, finals: u64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while serving.flow().finalized.load(Ordering::Acquire) < finals {
        assert!(
            Instant::now() < deadline,
            "{} of {finals} final",
            serving.flow().finalized.load(Ordering::Acquire)
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn records(log: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(log).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

#[test]
fn accepted_messages_are_delivered_once_recorded_and_leave_the_spool() {
    let dir = temp("deliver");
    let sink = common::sink(|_| {});
    let log_path = dir.join("log.jsonl");
    let spool = spool::open(&dir.join("spool")).unwrap();
    let serving = run::start(
        config(sink.local_addr(), LogFile::create(&log_path).unwrap(), Duration::from_secs(60)),
        spool,
    )
    .unwrap();
    assert_eq!(serving.resumed(), 0);
    let ids: Vec<_> = (0..40).map(|n| accept(&serving, message(n, 2))).collect();
    wait_for_finals(&serving, 80);
    let (books, spool) = serving.stop().unwrap();
    assert_eq!(books.tally.delivered, 80);
    assert!(spool.waiting().unwrap().is_empty(), "nothing left to send");
    assert!(ids.iter().all(|id| spool.message(*id).unwrap().is_none()), "every message left the spool");
    let delivered: Vec<(u64, u32)> = records(&log_path)
        .iter()
        .filter(|r| r["status"] == "delivered")
        .map(|r| of_recipient_id(r["line"].as_u64().unwrap()))
        .map(|(m, i)| (m.0, i))
        .collect();
    let mut unique = delivered.clone();
    unique.sort();
    unique.dedup();
    assert_eq!((delivered.len(), unique.len()), (80, 80), "one final record each");
    assert_eq!(sink.stop().unwrap().messages_accepted, 80);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_deferral_keeps_its_schedule_across_a_restart() {
    let dir = temp("restart");
    // Refuses each recipient's first try (451), then takes it.
    let sink = common::sink(|c| c.greylist = true);
    let log_path = dir.join("log.jsonl");
    let spool = spool::open(&dir.join("spool")).unwrap();
    let retry_after = Duration::from_secs(3);
    let serving =
        run::start(config(sink.local_addr(), LogFile::create(&log_path).unwrap(), retry_after), spool)
            .unwrap();
    for n in 0..5 {
        accept(&serving, message(n, 1));
    }
    // Each deferred once, and the spool told (once the log commit made it durable).
    let deadline = Instant::now() + Duration::from_secs(10);
    while records(&log_path).iter().filter(|r| r["status"] == "deferred").count() < 5 {
        assert!(Instant::now() < deadline, "five deferrals");
        std::thread::sleep(Duration::from_millis(20));
    }
    let (books, spool) = serving.stop().unwrap();
    assert_eq!((books.tally.deferred, books.tally.finals()), (5, 0));
    let now_ms = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as u64;
    let waiting = spool.waiting().unwrap();
    assert_eq!(waiting.len(), 5);
    let dues: Vec<u64> = waiting
        .iter()
        .map(|r| match r.status {
            Status::Waiting { attempts: 1, due_ms } => due_ms,
            other => panic!("{other:?}"),
        })
        .collect();
    assert!(
        dues.iter().all(|&d| d > now_ms && d <= now_ms + 4_000),
        "due on the schedule: {dues:?} (now {now_ms})"
    );
    drop(spool);

    // Restarted: the recipients wait for their time, then go.
    let restarted = Instant::now();
    let spool = spool::open(&dir.join("spool")).unwrap();
    let (log, _) = LogFile::reopen(&log_path).unwrap();
    let serving = run::start(config(sink.local_addr(), log, retry_after), spool).unwrap();
    assert_eq!(serving.resumed(), 5);
    wait_for_finals(&serving, 5);
    let earliest = Duration::from_millis(dues.iter().min().unwrap().saturating_sub(now_ms));
    assert!(restarted.elapsed() + Duration::from_millis(200) >= earliest, "not before they were due");
    let (books, spool) = serving.stop().unwrap();
    assert_eq!(books.tally.delivered, 5);
    assert!(spool.waiting().unwrap().is_empty());
    let all = records(&log_path);
    assert_eq!(all.iter().filter(|r| r["status"] == "delivered").count(), 5);
    assert!(
        all.iter().filter(|r| r["status"] == "delivered").all(|r| r["attempts"] == 2),
        "the second attempt"
    );
    sink.stop().unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A recipient waiting for a retry keeps only its message's id: the retry reads the content
/// back from the spool and sends it byte for byte.
#[test]
fn a_retry_sends_the_content_read_back_from_the_spool() {
    let dir = temp("reread");
    let dump = dir.join("dump");
    std::fs::create_dir_all(&dump).unwrap();
    let sink = common::sink(|c| {
        c.greylist = true;
        c.dump = Some(dump.clone());
    });
    let log_path = dir.join("log.jsonl");
    let spool = spool::open(&dir.join("spool")).unwrap();
    let serving = run::start(
        config(sink.local_addr(), LogFile::create(&log_path).unwrap(), Duration::from_millis(300)),
        spool,
    )
    .unwrap();
    let sent: Vec<Vec<u8>> = (0..3)
        .map(|n| {
            let m = message(n, 1);
            let content = m.content.to_vec();
            accept(&serving, m);
            content
        })
        .collect();
    wait_for_finals(&serving, 3);
    let (books, _spool) = serving.stop().unwrap();
    assert_eq!((books.tally.delivered, books.tally.deferred), (3, 3), "each greylisted once, then taken");
    let mut got: Vec<Vec<u8>> = common::dumped(&dump).into_iter().map(|(_, content)| content).collect();
    got.sort();
    let mut want = sent;
    want.sort();
    assert_eq!(got, want, "the second attempt carries the spooled content");
    sink.stop().unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A stop between the log's commit and the spool's leaves a recipient waiting that the log
/// says is delivered: the next start reads the log from the spool's watermark and does not
/// send it again.
#[test]
fn a_final_the_spool_missed_is_taken_from_the_log_and_not_sent_again() {
    use mailvolley::deliver::log::{Record, Status as LogStatus};
    use mailvolley::serve::spool::recipient_id;
    let dir = temp("reconcile");
    let sink = common::sink(|_| {});
    let log_path = dir.join("log.jsonl");
    let mut spool = spool::open(&dir.join("spool")).unwrap();
    let ids = spool.accept(&[message(0, 1), message(1, 1), message(2, 1)]).unwrap();
    let mut log = LogFile::create(&log_path).unwrap();
    let delivered = Record::new(LogStatus::Delivered, recipient_id(ids[0], 0)).rcpt("u0-0@example.net");
    let deferred = Record::new(LogStatus::Deferred, recipient_id(ids[1], 0)).rcpt("u1-0@example.net");
    log.write(&delivered);
    log.write(&deferred);
    log.sync().unwrap();
    drop(log);
    let (log, _) = LogFile::reopen(&log_path).unwrap();
    let log_len = log.durable_len();
    let serving = run::start(config(sink.local_addr(), log, Duration::from_secs(60)), spool).unwrap();
    assert_eq!(serving.resumed(), 2, "the delivered one is not waiting");
    wait_for_finals(&serving, 2);
    let (books, spool) = serving.stop().unwrap();
    assert_eq!(books.tally.delivered, 2);
    assert!(spool.waiting().unwrap().is_empty() && spool.message(ids[0]).unwrap().is_none());
    assert!(spool.log_watermark().unwrap() > log_len, "up to date with the log's new records too");
    assert_eq!(sink.stop().unwrap().messages_accepted, 2, "nothing sent twice");
    let finals = records(&log_path).iter().filter(|r| r["status"] == "delivered").count();
    assert_eq!(finals, 3, "one final record each");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_bounce_is_reported_to_the_sender_and_a_report_never_is() {
    use common::scripted::{Fault, Script, Scripted};
    let dir = temp("dsn");
    let server = Scripted::start(
        Script::new(&["PIPELINING"], "250 2.0.0 Ok", Fault::None)
            .rcpt_reply("gone", "550 5.1.1 No such user")
            .rcpt_reply("nobody", "550 5.1.1 No such user"),
    );
    let log_path = dir.join("log.jsonl");
    let spool = spool::open(&dir.join("spool")).unwrap();
    let serving =
        run::start(config(server.addr, LogFile::create(&log_path).unwrap(), Duration::from_secs(60)), spool)
            .unwrap();
    let mut m = message(0, 0);
    m.recipients = vec![Address::new("ok@example.net").unwrap(), Address::new("gone@example.net").unwrap()];
    accept(&serving, m);
    // A sender that cannot take the report: the report bounces, and nobody hears of that.
    let mut unreachable = message(1, 0);
    unreachable.sender = Some(Address::new("nobody@example.com").unwrap());
    unreachable.recipients = vec![Address::new("gone@example.org").unwrap()];
    accept(&serving, unreachable);
    // ok delivered, gone bounced; gone@example.org bounced; two reports: one delivered to
    // app@example.com, one bounced by nobody@example.com.
    wait_for_finals(&serving, 5);
    std::thread::sleep(Duration::from_millis(300));
    let (books, spool) = serving.stop().unwrap();
    assert_eq!((books.tally.delivered, books.tally.bounced), (2, 3));
    assert!(spool.waiting().unwrap().is_empty());
    let all = records(&log_path);
    let reports: Vec<&serde_json::Value> =
        all.iter().filter(|r| r["status"] == "received" && r["origin"] == "dsn").collect();
    assert_eq!(reports.len(), 2, "one report per failed message, none for a report: {all:?}");
    assert!(reports.iter().all(|r| r["sender"] == ""), "from the null sender");
    let to_sender = all.iter().find(|r| r["status"] == "delivered" && r["rcpt"] == "app@example.com");
    assert!(to_sender.is_some(), "the report reached the sender: {all:?}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A dead destination with far more waiting than `active_recipients`: memory holds about that
/// many, the spool the rest; once the destination is back, each is read from the spool's
/// schedule in its turn and delivered once.
#[test]
fn only_a_bounded_number_wait_in_memory_and_the_rest_are_read_back_from_the_spool() {
    let dir = temp("parked");
    // A port nothing listens on yet: every attempt fails to connect.
    let addr = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let log_path = dir.join("log.jsonl");
    let spool = spool::open(&dir.join("spool")).unwrap();
    let limit = 40;
    let mut cfg = config(addr, LogFile::create(&log_path).unwrap(), Duration::from_millis(400));
    cfg.active_recipients = limit;
    let serving = run::start(cfg, spool).unwrap();
    let total = 400;
    for n in 0..total {
        accept(&serving, message(n, 1));
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    while records(&log_path).iter().filter(|r| r["status"] == "deferred").count() < total {
        assert!(Instant::now() < deadline, "each deferred once");
        std::thread::sleep(Duration::from_millis(20));
    }
    // Once the spool has recorded the deferrals, memory lets go of all but the limit; rounds of
    // retries go on, and memory holds the limit and what is being tried, never the 400.
    let held = || serving.flow().held.load(Ordering::Relaxed);
    while held() > limit as u64 {
        assert!(Instant::now() < deadline, "{} held in memory with a limit of {limit}", held());
        std::thread::sleep(Duration::from_millis(10));
    }
    let mut most = 0;
    for _ in 0..100 {
        most = most.max(held());
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(most <= 2 * limit as u64, "{most} held in memory with a limit of {limit}");
    // The gauge counts recipients between attempts; one whose (failing) attempt is under way
    // at the moment of a read is not, so the read waits for a moment between attempts.
    let waiting = || serving.flow().waiting.load(Ordering::Relaxed);
    while waiting() != total as u64 {
        assert!(Instant::now() < deadline, "all still waiting: {} of {total}", waiting());
        std::thread::sleep(Duration::from_millis(1));
    }
    let (books, spool) = serving.stop().unwrap();
    assert_eq!(books.tally.finals(), 0);

    // Restarted, still dead: the spool's schedule is read a window at a time.
    let (log, _) = LogFile::reopen(&log_path).unwrap();
    let mut cfg = config(addr, log, Duration::from_millis(400));
    cfg.active_recipients = limit;
    let serving = run::start(cfg, spool).unwrap();
    assert_eq!(serving.resumed(), total);
    let held = || serving.flow().held.load(Ordering::Relaxed);
    let mut most = 0;
    for _ in 0..100 {
        most = most.max(held());
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(most <= 2 * limit as u64, "{most} held after a restart with a limit of {limit}");

    // The destination comes back.
    let sink = common::sink(|c| c.listen = addr);
    wait_for_finals(&serving, total as u64);
    let (books, spool) = serving.stop().unwrap();
    assert_eq!(books.tally.delivered, total as u64);
    assert!(spool.waiting().unwrap().is_empty() && spool.reader().scheduled_count().unwrap() == 0);
    assert_eq!(sink.stop().unwrap().messages_accepted, total as u64, "each once");
    let delivered = records(&log_path).iter().filter(|r| r["status"] == "delivered").count();
    assert_eq!(delivered, total, "one final record each");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// GETs `path` from `addr` (HTTP/1.0: the server closes when done); the status line and body.
fn http_get(addr: std::net::SocketAddr, path: &str) -> (String, String) {
    use std::io::{Read as _, Write as _};
    let mut conn = std::net::TcpStream::connect(addr).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(conn, "GET {path} HTTP/1.0\r\nHost: test\r\n\r\n").unwrap();
    let mut text = String::new();
    conn.read_to_string(&mut text).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    (head.lines().next().unwrap_or("").to_owned(), body.to_owned())
}

/// The value of the series named exactly `series` (name and labels).
fn series(text: &str, series: &str) -> u64 {
    text.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok()).unwrap_or(0)
}

/// Summed over every series of metric `name` whose labels include `label`.
fn summed(text: &str, name: &str, label: &str) -> u64 {
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) && l.contains(label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

/// A run with deliveries, bounces (and the reports they make) and deferrals: the metrics,
/// scraped over HTTP, say what the delivery log says.
#[test]
fn metrics_scraped_over_http_match_the_log_after_a_run_with_faults() {
    use common::scripted::{Fault, Script, Scripted};
    let dir = temp("metrics");
    let server = Scripted::start(
        Script::new(&["PIPELINING"], "250 2.0.0 Ok", Fault::None)
            .rcpt_reply("gone", "550 5.1.1 No such user")
            .rcpt_reply("later", "451 4.7.1 Try again later"),
    );
    let log_path = dir.join("log.jsonl");
    let spool = spool::open(&dir.join("spool")).unwrap();
    let serving =
        run::start(config(server.addr, LogFile::create(&log_path).unwrap(), Duration::from_secs(60)), spool)
            .unwrap();
    let metrics = std::sync::Arc::new(serving.metrics());
    let listener = mailvolley::metrics::http::start("127.0.0.1:0".parse().unwrap(), metrics).unwrap();
    let mut recipients = Vec::new();
    for n in 0..12 {
        recipients.push(format!("u{n}@example.net"));
    }
    recipients.extend(
        ["gone1@example.net", "gone2@example.org", "later1@example.net", "later2@example.org"]
            .map(String::from),
    );
    for (n, rcpt) in recipients.iter().enumerate() {
        let mut m = message(n, 0);
        m.recipients = vec![Address::new(rcpt).unwrap()];
        accept(&serving, m);
    }
    // 12 delivered, 2 bounced, 2 reports of them delivered to app@example.com; 2 deferred.
    wait_for_finals(&serving, 16);
    let deadline = Instant::now() + Duration::from_secs(10);
    let (status, text) = loop {
        let (status, text) = http_get(listener.local_addr(), "/metrics");
        let deferred = summed(&text, "volley_recipients_total", r#"outcome="deferred""#);
        let delivered = summed(&text, "volley_recipients_total", r#"outcome="delivered""#);
        // The cores publish their counters every 250 ms.
        let engine = series(&text, r#"volley_engine_messages_total{outcome="delivered"}"#);
        if ((deferred, delivered) == (2, 14) && engine >= 14) || Instant::now() > deadline {
            break (status, text);
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.contains("200"), "{status}");
    let log = records(&log_path);
    let count = |status: &str| log.iter().filter(|r| r["status"] == status).count() as u64;
    for outcome in ["delivered", "deferred", "bounced", "expired", "uncertain"] {
        let label = format!(r#"outcome="{outcome}""#);
        assert_eq!(summed(&text, "volley_recipients_total", &label), count(outcome), "{outcome}: {text}");
    }
    assert_eq!(count("delivered"), 14);
    let mut categories = std::collections::BTreeMap::<(String, String), u64>::new();
    for r in log.iter().filter(|r| r["category"].is_string()) {
        *categories
            .entry((r["category"].as_str().unwrap().into(), r["status"].as_str().unwrap().into()))
            .or_default() += 1;
    }
    assert!(!categories.is_empty());
    for ((category, status), n) in &categories {
        let name = format!(r#"volley_failures_total{{category="{category}",outcome="{status}"}}"#);
        assert_eq!(series(&text, &name), *n, "{name}: {text}");
    }
    // Finals with a queue time, all of them.
    let finals = ["delivered", "bounced", "expired", "uncertain"].iter().map(|s| count(s)).sum::<u64>();
    assert_eq!(series(&text, "volley_delivery_duration_seconds_count"), finals, "{text}");
    assert_eq!(series(&text, "volley_received_messages_total"), count("received"));
    // Intake: 16 over "SMTP" (as the test hands them in), the 2 reports are the service's own.
    assert_eq!(series(&text, r#"volley_intake_messages_total{intake="smtp"}"#), 16, "{text}");
    assert_eq!(series(&text, r#"volley_injection_duration_seconds_count{intake="smtp"}"#), 16);
    assert_eq!(series(&text, "volley_spool_recipients"), 2, "the deferred two wait: {text}");
    assert_eq!(series(&text, "volley_scheduled_recipients"), 2, "{text}");
    assert!(series(&text, "volley_spool_bytes") > 0);
    assert!(series(&text, "volley_connections_opened_total") >= 1, "{text}");
    assert!(text.ends_with("# EOF\n"));
    let (status, _) = http_get(listener.local_addr(), "/nothing");
    assert!(status.contains("404"), "{status}");
    listener.stop().unwrap();
    serving.stop().unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Queue control in MX routing, where DEST names an MX host: every domain it serves is held,
/// others go; after a restart (no route known yet) a resume finds the held recipients by
/// resolving their domains, and they are delivered.
#[test]
fn a_suspended_mx_host_holds_every_domain_it_serves_until_resumed_after_a_restart() {
    use mailvolley::deliver::dns::{DnsConfig, Resolver};
    use mailvolley::deliver::hold::Selector;
    use mailvolley::serve::queue::Command;
    use mailvolley::testkit::dns::{DnsStub, Zone};

    let dir = temp("queue-mx");
    let sink = common::sink(|_| {});
    let zone: Zone = "a.test MX 10 mx.big.test\nb.test MX 10 mx.big.test\nc.test MX 10 mx.other.test\n\
                      mx.big.test A 127.0.0.1\nmx.other.test A 127.0.0.1"
        .parse()
        .unwrap();
    let dns = DnsStub::start("127.0.0.1:0".parse().unwrap(), zone).unwrap();
    let mx_config = |log: LogFile| {
        let mut c = config(sink.local_addr(), log, Duration::from_secs(60));
        let shaping =
            ShapingRules::load(&[], false, Defaults { connections: 4, limits: Limits::default() }).unwrap();
        let dns_config = DnsConfig {
            server: Some(dns.addr()),
            timeout: Duration::from_secs(2),
            attempts: 1,
            concurrency: 16,
            mta_sts: None,
            dane: None,
        };
        let resolver = Resolver::start(dns_config).unwrap();
        c.routes = Routes::mx(resolver, sink.local_addr().port(), shaping);
        c
    };
    let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
    let order = |serving: &Serving, command| runtime.block_on(serving.queue().order(command)).unwrap();
    let to = |rcpt: &str| Accepted { recipients: vec![Address::new(rcpt).unwrap()], ..message(0, 0) };
    let log_path = dir.join("log.jsonl");
    let serving =
        run::start(mx_config(LogFile::create(&log_path).unwrap()), spool::open(&dir.join("spool")).unwrap())
            .unwrap();
    let host = Selector::parse("MX.Big.Test").unwrap();
    order(&serving, Command::Suspend(host.clone(), None));
    for rcpt in ["ann@a.test", "bob@b.test", "cat@c.test"] {
        accept(&serving, to(rcpt));
    }
    wait_for_finals(&serving, 1);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(serving.flow().finalized.load(Ordering::Acquire), 1, "only c.test's went");
    let routes = order(&serving, Command::Routes);
    let show = serving.queue().summary(&routes, Some(&host), usize::MAX).unwrap();
    assert_eq!(show["waiting"], 2, "{show}");
    assert_eq!(show["destinations"][0]["destination"], "mx.big.test", "{show}");
    assert_eq!(show["destinations"][0]["domains"], serde_json::json!({"a.test": 1, "b.test": 1}));
    let (_, spool) = serving.stop().unwrap();
    drop(spool);

    // Started again: the suspension holds; the resume's sweep resolves a.test and b.test.
    let (log, _) = LogFile::reopen(&log_path).unwrap();
    let serving = run::start(mx_config(log), spool::open(&dir.join("spool")).unwrap()).unwrap();
    assert_eq!(serving.resumed(), 2);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(serving.flow().finalized.load(Ordering::Acquire), 0, "still held");
    let resumed = order(&serving, Command::Resume(host));
    assert_eq!(resumed["recipients"], 2, "{resumed}");
    wait_for_finals(&serving, 2);
    let (books, spool) = serving.stop().unwrap();
    assert_eq!(books.tally.delivered, 2);
    assert!(spool.waiting().unwrap().is_empty());
    let delivered: Vec<String> = records(&log_path)
        .iter()
        .filter(|r| r["status"] == "delivered")
        .map(|r| r["rcpt"].as_str().unwrap().to_owned())
        .collect();
    let mut after = delivered[1..].to_vec();
    after.sort();
    assert_eq!(
        (delivered[0].as_str(), after),
        ("cat@c.test", vec!["ann@a.test".to_owned(), "bob@b.test".to_owned()])
    );
    assert_eq!(sink.stop().unwrap().messages_accepted, 3);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A stop between the log's commit and the spool's: the webhooks' events are caught up from
/// the log at the next start, each record once (by its offset), however often that happens.
#[test]
fn webhook_events_the_spool_missed_are_queued_from_the_log() {
    use mailvolley::deliver::log::{Record, Status as LogStatus};
    use mailvolley::serve::webhook::{Webhook, WebhookUrl};
    use std::sync::Arc;
    let dir = temp("reconcile-events");
    let log_path = dir.join("log.jsonl");
    let mut spool = spool::open(&dir.join("spool")).unwrap();
    let mut log = LogFile::create(&log_path).unwrap();
    log.write(&Record::new(LogStatus::Delivered, 1 << 16).rcpt("a@example.net"));
    log.write(&Record::new(LogStatus::Bounced, 2 << 16).rcpt("b@example.net"));
    log.sync().unwrap();
    drop(log);
    let (log, _) = LogFile::reopen(&log_path).unwrap();
    let hook = Arc::new(Webhook::new(WebhookUrl::parse("http://127.0.0.1:9/hook").unwrap()));
    assert_eq!(run::reconcile(&mut *spool, &log, &[Arc::clone(&hook)], true).unwrap(), 2);
    let events = spool.reader().events(hook.id, None, 10).unwrap();
    let text = std::fs::read(&log_path).unwrap();
    let second = text.iter().position(|&b| b == b'\n').unwrap() as u64 + 1;
    assert_eq!(events.iter().map(|(o, _)| *o).collect::<Vec<_>>(), [0, second], "ids are offsets");
    assert!(events[1].1.starts_with(b"{") && String::from_utf8_lossy(&events[1].1).contains("b@example.net"));
    // The status index too: where each recipient's record is.
    let statuses = spool.reader().statuses(MessageId(2)).unwrap().expect("indexed");
    assert_eq!((statuses.received, statuses.recipients), (None, vec![(0, second)]));
    // The spool's watermark taken back (its batch lost): the same events, not new ones.
    spool.record(&[], &mailvolley::serve::spool::FromLog::default(), Some(0)).unwrap();
    run::reconcile(&mut *spool, &log, &[Arc::clone(&hook)], true).unwrap();
    assert_eq!(spool.reader().event_count(hook.id).unwrap(), 2);
    assert_eq!(spool.reader().events(hook.id, Some(0), 10).unwrap().len(), 1, "after an offset");
    spool.forget_events(hook.id, &[0]).unwrap();
    assert_eq!(spool.keep_events_of(&[hook.id]).unwrap(), 0);
    assert_eq!(spool.reader().event_count(hook.id).unwrap(), 1);
    assert_eq!(spool.keep_events_of(&[]).unwrap(), 1, "a webhook no longer given");
    assert_eq!(spool.forget_statuses(0).unwrap(), 2, "messages no longer in the spool");
    assert!(spool.reader().statuses(MessageId(1)).unwrap().is_none());
    drop(spool);
    std::fs::remove_dir_all(&dir).unwrap();
}

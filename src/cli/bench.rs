//! `volley bench`.

use std::io::Write as _;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clap::Args;

use mailvolley::bench::{self, BenchSource, Plan};
use mailvolley::engine::{self, Destination, EngineConfig};
use mailvolley::proto::{ClientConfig, Domain, Timeouts};
use mailvolley::rt::{self, Driver};
use mailvolley::sink::{self, SinkConfig};

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Server to load, HOST:PORT. Without it, volley starts its own sink on a loopback port.
    #[arg(long)]
    target: Option<String>,
    /// Messages to send [default: run for --duration].
    #[arg(long)]
    messages: Option<u64>,
    /// How long to send [default: 10s, unless --messages is given].
    #[arg(long, value_parser = super::duration)]
    duration: Option<Duration>,
    /// Connections to the target, across all threads.
    #[arg(long, default_value_t = 16)]
    connections: usize,
    /// Message size in octets, headers included.
    #[arg(long, default_value_t = 1000)]
    size: usize,
    /// Recipients per message.
    #[arg(long, default_value_t = 1)]
    recipients: usize,
    /// Open loop: messages per second on a fixed schedule; latency counts from the schedule.
    #[arg(long)]
    rate: Option<f64>,
    /// Transactions in flight per connection when the server offers CHUNKING (max 256).
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u16).range(1..=256))]
    pipeline_depth: u16,
    /// Engine threads, one runtime each, pinned to cores [default: all cores].
    #[arg(long)]
    threads: Option<usize>,
    /// I/O driver.
    #[arg(long, value_enum, default_value_t = Driver::Auto)]
    driver: Driver,
    /// Threads of the built-in sink (when no --target) [default: all cores].
    #[arg(long)]
    sink_threads: Option<usize>,
    /// Close a connection after this many messages and open a new one.
    #[arg(long)]
    max_messages_per_connection: Option<u64>,
    /// Further attempts for deferred messages (on another connection where possible).
    #[arg(long, default_value_t = 3)]
    retries: u32,
    /// Do not use PIPELINING even when offered.
    #[arg(long)]
    no_pipelining: bool,
    /// Do not use CHUNKING (BDAT) even when offered.
    #[arg(long)]
    no_chunking: bool,
    #[command(flatten)]
    timeouts: TimeoutArgs,
    /// Name sent in EHLO.
    #[arg(long, default_value = "volley.invalid")]
    helo: String,
    /// Print the report as JSON on stdout.
    #[arg(long)]
    json: bool,
    /// Write the message latency histogram in HdrHistogram percentile format to FILE.
    #[arg(long, value_name = "FILE")]
    hgrm: Option<PathBuf>,
    /// No live progress on stderr.
    #[arg(long)]
    quiet: bool,
}

/// Per-phase limits. `--reply-timeout` sets every reply phase; the others override one.
#[derive(Debug, Args)]
pub struct TimeoutArgs {
    /// Waiting for a TCP connection.
    #[arg(long, value_parser = super::duration, default_value = "10s")]
    connect_timeout: Duration,
    /// Waiting for any reply, unless a phase below says otherwise.
    #[arg(long, value_parser = super::duration, default_value = "30s")]
    reply_timeout: Duration,
    /// Waiting for the greeting [default: --reply-timeout].
    #[arg(long, value_parser = super::duration)]
    greeting_timeout: Option<Duration>,
    /// Waiting for the reply to EHLO or HELO [default: --reply-timeout].
    #[arg(long, value_parser = super::duration)]
    ehlo_timeout: Option<Duration>,
    /// Waiting for the reply to MAIL FROM [default: --reply-timeout].
    #[arg(long, value_parser = super::duration)]
    mail_timeout: Option<Duration>,
    /// Waiting for the reply to RCPT TO [default: --reply-timeout].
    #[arg(long, value_parser = super::duration)]
    rcpt_timeout: Option<Duration>,
    /// Waiting for the reply to DATA (354) [default: --reply-timeout].
    #[arg(long, value_parser = super::duration)]
    data_timeout: Option<Duration>,
    /// Waiting for the reply to the end of data or BDAT LAST [default: --reply-timeout].
    #[arg(long, value_parser = super::duration)]
    eod_timeout: Option<Duration>,
    /// Quit connections idle this long.
    #[arg(long, value_parser = super::duration, default_value = "30s")]
    idle_timeout: Duration,
}

impl TimeoutArgs {
    fn timeouts(&self) -> Timeouts {
        let mut t = Timeouts::uniform(self.reply_timeout, self.idle_timeout);
        let set = |slot: &mut Duration, v: Option<Duration>| {
            if let Some(v) = v {
                *slot = v;
            }
        };
        set(&mut t.greeting, self.greeting_timeout);
        set(&mut t.ehlo, self.ehlo_timeout);
        set(&mut t.mail, self.mail_timeout);
        set(&mut t.rcpt, self.rcpt_timeout);
        set(&mut t.data, self.data_timeout);
        set(&mut t.end_of_data, self.eod_timeout);
        t
    }
}

/// After sending stops (a --duration run, or a first Ctrl-C), how long messages in flight get
/// to finish before they are abandoned (and counted deferred).
const GRACE: Duration = Duration::from_secs(10);

pub fn run(args: BenchArgs) -> anyhow::Result<ExitCode> {
    if args.rate.is_some_and(|r| !(r > 0.0 && r.is_finite())) {
        bail!("--rate must be a positive number of messages per second");
    }
    if args.connections == 0 {
        bail!("--connections must be at least 1");
    }
    if args.size < 200 {
        bail!("--size must be at least 200 octets (the message headers)");
    }
    let duration = match (args.messages, args.duration) {
        (None, None) => Some(Duration::from_secs(10)),
        (_, d) => d,
    };
    let threads = args.threads.unwrap_or_else(rt::default_threads).max(1);
    let interrupts = super::interrupts()?;

    // The target: given, or our own sink on an ephemeral loopback port.
    let own_sink = match &args.target {
        Some(_) => None,
        None => Some(
            sink::start(SinkConfig {
                listen: SocketAddr::from(([127, 0, 0, 1], 0)),
                threads: args.sink_threads.unwrap_or_else(rt::default_threads).max(1),
                driver: args.driver,
                ..SinkConfig::default()
            })
            .context("starting the built-in sink")?,
        ),
    };
    let addrs: Vec<SocketAddr> = match (&args.target, &own_sink) {
        (Some(t), _) => t.to_socket_addrs().with_context(|| format!("resolving --target {t}"))?.collect(),
        (None, Some(s)) => vec![s.local_addr()],
        (None, None) => unreachable!("a sink is started when there is no target"),
    };
    let target_name = args.target.clone().unwrap_or_else(|| format!("volley sink on {}", addrs[0]));
    probe(&addrs, args.timeouts.connect_timeout)?;

    let mut client = ClientConfig::new(Domain::new(&args.helo).context("--helo")?);
    client.depth = usize::from(args.pipeline_depth);
    client.max_messages = args.max_messages_per_connection.unwrap_or(u64::MAX);
    client.pipelining = !args.no_pipelining;
    client.chunking = !args.no_chunking;
    client.timeouts = args.timeouts.timeouts();
    let mut config = EngineConfig::new(client);
    config.threads = threads;
    config.driver = args.driver;
    config.connect_timeout = args.timeouts.connect_timeout;
    config.retries = args.retries;

    let destination = Arc::new(Destination::new(0, target_name.clone(), addrs, args.connections));
    let plan = Plan { messages: args.messages, duration, rate: args.rate };
    let message = bench::message(args.size, args.recipients);
    let source = BenchSource::new(plan, Arc::clone(&destination), message);
    if !args.quiet {
        let mode = args.rate.map_or("closed loop".to_owned(), |r| format!("open loop at {r} msg/s"));
        eprintln!(
            "volley bench: {target_name}, {} connections, {} threads ({}), {} octets, {mode}",
            args.connections,
            threads,
            args.driver.name(),
            args.size
        );
    }
    let running =
        engine::start(config, vec![destination], Box::new(source)).context("starting the engine")?;

    let mut last = running.snapshot();
    let mut next_tick = Instant::now() + Duration::from_secs(1);
    let mut producer_done_at: Option<Instant> = None;
    while !running.is_finished() {
        std::thread::sleep(Duration::from_millis(20));
        // First Ctrl-C: stop sending, let what is in flight finish. Second: stop now.
        match interrupts.load(Ordering::Relaxed) {
            0 => {}
            1 => running.stop_producing(),
            _ => running.abort(),
        }
        if running.producer_done() {
            let since = *producer_done_at.get_or_insert_with(Instant::now);
            let interrupted = interrupts.load(Ordering::Relaxed) > 0;
            if (duration.is_some() || interrupted) && since.elapsed() > GRACE {
                running.abort();
            }
        }
        if !args.quiet && Instant::now() >= next_tick {
            let now = running.snapshot();
            progress_line(&last, &now);
            last = now;
            next_tick += Duration::from_secs(1);
        }
    }
    let report = running.join()?;
    let sink_counters = own_sink.map(|s| s.stop()).transpose().context("stopping the built-in sink")?;

    if let Some(path) = &args.hgrm {
        std::fs::write(path, bench::hgrm(bench::latency(&report)))
            .with_context(|| format!("--hgrm {}", path.display()))?;
    }
    if args.json {
        let sink_json = sink_counters.as_ref().map(|c| c.json(report.elapsed.as_secs_f64()));
        println!("{}", bench::json(&report, args.size, &target_name, sink_json));
    } else {
        print!("{}", bench::text(&report, &target_name));
        if let Some(c) = &sink_counters {
            println!("sink        accepted {} messages, {} connections", c.messages_accepted, c.connections);
        }
    }
    let _ = std::io::stdout().flush();
    if let Some(c) = &sink_counters {
        // Equal unless the run was cut short while the sink was accepting messages whose replies
        // the client then abandoned (they count as deferred: the client never saw the 250).
        if c.messages_accepted != report.stats.delivered {
            eprintln!(
                "volley bench: the built-in sink accepted {} messages, {} were confirmed delivered",
                c.messages_accepted, report.stats.delivered
            );
        }
    }
    if report.stats.delivered == 0 {
        eprintln!("volley bench: nothing was delivered");
        if let Some(e) = &report.stats.last_connect_error {
            eprintln!("volley bench: {e}");
        }
        return Ok(ExitCode::from(1));
    }
    Ok(ExitCode::SUCCESS)
}

/// Fails fast, with the reason, when the target does not accept connections at all.
fn probe(addrs: &[SocketAddr], timeout: Duration) -> anyhow::Result<()> {
    let mut last = None;
    for addr in addrs {
        match std::net::TcpStream::connect_timeout(addr, timeout) {
            Ok(_) => return Ok(()),
            Err(e) => last = Some(format!("{addr}: {e}")),
        }
    }
    bail!("target unreachable: {}", last.unwrap_or_else(|| "no address".into()))
}

fn progress_line(last: &engine::Snapshot, now: &engine::Snapshot) {
    let secs = (now.elapsed - last.elapsed).as_secs_f64().max(1e-9);
    let rate = (now.delivered - last.delivered) as f64 / secs;
    eprintln!(
        "[{:>4.0}s] {:>9.0} msg/s  delivered {:>10}  deferred {:>7}  bounced {:>7}  in flight {:>5}  p99 {:>8.3} ms  connect errors {}",
        now.elapsed.as_secs_f64(),
        rate,
        now.delivered,
        now.deferred,
        now.bounced,
        now.in_flight,
        now.p99_micros as f64 / 1000.0,
        now.connect_failures
    );
}

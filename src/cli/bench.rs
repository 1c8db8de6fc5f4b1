//! `volley bench`.

use std::io::Write as _;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::num::{NonZeroU64, NonZeroUsize};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clap::Args;

use mailvolley::bench::{self, BenchSource, BodySpec, Content, Plan, Recipients, Sizes};
use mailvolley::engine::{self, Destination, EngineConfig, RetryPolicy};
use mailvolley::metrics::{EngineCollector, Metrics};
use mailvolley::plot;
use mailvolley::proto::Address;
use mailvolley::proto::client::Credentials;
use mailvolley::sink::auth::Users;
use mailvolley::tls::{ClientTls, ServerTls};

use super::connection::ConnectionArgs;
use super::metrics::MetricsArgs;
use super::secure::{AuthArgs, TlsArgs};
use mailvolley::rt::{self, Driver};
use mailvolley::sink::{self, SinkConfig};

/// Exit codes of `volley bench` (also in `--help` and the README).
pub const EXIT_DOC: &str = "Exit codes: 0 at least one message delivered and no protocol violation; \
1 the target is unreachable or nothing was delivered; 2 usage error or failure to start; \
3 protocol violation: the server was out of step with the commands (see the report).";

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Server to load: HOST[:PORT] (port 25 when left out). Without it, volley starts its own
    /// sink on a loopback port.
    #[arg(long)]
    target: Option<String>,
    /// Messages to send [default: run for --duration].
    #[arg(long)]
    messages: Option<NonZeroU64>,
    /// How long to send [default: 10s, unless --messages is given].
    #[arg(long, value_parser = super::duration)]
    duration: Option<Duration>,
    /// Connections to the target, across all threads.
    #[arg(long, default_value = "16")]
    connections: NonZeroUsize,
    /// Message size in octets, headers included: N, or a range MIN..MAX drawn uniformly
    /// (k = 1000, m = 1000000; e.g. 1k..100k).
    #[arg(long, default_value = "1000", value_parser = parse_sizes, conflicts_with = "message")]
    size: Sizes,
    /// Send this RFC 5322 message (headers and body) instead of a generated one; each copy gets
    /// its own Message-ID and Date.
    #[arg(long, value_name = "FILE")]
    message: Option<PathBuf>,
    /// Envelope sender (and From of the generated message).
    #[arg(long, default_value = "bench@volley.invalid")]
    from: String,
    /// Recipients: an address, a pattern such as 'user{1..1000}@example.test' (cycled), or a
    /// file with one address per line [default: rcpt0@sink.invalid, rcpt1@... one per
    /// --recipients].
    #[arg(long, value_name = "ADDRESS|PATTERN|FILE")]
    to: Option<String>,
    /// Recipients per message, taken in turn from --to.
    #[arg(long, default_value = "1")]
    recipients: NonZeroUsize,
    /// Send one identical message every time: no per-message Message-ID and Date.
    #[arg(long)]
    same_content: bool,
    /// Open loop: messages per second on a fixed schedule; latency counts from the schedule.
    #[arg(long)]
    rate: Option<f64>,
    /// Grow linearly to full load over this long: the rate in an open loop, the connections in
    /// a closed one.
    #[arg(long, value_parser = super::duration)]
    ramp_up: Option<Duration>,
    /// Leave messages due in the first D out of the latency figures and the rate (they are still
    /// sent and counted).
    #[arg(long, value_parser = super::duration, default_value = "0s")]
    warmup: Duration,
    /// Transactions in flight per connection when the server offers CHUNKING (max 256).
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u16).range(1..=256))]
    pipeline_depth: u16,
    /// With CHUNKING, after this many transactions the session proves it is in step with the
    /// server (a second EHLO) before counting their outcomes.
    #[arg(long, default_value = "256")]
    checkpoint_every: NonZeroUsize,
    /// Engine threads, one runtime each, pinned to cores [default: all cores].
    #[arg(long)]
    threads: Option<NonZeroUsize>,
    /// I/O driver.
    #[arg(long, value_enum, default_value_t = Driver::Auto)]
    driver: Driver,
    /// Threads of the built-in sink (when no --target) [default: all cores].
    #[arg(long)]
    sink_threads: Option<NonZeroUsize>,
    /// Close a connection after this many messages and open a new one.
    #[arg(long)]
    max_messages_per_connection: Option<NonZeroU64>,
    /// Further attempts for deferred messages (on another connection where possible).
    #[arg(long, default_value_t = 3)]
    retries: u32,
    #[command(flatten)]
    connection: ConnectionArgs,
    #[command(flatten)]
    tls: TlsArgs,
    #[command(flatten)]
    auth: AuthArgs,
    /// Name sent in EHLO.
    #[arg(long, default_value = "volley.invalid")]
    helo: String,
    /// Print the report as JSON on stdout.
    #[arg(long)]
    json: bool,
    /// Write the message latency histogram in HdrHistogram percentile format to FILE.
    #[arg(long, value_name = "FILE")]
    hgrm: Option<PathBuf>,
    /// Draw the run as an SVG picture: latency percentile curves per phase, and msg/s and
    /// p99 over time (`volley plot` draws one later, from `--json` or `--hgrm`).
    #[arg(long, value_name = "FILE.svg")]
    plot: Option<PathBuf>,
    /// No live progress on stderr.
    #[arg(long)]
    quiet: bool,
    #[command(flatten)]
    metrics: MetricsArgs,
    /// Save the run (counters and every phase's histogram, V2-serialized) to FILE, for
    /// `volley report merge` with runs made elsewhere at the same time.
    #[arg(long, value_name = "FILE.json")]
    save: Option<PathBuf>,
    /// Run as one of --nodes generators of one load test: they start together, each sends its
    /// share of --messages (or runs for --duration), and the last to finish prints the merged
    /// report (`volley status URL` prints it too). Use a new RUN name for each test.
    #[arg(long, value_name = "redis://HOST:PORT/RUN", value_parser = super::parse_queue_url, requires = "nodes")]
    queue: Option<mailvolley::cluster::QueueUrl>,
    /// How many generators take part (with --queue).
    #[arg(long, requires = "queue")]
    nodes: Option<NonZeroUsize>,
    /// This generator's name among them [default: the host name].
    #[arg(long, value_name = "NAME", requires = "queue", value_parser = super::parse_node_name)]
    node: Option<String>,
    /// The Redis password, from a file.
    #[arg(long, value_name = "FILE", requires = "queue")]
    redis_password_file: Option<PathBuf>,
}

/// How long generators wait for each other to join a distributed run.
const JOIN_WAIT: Duration = Duration::from_secs(120);

/// After sending stops (a --duration run, or a first Ctrl-C), how long messages in flight get
/// to finish before they are abandoned (and counted deferred).
const GRACE: Duration = Duration::from_secs(10);

fn parse_sizes(s: &str) -> Result<Sizes, String> {
    let sizes = Sizes::parse(s).map_err(|e| e.to_string())?;
    if sizes.min < bench::content::MIN_SIZE {
        return Err(format!("messages are at least {} octets (the headers)", bench::content::MIN_SIZE));
    }
    Ok(sizes)
}

/// `host:port`, `host` (port 25), `[v6]:port`, `[v6]` or a bare IPv6 address.
pub(super) fn resolve_target(target: &str) -> anyhow::Result<Vec<SocketAddr>> {
    if let Ok(ip) = target.trim_matches(['[', ']']).parse::<IpAddr>() {
        return Ok(vec![SocketAddr::new(ip, 25)]);
    }
    let with_port = match target.rsplit_once(':') {
        Some((_, port)) if !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) => target.to_owned(),
        _ => format!("{target}:25"),
    };
    let addrs: Vec<SocketAddr> =
        with_port.to_socket_addrs().with_context(|| format!("resolving --target {target}"))?.collect();
    if addrs.is_empty() {
        bail!("--target {target} has no addresses");
    }
    Ok(addrs)
}

fn content(args: &BenchArgs) -> anyhow::Result<Content> {
    let mut spec = bench::default_content(args.size.min, args.recipients.get());
    spec.sender = Some(Address::new(&args.from).with_context(|| format!("--from {}", args.from))?);
    spec.body = match &args.message {
        Some(path) => {
            BodySpec::File(std::fs::read(path).with_context(|| format!("--message {}", path.display()))?)
        }
        None => BodySpec::Generated(args.size),
    };
    spec.unique = !args.same_content;
    if let Some(to) = &args.to {
        let looks_like_address = to.contains('@') && !std::path::Path::new(to).is_file();
        spec.recipients = if to.contains('{') || looks_like_address {
            Recipients::parse(to).with_context(|| format!("--to {to}"))?
        } else {
            let text = std::fs::read_to_string(to)
                .with_context(|| format!("--to {to}: reading the address file"))?;
            Recipients::from_lines(&text).with_context(|| format!("--to {to}"))?
        };
    }
    Content::new(spec).context("building the message")
}

pub fn run(args: BenchArgs) -> anyhow::Result<ExitCode> {
    if args.rate.is_some_and(|r| !(r > 0.0 && r.is_finite())) {
        bail!("--rate must be a positive number of messages per second");
    }
    if args.duration.is_some_and(|d| d.is_zero()) {
        bail!("--duration must be more than zero");
    }
    let duration = match (args.messages, args.duration) {
        (None, None) => Some(Duration::from_secs(10)),
        (_, d) => d,
    };
    let content = content(&args)?;
    let threads = args.threads.map_or_else(rt::default_threads, NonZeroUsize::get);
    let tls = args.tls.client_tls()?;
    let credentials = args.auth.credentials()?;
    let interrupts = super::interrupts()?;

    // The target: given, or our own sink on an ephemeral loopback port, speaking TLS and AUTH
    // when asked to (with a self-signed certificate, and the credentials given).
    let own_sink = match &args.target {
        Some(_) => None,
        None => Some(built_in_sink(&args, tls.as_ref(), credentials.as_deref())?),
    };
    let addrs: Vec<SocketAddr> = match (&args.target, &own_sink) {
        (Some(t), _) => resolve_target(t)?,
        (None, Some(s)) => vec![s.tls_addr().unwrap_or(s.local_addr())],
        (None, None) => unreachable!("a sink is started when there is no target"),
    };
    let target_name = args.target.clone().unwrap_or_else(|| format!("volley sink on {}", addrs[0]));
    if let Err(e) = probe(&addrs, args.connection.timeouts.connect_timeout, args.connection.source_addr) {
        eprintln!("volley bench: target unreachable: {e}");
        return Ok(ExitCode::from(1));
    }

    let mut client = args.connection.client(&args.helo)?;
    client.depth = usize::from(args.pipeline_depth);
    client.max_messages = args.max_messages_per_connection.map_or(u64::MAX, NonZeroU64::get);
    client.sync_every = args.checkpoint_every.get();
    client.auth = credentials;
    let mut config = EngineConfig::new(client);
    args.connection.apply(&mut config);
    config.threads = threads;
    config.driver = args.driver;
    config.retry = RetryPolicy::Immediate { retries: args.retries };
    config.warmup = args.warmup;
    // An open loop ramps its rate; a closed one its connections.
    config.ramp_up = args.ramp_up.filter(|_| args.rate.is_none());
    let tls_name = match &args.target {
        Some(t) if tls.is_some() => Some(ClientTls::server_name(target_host(t))?),
        _ => None,
    };
    config.tls = tls;

    let mut destination = Destination::new(0, target_name.clone(), addrs, args.connections.get());
    if let Some(name) = tls_name {
        destination = destination.with_tls_name(name);
    }
    let destination = Arc::new(destination);
    let node = args.node.clone().unwrap_or_else(mailvolley::cluster::default_node_name);
    let shared = match (&args.queue, args.nodes) {
        (Some(url), Some(nodes)) => {
            let server = super::redis_server(url, args.redis_password_file.as_deref())?;
            if !args.quiet {
                eprintln!(
                    "volley bench: node {node}: waiting for {nodes} generators to join {}",
                    url.campaign
                );
            }
            let share = mailvolley::cluster::bench::barrier(&server, &node, nodes.get(), JOIN_WAIT)?;
            Some((server, share))
        }
        _ => None,
    };
    let messages = match (&shared, args.messages) {
        (Some((_, share)), Some(total)) => Some(share.of_messages(total.get())),
        (_, messages) => messages.map(NonZeroU64::get),
    };
    let plan = Plan { messages, duration, rate: args.rate, ramp_up: args.ramp_up };
    let sizes = content.sizes();
    let source = BenchSource::new(plan, Arc::clone(&destination), content);
    if !args.quiet {
        let mode = args.rate.map_or("closed loop".to_owned(), |r| format!("open loop at {r} msg/s"));
        let size = if sizes.0 == sizes.1 { sizes.0.to_string() } else { format!("{}..{}", sizes.0, sizes.1) };
        eprintln!(
            "volley bench: {target_name}, {} connections, {threads} threads ({}), {size} octets, {mode}",
            args.connections,
            args.driver.name(),
        );
    }
    let running = engine::start(config, Box::new(source)).context("starting the engine")?;
    let metrics_listener = args.metrics.start(|| {
        let mut metrics = Metrics::new();
        metrics.register(EngineCollector::new(running.progress()));
        Arc::new(metrics)
    })?;

    let mut last = running.snapshot();
    let mut timeline = Vec::new();
    let mut next_tick = Instant::now() + Duration::from_secs(1);
    let mut producer_done_at: Option<Instant> = None;
    while !running.is_finished() {
        std::thread::sleep(Duration::from_millis(20));
        // First Ctrl-C (or SIGTERM, SIGHUP): stop sending, let what is in flight finish.
        // Second: stop now.
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
        if Instant::now() >= next_tick {
            let now = running.snapshot();
            let this = second(&last, &now);
            if !args.quiet {
                progress_line(&now, &this);
            }
            timeline.push(this);
            last = now;
            next_tick += Duration::from_secs(1);
        }
    }
    let report = running.join()?;
    if let Some(m) = metrics_listener {
        m.stop().context("stopping the metrics listener")?;
    }
    let sink_counters = own_sink.map(|s| s.stop()).transpose().context("stopping the built-in sink")?;

    if let Some(path) = &args.hgrm {
        std::fs::write(path, bench::hgrm(bench::latency(&report)))
            .with_context(|| format!("--hgrm {}", path.display()))?;
    }
    let drawn = plot::Run::of_report(&target_name, &report, timeline);
    if let Some(path) = &args.plot {
        let picture = plot::svg(std::slice::from_ref(&drawn)).context("--plot")?;
        std::fs::write(path, picture).with_context(|| format!("--plot {}", path.display()))?;
    }
    if args.json {
        let sink_json = sink_counters.as_ref().map(|c| c.json(report.elapsed.as_secs_f64()));
        println!("{}", bench::json(&report, sizes, &target_name, sink_json, &drawn));
    } else {
        print!("{}", bench::text(&report, &target_name));
        if let Some(c) = &sink_counters {
            println!("sink        accepted {} messages, {} connections", c.messages_accepted, c.connections);
        }
    }
    let saved = bench::saved::SavedRun::of(&report, &target_name, &node);
    if let Some(path) = &args.save {
        std::fs::write(path, saved.to_json()).with_context(|| format!("--save {}", path.display()))?;
    }
    if let Some((server, share)) = &shared {
        match mailvolley::cluster::bench::publish(server, &node, &saved)? {
            // The merged report follows this node's own (not with --json: stdout stays one JSON
            // document; `volley status --json` gives the merged one).
            Some(runs) if !args.json => {
                let merged = bench::saved::merge(&runs)?;
                print!("\n{}", bench::saved::merged_text(&merged, &target_name));
            }
            Some(_) => {}
            None => eprintln!(
                "volley bench: node {node} ({} of {}) published its run; the last generator to finish prints \
                 the merged report, as does `volley status {}`",
                share.index + 1,
                share.of,
                server.url
            ),
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
    for warning in bench::warnings(&report) {
        eprintln!("volley bench: {warning}");
    }
    if report.stats.violations > 0 {
        return Ok(ExitCode::from(3));
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

/// The host part of a target: what its certificate is checked against.
fn target_host(target: &str) -> &str {
    if let Some(v6) = target.strip_prefix('[') {
        return v6.split(']').next().unwrap_or(v6);
    }
    if target.matches(':').count() > 1 {
        return target; // a bare IPv6 address
    }
    target.split(':').next().unwrap_or(target)
}

/// Volley's own sink, for a run without --target: STARTTLS (and an implicit-TLS listener with
/// --tls) on a self-signed certificate when TLS is asked for, AUTH for the given user.
fn built_in_sink(
    args: &BenchArgs,
    tls: Option<&ClientTls>,
    credentials: Option<&Credentials>,
) -> anyhow::Result<sink::SinkHandle> {
    let loopback = SocketAddr::from(([127, 0, 0, 1], 0));
    let mut config = SinkConfig {
        listen: loopback,
        threads: args.sink_threads.map_or_else(rt::default_threads, NonZeroUsize::get),
        driver: args.driver,
        ..SinkConfig::default()
    };
    if let Some(tls) = tls {
        config.tls = Some(ServerTls::self_signed(&["localhost".into(), "127.0.0.1".into()])?);
        config.starttls = !tls.implicit;
        config.tls_listen = tls.implicit.then_some(loopback);
    }
    if let Some(c) = credentials {
        config.auth = Some(Arc::new(Users::single(&c.user, c.secret.expose())));
    }
    sink::start(config).context("starting the built-in sink")
}

/// Whether the target accepts connections at all (the reason when it does not), so a wrong
/// address fails fast.
fn probe(addrs: &[SocketAddr], timeout: Duration, source: Option<IpAddr>) -> Result<(), String> {
    if source.is_some() {
        // The engine binds the source address itself; a plain probe would connect from
        // elsewhere and prove nothing.
        return Ok(());
    }
    let mut last = None;
    for addr in addrs {
        match std::net::TcpStream::connect_timeout(addr, timeout) {
            Ok(_) => return Ok(()),
            Err(e) => last = Some(format!("{addr}: {e}")),
        }
    }
    Err(last.unwrap_or_else(|| "no address".into()))
}

/// The second from `last` to `now`, for the timeline `--plot` and `--json` carry.
fn second(last: &engine::Snapshot, now: &engine::Snapshot) -> plot::Second {
    plot::Second {
        at: now.elapsed.as_secs_f64(),
        messages_per_second: now.rate_since(last, |s| s.delivered),
        p99_ms: now.p99_micros as f64 / 1000.0,
    }
}

fn progress_line(now: &engine::Snapshot, second: &plot::Second) {
    let rate = second.messages_per_second;
    let uncertain = if now.uncertain > 0 { format!("  UNCERTAIN {}", now.uncertain) } else { String::new() };
    eprintln!(
        "[{:>4.0}s] {:>9.0} msg/s  delivered {:>10}  deferred {:>7}  bounced {:>7}  in flight {:>5}  p99 {:>8.3} ms  errors: connect {}, session {}{uncertain}",
        now.elapsed.as_secs_f64(),
        rate,
        now.delivered,
        now.deferred,
        now.bounced,
        now.in_flight,
        second.p99_ms,
        now.connect_failures,
        now.session_errors.saturating_sub(now.connect_failures),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_default_to_port_25() {
        let cases = [
            ("127.0.0.1:2525", "127.0.0.1:2525"),
            ("127.0.0.1", "127.0.0.1:25"),
            ("localhost", "127.0.0.1:25"),
            ("localhost:26", "127.0.0.1:26"),
            ("[::1]:2525", "[::1]:2525"),
            ("[::1]", "[::1]:25"),
            ("::1", "[::1]:25"),
        ];
        for (target, want) in cases {
            let got = resolve_target(target).unwrap();
            assert!(got.iter().any(|a| a.to_string() == want), "{target}: {got:?}");
        }
        assert!(resolve_target("no-such-host.invalid").is_err());
    }
}

//! `volley sink`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::Args;

use mailvolley::rt::Driver;
use mailvolley::sink::{self, Faults, SinkConfig};

#[derive(Debug, Args)]
pub struct SinkArgs {
    /// Address to listen on (port 0 picks a free one).
    #[arg(long, default_value = "127.0.0.1:2525")]
    listen: SocketAddr,
    /// Threads, one runtime each, pinned to cores [default: all cores].
    #[arg(long)]
    threads: Option<usize>,
    /// I/O driver.
    #[arg(long, value_enum, default_value_t = Driver::Auto)]
    driver: Driver,
    /// Name in the greeting and EHLO reply.
    #[arg(long, default_value = "volley-sink")]
    hostname: String,
    /// Do not advertise PIPELINING.
    #[arg(long)]
    no_pipelining: bool,
    /// Do not advertise CHUNKING (BDAT).
    #[arg(long)]
    no_chunking: bool,
    /// Advertised SIZE limit in octets; larger messages get 552.
    #[arg(long, default_value_t = 50 * 1024 * 1024)]
    max_size: u64,
    /// Close connections idle this long (with 421).
    #[arg(long, value_parser = super::duration, default_value = "5m")]
    idle_timeout: Duration,
    /// Answer MAIL with 421 and close after this many messages on one connection.
    #[arg(long)]
    max_messages_per_connection: Option<u64>,
    /// Turn away connections beyond this many with 421 at greeting.
    #[arg(long)]
    max_connections: Option<usize>,
    /// Fail a stage: STAGE=CODE[:PROBABILITY], e.g. rcpt=451:0.05 (repeatable). Stages:
    /// greeting, ehlo, mail, rcpt, data (the reply to the content), rset, quit. 421 closes.
    #[arg(long = "fail", value_name = "SPEC")]
    fail: Vec<String>,
    /// Delay a stage's reply: STAGE=DURATION[~JITTER], e.g. data=50ms~10ms (repeatable).
    #[arg(long = "delay", value_name = "SPEC")]
    delay: Vec<String>,
    /// Drop the connection without a reply: STAGE=PROBABILITY, e.g. rcpt=0.01 (repeatable).
    #[arg(long = "disconnect", value_name = "SPEC")]
    disconnect: Vec<String>,
    /// Seed for fault injection, so runs repeat.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Write every accepted message (envelope, blank line, content) to a file in DIR.
    #[arg(long, value_name = "DIR")]
    dump: Option<PathBuf>,
    /// Exit after accepting this many messages.
    #[arg(long)]
    exit_after_messages: Option<u64>,
    /// Exit after this long.
    #[arg(long, value_parser = super::duration)]
    duration: Option<Duration>,
    /// Print the counters as JSON instead of a table.
    #[arg(long)]
    json: bool,
}

impl SinkArgs {
    fn config(&self) -> anyhow::Result<SinkConfig> {
        let mut faults = Faults::default();
        for spec in &self.fail {
            faults.add_fail(spec).with_context(|| format!("--fail {spec}"))?;
        }
        for spec in &self.delay {
            faults.add_delay(spec).with_context(|| format!("--delay {spec}"))?;
        }
        for spec in &self.disconnect {
            faults.add_disconnect(spec).with_context(|| format!("--disconnect {spec}"))?;
        }
        if let Some(dir) = &self.dump {
            std::fs::create_dir_all(dir).with_context(|| format!("--dump {}", dir.display()))?;
        }
        Ok(SinkConfig {
            listen: self.listen,
            threads: self.threads.unwrap_or_else(mailvolley::rt::default_threads).max(1),
            driver: self.driver,
            hostname: self.hostname.clone(),
            pipelining: !self.no_pipelining,
            chunking: !self.no_chunking,
            max_size: self.max_size,
            idle_timeout: self.idle_timeout,
            max_messages_per_connection: self.max_messages_per_connection,
            max_connections: self.max_connections,
            faults,
            seed: self.seed,
            dump: self.dump.clone(),
            exit_after_messages: self.exit_after_messages,
        })
    }
}

pub fn run(args: SinkArgs) -> anyhow::Result<ExitCode> {
    let config = args.config()?;
    let (threads, driver) = (config.threads, config.driver);
    let interrupts = super::interrupts()?;
    let handle = sink::start(config).context("starting the sink")?;
    eprintln!("volley sink listening on {} ({threads} threads, {})", handle.local_addr(), driver.name());
    let started = Instant::now();
    while !handle.stop_requested() && interrupts.load(Ordering::Relaxed) == 0 {
        if args.duration.is_some_and(|d| started.elapsed() >= d) {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let seconds = started.elapsed().as_secs_f64();
    let counters = handle.stop().context("stopping the sink")?;
    if args.json {
        println!("{}", counters.json(seconds));
    } else {
        print!("{}", counters.table(seconds));
    }
    Ok(ExitCode::SUCCESS)
}

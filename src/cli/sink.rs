//! `volley sink`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::Args;

use mailvolley::rt::Driver;
use mailvolley::sink::auth::Users;
use mailvolley::sink::{self, Faults, SinkConfig};
use mailvolley::tls::ServerTls;

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
    /// Do not advertise 8BITMIME: refuse BODY=8BITMIME and any 8-bit content (554 5.6.0).
    #[arg(long = "no-8bitmime")]
    no_8bitmime: bool,
    /// Do not advertise SMTPUTF8: refuse the parameter and non-ASCII addresses (553 5.6.7).
    #[arg(long)]
    no_smtputf8: bool,
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
    /// Advertise STARTTLS.
    #[arg(long)]
    starttls: bool,
    /// Also listen here for implicit TLS (as on port 465).
    #[arg(long, value_name = "ADDR")]
    tls_listen: Option<SocketAddr>,
    /// Certificate chain (PEM) for TLS [default: a self-signed certificate made at start for
    /// --hostname, localhost and the listening addresses].
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// Private key (PEM) of --tls-cert.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Answer MAIL (and AUTH) with 530 5.7.0 until the session is encrypted.
    #[arg(long)]
    require_tls: bool,
    /// Offer AUTH PLAIN and LOGIN for the users in FILE (`user:password` lines) and require it
    /// before MAIL (530 5.7.0); bad credentials get 535 5.7.8.
    #[arg(long, value_name = "FILE")]
    auth: Option<PathBuf>,
    /// Greylist: refuse each recipient's first RCPT with 451 4.7.1 and accept it afterwards.
    #[arg(long)]
    greylist: bool,
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
        let wants_tls = self.starttls || self.tls_listen.is_some() || self.tls_cert.is_some();
        if self.require_tls && !self.starttls && self.tls_listen.is_none() {
            anyhow::bail!(
                "--require-tls needs --starttls or --tls-listen: otherwise no session could send mail"
            );
        }
        let tls = match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => Some(ServerTls::from_files(cert, key)?),
            _ if wants_tls => {
                let mut names =
                    vec![self.hostname.clone(), "localhost".to_owned(), self.listen.ip().to_string()];
                names.extend(self.tls_listen.map(|a| a.ip().to_string()));
                names.dedup();
                Some(ServerTls::self_signed(&names)?)
            }
            _ => None,
        };
        let auth = match &self.auth {
            Some(path) => Some(Arc::new(Users::load(path).map_err(anyhow::Error::msg).context("--auth")?)),
            None => None,
        };
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
            eight_bit_mime: !self.no_8bitmime,
            smtputf8: !self.no_smtputf8,
            max_size: self.max_size,
            idle_timeout: self.idle_timeout,
            max_messages_per_connection: self.max_messages_per_connection,
            max_connections: self.max_connections,
            faults,
            seed: self.seed,
            dump: self.dump.clone(),
            exit_after_messages: self.exit_after_messages,
            tls,
            starttls: self.starttls,
            tls_listen: self.tls_listen,
            require_tls: self.require_tls,
            greylist: self.greylist,
            auth,
            ..SinkConfig::default()
        })
    }
}

pub fn run(args: SinkArgs) -> anyhow::Result<ExitCode> {
    let config = args.config()?;
    let (threads, driver) = (config.threads, config.driver);
    let interrupts = super::interrupts()?;
    let handle = sink::start(config).context("starting the sink")?;
    eprintln!("volley sink listening on {} ({threads} threads, {})", handle.local_addr(), driver.name());
    if let Some(addr) = handle.tls_addr() {
        eprintln!("volley sink listening for implicit TLS on {addr}");
    }
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

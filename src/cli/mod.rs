//! The command line: argument parsing and the glue from flags to library configuration.
//! `anyhow` lives here and nowhere else.

mod bench;
mod check;
pub mod config_file;
mod connection;
mod delivery;
mod metrics;
mod plot;
mod queue;
mod report;
mod secure;
mod send;
mod serve;
mod sink;
mod status;
mod tls_report;
mod token;
mod webhook;

use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use clap::{Parser, Subcommand};

/// volley: a high-throughput SMTP sender for campaigns, load tests and benchmarks.
///
/// `volley bench` without --target starts volley's own sink on loopback and blasts it.
#[derive(Debug, Parser)]
#[command(name = "volley", version)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

// Parsed once at start-up: the size of its variants does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
enum Command {
    /// Load-test an SMTP server (or volley's own sink) and report throughput and latency.
    #[command(after_help = bench::EXIT_DOC)]
    Bench(bench::BenchArgs),
    /// Send a campaign: a message template to every recipient of a CSV or JSONL file, through
    /// their MX hosts or a relay, with a delivery log that --resume continues.
    #[command(after_help = send::EXIT_DOC)]
    Send(send::SendArgs),
    /// Run a mail service: applications submit over SMTP; every message is durable in a spool
    /// before it is accepted, then delivered to its recipients' MX hosts (or a relay), each
    /// recipient's fate recorded in a delivery log, across restarts.
    #[command(after_help = serve::EXIT_DOC)]
    Serve(serve::ServeArgs),
    /// Show a campaign shared through Redis (`send --queue`), merged across its nodes:
    /// final rows by status, by node and by domain, and rows still waiting.
    #[command(after_help = status::EXIT_DOC)]
    Status(status::StatusArgs),
    /// Merge `bench --save` runs made at the same time on several machines into one report.
    Report(report::ReportArgs),
    /// Run an SMTP sink: accepts mail as fast as it can, or misbehaves on purpose.
    Sink(sink::SinkArgs),
    /// Pre-flight a campaign against DNS: SPF, DKIM keys, DMARC and alignment, PTR, and RFC 8058
    /// unsubscribe headers, as the large receivers check them. A pass/warn/fail table with fixes.
    #[command(after_help = check::EXIT_DOC)]
    Check(check::CheckArgs),
    /// Draw runs as an SVG picture after the fact, from `bench --json` reports or `--hgrm`
    /// files: latency percentile curves, msg/s and p99 over time; several runs compared.
    Plot(plot::PlotArgs),
    /// See and steer a running `volley serve`'s queue through its API: list, show, suspend,
    /// resume, retry-now and bounce a destination, domain or MX host.
    #[command(after_help = queue::EXIT_DOC)]
    Queue(queue::QueueArgs),
    /// Check (or make) the signatures of `volley serve --webhook` requests, for a receiver.
    Webhook(webhook::WebhookArgs),
    /// Deliver the TLS reports (RFC 8460) `send --tls-report DIR` wrote, to the addresses each
    /// domain's `_smtp._tls` record names (mail or HTTPS).
    TlsReport(tls_report::TlsReportArgs),
    /// Verify (or make) the unsubscribe tokens of `send --unsubscribe-url`, for the web handler.
    Token(token::TokenArgs),
}

pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Bench(args) => bench::run(args),
        Command::Send(args) => send::run(args),
        Command::Serve(args) => serve::run(args),
        Command::Sink(args) => sink::run(args),
        Command::Status(args) => status::run(args),
        Command::Report(args) => report::run(args),
        Command::Token(args) => token::run(args),
        Command::Check(args) => check::run(args),
        Command::Plot(args) => plot::run(args),
        Command::Queue(args) => queue::run(args),
        Command::Webhook(args) => webhook::run(args),
        Command::TlsReport(args) => tls_report::run(args),
    }
}

/// Parses "10s", "250ms", "5m".
/// `--queue`'s value (and `volley status`'s argument): a Redis server and a campaign or run.
pub fn parse_queue_url(s: &str) -> Result<mailvolley::cluster::QueueUrl, String> {
    mailvolley::cluster::QueueUrl::parse(s).map_err(|e| e.to_string())
}

/// `--node`'s value.
pub fn parse_node_name(s: &str) -> Result<String, String> {
    mailvolley::cluster::check_node_name(s).map(|()| s.to_owned())
}

/// The Redis server of `url`, with the password read from `password_file` if one is given.
pub fn redis_server(
    url: &mailvolley::cluster::QueueUrl,
    password_file: Option<&std::path::Path>,
) -> anyhow::Result<mailvolley::cluster::Server> {
    let password = password_file.map(mailvolley::cluster::read_password).transpose()?;
    Ok(mailvolley::cluster::Server { url: url.clone(), password })
}

pub fn duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| e.to_string())
}

/// Set by SIGHUP once [`reload_requests`] is called: serve reads its files again.
static RELOAD: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

extern "C" fn on_hangup(_: libc::c_int) {
    // Only an atomic store: all a signal handler may safely do here.
    RELOAD.store(true, Ordering::Relaxed);
}

/// From now on SIGHUP asks for a reload instead of a stop (call it after [`interrupts`],
/// whose handler it replaces for SIGHUP): true once per SIGHUP, from the returned flag's
/// `swap(false)`.
pub fn reload_requests() -> anyhow::Result<&'static std::sync::atomic::AtomicBool> {
    // SAFETY: a zeroed sigaction is valid; the handler only stores to an atomic, which is
    // async-signal-safe; SA_RESTART keeps interrupted system calls from failing with EINTR.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = on_hangup as *const () as usize;
        action.sa_flags = libc::SA_RESTART;
        libc::sigemptyset(&mut action.sa_mask);
        if libc::sigaction(libc::SIGHUP, &action, std::ptr::null_mut()) != 0 {
            return Err(std::io::Error::last_os_error().into());
        }
    }
    Ok(&RELOAD)
}

/// Counts Ctrl-C presses (and SIGTERM, SIGHUP), so commands can stop cleanly (first) or at once
/// (second), and still report.
pub fn interrupts() -> anyhow::Result<Arc<AtomicUsize>> {
    let count = Arc::new(AtomicUsize::new(0));
    let c = Arc::clone(&count);
    ctrlc::set_handler(move || {
        c.fetch_add(1, Ordering::Relaxed);
    })?;
    Ok(count)
}

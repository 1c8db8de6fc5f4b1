//! `volley tls-report send DIR`: delivers the TLS reports (RFC 8460) that `send --tls-report
//! DIR` wrote, to the addresses each policy domain's `_smtp._tls` record names.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand};

use mailvolley::deliver::tls_report::outbox::{self, OutboxConfig, Outcome};
use mailvolley::send::tls_reports::CampaignMailer;

use super::delivery::DeliveryArgs;

/// Exit codes of `volley tls-report send` (also in `--help` and the README).
pub const EXIT_DOC: &str = "Exit codes: 0 every report reached every address its domain names (or its domain asks \
for none); 1 some did not, and stay in DIR for the next run; 2 usage error (a bad flag, DIR unreadable), or no mail could be sent at all \
(the mail's log could not be written).";

#[derive(Debug, Args)]
pub struct TlsReportArgs {
    #[command(subcommand)]
    command: TlsReportCommand,
}

#[derive(Debug, Subcommand)]
enum TlsReportCommand {
    /// Send the reports in DIR: each to every `mailto:` (as mail, DKIM-signed with --dkim) and
    /// `https:` (POSTed, gzip) address in its policy domain's `_smtp._tls` TXT record. A report
    /// that reached them all (or whose domain publishes no record) moves to DIR/sent/; the
    /// addresses a report reached are kept in NAME.json.done, so a later run sends only what
    /// is left.
    #[command(after_help = EXIT_DOC)]
    Send(SendArgs),
}

#[derive(Debug, Args)]
struct SendArgs {
    /// The directory `volley send --tls-report DIR` wrote the reports into.
    dir: PathBuf,
    /// The reports' From header: 'addr@domain' or 'Name <addr@domain>' (the envelope sender
    /// too).
    #[arg(long)]
    from: String,
    #[command(flatten)]
    delivery: DeliveryArgs,
}

pub fn run(args: TlsReportArgs) -> anyhow::Result<ExitCode> {
    match args.command {
        TlsReportCommand::Send(args) => send(args),
    }
}

fn send(args: SendArgs) -> anyhow::Result<ExitCode> {
    if !args.dir.is_dir() {
        anyhow::bail!("{}: not a directory", args.dir.display());
    }
    let delivery = args.delivery.config()?;
    let dns = outbox::dns_for(&delivery.routing);
    let https = args.delivery.https_tls()?;
    let config = OutboxConfig { dir: args.dir.clone(), dns, https, stop: None };
    let mut mailer = CampaignMailer { outbox: args.dir.join("outbox"), from: args.from.clone(), delivery };
    let results = outbox::send_all(&config, &mut mailer)?;
    let mut left = 0;
    for r in &results {
        if matches!(r.result, Outcome::Failed(_)) {
            left += 1;
        }
        println!("{}  {}  {}", r.file, r.to_text(), r.result);
    }
    let reports: std::collections::BTreeSet<&str> = results.iter().map(|r| r.file.as_str()).collect();
    println!("{} reports, {} deliveries not made (kept for the next run)", reports.len(), left);
    Ok(if left == 0 { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

//! `volley queue`: an operator's view of a running `volley serve`'s queue, and its controls,
//! through serve's API (`/api/v1/queue`, for `--admin-keys`).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::{Args, Subcommand};
use serde_json::{Value, json};

use mailvolley::rt::http_client::{self, BaseUrl};

/// Exit codes of `volley queue`.
pub const EXIT_DOC: &str = "Exit codes: 0 done; 1 the service refused (an unknown suspension, a key that is not \
an admin key); 2 usage error, or the service could not be reached.";

/// How long a command may take: a sweep of a large spool takes a while.
const TIMEOUT: Duration = Duration::from_secs(600);

#[derive(Debug, Args)]
pub struct QueueArgs {
    /// serve's API.
    #[arg(long, value_name = "URL", default_value = "http://127.0.0.1:8025")]
    api: String,
    /// A file holding one of serve's --admin-keys (the key itself, on its first line): a key
    /// is never given on the command line, where `ps` shows it.
    #[arg(long, value_name = "FILE")]
    api_key_file: PathBuf,
    /// Print the service's JSON answer instead of a table.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: QueueCommand,
}

#[derive(Debug, Subcommand)]
enum QueueCommand {
    /// What waits, by destination (the recipients' domains grouped by where they route now),
    /// the most waiting first.
    List {
        /// Destinations shown at most.
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// What waits for DEST (a destination, domain or MX host), with its first recipients.
    Show { dest: String },
    /// Hold back everything routed to DEST: nothing is sent there until it is resumed (or
    /// --for runs out); a recipient that reaches its maximum age meanwhile expires. Kept
    /// across restarts.
    Suspend {
        dest: String,
        /// For how long (`30m`, `2h`) [default: until resumed].
        #[arg(long = "for", value_name = "DURATION", value_parser = super::duration)]
        duration: Option<Duration>,
    },
    /// Lift DEST's suspension and make everything waiting there due now.
    Resume { dest: String },
    /// Make everything waiting for DEST due now.
    RetryNow { dest: String },
    /// End every recipient waiting for DEST as bounced (category `admin`; its sender gets a
    /// delivery status notification as for any bounce). One in an attempt finishes it.
    Bounce {
        dest: String,
        /// Bounce them: without it, nothing is done.
        #[arg(long)]
        yes: bool,
    },
}

pub fn run(args: QueueArgs) -> anyhow::Result<ExitCode> {
    let base = BaseUrl::parse(&args.api).context("--api")?;
    let key = std::fs::read_to_string(&args.api_key_file)
        .with_context(|| format!("--api-key-file {}", args.api_key_file.display()))?;
    let key = key.lines().next().unwrap_or("").trim();
    if key.is_empty() {
        bail!("--api-key-file {}: no key in it", args.api_key_file.display());
    }
    let (method, path, body) = match &args.command {
        QueueCommand::List { limit } => ("GET", format!("/api/v1/queue?limit={limit}"), None),
        QueueCommand::Show { dest } => ("GET", format!("/api/v1/queue/{}", encode(dest)), None),
        QueueCommand::Suspend { dest, duration } => {
            let body = match duration {
                Some(d) => json!({"for": humantime::format_duration(*d).to_string()}),
                None => json!({}),
            };
            ("POST", format!("/api/v1/queue/{}/suspend", encode(dest)), Some(body))
        }
        QueueCommand::Resume { dest } => ("POST", format!("/api/v1/queue/{}/resume", encode(dest)), None),
        QueueCommand::RetryNow { dest } => {
            ("POST", format!("/api/v1/queue/{}/retry-now", encode(dest)), None)
        }
        QueueCommand::Bounce { dest, yes } => {
            if !yes {
                bail!("bounce ends every recipient waiting for {dest} as bounced: add --yes to do it");
            }
            ("POST", format!("/api/v1/queue/{}/bounce", encode(dest)), None)
        }
    };
    let body = body.map(|b| b.to_string().into_bytes());
    let answer = http_client::call(&base, method, &path, Some(key), body, TIMEOUT)?;
    let value: Value = serde_json::from_slice(&answer.body)
        .with_context(|| format!("the service answered {} with no JSON", answer.status))?;
    if !(200..300).contains(&answer.status) {
        let message = value["error"]["message"].as_str().unwrap_or("(no message)");
        eprintln!("volley queue: the service refused ({}): {message}", answer.status);
        return Ok(ExitCode::from(1));
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&value)?);
        return Ok(ExitCode::SUCCESS);
    }
    match &args.command {
        QueueCommand::List { .. } | QueueCommand::Show { .. } => print_summary(&value),
        QueueCommand::Suspend { dest, .. } => {
            let until = value["suspended"]["until"].as_str().unwrap_or("it is resumed");
            println!("{dest} suspended until {until}");
        }
        QueueCommand::Resume { dest } => {
            println!("{dest} resumed: {} recipients due now", value["recipients"]);
        }
        QueueCommand::RetryNow { dest } => println!("{dest}: {} recipients due now", value["recipients"]),
        QueueCommand::Bounce { dest, .. } => println!("{dest}: {} recipients bounced", value["recipients"]),
    }
    Ok(ExitCode::SUCCESS)
}

/// A path segment, percent-encoded (a destination's name has spaces, commas, brackets).
fn encode(segment: &str) -> String {
    let mut out = String::with_capacity(segment.len());
    for b in segment.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn print_summary(value: &Value) {
    let none = Vec::new();
    let rows = value["destinations"].as_array().unwrap_or(&none);
    println!("{:<44} {:>9} {:>21} {:>5}  SUSPENDED", "DESTINATION", "WAITING", "NEXT ATTEMPT", "CONNS");
    for row in rows {
        // What the suspension names (a domain of the row's, say), and until when.
        let suspended = match &row["suspended"] {
            Value::Null => "-".to_owned(),
            s => format!(
                "{} {}",
                s["dest"].as_str().unwrap_or(""),
                s["until"].as_str().map_or("until resumed".to_owned(), |u| format!("until {u}"))
            ),
        };
        let connections = row["connections"].as_u64().map_or("-".to_owned(), |c| c.to_string());
        println!(
            "{:<44} {:>9} {:>21} {:>5}  {suspended}",
            row["destination"].as_str().unwrap_or(""),
            row["waiting"],
            row["next_attempt"].as_str().unwrap_or(""),
            connections,
        );
        if let Some(recipients) = row["recipients"].as_array() {
            for r in recipients {
                println!(
                    "    {:<40} message {:<8} attempts {:<3} next {}",
                    r["rcpt"].as_str().unwrap_or(""),
                    r["message"],
                    r["attempts"],
                    r["next_attempt"].as_str().unwrap_or("")
                );
            }
        }
    }
    if let Some(more) = value["more"].as_u64().filter(|m| *m > 0) {
        println!("(and {more} more destinations)");
    }
    println!("{} recipients waiting in all", value["waiting"]);
    if let Some(suspended) = value["suspended"].as_array().filter(|s| !s.is_empty()) {
        for s in suspended {
            let until = s["until"].as_str().map_or("until resumed".to_owned(), |u| format!("until {u}"));
            println!("suspended: {} {until}", s["dest"].as_str().unwrap_or(""));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_destination_name_is_one_path_segment() {
        assert_eq!(
            encode("mx1.big.test, mx2.big.test [gmail]"),
            "mx1.big.test%2C%20mx2.big.test%20%5Bgmail%5D"
        );
        assert_eq!(encode("a/b"), "a%2Fb");
    }
}

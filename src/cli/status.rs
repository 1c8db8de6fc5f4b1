//! `volley status`: a campaign shared through Redis, merged across its nodes.

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;

use mailvolley::bench::saved::{self, SavedRun};
use mailvolley::cluster::{self, status::CampaignStatus};

pub const EXIT_DOC: &str = "Exit codes: 0 every row of the campaign is final (for a load test: every generator has \
published its run); 1 rows are still waiting or under way (runs still missing); 2 no such campaign or run, or Redis \
could not be reached.";

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// The campaign, as the nodes were given it with `send --queue`.
    #[arg(value_name = "redis://HOST:PORT/NAME", value_parser = super::parse_queue_url)]
    queue: cluster::QueueUrl,
    /// The Redis password, from a file.
    #[arg(long, value_name = "FILE")]
    redis_password_file: Option<PathBuf>,
    /// Print the status as JSON.
    #[arg(long)]
    json: bool,
}

/// Domains listed in the text view; --json lists them all.
const TOP_DOMAINS: usize = 20;

pub fn run(args: StatusArgs) -> anyhow::Result<ExitCode> {
    let server = super::redis_server(&args.queue, args.redis_password_file.as_deref())?;
    match cluster::bench::status(&server) {
        Ok(Some((runs, nodes))) => return bench_status(&runs, nodes, args.json),
        Ok(None) => {}
        Err(e) => {
            eprintln!("volley: {e}");
            return Ok(ExitCode::from(2));
        }
    }
    let status = match cluster::status::read(&server) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("volley: {e}");
            return Ok(ExitCode::from(2));
        }
    };
    let mut out = std::io::stdout().lock();
    if args.json {
        serde_json::to_writer_pretty(&mut out, &status)?;
        writeln!(out)?;
    } else {
        write!(out, "{}", text(&status))?;
    }
    Ok(if status.complete() { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

/// A distributed load test: the merged report once every generator has published its run.
fn bench_status(runs: &[SavedRun], nodes: usize, json: bool) -> anyhow::Result<ExitCode> {
    let mut out = std::io::stdout().lock();
    if runs.is_empty() {
        writeln!(out, "load test: 0 of {nodes} generators have published a run")?;
        return Ok(ExitCode::from(1));
    }
    let merged = saved::merge(runs)?;
    if json {
        serde_json::to_writer_pretty(&mut out, &saved::merged_json(&merged))?;
        writeln!(out)?;
    } else {
        writeln!(out, "load test: {} of {nodes} generators have published a run", runs.len())?;
        write!(out, "{}", saved::merged_text(&merged, &runs[0].target))?;
    }
    Ok(if runs.len() >= nodes { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

fn counts_line(counts: &cluster::status::Counts) -> String {
    let parts: Vec<String> = counts.iter().map(|(s, n)| format!("{s} {n}")).collect();
    if parts.is_empty() { "none".into() } else { parts.join("  ") }
}

fn text(s: &CampaignStatus) -> String {
    use std::fmt::Write as _;
    let mut t = String::new();
    let loaded = if s.loaded { "loaded" } else { "loading" };
    let _ = writeln!(
        t,
        "campaign {}: {} rows ({loaded}); final {}, under way {}, not yet read {}{}",
        s.campaign,
        s.rows,
        s.final_rows(),
        s.pending,
        s.waiting,
        if s.complete() { " — complete" } else { "" }
    );
    let _ = writeln!(t, "final: {}", counts_line(&s.finals));
    let _ = writeln!(t, "{:<24} {:>8} {:>8}  final", "node", "running", "chunks");
    for (name, n) in &s.nodes {
        let _ = writeln!(
            t,
            "{:<24} {:>8} {:>8}  {}",
            name,
            if n.running { "yes" } else { "no" },
            n.chunks,
            counts_line(&n.finals)
        );
    }
    let mut domains: Vec<(&String, &cluster::status::Counts)> = s.domains.iter().collect();
    domains.sort_by_key(|(name, c)| (std::cmp::Reverse(c.values().sum::<u64>()), *name));
    if !domains.is_empty() {
        let _ = writeln!(t, "{:<32} final", "domain");
        for (name, c) in domains.iter().take(TOP_DOMAINS) {
            let _ = writeln!(t, "{:<32} {}", name, counts_line(c));
        }
        if domains.len() > TOP_DOMAINS {
            let _ = writeln!(t, "({} more domains: see --json)", domains.len() - TOP_DOMAINS);
        }
    }
    t
}

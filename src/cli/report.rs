//! `volley report merge`: bench runs made at the same time (`bench --save`), as one report.

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Args, Subcommand};

use mailvolley::bench::saved::{self, SavedRun};

#[derive(Debug, Args)]
pub struct ReportArgs {
    #[command(subcommand)]
    command: ReportCommand,
}

#[derive(Debug, Subcommand)]
enum ReportCommand {
    /// Merge runs made at the same time on several machines (`bench --save` files): counters
    /// and histograms added, percentiles from the merged histograms, rates summed.
    Merge {
        /// The runs' files.
        #[arg(value_name = "RUN.json", required = true)]
        runs: Vec<PathBuf>,
        /// Print the merged report as JSON.
        #[arg(long)]
        json: bool,
    },
}

pub fn run(args: ReportArgs) -> anyhow::Result<ExitCode> {
    let ReportCommand::Merge { runs: paths, json } = args.command;
    let mut runs = Vec::new();
    for path in &paths {
        let text = std::fs::read_to_string(path).with_context(|| format!("{}", path.display()))?;
        runs.push(SavedRun::parse(&text).with_context(|| format!("{}", path.display()))?);
    }
    let merged = saved::merge(&runs)?;
    let mut out = std::io::stdout().lock();
    if json {
        serde_json::to_writer_pretty(&mut out, &saved::merged_json(&merged))?;
        writeln!(out)?;
    } else {
        write!(out, "{}", saved::merged_text(&merged, &runs[0].target))?;
    }
    Ok(ExitCode::SUCCESS)
}

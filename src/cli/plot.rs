//! `volley plot`: draws runs after the fact, from `bench --json` reports or `--hgrm` files.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Args;
use mailvolley::plot::{self, Run};

#[derive(Debug, Args)]
pub struct PlotArgs {
    /// Runs to draw: `volley bench --json` reports (`.json`: every phase's percentile curve and
    /// the run's msg/s and p99 over time) or `--hgrm` files (the message latency). With
    /// several, their message latencies (and timelines) share one chart, named by file.
    #[arg(required = true, value_name = "RUN")]
    runs: Vec<PathBuf>,
    /// The picture to write (SVG).
    #[arg(short, long, value_name = "FILE.svg")]
    output: PathBuf,
}

pub fn run(args: PlotArgs) -> anyhow::Result<ExitCode> {
    let runs = args.runs.iter().map(|p| Run::read(p)).collect::<Result<Vec<_>, _>>()?;
    let picture = plot::svg(&runs)?;
    std::fs::write(&args.output, picture).with_context(|| format!("writing {}", args.output.display()))?;
    Ok(ExitCode::SUCCESS)
}

//! `volley webhook`: checks (and makes) the signatures `volley serve --webhook` puts on its
//! requests, for the receiver's developer.

use std::io::Read as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use clap::{Args, Subcommand};

use mailvolley::serve::webhook::sign::{HEADER, Secret};

/// Exit codes of `volley webhook verify`.
pub const EXIT_DOC: &str = "How a receiver checks a request: take the raw body, exactly as received; split the \
X-Volley-Signature header (t=UNIX,v1=HEX) at its commas; compute HMAC-SHA256 with the shared secret over t, a \
\".\", and the body; compare with each v1 in constant time; refuse a t more than a few minutes from now. Exit \
codes of verify: 0 the signature is good; 1 it is not (another secret, a changed body, too old); 2 usage error.";

#[derive(Debug, Args)]
#[command(after_help = EXIT_DOC)]
pub struct WebhookArgs {
    #[command(subcommand)]
    command: WebhookCommand,
}

#[derive(Debug, Subcommand)]
enum WebhookCommand {
    /// Check a request's signature: its X-Volley-Signature header, and its body (a file, or
    /// standard input).
    Verify {
        /// The header's value (`t=...,v1=...`).
        #[arg(long, value_name = "HEADER")]
        signature: String,
        #[command(flatten)]
        secret: SecretFile,
        /// How far the signature's time may be from now.
        #[arg(long, value_name = "DURATION", default_value = "5m", value_parser = super::duration)]
        tolerance: Duration,
        /// The body [default: standard input].
        body: Option<PathBuf>,
    },
    /// Sign a body as serve would now, to test a receiver: prints the header.
    Sign {
        #[command(flatten)]
        secret: SecretFile,
        /// The body [default: standard input].
        body: Option<PathBuf>,
    },
}

#[derive(Debug, Args)]
struct SecretFile {
    /// The file serve's --webhook-secret-file names.
    #[arg(long, value_name = "FILE")]
    secret_file: PathBuf,
}

impl SecretFile {
    fn load(&self) -> anyhow::Result<Secret> {
        let path = &self.secret_file;
        let text =
            std::fs::read_to_string(path).with_context(|| format!("--secret-file {}", path.display()))?;
        Secret::from_file_text(&text)
            .with_context(|| format!("--secret-file {}: no secret on its first line", path.display()))
    }
}

fn read_body(path: Option<&PathBuf>) -> anyhow::Result<Vec<u8>> {
    match path {
        Some(path) => std::fs::read(path).with_context(|| path.display().to_string()),
        None => {
            let mut body = Vec::new();
            std::io::stdin().read_to_end(&mut body).context("standard input")?;
            Ok(body)
        }
    }
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

pub fn run(args: WebhookArgs) -> anyhow::Result<ExitCode> {
    match args.command {
        WebhookCommand::Verify { signature, secret, tolerance, body } => {
            let secret = secret.load()?;
            let body = read_body(body.as_ref())?;
            match secret.verify(&signature, &body, now(), tolerance.as_secs()) {
                Ok(()) => {
                    println!("valid");
                    Ok(ExitCode::SUCCESS)
                }
                Err(e) => {
                    println!("invalid: {e}");
                    Ok(ExitCode::from(1))
                }
            }
        }
        WebhookCommand::Sign { secret, body } => {
            let secret = secret.load()?;
            let body = read_body(body.as_ref())?;
            println!("{HEADER}: {}", secret.sign(now(), &body));
            Ok(ExitCode::SUCCESS)
        }
    }
}

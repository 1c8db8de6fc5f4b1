//! `volley token`: checks (and makes) the unsubscribe tokens `volley send --unsubscribe-url` puts
//! in its messages, for the web handler that receives the one-click POST.

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand};

use mailvolley::send::unsubscribe::{SECRET_ENV, Secret};

/// Exit codes of `volley token verify` (also in `--help` and the README).
pub const EXIT_DOC: &str = "Exit codes: 0 the token is valid (its campaign and recipient are printed); 1 it is not \
(forged, altered, made with another secret, or not a token); 2 usage error (no secret, an unreadable file).";

#[derive(Debug, Args)]
pub struct TokenArgs {
    #[command(subcommand)]
    command: TokenCommand,
}

#[derive(Debug, Subcommand)]
enum TokenCommand {
    /// Check a token: prints its campaign and recipient if the secret made it.
    #[command(after_help = EXIT_DOC)]
    Verify {
        /// The token (the `{{ token }}` part of the unsubscribe URL).
        token: String,
        #[command(flatten)]
        secret: SecretArgs,
        /// Print `{"valid": …, "campaign": …, "recipient": …}` on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Make the token of one recipient of a campaign (to test a handler).
    Make {
        #[arg(long)]
        campaign: String,
        #[arg(long, value_name = "ADDRESS")]
        recipient: String,
        #[command(flatten)]
        secret: SecretArgs,
    },
}

#[derive(Debug, Args)]
struct SecretArgs {
    /// The secret the campaign was sent with [default: $VOLLEY_UNSUBSCRIBE_SECRET].
    #[arg(long, value_name = "FILE")]
    secret_file: Option<PathBuf>,
}

impl SecretArgs {
    fn load(&self) -> anyhow::Result<Secret> {
        let secret = Secret::load(self.secret_file.as_deref())?;
        secret.ok_or_else(|| anyhow::anyhow!("no secret: give --secret-file FILE or set {SECRET_ENV}"))
    }
}

pub fn run(args: TokenArgs) -> anyhow::Result<ExitCode> {
    let mut out = std::io::stdout().lock();
    match args.command {
        TokenCommand::Verify { token, secret, json } => {
            let result = secret.load()?.verify(&token);
            if json {
                let value = match &result {
                    Ok((campaign, recipient)) => {
                        serde_json::json!({ "valid": true, "campaign": campaign, "recipient": recipient })
                    }
                    Err(e) => serde_json::json!({ "valid": false, "error": e.to_string() }),
                };
                writeln!(out, "{value}")?;
            }
            match result {
                Ok((campaign, recipient)) => {
                    if !json {
                        writeln!(out, "campaign: {campaign}\nrecipient: {recipient}")?;
                    }
                    Ok(ExitCode::SUCCESS)
                }
                Err(e) => {
                    if !json {
                        eprintln!("volley: invalid token: {e}");
                    }
                    Ok(ExitCode::from(1))
                }
            }
        }
        TokenCommand::Make { campaign, recipient, secret } => {
            mailvolley::send::check_campaign_id(&campaign).map_err(|e| anyhow::anyhow!("--campaign: {e}"))?;
            writeln!(out, "{}", secret.load()?.token(&campaign, &recipient))?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

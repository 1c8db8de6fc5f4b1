//! TLS and AUTH flags, shared by every command that sends. Secrets come from the environment or
//! a file, never from the command line (where `ps` and shell history would show them).

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context as _, bail};
use clap::Args;

use mailvolley::proto::client::{Credentials, Mechanism, Secret};
use mailvolley::tls::{ClientTls, TlsPolicy};

/// The environment variable holding the AUTH password (or XOAUTH2 token).
pub const PASSWORD_ENV: &str = "VOLLEY_AUTH_PASSWORD";

#[derive(Debug, Args)]
pub struct TlsArgs {
    /// TLS policy: none, opportunistic (STARTTLS when offered, certificate not checked,
    /// plaintext if the handshake fails), required (encrypted, certificate not checked),
    /// verify (encrypted, certificate chain and name checked) [default: none for bench,
    /// opportunistic for send; required with --tls].
    #[arg(long, value_enum, value_name = "POLICY", ignore_case = true)]
    pub starttls: Option<TlsPolicy>,
    /// Implicit TLS: the handshake comes first, before the greeting (as on port 465).
    #[arg(long)]
    pub tls: bool,
    /// Trust the CA certificates in FILE (PEM) instead of the built-in Mozilla roots (with
    /// --starttls verify). A certificate in FILE is also trusted as the server's own, for the
    /// names it lists: give a relay's self-signed certificate (`openssl req -x509`) as it is.
    #[arg(long, value_name = "FILE")]
    pub ca_file: Option<PathBuf>,
    /// Do not check the server's certificate even under --starttls verify. Anyone on the path
    /// can then read and change the mail.
    #[arg(long)]
    pub insecure: bool,
    /// Make a full TLS handshake on every connection: no session resumption (to measure what
    /// a handshake costs).
    #[arg(long)]
    pub no_resumption: bool,
}

impl TlsArgs {
    /// The run's TLS settings, or `None` for plaintext.
    pub fn client_tls(&self) -> anyhow::Result<Option<ClientTls>> {
        self.client_tls_or(TlsPolicy::None)
    }

    /// The run's TLS settings, with `default` as the policy when none is given.
    pub fn client_tls_or(&self, default: TlsPolicy) -> anyhow::Result<Option<ClientTls>> {
        self.client_tls_with(default, false)
    }

    /// As [`TlsArgs::client_tls_or`]; `verifies_elsewhere`: certificates are checked for
    /// another purpose (MTA-STS), so --ca-file has a use whatever the policy.
    pub fn client_tls_with(
        &self,
        default: TlsPolicy,
        verifies_elsewhere: bool,
    ) -> anyhow::Result<Option<ClientTls>> {
        let policy = match (self.starttls, self.tls) {
            (None, false) => default,
            (None, true) => TlsPolicy::Required,
            (Some(p @ (TlsPolicy::None | TlsPolicy::Opportunistic)), true) => {
                bail!("--tls is encrypted from the first byte: --starttls {} does not apply", p.name())
            }
            (Some(p), _) => p,
        };
        if self.ca_file.is_some() && policy != TlsPolicy::Verify && !verifies_elsewhere {
            bail!(
                "--ca-file is for checking certificates: it needs --starttls verify (or MTA-STS, for MX hosts)"
            );
        }
        if self.insecure && policy != TlsPolicy::Verify {
            bail!("--insecure only turns off the checks of --starttls verify; other policies do not check");
        }
        if self.insecure {
            eprintln!("volley: WARNING: --insecure: server certificates are NOT checked");
        }
        if policy == TlsPolicy::None {
            return Ok(None);
        }
        let tls = ClientTls::new(policy, self.tls, self.ca_file.as_deref(), self.insecure)
            .context("setting up TLS")?;
        Ok(Some(if self.no_resumption { tls.without_resumption() } else { tls }))
    }
}

#[derive(Debug, Args)]
pub struct AuthArgs {
    /// Authenticate (SMTP AUTH) as USER. The password comes from the VOLLEY_AUTH_PASSWORD
    /// environment variable or --auth-password-file (for XOAUTH2, the access token).
    #[arg(long, value_name = "USER")]
    pub auth_user: Option<String>,
    /// Read the password (or XOAUTH2 token) from FILE: its first line.
    #[arg(long, value_name = "FILE", requires = "auth_user")]
    pub auth_password_file: Option<PathBuf>,
    /// Use this mechanism only [default: PLAIN, then LOGIN, then XOAUTH2, as offered].
    #[arg(long, value_enum, value_name = "MECH", requires = "auth_user", ignore_case = true)]
    pub auth_mech: Option<Mechanism>,
    /// Send credentials over a connection that is not encrypted (otherwise refused).
    #[arg(long, requires = "auth_user")]
    pub allow_plaintext_auth: bool,
}

impl AuthArgs {
    pub fn credentials(&self) -> anyhow::Result<Option<Arc<Credentials>>> {
        let Some(user) = &self.auth_user else { return Ok(None) };
        let secret = match &self.auth_password_file {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("--auth-password-file {}", path.display()))?;
                text.lines().next().unwrap_or("").to_owned()
            }
            None => match std::env::var(PASSWORD_ENV) {
                Ok(s) => s,
                Err(_) => {
                    bail!("--auth-user needs a password: set {PASSWORD_ENV} or give --auth-password-file")
                }
            },
        };
        if secret.is_empty() {
            bail!("the AUTH password is empty");
        }
        if user.contains(['\0', '\r', '\n']) || secret.contains(['\0', '\r', '\n']) {
            bail!("the AUTH user and password cannot contain NUL, CR or LF");
        }
        Ok(Some(Arc::new(Credentials {
            user: user.clone(),
            secret: Secret::new(secret),
            mechanism: self.auth_mech,
            allow_plaintext: self.allow_plaintext_auth,
        })))
    }
}

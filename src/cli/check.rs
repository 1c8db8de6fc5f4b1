//! `volley check`: the pre-flight table.

use std::io::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::Args;

use mailvolley::check::{self, Campaign, OneClick, Verdict};
use mailvolley::deliver::dane::DaneConfig;
use mailvolley::deliver::dkim::{Dkim, KeySpec};
use mailvolley::deliver::dns::DnsConfig;
use mailvolley::deliver::mta_sts::lookup::StsConfig;
use mailvolley::send::template::{address_in, header_of};
use mailvolley::send::unsubscribe::{Secret, Unsubscribe};

/// Exit codes of `volley check` (also in `--help` and the README).
pub const EXIT_DOC: &str = "Exit codes: 0 no check failed (warnings allowed); 1 at least one check failed; 2 usage \
error (a bad key file, an unreadable message, no From).";

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// The From header, as for `send` ('Name <addr@domain>'); or give --message.
    #[arg(long)]
    from: Option<String>,
    /// The envelope sender, as for `send` (a template: only its domain must be literal)
    /// [default: the From address].
    #[arg(long, value_name = "TEMPLATE")]
    mail_from: Option<String>,
    /// The message template `send` would use: its From header and List-Unsubscribe headers.
    #[arg(long, value_name = "FILE")]
    message: Option<PathBuf>,
    /// The DKIM keys `send` would sign with (repeatable): their public halves must be
    /// published at SELECTOR._domainkey.DOMAIN.
    #[arg(long, value_name = "DOMAIN:SELECTOR:KEYFILE", value_parser = parse_dkim)]
    dkim: Vec<KeySpec>,
    /// The unsubscribe URL `send` would use: the RFC 8058 headers are then volley's to add.
    #[arg(long, value_name = "URL")]
    unsubscribe_url: Option<String>,
    /// The IP address the campaign sends from: SPF must allow it, and its PTR must name a host
    /// that resolves back to it.
    #[arg(long, value_name = "IP")]
    source_ip: Option<IpAddr>,
    /// Transactional mail (receipts, password resets): no unsubscribe headers needed.
    #[arg(long)]
    transactional: bool,
    /// Ask this DNS server [default: the system's resolvers].
    #[arg(long, value_name = "IP:PORT")]
    dns_server: Option<SocketAddr>,
    #[arg(long, value_parser = super::duration, default_value = "5s")]
    dns_timeout: Duration,
    /// The receiving side instead (repeatable): the domain's MX hosts, its MTA-STS policy
    /// (fetched; every MX host must be listed) and its TLS-RPT record. Without --from or
    /// --message, only these rows.
    #[arg(long, value_name = "DOMAIN")]
    recipient_domain: Vec<String>,
    /// Check certificates of MTA-STS policy servers against the CA certificates in FILE
    /// instead of Mozilla's roots.
    #[arg(long, value_name = "FILE")]
    ca_file: Option<PathBuf>,
    /// The HTTPS port MTA-STS policies are fetched from (443; another for tests).
    #[arg(long, value_name = "PORT", default_value_t = 443)]
    mta_sts_port: u16,
    /// DNSSEC trust anchors for the DANE rows: DNSKEY records as a zone file writes them
    /// [default: the root zone's keys, built in].
    #[arg(long, value_name = "FILE")]
    dnssec_trust_anchor: Option<PathBuf>,
    /// Print the rows as JSON.
    #[arg(long)]
    json: bool,
}

fn parse_dkim(s: &str) -> Result<KeySpec, String> {
    s.parse().map_err(|e: mailvolley::deliver::dkim::DkimError| e.to_string())
}

/// The domain of an address written as `Name <a@b>`, `<a@b>` or `a@b`, if it is literal.
fn domain_of(text: &str) -> Option<String> {
    let (_, domain) = address_in(text)?.rsplit_once('@')?;
    let domain = domain.trim().trim_end_matches('.').to_ascii_lowercase();
    (!domain.is_empty() && !domain.contains(['{', '}', ' '])).then_some(domain)
}

pub fn run(args: CheckArgs) -> anyhow::Result<ExitCode> {
    let sts = StsConfig::new(args.ca_file.as_deref(), args.mta_sts_port, None)
        .context("setting up certificate checks")?;
    let dns_config = DnsConfig {
        server: args.dns_server,
        timeout: args.dns_timeout,
        mta_sts: Some(sts),
        // Only the recipient-side rows ask: no validating resolver for a sender's check alone.
        dane: (!args.recipient_domain.is_empty()).then(|| DaneConfig::new(args.dnssec_trust_anchor.clone())),
        ..DnsConfig::default()
    };
    let mut dns = check::dns::Dns::new(&dns_config).context("starting the DNS resolver")?;
    let sender = args.from.is_some() || args.message.is_some() || args.recipient_domain.is_empty();
    let mut rows = if sender { check::run(&campaign(&args)?, &mut dns) } else { Vec::new() };
    for domain in &args.recipient_domain {
        rows.extend(check::recipient::check(domain, &mut dns));
    }
    let mut out = std::io::stdout().lock();
    if args.json {
        serde_json::to_writer_pretty(&mut out, &rows)?;
        writeln!(out)?;
    } else {
        write!(out, "{}", check::table(&rows))?;
    }
    let failed = rows.iter().any(|r| r.verdict == Verdict::Fail);
    Ok(if failed { ExitCode::from(1) } else { ExitCode::SUCCESS })
}

/// What `send` would send, from the sender's flags.
fn campaign(args: &CheckArgs) -> anyhow::Result<Campaign> {
    let message = match &args.message {
        Some(path) => {
            Some(std::fs::read_to_string(path).with_context(|| format!("--message {}", path.display()))?)
        }
        None => None,
    };
    let from_header = message.as_deref().and_then(|m| header_of(m, "from"));
    let from_domain = match (&args.from, &from_header) {
        (Some(from), _) => {
            Some(domain_of(from).with_context(|| format!("--from {from}: no literal domain"))?)
        }
        (None, Some(header)) => domain_of(header),
        (None, None) => bail!("give --from, a --message with a From header, or --recipient-domain"),
    };
    let Some(from_domain) = from_domain else {
        bail!("the message's From header has no literal domain: give --from");
    };
    let envelope_domain = match &args.mail_from {
        Some(m) => {
            Some(domain_of(m).with_context(|| format!("--mail-from {m}: its domain must be literal"))?)
        }
        None => Some(from_domain.clone()),
    };
    let own_header = message.as_deref().and_then(|m| header_of(m, "list-unsubscribe"));
    if own_header.is_some() && args.unsubscribe_url.is_some() {
        bail!("the message has its own List-Unsubscribe header: `send` refuses it with --unsubscribe-url");
    }
    let one_click = match (&args.unsubscribe_url, &message) {
        (Some(url), _) => {
            // Checked as `send` would (https, one token); the secret plays no part here.
            let secret = Secret::new(b"volley check: the secret is not needed")?;
            Unsubscribe::new(Some(url), None, secret)?;
            OneClick::Flag
        }
        (None, Some(m)) if own_header.is_some() => {
            OneClick::Template(own_header, header_of(m, "list-unsubscribe-post"))
        }
        _ => OneClick::None,
    };
    Ok(Campaign {
        from_domain: Some(from_domain),
        envelope_domain,
        dkim: Dkim::load(&args.dkim)?,
        source_ip: args.source_ip,
        one_click,
        transactional: args.transactional,
    })
}

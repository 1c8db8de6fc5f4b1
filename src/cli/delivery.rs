//! Delivery flags shared by `send` and `serve`: where mail goes (MX hosts or a relay), how many
//! connections and how fast, shaping and bounce rules, the retry schedule, DKIM keys, and the
//! session settings. One set of flags, one meaning, one [`DeliveryConfig`].

use std::net::SocketAddr;
use std::num::{NonZeroU64, NonZeroUsize};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::Args;

use mailvolley::deliver::dane::DaneConfig;
use mailvolley::deliver::dkim::KeySpec;
use mailvolley::deliver::dns::DnsConfig;
use mailvolley::deliver::mta_sts::lookup::StsConfig;
use mailvolley::deliver::{DeliveryConfig, Routing};
use mailvolley::engine::{EngineConfig, Rate, Schedule};
use mailvolley::rt::Driver;
use mailvolley::tls::TlsPolicy;

use super::bench::resolve_target;
use super::connection::ConnectionArgs;
use super::secure::{AuthArgs, TlsArgs};

/// A feature turned on or off.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Switch {
    On,
    Off,
}

#[derive(Debug, Args)]
pub struct DeliveryArgs {
    /// DKIM-sign every message with this key (repeatable: one signature per key): the signing
    /// domain, the selector, and a PEM private key file, RSA (2048+ bits) or Ed25519.
    /// Relaxed/relaxed; signs From, To, Subject, Date, Message-ID, the MIME and
    /// List-Unsubscribe headers. `--dry-run` prints the TXT record to publish for each key.
    #[arg(long, value_name = "DOMAIN:SELECTOR:KEYFILE", value_parser = parse_dkim)]
    pub dkim: Vec<KeySpec>,
    /// Send everything through this smarthost (HOST[:PORT], port 25 when left out) instead of
    /// each domain's MX hosts.
    #[arg(long, value_name = "HOST:PORT")]
    relay: Option<String>,
    /// Resolve MX records with this DNS server [default: the system's resolvers].
    #[arg(long, value_name = "IP:PORT", conflicts_with = "relay")]
    dns_server: Option<SocketAddr>,
    /// How long one DNS query waits (two tries).
    #[arg(long, value_parser = super::duration, default_value = "5s")]
    dns_timeout: Duration,
    /// The port MX hosts are connected on.
    #[arg(long, default_value_t = 25, conflicts_with = "relay")]
    smtp_port: u16,
    /// MTA-STS (RFC 8461): look up each recipient domain's policy (`_mta-sts` TXT record, then
    /// https://mta-sts.DOMAIN/.well-known/mta-sts.txt) and keep to it: under `enforce`, mail
    /// goes only to the MX hosts it lists, over TLS with a certificate valid for the host's
    /// name (checked against Mozilla's roots, or --ca-file), else it is deferred
    /// (`tls_required`), never sent in plaintext. Not used with --relay.
    #[arg(long, value_enum, default_value_t = Switch::On, value_name = "on|off", ignore_case = true)]
    mta_sts: Switch,
    /// Keep MTA-STS policies in FILE between runs (JSON; written as policies are fetched and
    /// at the end), so a policy learnt once holds even when its fetch is later blocked
    /// [default: in memory for send; SPOOL/mta-sts.json for serve].
    #[arg(long, value_name = "FILE", conflicts_with = "relay")]
    mta_sts_cache: Option<PathBuf>,
    /// DANE (RFC 7672): look up each MX host's TLSA records (`_25._tcp.HOST`) with DNSSEC
    /// validation and keep to them: a host whose records validate gets mail only over TLS with
    /// a certificate that matches one (DANE-EE 3 or DANE-TA 2), a host whose records fail
    /// validation none at all; unsigned names change nothing. Off for the run, with a warning,
    /// when the DNS server's answers do not validate. Takes precedence over MTA-STS. Not used
    /// with --relay.
    #[arg(long, value_enum, default_value_t = Switch::On, value_name = "on|off", ignore_case = true)]
    dane: Switch,
    /// DNSSEC trust anchors for DANE: DNSKEY records as a zone file writes them
    /// (`. IN DNSKEY 257 3 8 AwEAA...`) [default: the root zone's keys, built in].
    #[arg(long, value_name = "FILE", conflicts_with = "relay")]
    dnssec_trust_anchor: Option<PathBuf>,
    /// The HTTPS port MTA-STS policies are fetched from (443; another for tests).
    #[arg(long, value_name = "PORT", default_value_t = 443, conflicts_with = "relay")]
    mta_sts_port: u16,
    /// Connections per destination (a set of MX hosts, which domains hosted together share, or
    /// the relay), across all threads. Large providers refuse or throttle more than a few per
    /// sending IP.
    #[arg(long, default_value = "10")]
    connections: NonZeroUsize,
    /// Messages per connection before it is closed and a new one opened. Providers cap
    /// transactions per session (often near 100) and close with a 4xx beyond it.
    #[arg(long, default_value = "100")]
    messages_per_connection: NonZeroU64,
    /// Messages per destination and unit of time, across all threads: `100/s`, `6000/min`,
    /// `20000/h` (evenly spaced) [default: no limit].
    #[arg(long, value_name = "RATE")]
    destination_rate: Option<Rate>,
    /// New connections per destination and unit of time, across all threads [default: no
    /// limit].
    #[arg(long, value_name = "RATE")]
    connection_rate: Option<Rate>,
    /// Messages per unit of time for the whole run, across all destinations and threads
    /// [default: no limit].
    #[arg(long, value_name = "RATE")]
    rate: Option<Rate>,
    /// Traffic shaping rules (TOML, like the shipped ones: see the README), tried before the
    /// shipped rules (repeatable): limits per destination by MX host suffix or recipient
    /// domain, in place of --connections, --messages-per-connection, --destination-rate and
    /// --connection-rate; and reactions that suspend or slow a destination whose replies ask
    /// for it (`421 4.7.0 [TSS04]`).
    #[arg(long, value_name = "FILE")]
    shaping: Vec<PathBuf>,
    /// Leave out the shipped shaping rules (limits for the large providers, reactions to their
    /// throttling replies).
    #[arg(long)]
    no_shaping_defaults: bool,
    /// First retry of a deferred recipient after this long; the wait doubles per attempt...
    #[arg(long, value_parser = super::duration, default_value = "1m")]
    retry_after: Duration,
    /// ...up to this.
    #[arg(long, value_parser = super::duration, default_value = "30m")]
    retry_max: Duration,
    /// A recipient still deferred this long after it was first tried is expired.
    #[arg(long, value_parser = super::duration, default_value = "2h")]
    max_age: Duration,
    /// Bounce classification rules (TOML, like the shipped ones: see the README) tried before
    /// the shipped rules (repeatable). Every deferred, bounced and expired record gets a
    /// category; the report counts them.
    #[arg(long, value_name = "FILE")]
    bounce_rules: Vec<PathBuf>,
    /// Transactions in flight per connection when the server offers CHUNKING (max 256).
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..=256))]
    pipeline_depth: u16,
    /// Engine threads, one runtime each, pinned to cores [default: all cores].
    #[arg(long)]
    threads: Option<NonZeroUsize>,
    /// I/O driver.
    #[arg(long, value_enum, default_value_t = Driver::Auto)]
    driver: Driver,
    #[command(flatten)]
    connection: ConnectionArgs,
    /// TLS: --starttls defaults to opportunistic (STARTTLS whenever offered).
    #[command(flatten)]
    tls: TlsArgs,
    #[command(flatten)]
    auth: AuthArgs,
    /// Name sent in EHLO: use the sending host's name (receivers check it).
    #[arg(long, default_value = "volley.invalid")]
    helo: String,
}

fn parse_dkim(s: &str) -> Result<KeySpec, String> {
    s.parse().map_err(|e: mailvolley::deliver::dkim::DkimError| e.to_string())
}

impl DeliveryArgs {
    /// This host's name, as given to servers (`--helo`).
    pub fn helo(&self) -> &str {
        &self.helo
    }

    /// Certificate checks for the HTTPS hosts TLS reports are POSTed to: Mozilla's roots, or
    /// `--ca-file`.
    pub fn https_tls(&self) -> anyhow::Result<std::sync::Arc<rustls::ClientConfig>> {
        let tls =
            mailvolley::tls::ClientTls::new(TlsPolicy::Verify, false, self.tls.ca_file.as_deref(), false)
                .context("setting up certificate checks for HTTPS")?;
        Ok(tls.config)
    }

    /// The delivery settings these flags say.
    pub fn config(&self) -> anyhow::Result<DeliveryConfig> {
        if self.retry_after.is_zero() || self.retry_max < self.retry_after {
            bail!("--retry-after must be above zero and at most --retry-max");
        }
        let mta_sts = self.relay.is_none() && self.mta_sts == Switch::On;
        // --ca-file also says which roots MTA-STS checks certificates against.
        let tls = self.tls.client_tls_with(TlsPolicy::Opportunistic, mta_sts)?;
        let credentials = self.auth.credentials()?;
        if credentials.is_some() && self.relay.is_none() {
            bail!("--auth-user is for a relay: give --relay (MX hosts take mail without AUTH)");
        }
        let mut client = self.connection.client(&self.helo)?;
        client.depth = usize::from(self.pipeline_depth);
        client.max_messages = self.messages_per_connection.get();
        client.auth = credentials;
        let mut engine = EngineConfig::new(client);
        self.connection.apply(&mut engine);
        if let Some(t) = self.threads {
            engine.threads = t.get();
        }
        engine.driver = self.driver;
        engine.tls = tls;
        let routing = match &self.relay {
            Some(relay) => Routing::Relay {
                name: relay
                    .rsplit_once(':')
                    .map_or(relay.as_str(), |(h, _)| h)
                    .trim_matches(['[', ']'])
                    .to_owned(),
                addrs: resolve_target(relay).with_context(|| format!("--relay {relay}"))?,
            },
            None => Routing::Mx {
                dns: DnsConfig {
                    server: self.dns_server,
                    timeout: self.dns_timeout,
                    mta_sts: mta_sts
                        .then(|| {
                            StsConfig::new(
                                self.tls.ca_file.as_deref(),
                                self.mta_sts_port,
                                self.mta_sts_cache.clone(),
                            )
                        })
                        .transpose()
                        .context("setting up certificate checks for MTA-STS")?,
                    dane: (self.dane == Switch::On)
                        .then(|| DaneConfig::new(self.dnssec_trust_anchor.clone())),
                    ..DnsConfig::default()
                },
                port: self.smtp_port,
            },
        };
        Ok(DeliveryConfig {
            engine,
            routing,
            connections: self.connections.get(),
            destination_rate: self.destination_rate,
            connection_rate: self.connection_rate,
            rate: self.rate,
            shaping: self.shaping.clone(),
            shaping_defaults: !self.no_shaping_defaults,
            bounce_rules: self.bounce_rules.clone(),
            schedule: Schedule { first: self.retry_after, max: self.retry_max, max_age: self.max_age },
            dkim: self.dkim.clone(),
        })
    }
}

//! Connection and session flags shared by every command that sends (`bench`, `send`): where to
//! connect from, which extensions to use, timeouts, what happens when connections fail.

use std::net::IpAddr;
use std::time::Duration;

use anyhow::Context as _;
use clap::Args;

use mailvolley::engine::EngineConfig;
use mailvolley::proto::{ClientConfig, Domain, Timeouts};

#[derive(Debug, Args)]
pub struct ConnectionArgs {
    /// Local address to connect from.
    #[arg(long, value_name = "IP")]
    pub source_addr: Option<IpAddr>,
    /// Do not use PIPELINING even when offered.
    #[arg(long)]
    no_pipelining: bool,
    /// Do not use CHUNKING (BDAT) even when offered.
    #[arg(long)]
    no_chunking: bool,
    #[command(flatten)]
    pub timeouts: TimeoutArgs,
    #[command(flatten)]
    reconnect: ReconnectArgs,
}

impl ConnectionArgs {
    /// Session settings saying `helo`, with these extensions and timeouts.
    pub fn client(&self, helo: &str) -> anyhow::Result<ClientConfig> {
        let mut client = ClientConfig::new(Domain::new(helo).context("--helo")?);
        client.pipelining = !self.no_pipelining;
        client.chunking = !self.no_chunking;
        client.timeouts = self.timeouts.timeouts();
        Ok(client)
    }

    /// The engine's share: connect timeout, reconnection, failing window, source address.
    pub fn apply(&self, config: &mut EngineConfig) {
        config.connect_timeout = self.timeouts.connect_timeout;
        config.reconnect_backoff = self.reconnect.reconnect_backoff;
        config.reconnect_backoff_max = self.reconnect.reconnect_backoff_max;
        config.failing_after = self.reconnect.failing_after;
        config.source_addr = self.source_addr;
    }
}

/// Per-phase limits. `--reply-timeout` sets every reply phase; the others override one.
#[derive(Debug, Args)]
pub struct TimeoutArgs {
    /// Waiting for a TCP connection.
    #[arg(long, value_parser = super::duration, default_value = "10s")]
    pub connect_timeout: Duration,
    /// Waiting for any reply, unless a phase below says otherwise.
    #[arg(long, value_parser = super::duration, default_value = "30s")]
    reply_timeout: Duration,
    /// Waiting for the greeting [default: --reply-timeout].
    #[arg(long, value_parser = super::duration)]
    greeting_timeout: Option<Duration>,
    /// Waiting for the reply to EHLO or HELO [default: --reply-timeout].
    #[arg(long, value_parser = super::duration)]
    ehlo_timeout: Option<Duration>,
    /// Waiting for the reply to MAIL FROM [default: --reply-timeout].
    #[arg(long, value_parser = super::duration)]
    mail_timeout: Option<Duration>,
    /// Waiting for the reply to RCPT TO [default: --reply-timeout].
    #[arg(long, value_parser = super::duration)]
    rcpt_timeout: Option<Duration>,
    /// Waiting for the reply to DATA (354) [default: --reply-timeout].
    #[arg(long, value_parser = super::duration)]
    data_timeout: Option<Duration>,
    /// Waiting for the reply to the end of data or BDAT LAST [default: --reply-timeout].
    #[arg(long, value_parser = super::duration)]
    eod_timeout: Option<Duration>,
    /// Quit connections idle this long.
    #[arg(long, value_parser = super::duration, default_value = "30s")]
    idle_timeout: Duration,
}

impl TimeoutArgs {
    fn timeouts(&self) -> Timeouts {
        let mut t = Timeouts::uniform(self.reply_timeout, self.idle_timeout);
        let set = |slot: &mut Duration, v: Option<Duration>| {
            if let Some(v) = v {
                *slot = v;
            }
        };
        set(&mut t.greeting, self.greeting_timeout);
        set(&mut t.ehlo, self.ehlo_timeout);
        set(&mut t.mail, self.mail_timeout);
        set(&mut t.rcpt, self.rcpt_timeout);
        set(&mut t.data, self.data_timeout);
        set(&mut t.end_of_data, self.eod_timeout);
        t
    }
}

/// What happens when connections or sessions fail.
#[derive(Debug, Args)]
pub struct ReconnectArgs {
    /// First wait before reconnecting after a connection that carried no message; doubles up
    /// to --reconnect-backoff-max, and starts over after a connection that carried one.
    #[arg(long, value_parser = super::duration, default_value = "100ms")]
    reconnect_backoff: Duration,
    /// Longest wait between reconnection attempts.
    #[arg(long, value_parser = super::duration, default_value = "5s")]
    reconnect_backoff_max: Duration,
    /// A target whose connections have all failed for this long (none getting a reply to a
    /// message) is failing: from then on each failed connection counts as an attempt for every
    /// waiting message. Before that, and while any connection works, only a message's own
    /// transactions count.
    #[arg(long, value_parser = super::duration, default_value = "10s")]
    failing_after: Duration,
}

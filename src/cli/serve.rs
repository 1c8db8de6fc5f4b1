//! `volley serve`.

use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clap::Args;

use mailvolley::cluster::limiter::LimiterConfig;
use mailvolley::cluster::limits::FleetLimits;
use mailvolley::deliver::Routing;
use mailvolley::deliver::bounce::Classifier;
use mailvolley::deliver::config::RulesFiles;
use mailvolley::deliver::dkim::Dkim;
use mailvolley::deliver::log::LogFile;
use mailvolley::deliver::tls_report::outbox::{self, OutboxConfig};
use mailvolley::engine::Reactions;
use mailvolley::serve::http::{self, HttpConfig};
use mailvolley::serve::keys::ApiKeys;
use mailvolley::serve::queue::Command;
use mailvolley::serve::run::{self, ServeConfig};
use mailvolley::serve::smtp::SpoolStore;
use mailvolley::serve::source::ACTIVE_RECIPIENTS;
use mailvolley::serve::spool;
use mailvolley::serve::tls_reports::TlsReportConfig;
use mailvolley::serve::webhook::send::{WebhookConfig, tls_config as webhook_tls};
use mailvolley::serve::webhook::sign::Secret;
use mailvolley::serve::webhook::{Webhook, WebhookUrl};
use mailvolley::sink::auth::Users;
use mailvolley::sink::{self, SinkConfig};
use mailvolley::tls::ServerTls;

use super::delivery::DeliveryArgs;
use super::metrics::MetricsArgs;

/// Exit codes of `volley serve`.
pub const EXIT_DOC: &str = "SIGHUP reads --api-keys, --admin-keys, --users, --shaping, --bounce-rules and \
--webhook-secret-file again, \
dropping no connection (if one is wrong, none is reloaded). Exit codes: 0 stopped on SIGTERM or Ctrl-C after finishing what was in flight (what is not \
final stays in the spool for the next start); 2 usage error or failure to start (the spool in use by another \
process, a listener that cannot bind); 3 the delivery log or the spool could not be written (a full disk): intake \
stopped, what was accepted stays in the spool.";

/// How long SMTP sessions under way at a stop may take to finish their messages.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Read flags from a TOML file first: each key a long flag's name (`smtp_listen =
    /// "0.0.0.0:25"`, `trusted_networks = ["10.0.0.0/8"]`, `quiet = true`). A flag also given
    /// on the command line wins.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// The spool: every accepted message until each of its recipients has a final record.
    /// One `volley serve` at a time may use it.
    #[arg(long, value_name = "DIR", default_value = "volley-spool")]
    spool: PathBuf,
    /// The delivery log (JSONL, as `send` writes it, plus a `received` record per accepted
    /// message); appended to across restarts [default: DIR/delivery.jsonl].
    #[arg(long, value_name = "FILE")]
    log: Option<PathBuf>,
    /// SMTP submission (STARTTLS, AUTH, PIPELINING, CHUNKING, SIZE, 8BITMIME).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:2525")]
    smtp_listen: SocketAddr,
    /// Also take submissions with implicit TLS here (port 465 style).
    #[arg(long, value_name = "ADDR")]
    smtps_listen: Option<SocketAddr>,
    /// The HTTP API (`POST /api/v1/messages`, `/api/v1/queue`, `GET /healthz`, `GET /metrics`),
    /// when --api-keys or --admin-keys is given.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8025")]
    http_listen: SocketAddr,
    /// Keys that may use the HTTP API (`Authorization: Bearer KEY`): `name:KEY` or
    /// `name:sha256:HEX` lines. Without it the API is off.
    #[arg(long, value_name = "FILE")]
    api_keys: Option<PathBuf>,
    /// Keys that may see and steer the queue over the API (`volley queue`: list, suspend,
    /// resume, retry-now, bounce), in --api-keys' format; --api-keys' keys cannot.
    #[arg(long, value_name = "FILE")]
    admin_keys: Option<PathBuf>,
    /// Users who may submit after AUTH PLAIN or LOGIN (over TLS only): `user:password` lines,
    /// or `user:$2y$...` bcrypt hashes as `htpasswd -nbB user password` prints them.
    #[arg(long, value_name = "FILE")]
    users: Option<PathBuf>,
    /// Clients in these networks may submit without AUTH (`127.0.0.1/32,10.0.0.0/8`).
    /// Anyone else must authenticate: volley relays for no stranger [default: none].
    #[arg(long, value_name = "CIDR,...", value_delimiter = ',', value_parser = parse_network)]
    trusted_networks: Vec<ipnet::IpNet>,
    /// The listener's certificate chain (PEM) [default: a self-signed one, made at start].
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The listener's private key (PEM).
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Largest message taken, in octets (advertised as SIZE; larger ones get 552).
    #[arg(long, value_name = "OCTETS", default_value_t = 25 * 1024 * 1024)]
    max_message_size: u64,
    /// Refuse new messages (452 "try later") while the spool's file system has less than
    /// this many octets free.
    #[arg(long, value_name = "OCTETS", default_value_t = 256 * 1024 * 1024)]
    min_free_space: u64,
    /// Report each recipient that bounced or expired to its message's envelope sender, as a
    /// delivery status notification (RFC 3464; never to the null sender): on or off.
    #[arg(long, value_name = "on|off", default_value = "on", value_parser = parse_on_off, action = clap::ArgAction::Set)]
    dsn: bool,
    /// Recipients held in memory at most, under way or due within a minute; the rest wait
    /// in the spool only and are read back as their time comes, so what is held does not
    /// grow with how many wait (a few hundred octets each held).
    #[arg(long, value_name = "N", default_value_t = NonZeroUsize::new(ACTIVE_RECIPIENTS).unwrap_or(NonZeroUsize::MIN))]
    active_recipients: NonZeroUsize,
    /// POST every record of the delivery log (received, deferred, delivered, bounced,
    /// expired, ...) as JSON to this URL (repeatable), signed with --webhook-secret-file, at
    /// least once: events wait in the spool until the receiver answers 2xx.
    #[arg(long = "webhook", value_name = "URL", value_parser = parse_webhook, requires = "webhook_secret_file")]
    webhooks: Vec<WebhookUrl>,
    /// The secret webhooks are signed with (`X-Volley-Signature`), one per line: each line
    /// signs, so a secret is rolled by adding the new one, reloading (SIGHUP), and removing
    /// the old one once receivers have the new.
    #[arg(long, value_name = "FILE")]
    webhook_secret_file: Option<PathBuf>,
    /// Trust these certificates (PEM) for `https://` webhooks, as well as the receiver's own
    /// [default: Mozilla's roots].
    #[arg(long, value_name = "FILE")]
    webhook_ca_file: Option<PathBuf>,
    /// Events in one webhook request at most (fewer go after a second's wait).
    #[arg(long, value_name = "N", default_value = "100")]
    webhook_batch: NonZeroUsize,
    /// How long a message's status (`GET /api/v1/messages/ID`) stays readable after it was
    /// received, once it has left the spool (what waits stays readable); 0: keep none. It is
    /// read from the delivery log, which must be kept as long.
    #[arg(long, value_name = "DURATION", default_value = "7d", value_parser = super::duration)]
    status_retention: Duration,
    /// Share each destination's connection limit, rates and reactions (and the --rate) with
    /// the other `volley serve`s given this URL, through Redis: they hold for the fleet, not
    /// per node. NAME names the fleet.
    #[arg(long, value_name = "redis://HOST:PORT/NAME", value_parser = super::parse_queue_url)]
    limits: Option<mailvolley::cluster::QueueUrl>,
    /// This node's name in the fleet: unique among its nodes (a second process with the name
    /// is refused) [default: the host name].
    #[arg(long, value_name = "NAME", requires = "limits", value_parser = super::parse_node_name)]
    node: Option<String>,
    /// The Redis password, from a file (never on the command line).
    #[arg(long, value_name = "FILE", requires = "limits")]
    redis_password_file: Option<PathBuf>,
    /// Send TLS reports (RFC 8460) each day to the domains that ask for them with an
    /// `_smtp._tls` record: how the TLS sessions to their MX hosts went under their MTA-STS
    /// or DANE policies. Mailed ones are DKIM-signed with --dkim and delivered from the spool;
    /// `https:` ones are POSTed. They are kept in SPOOL/tls-reports/ until sent (sent ones in
    /// its sent/); the day's counts survive a restart.
    #[arg(long, value_name = "on|off", default_value = "on", value_parser = parse_on_off, action = clap::ArgAction::Set)]
    tls_reports: bool,
    /// The TLS reports' From header and envelope sender: 'addr@domain' or 'Name <addr@domain>'
    /// [default: postmaster@ the --helo name, also the reports' contact].
    #[arg(long, value_name = "ADDR")]
    tls_report_from: Option<String>,
    /// A TLS report period: RFC 8460 asks for a day, which ends at midnight UTC (periods end
    /// at multiples of it since 1970). Shorter ones are for tests.
    #[arg(long, value_name = "DURATION", default_value = "1d", value_parser = super::duration)]
    tls_report_period: Duration,
    /// Threads taking submissions, one runtime each.
    #[arg(long, default_value = "1")]
    intake_threads: NonZeroUsize,
    #[command(flatten)]
    delivery: DeliveryArgs,
    #[command(flatten)]
    metrics: MetricsArgs,
    /// No live progress on stderr.
    #[arg(long)]
    quiet: bool,
}

/// The files serve reads at start and again on SIGHUP.
struct Files {
    keys: Option<ApiKeys>,
    admin_keys: Option<ApiKeys>,
    users: Option<Users>,
    webhook_secret: Option<Secret>,
}

impl Files {
    fn read(args: &ServeArgs) -> anyhow::Result<Files> {
        let keys = |path: &Option<PathBuf>, flag: &str| match path {
            Some(path) => ApiKeys::load(path).map(Some).with_context(|| flag.to_owned()),
            None => Ok(None),
        };
        let files = Files {
            keys: keys(&args.api_keys, "--api-keys")?,
            admin_keys: keys(&args.admin_keys, "--admin-keys")?,
            users: match &args.users {
                Some(path) => Some(Users::load(path).map_err(anyhow::Error::msg).context("--users")?),
                None => None,
            },
            webhook_secret: match &args.webhook_secret_file {
                Some(path) if !args.webhooks.is_empty() => Some(read_webhook_secret(path)?),
                _ => None,
            },
        };
        // A message's status is shown to the key named as its origin, which for SMTP is the
        // user: one name for both would show a user's messages to a key.
        if let (Some(keys), Some(users)) = (&files.keys, &files.users)
            && let Some(name) = keys.names().into_iter().find(|name| users.contains(name))
        {
            bail!("`{name}` is both an --api-keys name and a --users user: give them different names");
        }
        Ok(files)
    }
}

/// What SIGHUP replaces, in place, while everything runs: no listener, session or connection
/// is dropped. (Which files there are is fixed at start: a reload reads the same ones again.)
struct Reloadable {
    keys: Option<Arc<ApiKeys>>,
    admin_keys: Option<Arc<ApiKeys>>,
    users: Option<Arc<Users>>,
    reactions: Arc<Reactions>,
    classifier: Arc<Classifier>,
    rules_files: RulesFiles,
    webhook_secret: Option<Arc<arc_swap::ArcSwap<Secret>>>,
}

impl Reloadable {
    /// Reads every file again, and only if all of them are good replaces what they give: a
    /// mistake in one keeps the old settings of all. Says what it reloaded.
    fn reload(&self, args: &ServeArgs, serving: &run::Serving) -> anyhow::Result<String> {
        let files = Files::read(args)?;
        let shaping = self.rules_files.shaping().context("--shaping")?;
        let classifier = self.rules_files.classifier().context("--bounce-rules")?;
        let mut said = Vec::new();
        for (now, new, what) in
            [(&self.keys, files.keys, "API keys"), (&self.admin_keys, files.admin_keys, "admin keys")]
        {
            if let (Some(now), Some(new)) = (now, new) {
                said.push(format!("{} {what}", new.len()));
                now.replace(new);
            }
        }
        if let (Some(now), Some(new)) = (&self.users, files.users) {
            said.push(format!("{} users", new.len()));
            now.replace(new);
        }
        if let (Some(now), Some(new)) = (&self.webhook_secret, files.webhook_secret) {
            said.push("the webhook secret".into());
            now.store(Arc::new(new));
        }
        self.reactions.replace(shaping.reaction_rules());
        self.classifier.replace(classifier);
        let reshaped = serving
            .queue()
            .order_blocking(Command::Reshape(Box::new(shaping)))
            .map_err(anyhow::Error::new)
            .context("shaping rules")?;
        said.push(format!(
            "shaping rules ({} destinations made anew as they are next used)",
            reshaped["reshaped"]
        ));
        said.push("bounce rules".into());
        Ok(said.join(", "))
    }
}

fn read_webhook_secret(path: &std::path::Path) -> anyhow::Result<Secret> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("--webhook-secret-file {}", path.display()))?;
    Secret::from_file_text(&text)
        .with_context(|| format!("--webhook-secret-file {}: no secret in it", path.display()))
}

fn parse_webhook(s: &str) -> Result<WebhookUrl, String> {
    WebhookUrl::parse(s).map_err(|e| e.to_string())
}

/// The webhooks' settings (with the secret `files` read), if any are given.
fn webhook_config(args: &ServeArgs, secret: Option<Secret>) -> anyhow::Result<Option<WebhookConfig>> {
    let Some(secret) = secret.filter(|_| !args.webhooks.is_empty()) else { return Ok(None) };
    let secret = Arc::new(arc_swap::ArcSwap::from_pointee(secret));
    let tls = webhook_tls(args.webhook_ca_file.as_deref()).context("--webhook-ca-file")?;
    let mut seen = std::collections::HashSet::new();
    let webhooks = args
        .webhooks
        .iter()
        .filter(|u| seen.insert(u.id()))
        .map(|u| Arc::new(Webhook::new(u.clone())))
        .collect();
    Ok(Some(WebhookConfig { webhooks, secret, tls, batch: args.webhook_batch.get() }))
}

/// serve's TLS report settings, if reports are sent.
fn tls_report_config(args: &ServeArgs, routing: &Routing) -> anyhow::Result<Option<TlsReportConfig>> {
    if !args.tls_reports {
        return Ok(None);
    }
    if args.tls_report_period < Duration::from_secs(1) {
        bail!("--tls-report-period must be a second or more");
    }
    let hostname = args.delivery.helo().to_owned();
    let contact = format!("postmaster@{hostname}");
    Ok(Some(TlsReportConfig {
        period: args.tls_report_period,
        from: args.tls_report_from.clone().unwrap_or_else(|| contact.clone()),
        organization: hostname,
        contact,
        outbox: OutboxConfig {
            dir: args.spool.join("tls-reports"),
            dns: outbox::dns_for(routing),
            https: args.delivery.https_tls()?,
            stop: None,
        },
    }))
}

fn parse_on_off(s: &str) -> Result<bool, String> {
    match s {
        "on" => Ok(true),
        "off" => Ok(false),
        _ => Err("on or off".into()),
    }
}

/// A network (`10.0.0.0/8`), or one address (`127.0.0.1`).
fn parse_network(s: &str) -> Result<ipnet::IpNet, String> {
    s.parse::<ipnet::IpNet>()
        .or_else(|_| s.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
        .map_err(|_| format!("{s:?} is neither a network (10.0.0.0/8) nor an address"))
}

pub fn run(args: ServeArgs) -> anyhow::Result<ExitCode> {
    if args.users.is_none() && args.trusted_networks.is_empty() && args.api_keys.is_none() {
        bail!(
            "nobody could submit: give --users FILE (SMTP AUTH), --trusted-networks (e.g. 127.0.0.1/32 for \
             applications on this host) or --api-keys FILE (HTTP)"
        );
    }
    let files = Files::read(&args)?;
    let keys = files.keys.map(Arc::new);
    let admin_keys = files.admin_keys.map(Arc::new);
    let users = files.users.map(Arc::new);
    let webhooks = webhook_config(&args, files.webhook_secret)?;
    let webhook_secret = webhooks.as_ref().map(|w| Arc::clone(&w.secret));
    let mut delivery = args.delivery.config()?;
    delivery.keep_mta_sts_in(args.spool.join("mta-sts.json"));
    let rules_files = delivery.rules_files();
    let hostname = args.delivery.helo().to_owned();
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => ServerTls::from_files(cert, key)?,
        _ => ServerTls::self_signed(&[
            hostname.clone(),
            "localhost".into(),
            args.smtp_listen.ip().to_string(),
        ])?,
    };
    let dkim = Dkim::load(&delivery.dkim)?.map(Arc::new);
    let tls_reports = tls_report_config(&args, &delivery.routing)?;
    let shaping = rules_files.shaping()?;
    // Always there, even empty, so that a reload may bring some.
    let reactions = Arc::new(Reactions::new(shaping.reaction_rules()));
    let routes = delivery.routes(shaping).context("starting DNS")?;
    let classifier = Arc::new(rules_files.classifier()?);

    let spool = spool::open(&args.spool).with_context(|| format!("spool {}", args.spool.display()))?;
    let log_path = args.log.clone().unwrap_or_else(|| args.spool.join("delivery.jsonl"));
    let log = match log_path.exists() {
        true => {
            let (log, cut) =
                LogFile::reopen(&log_path).with_context(|| format!("log {}", log_path.display()))?;
            if cut > 0 {
                eprintln!(
                    "volley serve: cut {cut} octets of a half-written last line from {}",
                    log_path.display()
                );
            }
            log
        }
        false => LogFile::create(&log_path).with_context(|| format!("log {}", log_path.display()))?,
    };
    // A file size limit must surface as an error on the log, not kill the process (SIGXFSZ).
    // SAFETY: setting a signal's disposition to "ignore" has no preconditions.
    unsafe {
        libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
    }
    let limits = match &args.limits {
        Some(url) => Some(LimiterConfig {
            server: super::redis_server(url, args.redis_password_file.as_deref())?,
            node: args.node.clone().unwrap_or_else(mailvolley::cluster::default_node_name),
            limits: FleetLimits::new(),
            hold_name: true,
            who: "volley serve",
        }),
        None => None,
    };
    let interrupts = super::interrupts()?;
    let serving = run::start(
        ServeConfig {
            engine: delivery.engine,
            routes,
            schedule: delivery.schedule,
            classifier: Arc::clone(&classifier),
            reactions: Some(Arc::clone(&reactions)),
            rate: delivery.rate,
            log,
            progress: false,
            dkim,
            min_free_space: args.min_free_space,
            dsn_from: args.dsn.then(|| hostname.clone()),
            active_recipients: args.active_recipients.get(),
            webhooks,
            status_retention: (!args.status_retention.is_zero()).then_some(args.status_retention),
            limits,
            tls_reports,
        },
        spool,
    )?;
    let listener = sink::start(SinkConfig {
        listen: args.smtp_listen,
        threads: args.intake_threads.get(),
        hostname: hostname.clone(),
        max_size: args.max_message_size,
        tls: Some(tls),
        starttls: true,
        tls_listen: args.smtps_listen,
        auth: users.clone(),
        auth_needs_tls: true,
        store: Some(Arc::new(SpoolStore::new(serving.intake().clone(), &hostname))),
        trusted: args.trusted_networks.clone(),
        shutdown_grace: SHUTDOWN_GRACE,
        ..SinkConfig::default()
    });
    let listener = match listener {
        Ok(l) => l,
        Err(e) => {
            let _ = serving.stop();
            return Err(anyhow::Error::new(e).context("starting the SMTP listener"));
        }
    };
    let metrics = Arc::new(serving.metrics());
    let metrics_listener = match args.metrics.start(|| Arc::clone(&metrics)) {
        Ok(m) => m,
        Err(e) => {
            let _ = listener.stop();
            let _ = serving.stop();
            return Err(e);
        }
    };
    let mut http = match keys.is_some() || admin_keys.is_some() {
        true => {
            let config = HttpConfig {
                listen: args.http_listen,
                keys: keys.clone(),
                admin_keys: admin_keys.clone(),
                status: serving.status().cloned(),
                max_message_size: args.max_message_size,
                hostname: hostname.clone(),
            };
            let queue = serving.queue().clone();
            match http::start(config, serving.intake().clone(), queue, Some(Arc::clone(&metrics))) {
                Ok(h) => Some(h),
                Err(e) => {
                    let _ = listener.stop();
                    let _ = serving.stop();
                    return Err(anyhow::Error::new(e).context("starting the HTTP API"));
                }
            }
        }
        false => None,
    };
    eprintln!(
        "volley serve: SMTP on {}{}, {}{}, spool {} ({} waiting), log {}",
        listener.local_addr(),
        listener.tls_addr().map_or(String::new(), |a| format!(", implicit TLS on {a}")),
        http.as_ref().map_or("HTTP API off (no --api-keys or --admin-keys)".to_owned(), |h| format!(
            "HTTP on {}",
            h.local_addr()
        )),
        metrics_listener.as_ref().map_or(String::new(), |m| format!(", metrics on {}", m.local_addr())),
        args.spool.display(),
        serving.resumed(),
        log_path.display()
    );
    let reloadable =
        Reloadable { keys, admin_keys, users, reactions, classifier, rules_files, webhook_secret };
    let reload = super::reload_requests()?;
    let started = Instant::now();
    let mut shown = Instant::now();
    let mut failure = None;
    while interrupts.load(Ordering::Relaxed) == 0 {
        std::thread::sleep(Duration::from_millis(50));
        if reload.swap(false, Ordering::Relaxed) {
            match reloadable.reload(&args, &serving) {
                Ok(what) => eprintln!("volley serve: SIGHUP: reloaded {what}"),
                Err(e) => {
                    eprintln!("volley serve: SIGHUP: nothing reloaded, the settings stay as they were: {e:#}")
                }
            }
        }
        if let Some(why) = serving.failure() {
            eprintln!("volley serve: stopping: {why}");
            failure = Some(why);
            break;
        }
        if !args.quiet && shown.elapsed() >= Duration::from_secs(10) {
            shown = Instant::now();
            let flow = serving.flow();
            eprintln!(
                "volley serve: {:.0}s: {} recipients taken, {} final, {} waiting",
                started.elapsed().as_secs_f64(),
                flow.admitted.load(Ordering::Relaxed),
                flow.finalized.load(Ordering::Relaxed),
                flow.waiting.load(Ordering::Relaxed),
            );
        }
    }
    eprintln!("volley serve: stopping: no new messages; finishing those under way");
    // No new session, transaction or request from here (421, 503); the SMTP transactions and
    // HTTP requests under way finish (for the listener's grace at most), and only then does
    // intake close.
    listener.request_stop();
    if let Some(http) = &mut http {
        http.request_stop();
    }
    if let Some(http) = http {
        http.stop().context("stopping the HTTP API")?;
    }
    let counters = listener.join().context("stopping the SMTP listener")?;
    if let Some(m) = metrics_listener {
        m.stop().context("stopping the metrics listener")?;
    }
    serving.intake().stop();
    let commits = Arc::clone(serving.committer().stats());
    let (books, _spool) = serving.stop().context("stopping delivery")?;
    let t = &books.tally;
    eprintln!(
        "volley serve: stopped after {:.0}s: {} messages accepted over SMTP; delivered {} bounced {} expired {} \
         uncertain {} (deferred attempts {})",
        started.elapsed().as_secs_f64(),
        counters.messages_accepted,
        t.delivered,
        t.bounced,
        t.expired,
        t.uncertain,
        t.deferred
    );
    eprintln!(
        "volley serve: the spool took {} messages and {} changes of state in {} synced batches",
        commits.messages.load(Ordering::Relaxed),
        commits.changes.load(Ordering::Relaxed),
        commits.batches.load(Ordering::Relaxed),
    );
    if let Some(e) = &books.log_error {
        eprintln!("volley: {e}");
        return Ok(ExitCode::from(3));
    }
    if failure.is_some() {
        return Ok(ExitCode::from(3));
    }
    Ok(ExitCode::SUCCESS)
}

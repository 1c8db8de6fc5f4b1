//! `volley send`: a campaign from recipient rows and a message template, to each recipient's
//! MX hosts or a relay, through the same engine as `bench`.
//!
//! The flow, one thread each, no locks on the per-message path:
//! ```text
//! rows ─▶ source (producer thread: render, dedupe, route) ─▶ engine cores ─▶ outcomes
//!            ▲   ▲ DNS answers (dns thread)                                   │
//!            │   └──────────── retries when due ◀── ledger (log thread) ◀─────┘
//!            └──────────────── rejected/DNS reports ──▶ ledger ─▶ delivery log (group commit)
//! ```

pub mod dry_run;
pub mod hashing;
pub mod input;
pub mod resume;
pub mod source;
pub mod suppress;
pub mod template;
pub mod tls_reports;
pub mod unsubscribe;

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant, SystemTime};

use thiserror::Error;

use crate::cluster;
use crate::deliver::DeliveryConfig;
pub use crate::deliver::Routing;
use crate::deliver::ledger::{Books, Control, Ledger, LedgerConfig};
use crate::deliver::log::{LogFile, Record, Status};
use crate::deliver::tls_report::metrics::TlsReportCollector;
use crate::deliver::tls_report::run::{DomainTally, TlsReports};
use crate::deliver::{dkim, log, rules_file};
use crate::engine::{self, RetryPolicy};
use crate::metrics::delivery::{DeliveryMeter, DeliveryMetrics};
use crate::metrics::{EngineCollector, Metrics};
use input::Rows;
use source::{Input, SendSource, Shared, SourceConfig};
use template::{MessageSpec, MessageTemplate};

#[derive(Debug, Clone)]
pub struct SendConfig {
    /// Where and how mail goes, as for `serve`. `send` sets the engine's `outcomes`, and its
    /// `retry` to the schedule: the engine hands every deferral back.
    pub delivery: DeliveryConfig,
    /// The recipients file; `None` only for a node of a shared campaign that does not load it.
    pub recipients: Option<PathBuf>,
    /// A campaign shared with other nodes through Redis.
    pub queue: Option<QueueConfig>,
    /// The campaign's id (Message-IDs and unsubscribe tokens carry it) [default: a random
    /// one; a resumed run keeps its log's].
    pub campaign: Option<String>,
    pub message: MessageSpec,
    /// Send a duplicate address once.
    pub dedupe: bool,
    /// Lists of addresses and domains never sent to.
    pub suppress: Vec<PathBuf>,
    pub log: PathBuf,
    /// Continue `log`: skip recipients it has a final record for.
    pub resume: bool,
    /// Print live progress on stderr.
    pub progress: bool,
    /// Count the log's records for metrics (see [`Sending::metrics`]).
    pub metrics: bool,
    /// Write the run's TLS reports (RFC 8460) into this directory at the end, one per domain
    /// with an MTA-STS policy.
    pub tls_report: Option<PathBuf>,
}

/// A node's part in a campaign shared through Redis (see [`crate::cluster`]).
#[derive(Debug, Clone)]
pub struct QueueConfig {
    pub server: cluster::Server,
    /// This node's name: its consumer in the group, and its counts.
    pub node: String,
    /// Rows idle this long under another node are taken over.
    pub claim_idle: Duration,
}

#[derive(Debug, Error)]
pub enum SendError {
    #[error("recipients {path}: {error}")]
    Input { path: String, error: std::io::Error },
    #[error(transparent)]
    Template(#[from] template::TemplateError),
    /// The campaign shared through Redis refused this node, or Redis could not be reached.
    #[error(transparent)]
    Cluster(#[from] cluster::ClusterError),
    #[error("--queue: the recipients must be a file ({0} cannot be read again by a loader that takes over)")]
    QueueFromStream(String),
    #[error(transparent)]
    Dkim(#[from] dkim::DkimError),
    #[error(transparent)]
    Suppress(#[from] suppress::SuppressError),
    /// A bounce or shaping rules file.
    #[error(transparent)]
    Rules(#[from] rules_file::RulesError),
    #[error("delivery log {path}: {error}")]
    Log { path: String, error: std::io::Error },
    /// The log could not be opened for this run (in use, exists, not a log): nothing was sent.
    #[error("delivery log {path} {error}")]
    LogOpen { path: String, error: log::OpenError },
    #[error("DNS: {0}")]
    Dns(std::io::Error),
    #[error("starting the engine: {0}")]
    Engine(std::io::Error),
    #[error("writing the dry run's output: {0}")]
    Output(std::io::Error),
    #[error(
        "--resume {log}: the recipients file {path} is not the one the campaign started with (its size or \
         content changed). Rows are known by their line, so resuming would skip or resend the wrong \
         recipients: restore the original file, or start a new campaign with another --log"
    )]
    InputChanged { path: String, log: String },
}

/// A campaign under way.
pub struct Sending {
    running: engine::Running,
    ledger: std::thread::JoinHandle<Books>,
    control: Arc<Control>,
    shared: Arc<Shared>,
    started: Instant,
    campaign: String,
    resumed: Option<u64>,
    cut_tail: u64,
    stopped: bool,
    delivery_metrics: Option<Arc<DeliveryMetrics>>,
    worker: Option<cluster::worker::WorkerHandle>,
    /// A node of a shared campaign: its fleet-wide limits.
    limiter: Option<cluster::limiter::Limiter>,
    /// The run's TLS reports (with MTA-STS), and where to write them.
    tls_reports: Option<Arc<TlsReports>>,
    tls_report_dir: Option<PathBuf>,
    /// The sender's name in TLS reports (the EHLO name).
    helo: String,
}

/// How a campaign ended.
#[derive(Debug, Clone)]
pub struct SendReport {
    pub campaign: String,
    pub books: Books,
    pub elapsed: Duration,
    /// Rows read and not skipped, and rows skipped as final in the resumed log.
    pub admitted: u64,
    pub skipped: u64,
    /// Final records the resumed log already had.
    pub resumed_finals: Option<u64>,
    /// Recipients left without a final record (stopped early): `--resume` sends them.
    pub unfinished: u64,
    /// Whether every row of the input was read (a run stopped early may not get that far).
    pub input_done: bool,
    pub input_error: Option<String>,
    pub stopped: bool,
    pub engine: engine::Report,
    /// A node of a shared campaign: what its worker did.
    pub cluster: Option<cluster::worker::WorkerReport>,
    /// Sessions per domain with an MTA-STS policy (TLS reporting's figures).
    pub tls: Vec<DomainTally>,
    /// The TLS report files written (`SendConfig::tls_report`), or why they could not be.
    pub tls_report_files: Result<Vec<PathBuf>, String>,
}

impl SendReport {
    /// Every admitted recipient has its final record, in the log.
    pub fn all_final(&self) -> bool {
        self.unfinished == 0
            && self.input_done
            && self.books.log_error.is_none()
            && self.input_error.is_none()
    }
}

impl SendConfig {
    /// The message template, with the DKIM keys loaded (a bad key stops the run here).
    pub fn template(&self, campaign: &str) -> Result<MessageTemplate, SendError> {
        let mut template = MessageTemplate::new(&self.message, campaign)?;
        if let Some(dkim) = dkim::Dkim::load(&self.delivery.dkim)? {
            template.sign_with(dkim);
        }
        Ok(template)
    }
}

/// Checks a campaign id given by the user: it goes into Message-IDs (`<id.line@domain>`).
pub fn check_campaign_id(id: &str) -> Result<(), String> {
    if id.is_empty() || id.len() > 64 {
        return Err("must be 1 to 64 characters".into());
    }
    if !id.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        || id.starts_with('.')
        || id.ends_with('.')
    {
        return Err("may hold letters, digits, `-`, `_` and inner `.` only (it goes into Message-IDs)".into());
    }
    Ok(())
}

/// A campaign id: Message-IDs carry it, so each run's are unique and a resumed run keeps them.
pub fn new_campaign_id() -> String {
    let nanos = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
    let mut rng = crate::rng::Rng::new(nanos ^ (u64::from(std::process::id()) << 32));
    format!("{:012x}", rng.next_u64() >> 16)
}

/// Starts a campaign. Errors here are the user's to fix (bad template, unreadable input, a log
/// that exists already); nothing has been sent.
pub fn start(config: SendConfig) -> Result<Sending, SendError> {
    let path_text = |p: &Path| p.display().to_string();
    // A resumed log first: its lock keeps a second run on it from reading or sending anything.
    // A new one last, so that a run refused for its template or input leaves no log behind.
    let log_error = |error| SendError::LogOpen { path: path_text(&config.log), error };
    let (resumed_log, resumed) = match config.resume {
        true => resume::open(&config.log).map(|(log, r)| (Some(log), Some(r))).map_err(log_error)?,
        false => (None, None),
    };
    let cut_tail = resumed.as_ref().map_or(0, |r| r.cut_tail);
    let campaign = match &config.queue {
        Some(queue) => queue.server.url.campaign.clone(),
        None => resumed
            .as_ref()
            .and_then(|r| r.campaign.clone())
            .or_else(|| config.campaign.clone())
            .unwrap_or_else(new_campaign_id),
    };
    let mut template = config.template(&campaign)?;
    let suppress = suppress::Suppressions::load(&config.suppress)?;
    let classifier = Arc::new(config.delivery.classifier()?);
    let input_error = |path: &Path, error| SendError::Input { path: path_text(path), error };
    let digest = match &config.recipients {
        Some(path) => input::digest(path).map_err(|e| input_error(path, e))?,
        None => None,
    };
    if let (Some(was), Some(now), Some(path)) =
        (resumed.as_ref().and_then(|r| r.input_digest.as_ref()), &digest, &config.recipients)
    {
        if was != now {
            let (path, log) = (path_text(path), path_text(&config.log));
            return Err(SendError::InputChanged { path, log });
        }
    }
    let shared = Arc::new(Shared::default());
    // A shared campaign's destinations share their limits with the other nodes.
    let limits = config.queue.as_ref().map(|_| cluster::limits::FleetLimits::new());
    let (input, worker, acks, run_input) = match (&config.queue, &config.recipients) {
        (Some(queue), recipients) => {
            let load = match (recipients, &digest) {
                (Some(path), Some(digest)) => Some(cluster::load::Input {
                    path: path.clone(),
                    digest: digest.clone(),
                    dedupe: config.dedupe,
                }),
                (Some(path), None) => return Err(SendError::QueueFromStream(path_text(path))),
                (None, _) => None,
            };
            let joined = cluster::load::join(&queue.server, &queue.node, &config.message.digest(), load)?;
            if let Some(columns) = &joined.columns {
                template.bind_columns(columns);
            }
            let (rows, acks, worker) = cluster::worker::start(cluster::worker::WorkerConfig {
                server: queue.server.clone(),
                node: queue.node.clone(),
                claim_idle: queue.claim_idle,
                columns: joined.columns,
                loader_error: joined.loader_error,
            })?;
            let name = format!("redis {}/{campaign} as node {}", queue.server.url.server, queue.node);
            (Input::Queue(rows), Some(worker), Some(acks), name)
        }
        (None, Some(path)) => {
            let rows = Rows::open(path).map_err(|e| input_error(path, e))?;
            if let Some(columns) = rows.columns() {
                template.bind_columns(columns);
            }
            (Input::File(rows), None, None, path_text(path))
        }
        (None, None) => {
            let error = std::io::Error::new(std::io::ErrorKind::InvalidInput, "no recipients given");
            return Err(SendError::Input { path: String::new(), error });
        }
    };
    let template = Arc::new(template);
    let shaping = config.delivery.shaping()?;
    let reactions = shaping.reactions();
    let mut routes = config.delivery.routes(shaping).map_err(SendError::Dns)?;
    let tls_reports = routes.tls_reports();
    let limiter = match (&limits, &config.queue) {
        (Some(limits), Some(queue)) => {
            routes.on_new_destination(limits.hook());
            Some(cluster::limiter::Limiter::start(cluster::limiter::LimiterConfig {
                server: queue.server.clone(),
                node: queue.node.clone(),
                limits: limits.clone(),
                hold_name: false,
                who: "volley send",
            })?)
        }
        _ => None,
    };
    let mut log = match resumed_log {
        Some(log) => log,
        None => LogFile::create(&config.log).map_err(log_error)?,
    };
    let mut run = Record::new(Status::Run, 0);
    run.campaign = Some(campaign.clone());
    run.input = Some(run_input);
    run.input_digest = digest;
    log.write(&run);
    log.sync().map_err(|e| SendError::Log { path: path_text(&config.log), error: e.error })?;

    let (reports_tx, reports_rx) = mpsc::sync_channel(8192);
    let (retries_tx, retries_rx) = mpsc::channel();
    let resumed_finals = resumed.as_ref().map(|r| r.final_count);
    let source = SendSource::new(SourceConfig {
        input,
        template,
        routes,
        dedupe: config.dedupe,
        suppress,
        resume: resumed,
        retries: retries_rx,
        reports: reports_tx,
        shared: Arc::clone(&shared),
    });
    let retry = RetryPolicy::Scheduled(config.delivery.schedule);
    let mut engine_config =
        crate::deliver::engine_config(config.delivery.engine.clone(), retry, reactions, config.delivery.rate);
    if let (Some(limits), Some(rate)) = (&limits, config.delivery.rate) {
        engine_config.rate_fleet = Some(limits.run_rate(rate));
    }
    let running = engine::start(engine_config, Box::new(source)).map_err(SendError::Engine)?;
    let control = Arc::new(Control::default());
    let mut ledger = Ledger::new(LedgerConfig {
        log,
        outcomes: running.outcomes().to_vec(),
        events: running.shaping_events(),
        reports: reports_rx,
        retries: retries_tx,
        flow: Arc::clone(&shared.flow),
        retry,
        classifier,
        progress: config.progress,
    })
    .wake_when_all_final(running.producer_thread())
    .show_sessions(running.progress());
    if let Some(acks) = acks {
        // A shared campaign's rows are acknowledged once their final records are durable, and
        // its end is known only then.
        ledger = ledger.on_durable(acks.hook()).sync_when_all_final();
    }
    if let Some(limits) = &limits {
        // And the reactions this node's engine applies are applied by every node.
        ledger = ledger.on_shaping(limits.shaping_hook());
    }
    let (ledger, delivery_metrics) = match config.metrics {
        true => {
            let meter = DeliveryMeter::new();
            let metrics = meter.metrics();
            (ledger.with_metrics(meter), Some(metrics))
        }
        false => (ledger, None),
    };
    let ledger = ledger.spawn(Arc::clone(&control)).map_err(SendError::Engine)?;
    running.set_outcome_reader(ledger.thread().clone());
    Ok(Sending {
        running,
        ledger,
        control,
        shared,
        started: Instant::now(),
        campaign,
        resumed: resumed_finals,
        cut_tail,
        stopped: false,
        delivery_metrics,
        worker,
        limiter,
        tls_reports,
        tls_report_dir: config.tls_report.clone(),
        helo: config.delivery.engine.client.helo_domain.as_str().to_owned(),
    })
}

impl Sending {
    /// The cores' counters now (see [`engine::Running::snapshot`]).
    pub fn snapshot(&self) -> engine::Snapshot {
        self.running.snapshot()
    }

    /// The campaign's metrics: the cores', the delivery log's when counted
    /// ([`SendConfig::metrics`]), and the TLS sessions the TLS reports count (MTA-STS or DANE
    /// on).
    pub fn metrics(&self) -> Metrics {
        let mut metrics = Metrics::new();
        metrics.register(EngineCollector::new(self.running.progress()));
        if let Some(delivery) = &self.delivery_metrics {
            metrics.register(Arc::clone(delivery));
        }
        if let Some(reports) = &self.tls_reports {
            metrics.register(TlsReportCollector { reports: Arc::clone(reports), counts: None });
        }
        metrics
    }

    /// Stops taking recipients; what is in flight finishes and is logged. Retries not yet due
    /// are left for `--resume`.
    pub fn stop(&mut self) {
        self.stopped = true;
        self.running.halt();
    }

    /// Stops at once: sessions abandon what they hold (logged deferred).
    pub fn abort(&mut self) {
        self.stopped = true;
        self.running.stop_producing();
        self.running.abort();
    }

    /// Octets of a half-written last line (a killed run's) cut from the resumed log.
    pub fn cut_tail(&self) -> u64 {
        self.cut_tail
    }

    /// The log cannot be written: the caller must stop the run.
    pub fn log_failed(&self) -> bool {
        self.control.log_failed.load(Ordering::Acquire)
    }

    pub fn is_finished(&self) -> bool {
        self.running.is_finished()
    }

    /// Waits for the engine and the log thread, and reports.
    pub fn finish(self) -> std::io::Result<SendReport> {
        let report = self.running.join()?;
        self.control.engine_done.store(true, Ordering::Release);
        // The log thread may be in a long idle wait: the run's end should not wait for it.
        self.ledger.thread().unpark();
        let books = self.ledger.join().map_err(|_| std::io::Error::other("the log thread panicked"))?;
        // After the ledger: its last commit's final rows are acknowledged too.
        let mut cluster = self.worker.map(|w| w.finish());
        // The engine's connections are closed: their leases go back to the fleet.
        let limit_calls = self.limiter.map_or(0, |l| l.stop());
        if let Some(cluster) = &mut cluster {
            cluster.commands += limit_calls;
        }
        let admitted = self.shared.flow.admitted.load(Ordering::Acquire);
        let unfinished = admitted.saturating_sub(books.tally.finals());
        let input_error = self.shared.input_error.lock().ok().and_then(|e| e.clone());
        let tls = self.tls_reports.as_ref().map(|r| r.tallies()).unwrap_or_default();
        let tls_report_files = match (&self.tls_reports, &self.tls_report_dir) {
            (Some(reports), Some(dir)) => reports
                .write(dir, &self.helo, &format!("postmaster@{}", self.helo))
                .map_err(|e| format!("--tls-report {}: {e}", dir.display())),
            _ => Ok(Vec::new()),
        };
        Ok(SendReport {
            tls,
            tls_report_files,
            campaign: self.campaign,
            elapsed: self.started.elapsed(),
            admitted,
            skipped: self.shared.skipped.load(Ordering::Acquire),
            resumed_finals: self.resumed,
            unfinished,
            input_done: self.shared.input_done.load(Ordering::Acquire),
            input_error,
            stopped: self.stopped || books.log_error.is_some(),
            books,
            engine: report,
            cluster,
        })
    }
}

/// The default log path: next to the input, named for the input and the start time
/// (`list.csv` → `list.volley-20261123T102640Z.jsonl`); for stdin, in the working directory.
pub fn default_log_path(recipients: &Path) -> PathBuf {
    let stem = recipients.file_stem().and_then(|s| s.to_str()).filter(|s| *s != "-").unwrap_or("stdin");
    let name = stamped_log_name(stem);
    match recipients.parent().filter(|p| !p.as_os_str().is_empty() && recipients != Path::new("-")) {
        Some(dir) => dir.join(name),
        None => PathBuf::from(name),
    }
}

/// The default log path of a node of a shared campaign: in the working directory, named for
/// the campaign, the node and the start time (`spring.node1.volley-20261123T102640Z.jsonl`).
pub fn default_node_log_path(campaign: &str, node: &str) -> PathBuf {
    PathBuf::from(stamped_log_name(&format!("{campaign}.{node}")))
}

fn stamped_log_name(stem: &str) -> String {
    let stamp = humantime::format_rfc3339_seconds(SystemTime::now()).to_string().replace([':', '-'], "");
    format!("{stem}.volley-{stamp}.jsonl")
}

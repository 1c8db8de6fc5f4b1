//! Delivery on a spool: the group-commit writer, the engine fed by the spool's job source, and
//! the ledger, whose durable records flow back into the spool. What is fsync'd before what:
//! 1. a message is durable in the spool before intake hears its id (and answers 250 / 202);
//! 2. it is then handed to delivery;
//! 3. a recipient's record is durable in the log before the spool learns its new state
//!    (final: the recipient, and with the last one the message, leaves the spool; deferred: its
//!    next attempt and when), together with how far into the log the spool is now up to date
//!    (its watermark); that state batch is not synced of its own (the log is), so a crash
//!    takes the watermark back at worst. So the spool never runs ahead of the log; and a stop
//!    between 3's two writes is caught up at the next start, which reads the log from the
//!    watermark and marks final every recipient a record there says is ([`reconcile`]) before
//!    anything is sent.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Instant, SystemTime};

use thiserror::Error;

use super::commit::{Committer, Notify, Recorded, Ticket};
use super::intake::Intake;
use super::metrics::ServeCollector;
use super::queue::{QueueControl, QueueHandle, SUSPENSIONS, suspensions_of};
use super::source::{SpoolSource, wall_ms_of};
use super::spool::FromLog;
use super::spool::{Change, Spool, SpoolError, Status, of_recipient_id};
use super::status::{StatusReader, entries_of, entry_of};
use super::tls_reports::{Reporter, SETTING as TLS_SETTING, TlsReportConfig, save as save_tls};
use super::webhook::send::{Sender, WebhookConfig};
use super::webhook::{Webhook, WebhookCollector, count_queued, events_of};
use crate::cluster::limiter::{Limiter, LimiterConfig};
use crate::deliver::bounce::Classifier;
use crate::deliver::dispatch::Dispatch;
use crate::deliver::dkim::Dkim;
use crate::deliver::ledger::{Books, Control, Durable, Flow, Ledger, LedgerConfig, Settled};
use crate::deliver::log::{Head, LogFile, Status as LogStatus};
use crate::deliver::route::Routes;
use crate::deliver::tls_report::metrics::{ReportCounts, TlsReportCollector};
use crate::deliver::tls_report::run::TlsReports;
use crate::engine::{self, EngineConfig, Rate, Reactions, RetryPolicy, Schedule};
use crate::metrics::delivery::{DeliveryMeter, DeliveryMetrics};
use crate::metrics::{EngineCollector, Metrics};
use std::sync::atomic::Ordering;
use std::time::Duration;

/// How often status entries past their retention are looked for.
const PURGE_EVERY: Duration = Duration::from_secs(60);

/// Accepted messages handed to delivery and not yet taken by it, before intake waits.
const ARRIVALS: usize = 4096;

/// What delivery on a spool needs.
pub struct ServeConfig {
    /// Session, TLS and connection settings; the store-and-forward ones are added
    /// (`deliver::engine_config`).
    pub engine: EngineConfig,
    pub routes: Routes,
    pub schedule: Schedule,
    pub classifier: Arc<Classifier>,
    pub reactions: Option<Arc<Reactions>>,
    pub rate: Option<Rate>,
    pub log: LogFile,
    /// Print live progress on stderr.
    pub progress: bool,
    /// Sign every accepted message with these keys.
    pub dkim: Option<Arc<Dkim>>,
    /// Refuse new messages (try later) while the spool's disk has less than this free.
    pub min_free_space: u64,
    /// Report bounced and expired recipients to their messages' senders (RFC 3464), as this
    /// host; `None`: no reports.
    pub dsn_from: Option<String>,
    /// Recipients held in memory at most (under way or due soon); the rest wait in the spool
    /// only (`--active-recipients`; see [`super::source`]).
    pub active_recipients: usize,
    /// Where to POST every record of the log (see [`super::webhook`]); `None`: nowhere.
    pub webhooks: Option<WebhookConfig>,
    /// How long a message's status stays readable after it was received (see
    /// [`super::status`]); `None`: no status is kept.
    pub status_retention: Option<Duration>,
    /// Share the connection limits, rates and reactions with the other nodes of a fleet
    /// through Redis (`--limits`); `None`: this node's own.
    pub limits: Option<LimiterConfig>,
    /// Send the TLS reports the routes record (with MTA-STS or DANE on) at each period's end;
    /// `None`: they are counted (for metrics) but not sent.
    pub tls_reports: Option<TlsReportConfig>,
}

#[derive(Debug, Error)]
pub enum ServeError {
    #[error("spool: {0}")]
    Spool(#[from] SpoolError),
    #[error("starting: {0}")]
    Start(std::io::Error),
    #[error("reading the delivery log {path}: {error}")]
    Log { path: String, error: std::io::Error },
    #[error("stopping: {0}")]
    Stop(std::io::Error),
    #[error("--limits: {0}")]
    Limits(#[from] crate::cluster::ClusterError),
}

/// Delivery under way on a spool.
pub struct Serving {
    committer: Arc<Committer>,
    intake: Intake,
    running: engine::Running,
    ledger: JoinHandle<Books>,
    control: Arc<Control>,
    flow: Arc<Flow>,
    /// Recipients the spool held when delivery started.
    resumed: usize,
    delivery_metrics: Arc<DeliveryMetrics>,
    spool_dir: PathBuf,
    queue: QueueHandle,
    /// The webhooks' sender, and the webhooks.
    sender: Option<Sender>,
    status: Option<StatusReader>,
    hooks: Vec<Arc<Webhook>>,
    /// The fleet-wide limits' thread (`--limits`).
    limiter: Option<Limiter>,
    /// The TLS reports recorded, what became of those sent, and the thread sending them.
    tls: Option<(Arc<TlsReports>, Arc<ReportCounts>)>,
    reporter: Option<Reporter>,
}

/// Starts delivering what `spool` holds, and what is accepted from now on. `log` is the
/// delivery log the spool's earlier deliveries were recorded in, reopened (or a new one).
pub fn start(config: ServeConfig, mut spool: Box<dyn Spool>) -> Result<Serving, ServeError> {
    let ServeConfig {
        engine,
        mut routes,
        schedule,
        classifier,
        reactions,
        rate,
        log,
        progress,
        dkim,
        min_free_space,
        dsn_from,
        active_recipients,
        webhooks,
        status_retention,
        limits,
        tls_reports,
    } = config;
    // The fleet's limits first: a Redis that cannot be reached, or another node with this
    // one's name, stops the start before anything is taken on.
    let fleet = limits.as_ref().map(|l| l.limits.clone());
    if let Some(fleet) = &fleet {
        routes.on_new_destination(fleet.hook());
    }
    let limiter = limits.map(Limiter::start).transpose()?;
    let spool_dir = spool.path().to_owned();
    let hooks: Vec<Arc<Webhook>> = webhooks.as_ref().map_or_else(Vec::new, |w| w.webhooks.clone());
    let ids: Vec<u64> = hooks.iter().map(|w| w.id).collect();
    let dropped = spool.keep_events_of(&ids)?;
    if dropped > 0 {
        eprintln!("volley serve: dropped {dropped} webhook events queued for webhooks no longer given");
    }
    reconcile(&mut *spool, &log, &hooks, status_retention.is_some())?;
    for w in &hooks {
        w.stats.waiting_at_start.store(spool.reader().event_count(w.id)? as u64, Ordering::Relaxed);
    }
    let flow = Arc::new(Flow::default());
    let (reports_tx, reports_rx) = mpsc::sync_channel(8192);
    let (retries_tx, retries_rx) = mpsc::channel();
    let (arrivals, arrivals_rx) = mpsc::sync_channel(ARRIVALS);
    let (recorded_tx, recorded_rx) = mpsc::channel();
    let keep_records = !hooks.is_empty() || status_retention.is_some();
    let status =
        status_retention.map(|_| StatusReader { reader: spool.reader(), log: log.path().to_owned() });
    let tls = routes.tls_reports().map(|r| (r, Arc::new(ReportCounts::default())));
    // The report period an earlier run kept: taken up, or (ended meanwhile) reported first.
    let ended = match (&tls, &tls_reports, spool.setting(TLS_SETTING)?) {
        (Some((reports, _)), Some(config), Some(saved)) => {
            reports.resume(&saved, config.period).unwrap_or_else(|e| {
                eprintln!("volley serve: TLS reports: the counts kept in the spool are lost: {e}");
                None
            })
        }
        _ => None,
    };
    let dispatch = Dispatch::new(routes, retries_rx, reports_tx);
    let reader = spool.reader();
    let last_id = spool.last_id();
    let suspensions = suspensions_of(spool.setting(SUSPENSIONS)?.as_deref())?;
    let notify = dsn_from.map(|hostname| Notify { hostname, arrivals: arrivals.clone() });
    let committer = Arc::new(Committer::start(spool, notify, Some(recorded_tx)).map_err(ServeError::Start)?);
    let (orders, orders_rx) = mpsc::channel();
    let queue = QueueControl::new(
        orders_rx,
        Arc::clone(&committer),
        Arc::clone(&reader),
        suspensions,
        schedule.max_age,
    );
    let mut source = SpoolSource::new(
        dispatch,
        arrivals_rx,
        recorded_rx,
        Arc::clone(&flow),
        Arc::clone(&reader),
        active_recipients.max(1),
    )
    .with_queue(queue);
    let resumed = match source.resume(last_id) {
        Ok(resumed) => resumed,
        Err(e) => {
            committer.stop();
            return Err(e.into());
        }
    };
    let retry = RetryPolicy::Scheduled(schedule);
    let mut engine_config = crate::deliver::engine_config(engine, retry, reactions, rate);
    if let (Some(fleet), Some(rate)) = (&fleet, rate) {
        engine_config.rate_fleet = Some(fleet.run_rate(rate));
    }
    let running = engine::start(engine_config, Box::new(source)).map_err(ServeError::Start)?;
    let control = Arc::new(Control::default());
    let writer = Arc::clone(&committer);
    let meter = DeliveryMeter::new();
    let delivery_metrics = meter.metrics();
    let event_hooks = hooks.clone();
    let mut ledger = Ledger::new(LedgerConfig {
        log,
        outcomes: running.outcomes().to_vec(),
        events: running.shaping_events(),
        reports: reports_rx,
        retries: retries_tx,
        flow: Arc::clone(&flow),
        retry,
        classifier,
        progress,
    })
    .show_sessions(running.progress())
    .with_metrics(meter);
    if keep_records {
        ledger = ledger.keep_records();
    }
    if let Some(fleet) = &fleet {
        // The reactions this node's engine applies are applied by every node.
        ledger = ledger.on_shaping(fleet.shaping_hook());
    }
    let ledger = ledger
    .on_durable({
        // Not waited for: the log thread goes on while the spool syncs (see the module's
        // durability order). Tickets are looked at on later calls; a failure is said, and its
        // recipients stay waiting in the spool.
        let mut outstanding: std::collections::VecDeque<Ticket<()>> = std::collections::VecDeque::new();
        let mut purged = Instant::now();
        Box::new(move |Durable { settled, len: durable_len, records }| {
            while let Some(result) = outstanding.front_mut().and_then(Ticket::try_take) {
                outstanding.pop_front();
                if let Err(e) = result {
                    eprintln!("volley: recording delivery outcomes in the spool failed ({e}); they stay waiting in it");
                }
            }
            let changes = spool_changes(&settled, Instant::now(), SystemTime::now());
            let failures = settled
                .into_iter()
                .filter_map(|s| match s {
                    Settled::Final { id, failed: Some(f), .. } => Some((of_recipient_id(id).0, f)),
                    _ => None,
                })
                .collect();
            let events = events_of(&event_hooks, records.start, &records.bytes);
            count_queued(&event_hooks, &events);
            let now_ms = super::intake::now_ms();
            let statuses = match status_retention {
                Some(keep) => {
                    if purged.elapsed() >= PURGE_EVERY {
                        purged = Instant::now();
                        writer.forget_statuses(now_ms.saturating_sub(keep.as_millis() as u64));
                    }
                    entries_of(&records, now_ms)
                }
                None => Vec::new(),
            };
            let from_log = FromLog { events, statuses };
            let recorded = Recorded { changes, from_log, watermark: Some(durable_len), failures };
            outstanding.push_back(writer.record_all(recorded));
        })
    })
    .spawn(Arc::clone(&control))
    .map_err(ServeError::Start)?;
    running.set_outcome_reader(ledger.thread().clone());
    let intake = Intake::new(Arc::clone(&committer), arrivals, dkim, spool_dir.clone(), min_free_space);
    let sender = match webhooks {
        Some(config) => match Sender::start(config, Arc::clone(&reader), Arc::clone(&committer)) {
            Ok(sender) => Some(sender),
            Err(e) => {
                running.abort();
                return Err(ServeError::Start(e));
            }
        },
        None => None,
    };
    let reporter = match (&tls, tls_reports) {
        (Some((reports, counts)), Some(config)) => {
            let (reports, counts) = (Arc::clone(reports), Arc::clone(counts));
            match Reporter::start(config, reports, counts, intake.clone(), Arc::clone(&committer), ended) {
                Ok(reporter) => Some(reporter),
                Err(e) => {
                    running.abort();
                    return Err(ServeError::Start(e));
                }
            }
        }
        _ => None,
    };
    let queue = QueueHandle::new(orders, reader);
    Ok(Serving {
        tls,
        reporter,
        sender,
        status,
        hooks,
        committer,
        intake,
        running,
        ledger,
        control,
        flow,
        resumed,
        delivery_metrics,
        spool_dir,
        queue,
        limiter,
    })
}

/// Brings the spool up to date with the log: every recipient a final record after the spool's
/// watermark names is marked final (a stop came between the log's commit and the spool's).
/// Returns how many records were read. A log shorter than the watermark is not the one the
/// spool knew (replaced, or cut by hand): read from its start, as a recipient's id is never
/// reused, so a final record in any log is true of it.
pub fn reconcile(
    spool: &mut dyn Spool,
    log: &LogFile,
    hooks: &[Arc<Webhook>],
    status: bool,
) -> Result<usize, ServeError> {
    let len = log.durable_len();
    let mark = spool.log_watermark()?;
    if len == mark {
        return Ok(0);
    }
    if len == 0 {
        // A new log: nothing in it yet, and what the spool knew of the old one holds.
        spool.record(&[], &FromLog::default(), Some(0))?;
        return Ok(0);
    }
    let from = if mark < len { mark } else { 0 };
    let read = |e: std::io::Error| ServeError::Log { path: log.path().display().to_string(), error: e };
    let mut reader = log.contents_from(from).map_err(read)?;
    let mut changes = Vec::new();
    let mut from_log = FromLog::default();
    let (mut line, mut records, mut offset) = (Vec::new(), 0, from);
    let now_ms = super::intake::now_ms();
    loop {
        line.clear();
        if std::io::BufRead::read_until(&mut reader, b'\n', &mut line).map_err(read)? == 0 {
            break;
        }
        // The webhooks hear of every record after the watermark (again, if the spool had them
        // already: the same offset is the same event).
        if line.ends_with(b"\n") {
            from_log.events.extend(events_of(hooks, offset, &line));
        }
        let at = offset;
        offset += line.len() as u64;
        // Anything that is not a record (the rest of a line, in a log that is not the one the
        // watermark was taken on) says nothing.
        let Some(record) = Head::read(&line) else { continue };
        records += 1;
        if status {
            from_log.statuses.extend(entry_of(record.id, record.message, at, now_ms));
        }
        if record.rcpt.is_some() && record.status.is_some_and(LogStatus::is_final) {
            let (message, index) = of_recipient_id(record.id);
            changes.push(Change { message, index, status: Status::Final });
        }
    }
    spool.record(&changes, &from_log, Some(len))?;
    Ok(records)
}

/// The spool's view of what the ledger settled.
fn spool_changes(settled: &[Settled], now: Instant, wall: SystemTime) -> Vec<Change> {
    settled
        .iter()
        .map(|s| match *s {
            Settled::Final { id, .. } => {
                let (message, index) = of_recipient_id(id);
                Change { message, index, status: Status::Final }
            }
            Settled::Retry { id, attempts, at } => {
                let (message, index) = of_recipient_id(id);
                Change {
                    message,
                    index,
                    status: Status::Waiting { attempts, due_ms: wall_ms_of(at, now, wall) },
                }
            }
        })
        .collect()
}

impl Serving {
    /// The way in for listeners: durable first, then delivered.
    pub fn intake(&self) -> &Intake {
        &self.intake
    }

    /// Every metric of the service: the cores', the delivery log's, intake's and the spool's.
    pub fn metrics(&self) -> Metrics {
        let mut metrics = Metrics::new();
        metrics.register(EngineCollector::new(self.running.progress()));
        metrics.register(Arc::clone(&self.delivery_metrics));
        if !self.hooks.is_empty() {
            metrics.register(WebhookCollector(self.hooks.clone()));
        }
        if let Some((reports, counts)) = &self.tls {
            metrics.register(TlsReportCollector {
                reports: Arc::clone(reports),
                counts: Some(Arc::clone(counts)),
            });
        }
        metrics.register(ServeCollector {
            intake: Arc::clone(self.intake.meter()),
            flow: Arc::clone(&self.flow),
            commits: Arc::clone(self.committer.stats()),
            spool_dir: self.spool_dir.clone(),
        });
        metrics
    }

    /// Messages' status, for the API, if kept.
    pub fn status(&self) -> Option<&StatusReader> {
        self.status.as_ref()
    }

    /// Queue control, for the API.
    pub fn queue(&self) -> &QueueHandle {
        &self.queue
    }

    /// The spool's writer.
    pub fn committer(&self) -> &Committer {
        &self.committer
    }

    /// Recipients taken on and recipients with a final record so far.
    pub fn flow(&self) -> &Flow {
        &self.flow
    }

    /// Why the service cannot go on, if it cannot: the spool's writer is gone, a write broke
    /// the spool's store (only opening it again recovers it: a restart, once the cause, such
    /// as a full disk, is gone), or the log cannot be written (records would be lost).
    pub fn failure(&self) -> Option<String> {
        if !self.committer.is_running() {
            Some("the spool writer stopped".into())
        } else if let Some(why) = self.committer.broken() {
            Some(format!("the spool cannot be written ({why}); start again once that is fixed"))
        } else if self.control.log_failed.load(std::sync::atomic::Ordering::Acquire) {
            Some("the delivery log cannot be written".into())
        } else {
            None
        }
    }

    /// Recipients the spool held at the start.
    pub fn resumed(&self) -> usize {
        self.resumed
    }

    /// Stops: nothing new is started, transactions in flight finish and are recorded, the log
    /// and the spool are synced. What is not final stays in the spool for the next start.
    /// Gives the spool back.
    pub fn stop(self) -> Result<(Books, Box<dyn Spool>), ServeError> {
        let Serving { committer, intake, running, ledger, control, sender, limiter, tls, reporter, .. } =
            self;
        // What it has not sent stays in the spool for the next start.
        if let Some(sender) = sender {
            sender.stop();
        }
        // No report is sent from here: a sending under way is cut short after its request in
        // flight (its mail is refused once intake stops); what is left goes at the next start.
        let reporter_ran = reporter.as_ref().map(Reporter::request_stop).is_some();
        intake.stop();
        drop(intake);
        running.halt();
        let report = running.join();
        control.engine_done.store(true, std::sync::atomic::Ordering::Release);
        ledger.thread().unpark();
        let books =
            ledger.join().map_err(|_| ServeError::Stop(std::io::Error::other("the log thread panicked")))?;
        report.map_err(ServeError::Stop)?;
        // The engine's connections are closed: their leases go back to the fleet.
        if let Some(limiter) = limiter {
            limiter.stop();
        }
        // The log thread is gone, its last changes queued: the writer finishes what is queued
        // and hands the spool back, whoever still holds it (intake that took its last message).
        if let Some(reporter) = reporter {
            reporter.stop();
        }
        let mut spool = committer
            .stop()
            .ok_or_else(|| ServeError::Stop(std::io::Error::other("the spool writer panicked")))?;
        // The sessions are over: the day's TLS report counts so far wait for the next start.
        if let Some((reports, _)) = tls.filter(|_| reporter_ran)
            && let Err(e) = save_tls(&reports, &mut *spool)
        {
            eprintln!("volley serve: TLS reports: keeping the day's counts in the spool: {e}");
        }
        Ok((books, spool))
    }
}

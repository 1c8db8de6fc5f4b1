//! serve's TLS reports (RFC 8460 §4.1, §5): at the end of each report period (a UTC day), the
//! period's counts become one report per policy domain, written to `SPOOL/tls-reports/`, and
//! are sent to the addresses each domain's `_smtp._tls` record names, by the outbox `volley
//! tls-report send` uses ([`outbox::send_all`]): `https:` ones POSTed, `mailto:` ones made
//! messages and put in this spool through intake (DKIM-signed like any message, delivered,
//! retried and logged as any message). Reports not sent everywhere are tried again every hour.
//!
//! The period under way outlives a stop: its counts are kept as a spool setting (every few
//! minutes, at each period's end and at the stop), and taken up at the next start, so a
//! restart neither splits a day's report nor loses what the day counted before it (a crash
//! loses at most the minutes since the last save). A period that ended while serve was down
//! is reported at the start.
//!
//! Each mail is admitted with an idempotency key of its report and address, so an attempt cut
//! short between the spool's yes and the outbox's note of it sends nothing twice.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use super::commit::Committer;
use super::intake::{Intake, now_ms};
use super::metrics::Via;
use super::spool::{Accepted, Admission};
use crate::deliver::tls_report::mail;
use crate::deliver::tls_report::metrics::ReportCounts;
use crate::deliver::tls_report::outbox::{self, Mailer, OutboxConfig, OutboxError, Outcome};
use crate::deliver::tls_report::period::{self, Period};
use crate::deliver::tls_report::run::TlsReports;
use crate::proto::Address;
use crate::send::input::{Row, Vars};
use crate::send::template::{MessageSpec, MessageTemplate};

/// The spool setting the period under way is kept in.
pub const SETTING: &str = "tls-report-period";
/// The origin of the report messages (their status is an admin's to read), and the scope of
/// their idempotency keys: no API key or user can be named so (names end at a `:`).
const ORIGIN: &str = "volley:tls-reports";
/// How often the period under way is saved.
const SAVE_EVERY: Duration = Duration::from_secs(300);
/// How often reports that did not reach every address are tried again (at most).
const RETRY_EVERY: Duration = Duration::from_secs(3600);
/// The longest wait between looks at the wall clock (which may jump).
const LOOK_EVERY: Duration = Duration::from_secs(60);

/// serve's TLS report settings.
#[derive(Debug, Clone)]
pub struct TlsReportConfig {
    /// A report period's length (RFC 8460 asks for a day); periods end at its multiples since
    /// the Unix epoch, so a day's at midnight UTC.
    pub period: Duration,
    /// The reports' From: `addr@domain` or `Name <addr@domain>` (the envelope sender too).
    pub from: String,
    /// Who sends them: the reports' `organization-name` and submitter (the host's name).
    pub organization: String,
    /// Where the receivers' operators can write (`contact-info`).
    pub contact: String,
    /// The reports' directory (`SPOOL/tls-reports`), and how their addresses are reached.
    pub outbox: OutboxConfig,
}

/// The reports' thread, running.
pub struct Reporter {
    stop: mpsc::Sender<()>,
    /// Cuts a sending under way short.
    stopping: Arc<AtomicBool>,
    thread: JoinHandle<()>,
}

/// What the thread works with.
struct Work {
    config: TlsReportConfig,
    reports: Arc<TlsReports>,
    counts: Arc<ReportCounts>,
    committer: Arc<Committer>,
    mailer: SpoolMailer,
}

impl Reporter {
    /// Starts the thread; `ended` is a period kept by an earlier run that has ended since, to
    /// be reported first.
    pub fn start(
        config: TlsReportConfig,
        reports: Arc<TlsReports>,
        counts: Arc<ReportCounts>,
        intake: Intake,
        committer: Arc<Committer>,
        ended: Option<Period>,
    ) -> std::io::Result<Reporter> {
        let template = MessageTemplate::new(
            &MessageSpec {
                message: Some(mail::TEMPLATE.to_owned()),
                from: Some(config.from.clone()),
                ..MessageSpec::default()
            },
            "tls-reports",
        )
        .map_err(|e| std::io::Error::other(format!("--tls-report-from: {e}")))?;
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let mailer = SpoolMailer { intake, template, runtime };
        let stopping = Arc::new(AtomicBool::new(false));
        let mut config = config;
        config.outbox.stop = Some(Arc::clone(&stopping));
        let work = Work { config, reports, counts, committer, mailer };
        let (stop, stopped) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("tls-reports".into())
            .spawn(move || work.run(ended, &stopped))?;
        Ok(Reporter { stop, stopping, thread })
    }

    /// Asks the thread to stop: at once if it waits, else once the request it is making (a
    /// lookup, a POST) ends; what is left is sent at the next start.
    pub fn request_stop(&self) {
        self.stopping.store(true, Ordering::Relaxed);
        let _ = self.stop.send(());
    }

    /// Stops the thread and waits for it. (The period under way is saved by whoever holds
    /// the spool last: [`save`].)
    pub fn stop(self) {
        self.request_stop();
        let _ = self.thread.join();
    }
}

impl Work {
    fn run(mut self, ended: Option<Period>, stopped: &mpsc::Receiver<()>) {
        if let Some(ended) = ended {
            self.write(ended);
        }
        let length = self.config.period;
        let retry_every = RETRY_EVERY.min(length);
        let mut end = period::end_of(SystemTime::now(), length);
        // What an earlier run left unsent goes now.
        let mut next_send = Some(Instant::now());
        let mut next_save = Instant::now() + SAVE_EVERY;
        loop {
            let wall = SystemTime::now();
            if wall >= end {
                if self.write(self.reports.take(end)) {
                    next_send = Some(Instant::now());
                }
                self.save();
                next_save = Instant::now() + SAVE_EVERY;
                end = period::end_of(wall, length);
            }
            if next_send.is_some_and(|at| Instant::now() >= at) {
                next_send = self.send().then(|| Instant::now() + retry_every);
            }
            if Instant::now() >= next_save {
                self.save();
                next_save = Instant::now() + SAVE_EVERY;
            }
            let now = Instant::now();
            let mut wait = end.duration_since(SystemTime::now()).unwrap_or_default().min(LOOK_EVERY);
            wait = wait.min(next_save.saturating_duration_since(now));
            if let Some(at) = next_send {
                wait = wait.min(at.saturating_duration_since(now));
            }
            match stopped.recv_timeout(wait) {
                Err(RecvTimeoutError::Timeout) => {}
                Ok(()) | Err(RecvTimeoutError::Disconnected) => return,
            }
        }
    }

    /// Writes `period`'s reports; if they cannot be, its counts go back into the period under
    /// way (reported with it). Whether any was written.
    fn write(&self, period: Period) -> bool {
        if period.recorder.is_empty() {
            return false;
        }
        let TlsReportConfig { organization, contact, outbox, .. } = &self.config;
        match period.write(&outbox.dir, organization, contact) {
            Ok(files) => {
                self.counts.written(files.len());
                !files.is_empty()
            }
            Err(e) => {
                eprintln!(
                    "volley serve: TLS reports: writing {}: {e}; counted into the next period",
                    outbox.dir.display()
                );
                self.reports.put_back(period);
                false
            }
        }
    }

    /// Sends the reports waiting; whether some are left to try again.
    fn send(&mut self) -> bool {
        let dir = &self.config.outbox.dir;
        if !outbox::has_reports(dir) {
            return false;
        }
        match outbox::send_all(&self.config.outbox, &mut self.mailer) {
            Ok(results) => {
                self.counts.sent(&results);
                let mut left = false;
                for r in results.iter().filter(|r| !r.earlier) {
                    let failed = matches!(r.result, Outcome::Failed(_));
                    left |= failed;
                    let again = if failed { "; tried again later" } else { "" };
                    eprintln!("volley serve: TLS report {} to {}: {}{again}", r.file, r.to_text(), r.result);
                }
                left
            }
            Err(e) => {
                eprintln!("volley serve: TLS reports: {e}; tried again later");
                true
            }
        }
    }

    /// Keeps the period under way in the spool.
    fn save(&self) {
        if let Err(e) = self.committer.set_setting(SETTING, self.reports.saved()).wait() {
            eprintln!("volley serve: TLS reports: keeping the day's counts in the spool: {e}");
        }
    }
}

/// Puts report messages in the spool, through intake.
struct SpoolMailer {
    intake: Intake,
    template: MessageTemplate,
    runtime: tokio::runtime::Runtime,
}

impl SpoolMailer {
    fn one(&self, row: &serde_json::Value) -> Result<String, String> {
        let email = row["email"].as_str().unwrap_or_default();
        let email = Address::new(email).map_err(|e| format!("{email}: {e}"))?;
        let vars = row.as_object().cloned().unwrap_or_default();
        let key: Arc<str> = format!("{} {email}", row["filename"].as_str().unwrap_or_default()).into();
        let row = Row { line: 1, email: email.clone(), vars: Vars::Json(vars) };
        let id = minijinja::Value::from(crate::send::new_campaign_id());
        let rendered = self.template.render_as(&row, &id, SystemTime::now())?;
        // Made here: no trace of a way in.
        let content = self.intake.prepare(rendered.body.bytes(), "").map_err(|e| e.to_string())?;
        let message = Accepted {
            sender: rendered.sender,
            recipients: vec![email],
            content,
            received_ms: now_ms(),
            origin: ORIGIN.into(),
        };
        let admitted =
            self.runtime.block_on(self.intake.accept(vec![message], Some((ORIGIN, key)), Via::Internal));
        match admitted {
            Ok(Admission::New(ids)) => {
                Ok(ids.first().map_or_else(String::new, |id| format!("spooled as message {id}")))
            }
            Ok(Admission::Replay(_)) => Ok("spooled by an earlier attempt".into()),
            Err(refused) => Err(refused.to_string()),
        }
    }
}

impl Mailer for SpoolMailer {
    fn mail(&mut self, rows: &[serde_json::Value]) -> Result<Vec<Result<String, String>>, OutboxError> {
        Ok(rows.iter().map(|row| self.one(row)).collect())
    }
}

/// Keeps `reports`' period under way in `spool` (at a stop, once delivery is done with it).
pub fn save(
    reports: &TlsReports,
    spool: &mut dyn super::spool::Spool,
) -> Result<(), super::spool::SpoolError> {
    spool.set_setting(SETTING, &reports.saved())
}

//! Sending the TLS report files in a directory (RFC 8460 §5), for `volley tls-report send DIR`
//! (the files `send --tls-report DIR` wrote) and serve's daily reports alike. Each report goes
//! to every address its policy domain's `_smtp._tls` record names: `https:` ones POSTed here,
//! `mailto:` ones handed to a [`Mailer`] as the report template's values (`send` mails them as
//! a campaign of their own, serve puts them in its spool), so they are routed, signed and
//! retried as any message is.
//!
//! What was sent survives the run: each address a report reached is appended to
//! `NAME.json.done` beside it, and a report that reached every address (or whose domain asks
//! for none) moves with it to `DIR/sent/`. A report left in DIR is tried again by the next
//! run, at the addresses it has not reached.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use thiserror::Error;

use super::mail::{self, ReportMail};
use super::rua::{self, Rua};
use crate::deliver::Routing;
use crate::deliver::dns::{self, DnsConfig};

/// Where the reports are and how their addresses are reached.
#[derive(Debug, Clone)]
pub struct OutboxConfig {
    /// The directory of report files (`SUBMITTER!DOMAIN!BEGIN!END.json`).
    pub dir: PathBuf,
    /// Where `_smtp._tls` records and the HTTPS hosts' addresses are asked.
    pub dns: DnsConfig,
    /// Checks the certificates of HTTPS addresses (Mozilla's roots, or a `--ca-file`).
    pub https: Arc<rustls::ClientConfig>,
    /// Set when the sending is to be cut short (the process stops): nothing more is tried,
    /// and what is left stays for the next run.
    pub stop: Option<Arc<std::sync::atomic::AtomicBool>>,
}

impl OutboxConfig {
    fn stopping(&self) -> bool {
        self.stop.as_ref().is_some_and(|s| s.load(std::sync::atomic::Ordering::Relaxed))
    }
}

/// Why what was not tried when stopping stays.
const STOPPING: &str = "stopping: tried again at the next start";

/// What mails the reports to `mailto:` addresses.
pub trait Mailer {
    /// Mails one message per row (the values of [`mail::TEMPLATE`], `email` the address);
    /// each row's fate in order: `Ok` how it was taken (delivered, or made durable for
    /// delivery), `Err` why not (the report stays for the next run).
    fn mail(&mut self, rows: &[serde_json::Value]) -> Result<Vec<Result<String, String>>, OutboxError>;
}

/// One report's fate at one address (or, with `to` empty, the report's own).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sent {
    /// The report's file name.
    pub file: String,
    pub domain: String,
    pub to: Option<Rua>,
    pub result: Outcome,
    /// Sent by an earlier run (or attempt), not this one.
    pub earlier: bool,
}

impl Sent {
    /// The address, as its record names it (`-`: the report's own fate).
    pub fn to_text(&self) -> String {
        self.to.as_ref().map_or_else(|| "-".to_owned(), ToString::to_string)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Sent (how), now or by an earlier run.
    Sent(String),
    /// The domain publishes no TLS-RPT record: it asks for no reports.
    NotWanted,
    /// Not this time (why): the report stays for the next run.
    Failed(String),
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Outcome::Sent(how) => write!(f, "sent ({how})"),
            Outcome::NotWanted => f.write_str("not wanted (no TLS-RPT record)"),
            Outcome::Failed(why) => write!(f, "not sent: {why}"),
        }
    }
}

#[derive(Debug, Error)]
pub enum OutboxError {
    #[error("{path}: {error}")]
    Io { path: String, error: std::io::Error },
    #[error("DNS: {0}")]
    Dns(std::io::Error),
    /// The mailer could not mail anything.
    #[error("mailing the reports: {0}")]
    Mail(String),
}

/// Where `_smtp._tls` records are asked when mail is routed by `routing`: where MX records
/// are (the system's resolvers with a relay), on a plain resolver, as neither MTA-STS nor DANE
/// applies to them.
pub fn dns_for(routing: &Routing) -> DnsConfig {
    match routing {
        Routing::Mx { dns, .. } => DnsConfig { mta_sts: None, dane: None, ..dns.clone() },
        Routing::Relay { .. } => DnsConfig::default(),
    }
}

/// The report files in `dir` (`*.json`; those sent are in its `sent/`), by name.
fn report_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut names: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file() && p.extension().is_some_and(|x| x == "json"))
        .collect();
    names.sort();
    Ok(names)
}

/// Whether `dir` holds a report not yet sent everywhere.
pub fn has_reports(dir: &Path) -> bool {
    report_files(dir).is_ok_and(|names| !names.is_empty())
}

/// An I/O error on `path`, as the outbox says it.
pub(crate) fn io(path: &Path) -> impl FnOnce(std::io::Error) -> OutboxError + '_ {
    move |error| OutboxError::Io { path: path.display().to_string(), error }
}

/// A report file read: its name's parts and its content.
struct Report {
    file: String,
    stem: String,
    submitter: String,
    domain: String,
    report_id: String,
    json: String,
    /// The addresses earlier runs reached.
    done: BTreeSet<String>,
}

impl Report {
    fn done_path(&self, dir: &Path) -> PathBuf {
        dir.join(format!("{}.done", self.file))
    }

    /// Notes that `to` has it, durably, before anything else happens.
    fn mark_done(&mut self, dir: &Path, to: &Rua) -> Result<(), OutboxError> {
        let path = self.done_path(dir);
        let mut file =
            std::fs::OpenOptions::new().create(true).append(true).open(&path).map_err(io(&path))?;
        writeln!(file, "{to}").and_then(|()| file.sync_data()).map_err(io(&path))?;
        self.done.insert(to.to_string());
        Ok(())
    }
}

/// Reads `path` as a report `send --tls-report` wrote: named `SUBMITTER!DOMAIN!BEGIN!END.json`,
/// RFC 8460's JSON with a report id.
fn read_report(dir: &Path, path: &Path) -> Result<Report, String> {
    let file = path.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_owned();
    let stem = file.strip_suffix(".json").unwrap_or(&file).to_owned();
    let parts: Vec<&str> = stem.split('!').collect();
    let [submitter, domain, _, _] = parts.as_slice() else {
        return Err("not a TLS report's name (SUBMITTER!DOMAIN!BEGIN!END.json)".into());
    };
    let json = std::fs::read_to_string(path).map_err(|e| e.to_string())?;
    let value: serde_json::Value = serde_json::from_str(&json).map_err(|e| format!("not JSON: {e}"))?;
    let report_id = value["report-id"].as_str().ok_or("not a TLS report (no report-id)")?.to_owned();
    let done = match std::fs::read_to_string(dir.join(format!("{file}.done"))) {
        Ok(text) => text.lines().map(str::to_owned).collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeSet::new(),
        Err(e) => return Err(format!("{file}.done: {e}")),
    };
    Ok(Report {
        file: file.clone(),
        stem: stem.clone(),
        submitter: (*submitter).to_owned(),
        domain: (*domain).to_owned(),
        report_id,
        json,
        done,
    })
}

/// Sends every report in `config.dir` that has not reached all its addresses, the mail ones
/// through `mailer`; what became of each, by report and address.
pub fn send_all(config: &OutboxConfig, mailer: &mut dyn Mailer) -> Result<Vec<Sent>, OutboxError> {
    let dir = &config.dir;
    let names = report_files(dir).map_err(io(dir))?;
    let mut results = Vec::new();
    let mut reports = Vec::new();
    for path in &names {
        match read_report(dir, path) {
            Ok(report) => reports.push(report),
            Err(why) => results.push(Sent {
                file: path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
                domain: String::new(),
                to: None,
                result: Outcome::Failed(why),
                earlier: false,
            }),
        }
    }

    // Where each domain wants its reports, and the HTTPS ones sent, on a runtime of our own.
    let runtime =
        tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(OutboxError::Dns)?;
    let resolver = dns::build(&config.dns).map_err(OutboxError::Dns)?;
    let domains: BTreeSet<String> = reports.iter().map(|r| r.domain.clone()).collect();
    let wanted: BTreeMap<String, Result<Vec<Rua>, String>> = runtime.block_on(async {
        let mut wanted = BTreeMap::new();
        for domain in domains {
            if config.stopping() {
                wanted.insert(domain, Err(STOPPING.to_owned()));
                continue;
            }
            let rua = rua::lookup(&resolver, &domain).await.map_err(|e| e.to_string());
            wanted.insert(domain, rua);
        }
        wanted
    });
    let mut by_mail = Vec::new();
    for (index, report) in reports.iter_mut().enumerate() {
        let rua = match &wanted[&report.domain] {
            Ok(rua) => rua,
            Err(why) => {
                results.push(sent(report, None, Outcome::Failed(why.clone())));
                continue;
            }
        };
        if rua.is_empty() {
            results.push(sent(report, None, Outcome::NotWanted));
            continue;
        }
        let gzipped = crate::deliver::tls_report::gzip(&report.json).map_err(io(dir))?;
        for to in rua {
            if report.done.contains(&to.to_string()) {
                let earlier = Outcome::Sent("by an earlier run".into());
                results.push(Sent { earlier: true, ..sent(report, Some(to), earlier) });
                continue;
            }
            match to {
                Rua::Https(_) if config.stopping() => {
                    results.push(sent(report, Some(to), Outcome::Failed(STOPPING.to_owned())))
                }
                Rua::Https(url) => {
                    match runtime.block_on(rua::post(&resolver, &config.https, url, gzipped.clone())) {
                        Ok(status) => {
                            report.mark_done(dir, to)?;
                            results.push(sent(report, Some(to), Outcome::Sent(format!("HTTP {status}"))));
                        }
                        Err(why) => results.push(sent(report, Some(to), Outcome::Failed(why))),
                    }
                }
                Rua::Mail(address) => {
                    let mail = ReportMail {
                        domain: &report.domain,
                        submitter: &report.submitter,
                        report_id: &report.report_id,
                        stem: &report.stem,
                        gzipped: &gzipped,
                    };
                    by_mail.push((index, to.clone(), mail::values(address, &mail)));
                }
            }
        }
    }
    drop(resolver);
    drop(runtime);

    if !by_mail.is_empty() {
        let rows: Vec<serde_json::Value> = by_mail.iter().map(|(_, _, row)| row.clone()).collect();
        let fates = mailer.mail(&rows)?;
        for (i, (index, to, _)) in by_mail.iter().enumerate() {
            let report = &mut reports[*index];
            match fates.get(i) {
                Some(Ok(how)) => {
                    report.mark_done(dir, to)?;
                    results.push(sent(report, Some(to), Outcome::Sent(how.clone())));
                }
                Some(Err(why)) => results.push(sent(report, Some(to), Outcome::Failed(why.clone()))),
                None => results.push(sent(report, Some(to), Outcome::Failed("not mailed".into()))),
            }
        }
    }

    // Reports that reached every address, or that nobody asked for, are done with.
    let sent_dir = dir.join("sent");
    for report in &reports {
        let complete = match &wanted[&report.domain] {
            Ok(rua) => rua.iter().all(|to| report.done.contains(&to.to_string())),
            Err(_) => false,
        };
        if complete {
            std::fs::create_dir_all(&sent_dir).map_err(io(&sent_dir))?;
            let from = dir.join(&report.file);
            std::fs::rename(&from, sent_dir.join(&report.file)).map_err(io(&from))?;
            let done = report.done_path(dir);
            if done.exists() {
                std::fs::rename(&done, sent_dir.join(format!("{}.done", report.file))).map_err(io(&done))?;
            }
        }
    }
    Ok(results)
}

fn sent(report: &Report, to: Option<&Rua>, result: Outcome) -> Sent {
    Sent { file: report.file.clone(), domain: report.domain.clone(), to: to.cloned(), result, earlier: false }
}

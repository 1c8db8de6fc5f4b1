//! serve's own metrics: what intake took (by way in), how long making it durable took, and
//! the spool's state. Intake counts with relaxed atomics on the threads that take messages;
//! the rest is read when scraped.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;
use prometheus_client::registry::Unit;

use super::commit::CommitStats;
use super::intake::free_space;
use crate::deliver::ledger::Flow;
use crate::metrics::{AtomicBuckets, Family};

/// How a message came in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    Smtp = 0,
    Http = 1,
    /// Mail serve makes itself: TLS reports.
    Internal = 2,
}

impl Via {
    const ALL: [Via; 3] = [Via::Smtp, Via::Http, Via::Internal];

    fn name(self) -> &'static str {
        match self {
            Via::Smtp => "smtp",
            Via::Http => "http",
            Via::Internal => "internal",
        }
    }
}

/// Intake's counts for one way in.
#[derive(Debug, Default)]
struct WayIn {
    messages: AtomicU64,
    recipients: AtomicU64,
    refused: AtomicU64,
    /// From handing messages to the spool's writer to their being durable.
    durable: AtomicBuckets,
}

/// What intake counts.
#[derive(Debug, Default)]
pub struct IntakeMeter {
    ways: [WayIn; 3],
}

impl IntakeMeter {
    fn way(&self, via: Via) -> &WayIn {
        // The discriminants are the places in `ways`.
        &self.ways[via as usize]
    }

    /// `messages` with `recipients` in all made durable in `micros`.
    pub fn accepted(&self, via: Via, messages: u64, recipients: u64, micros: u64) {
        let w = self.way(via);
        w.messages.fetch_add(messages, Ordering::Relaxed);
        w.recipients.fetch_add(recipients, Ordering::Relaxed);
        w.durable.observe_micros(micros);
    }

    /// A submission refused by intake itself (stopping, no space, the spool failing, content
    /// it cannot send), after the request itself was read and understood.
    pub fn refused(&self, via: Via) {
        self.way(via).refused.fetch_add(1, Ordering::Relaxed);
    }
}

/// serve's metrics, read at scrape time.
#[derive(Debug)]
pub struct ServeCollector {
    pub intake: Arc<IntakeMeter>,
    pub flow: Arc<Flow>,
    pub commits: Arc<CommitStats>,
    pub spool_dir: PathBuf,
}

impl Collector for ServeCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> std::fmt::Result {
        let mut f = Family::new(&mut encoder);
        let per_way = |read: fn(&WayIn) -> u64| {
            Via::ALL.map(|via| ([("intake", via.name())], read(self.intake.way(via))))
        };
        f.counters(
            "volley_intake_messages",
            "Messages accepted (durable) by way in.",
            per_way(|w| w.messages.load(Ordering::Relaxed)),
        )?;
        f.counters(
            "volley_intake_recipients",
            "Recipients of the messages accepted, by way in.",
            per_way(|w| w.recipients.load(Ordering::Relaxed)),
        )?;
        f.counters(
            "volley_intake_refused",
            "Submissions intake refused (stopping, spool full or failing, content it cannot send), by way in.",
            per_way(|w| w.refused.load(Ordering::Relaxed)),
        )?;
        f.histograms(
            "volley_injection_duration",
            "From handing a submission's messages to the spool to their being durable (the wait for a group commit included).",
            Via::ALL.map(|via| ([("intake", via.name())], self.intake.way(via).durable.read())),
        )?;
        let admitted = self.flow.admitted.load(Ordering::Relaxed);
        let finalized = self.flow.finalized.load(Ordering::Relaxed);
        f.gauge(
            "volley_spool_recipients",
            "Recipients in the spool without a final record.",
            None,
            admitted.saturating_sub(finalized),
        )?;
        f.gauge(
            "volley_scheduled_recipients",
            "Recipients waiting for their next attempt.",
            None,
            self.flow.waiting.load(Ordering::Relaxed),
        )?;
        f.gauge(
            "volley_held_recipients",
            "Recipients held in memory (under way or due soon); the rest wait in the spool's schedule.",
            None,
            self.flow.held.load(Ordering::Relaxed),
        )?;
        f.counter(
            "volley_spool_commits",
            "Durable (fsync'd) batches of accepted messages written to the spool.",
            self.commits.batches.load(Ordering::Relaxed),
        )?;
        f.gauge(
            "volley_spool",
            "Space the spool takes on disk.",
            Some(Unit::Bytes),
            dir_size(&self.spool_dir),
        )?;
        f.gauge(
            "volley_spool_disk_free",
            "Space free for the spool on its file system.",
            Some(Unit::Bytes),
            free_space(&self.spool_dir).unwrap_or(0),
        )
    }
}

/// Octets of the files under `dir` (a file that goes while it is read counts nothing).
fn dir_size(dir: &std::path::Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    entries
        .flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => dir_size(&e.path()),
            Ok(_) => e.metadata().map_or(0, |m| m.len()),
            Err(_) => 0,
        })
        .sum()
}

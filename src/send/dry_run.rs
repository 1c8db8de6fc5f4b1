//! `--dry-run`: everything `send` does before the first connection (read, de-duplicate,
//! render, resolve), reported instead of sent.

use std::collections::HashMap;
use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use super::input::Rows;
use super::source::{Fingerprints, fingerprint};
use super::{Routing, SendConfig, SendError};
use crate::deliver::route::{Lookup, Route};
use crate::engine::Destination;

/// Problems listed in full; beyond this many, only counted.
const SHOWN: usize = 10;
/// The longest part of the first message shown.
const SHOWN_OCTETS: usize = 64 * 1024;

/// What a dry run found.
#[derive(Debug, Default, Clone)]
pub struct DryRun {
    pub rows: u64,
    /// Rendered and routable to a destination or not (see `bounced`).
    pub sendable: u64,
    /// Of `sendable`, those whose domain takes no mail (null MX, NXDOMAIN): bounced at once.
    pub bounced: u64,
    pub rejected: u64,
    pub suppressed: u64,
    pub domains: usize,
    pub destinations: usize,
    pub undeliverable: usize,
    pub dns_failures: usize,
}

pub fn run(config: &SendConfig, out: &mut dyn Write) -> Result<DryRun, SendError> {
    let io_err = SendError::Output;
    let campaign = config.campaign.clone().unwrap_or_else(super::new_campaign_id);
    let template = Arc::new(config.template(&campaign)?);
    let Some(recipients) = &config.recipients else {
        let error = std::io::Error::new(std::io::ErrorKind::InvalidInput, "--dry-run reads --recipients");
        return Err(SendError::Input { path: String::new(), error });
    };
    let path = recipients.display().to_string();
    let mut rows = Rows::open(recipients).map_err(|error| SendError::Input { path: path.clone(), error })?;
    let mut seen = Fingerprints::default();
    let suppress = super::suppress::Suppressions::load(&config.suppress)?;
    // Checked now, so a bad rules file fails the dry run as it would the campaign.
    config.delivery.classifier()?;
    let mut per_domain: HashMap<String, u64> = HashMap::new();
    let mut problems = Vec::new();
    let mut summary = DryRun::default();
    let mut first = None;
    while let Some(item) = rows.next_row().map_err(|error| SendError::Input { path: path.clone(), error })? {
        summary.rows += 1;
        if let Ok(row) = &item {
            if suppress.check(&row.email).is_some() {
                summary.suppressed += 1;
                continue;
            }
        }
        let outcome = item.map_err(|bad| (bad.line, bad.reason)).and_then(|row| {
            if config.dedupe && !seen.insert(fingerprint(row.email.as_str())) {
                return Err((row.line, format!("{}: duplicate address", row.email)));
            }
            let rendered = template
                .render(&row, SystemTime::now())
                .map_err(|why| (row.line, format!("{}: {why}", row.email)))?;
            Ok((row, rendered))
        });
        match outcome {
            Ok((row, rendered)) => {
                summary.sendable += 1;
                *per_domain.entry(row.email.domain().to_ascii_lowercase()).or_default() += 1;
                if first.is_none() {
                    first = Some((row.email.to_string(), rendered));
                }
            }
            Err(problem) => {
                summary.rejected += 1;
                if problems.len() < SHOWN {
                    problems.push(problem);
                }
            }
        }
    }
    summary.domains = per_domain.len();
    if let Some((to, r)) = &first {
        let sender = r.sender.as_ref().map_or("<>".to_owned(), |s| format!("<{s}>"));
        let head = r.head.as_ref().map_or(&[][..], |h| &h.bytes()[..]);
        writeln!(
            out,
            "--- first message: MAIL FROM:{sender} RCPT TO:<{to}>, {} octets ---",
            head.len() + r.body.bytes().len()
        )
        .map_err(io_err)?;
        out.write_all(head).map_err(io_err)?;
        out.write_all(&r.body.bytes()[..r.body.bytes().len().min(SHOWN_OCTETS)]).map_err(io_err)?;
        if r.body.bytes().len() > SHOWN_OCTETS {
            writeln!(out, "\n[... {} more octets]", r.body.bytes().len() - SHOWN_OCTETS).map_err(io_err)?;
        }
        writeln!(out, "--- end ---").map_err(io_err)?;
        for (name, record) in template.dkim().into_iter().flat_map(|d| d.records()) {
            writeln!(out, "DKIM: receivers check it against the TXT record {name}: \"{record}\"")
                .map_err(io_err)?;
        }
    }
    let mut routes = config.delivery.routes(config.delivery.shaping()?).map_err(SendError::Dns)?;
    if let Routing::Relay { name, addrs } = &config.delivery.routing {
        writeln!(out, "route: everything through the relay {name} ({} addresses)", addrs.len())
            .map_err(io_err)?;
        if let Lookup::Ready(Route::Deliver(d)) = routes.lookup(name, Instant::now()) {
            writeln!(out, "{}", shaped(&d)).map_err(io_err)?;
        }
        rows_line(out, &summary, &problems)?;
        return Ok(summary);
    }
    let now = Instant::now();
    for domain in per_domain.keys() {
        routes.lookup(domain, now);
    }
    let mut answered = 0;
    let mut failures = Vec::new();
    let mut destinations: Vec<Arc<Destination>> = Vec::new();
    let limit = (dns_wait(config) * (per_domain.len() as u32 / 64 + 1)).max(Duration::from_secs(1));
    let deadline = Instant::now() + limit;
    while answered < per_domain.len() {
        let Some((domain, result)) = routes.wait(deadline.saturating_duration_since(Instant::now()), now)
        else {
            break;
        };
        answered += 1;
        let recipients = per_domain.get(&domain).copied().unwrap_or(0);
        match result {
            Ok(Route::Deliver(d)) => {
                if !destinations.iter().any(|known| known.index == d.index) {
                    destinations.push(d);
                }
            }
            Ok(Route::Undeliverable(why)) => {
                summary.undeliverable += 1;
                summary.bounced += recipients;
                failures.push(format!("  bounce {recipients} recipients: {why}"));
            }
            Err(failure) => {
                summary.dns_failures += 1;
                failures.push(format!("  defer {recipients} recipients: {}", failure.reason));
            }
        }
    }
    summary.destinations = routes.destinations();
    writeln!(
        out,
        "domains: {}, destinations after MX rollup: {}, undeliverable: {}, DNS failures: {}{}",
        summary.domains,
        summary.destinations,
        summary.undeliverable,
        summary.dns_failures,
        if answered < per_domain.len() {
            format!(", unanswered: {}", per_domain.len() - answered)
        } else {
            String::new()
        }
    )
    .map_err(io_err)?;
    destinations.sort_by_key(|d| d.index);
    for d in destinations.iter().take(SHOWN) {
        writeln!(out, "{}", shaped(d)).map_err(io_err)?;
    }
    if destinations.len() > SHOWN {
        writeln!(out, "  ({} more destinations)", destinations.len() - SHOWN).map_err(io_err)?;
    }
    for f in failures.iter().take(SHOWN) {
        writeln!(out, "{f}").map_err(io_err)?;
    }
    if failures.len() > SHOWN {
        writeln!(out, "  ({} more)", failures.len() - SHOWN).map_err(io_err)?;
    }
    rows_line(out, &summary, &problems)?;
    Ok(summary)
}

/// What would become of the rows, each counted once: sent, bounced at once (a domain that takes
/// no mail), rejected (with the first problems), suppressed.
fn rows_line(out: &mut dyn Write, summary: &DryRun, problems: &[(u64, String)]) -> Result<(), SendError> {
    let io_err = SendError::Output;
    writeln!(
        out,
        "rows: {}, would send: {}, bounced: {}, rejected: {}, suppressed: {}",
        summary.rows,
        summary.sendable - summary.bounced,
        summary.bounced,
        summary.rejected,
        summary.suppressed
    )
    .map_err(io_err)?;
    for (line, why) in problems {
        writeln!(out, "  line {line}: {why}").map_err(io_err)?;
    }
    if summary.rejected as usize > problems.len() {
        writeln!(out, "  ({} more)", summary.rejected as usize - problems.len()).map_err(io_err)?;
    }
    Ok(())
}

/// A destination's limits, one line: what `send` will hold it to.
fn shaped(d: &Destination) -> String {
    let mut line = format!("  destination {}: {} connections", d.name, d.max_connections);
    if let Some(n) = d.limits.messages_per_connection {
        line += &format!(", {n} messages per connection");
    }
    if let Some(r) = d.limits.rate {
        line += &format!(", {r} messages");
    }
    if let Some(r) = d.limits.connection_rate {
        line += &format!(", {r} new connections");
    }
    if let Some(rule) = &d.shaped_by {
        line += &format!(" (shaping rule {rule})");
    }
    line
}

/// The longest one domain's resolution can take (MX, then its hosts' addresses).
fn dns_wait(config: &SendConfig) -> Duration {
    match &config.delivery.routing {
        Routing::Mx { dns, .. } => dns.timeout * (dns.attempts.max(1) as u32) * 3,
        Routing::Relay { .. } => Duration::ZERO,
    }
}

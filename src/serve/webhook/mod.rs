//! Webhooks: every record of the delivery log (received, deferred, delivered, bounced,
//! expired, uncertain, shaping...) POSTed as JSON to each `--webhook URL`, signed ([`sign`]),
//! at least once, across restarts.
//!
//! - **Durable**: after each commit of the log, its records are queued in the spool as events
//!   ([`events_of`]), one per webhook, in the batch that records their consequences and the
//!   log's watermark; a stop before that batch is caught up from the log at the next start
//!   (`serve::run::reconcile`). An event's id is its record's offset in the log, so the same
//!   record queued twice is one event, and a receiver de-duplicates by id.
//! - **Sent** by [`send`] on a thread of its own: per webhook, the oldest events first, up to
//!   `--webhook-batch` in one request or whatever waited a second. A 2xx: the events are
//!   forgotten. A receiver down, a timeout, 5xx, 408 or 429: tried again with backoff (1 s
//!   doubling to 5 min), the events kept. Any other answer: dropped, said and counted (the
//!   receiver refuses them; trying again would not change that).
//! - The body: `{"events": [{"id": OFFSET, ...the record's fields}]}`.

pub mod send;
pub mod sign;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use super::spool::Event;

/// A webhook's address: `http://` or `https://` (the certificate checked).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookUrl {
    pub https: bool,
    /// The host as connected to and checked in the certificate (brackets off an IPv6 one).
    pub host: String,
    pub port: u16,
    /// Path and query, as requested.
    pub target: String,
    /// The whole URL, as given.
    text: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("--webhook {0}: expected http(s)://HOST[:PORT]/PATH (no user:password@)")]
pub struct UrlError(String);

impl WebhookUrl {
    pub fn parse(text: &str) -> Result<WebhookUrl, UrlError> {
        let bad = || UrlError(label_of(text));
        let (https, rest) = match text.split_once("://") {
            Some(("https", rest)) => (true, rest),
            Some(("http", rest)) => (false, rest),
            _ => return Err(bad()),
        };
        let (authority, target) = rest.find(['/', '?']).map_or((rest, "/"), |i| rest.split_at(i));
        if authority.is_empty() || authority.contains('@') || target.chars().any(|c| c.is_whitespace()) {
            return Err(bad());
        }
        let (host, port) = match authority.rsplit_once(':') {
            Some((host, port)) if !port.contains(']') => (host, port.parse::<u16>().map_err(|_| bad())?),
            _ => (authority, if https { 443 } else { 80 }),
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() {
            return Err(bad());
        }
        let target = if target.starts_with('?') { format!("/{target}") } else { target.to_owned() };
        Ok(WebhookUrl { https, host: host.to_owned(), port, target, text: text.to_owned() })
    }

    /// Its id in the spool: the first 8 octets of the URL's SHA-256, so events queued for a
    /// URL are found again after a restart, and those of a URL no longer given are dropped.
    pub fn id(&self) -> u64 {
        let digest = ring::digest::digest(&ring::digest::SHA256, self.text.as_bytes());
        let mut id = [0u8; 8];
        id.copy_from_slice(&digest.as_ref()[..8]);
        u64::from_be_bytes(id)
    }

    /// The URL without its query (which may carry a token), for logs and metrics.
    pub fn label(&self) -> String {
        label_of(&self.text)
    }

    /// `HOST:PORT`, with brackets for an IPv6 address.
    pub fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

fn label_of(text: &str) -> String {
    let text = text.split(['?', '#']).next().unwrap_or("");
    // Never a password, should one be given.
    match text.split_once("://") {
        Some((scheme, rest)) => match rest.split_once('@') {
            Some((_, host)) => format!("{scheme}://{host}"),
            None => text.to_owned(),
        },
        None => text.chars().take(64).collect(),
    }
}

/// One webhook and its counts (read by metrics; written by the log thread and the sender).
#[derive(Debug)]
pub struct Webhook {
    pub url: WebhookUrl,
    pub id: u64,
    pub stats: WebhookStats,
}

#[derive(Debug, Default)]
pub struct WebhookStats {
    /// Events waiting in the spool at the start.
    pub waiting_at_start: AtomicU64,
    pub queued: AtomicU64,
    pub delivered: AtomicU64,
    pub dropped: AtomicU64,
    /// Requests that failed and will be tried again.
    pub failed_requests: AtomicU64,
}

impl WebhookStats {
    /// Events waiting for this webhook now.
    pub fn backlog(&self) -> u64 {
        let r = |a: &AtomicU64| a.load(Ordering::Relaxed);
        (r(&self.waiting_at_start) + r(&self.queued)).saturating_sub(r(&self.delivered) + r(&self.dropped))
    }
}

impl Webhook {
    pub fn new(url: WebhookUrl) -> Webhook {
        Webhook { id: url.id(), url, stats: WebhookStats::default() }
    }
}

/// The webhooks' metrics, read when scraped.
#[derive(Debug)]
pub struct WebhookCollector(pub Vec<Arc<Webhook>>);

impl prometheus_client::collector::Collector for WebhookCollector {
    fn encode(&self, mut encoder: prometheus_client::encoding::DescriptorEncoder) -> std::fmt::Result {
        let mut f = crate::metrics::Family::new(&mut encoder);
        let each = |read: &dyn Fn(&WebhookStats) -> u64| -> Vec<([(&str, String); 1], u64)> {
            self.0.iter().map(|w| ([("webhook", w.url.label())], read(&w.stats))).collect()
        };
        f.gauges(
            "volley_webhook_events_waiting",
            "Delivery log records queued in the spool for a webhook and not yet taken by it (its backlog).",
            each(&|s| s.backlog()),
        )?;
        let r = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let mut results = Vec::new();
        for w in &self.0 {
            results.push((
                [("webhook", w.url.label()), ("result", "delivered".to_owned())],
                r(&w.stats.delivered),
            ));
            results
                .push(([("webhook", w.url.label()), ("result", "dropped".to_owned())], r(&w.stats.dropped)));
        }
        f.counters(
            "volley_webhook_events",
            "Events a webhook took (2xx), or refused for good (4xx but 408 and 429: dropped).",
            results,
        )?;
        f.counters(
            "volley_webhook_failed_requests",
            "Requests to a webhook that failed and are tried again (down, timeout, 5xx, 408, 429).",
            each(&|s| r(&s.failed_requests)),
        )
    }
}

/// The events of the records in `lines` (JSON lines, the first at log offset `start`), one per
/// record per webhook.
pub fn events_of(webhooks: &[Arc<Webhook>], start: u64, lines: &[u8]) -> Vec<Event> {
    if webhooks.is_empty() {
        return Vec::new();
    }
    let mut events = Vec::new();
    let mut offset = start;
    for line in lines.split_inclusive(|&b| b == b'\n') {
        let record = line.strip_suffix(b"\n").unwrap_or(line);
        if record.starts_with(b"{") {
            let record: Arc<[u8]> = Arc::from(record);
            for w in webhooks {
                events.push(Event { webhook: w.id, offset, line: Arc::clone(&record) });
            }
        }
        offset += line.len() as u64;
    }
    events
}

/// Counts `events` as queued for their webhooks (once the log's commit hands them over; not
/// when a start catches up from the log, which the count at the start includes).
pub fn count_queued(webhooks: &[Arc<Webhook>], events: &[Event]) {
    for w in webhooks {
        let n = events.iter().filter(|e| e.webhook == w.id).count();
        w.stats.queued.fetch_add(n as u64, Ordering::Relaxed);
    }
}

/// The body of one request: the events, each its record with its id first.
pub fn body(events: &[(u64, Vec<u8>)]) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + events.iter().map(|(_, l)| l.len() + 24).sum::<usize>());
    out.extend_from_slice(b"{\"events\":[");
    for (i, (offset, record)) in events.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(format!("{{\"id\":{offset}").as_bytes());
        // A record is a JSON object: `{}` or `{"k":...}`.
        match record.get(1..) {
            Some(b"}") | None => out.push(b'}'),
            Some(rest) => {
                out.push(b',');
                out.extend_from_slice(rest);
            }
        }
    }
    out.extend_from_slice(b"]}");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_with_their_defaults_and_hide_their_query() {
        let u = WebhookUrl::parse("https://hooks.example.com/volley?token=s3cret").unwrap();
        assert_eq!(
            (u.https, u.host.as_str(), u.port, u.target.as_str()),
            (true, "hooks.example.com", 443, "/volley?token=s3cret")
        );
        assert_eq!(u.label(), "https://hooks.example.com/volley");
        let v = WebhookUrl::parse("http://[::1]:8080").unwrap();
        assert_eq!(
            (v.host.as_str(), v.port, v.target.as_str(), v.authority()),
            ("::1", 8080, "/", "[::1]:8080".to_owned())
        );
        assert_ne!(u.id(), v.id());
        assert_eq!(u.id(), WebhookUrl::parse("https://hooks.example.com/volley?token=s3cret").unwrap().id());
        for bad in
            ["ftp://x/", "http://", "https://user:pw@x/", "x.example/", "http://x:99999/", "http://x/a b"]
        {
            let e = WebhookUrl::parse(bad).unwrap_err().to_string();
            assert!(!e.contains("pw"), "{e}");
        }
    }

    #[test]
    fn each_record_is_an_event_for_each_webhook_with_its_offset_as_id() {
        let hooks: Vec<Arc<Webhook>> = ["http://a/", "http://b/"]
            .iter()
            .map(|u| Arc::new(Webhook::new(WebhookUrl::parse(u).unwrap())))
            .collect();
        let lines = b"{\"status\":\"received\"}\n{\"status\":\"delivered\",\"rcpt\":\"a@x\"}\n";
        let events = events_of(&hooks, 1000, lines);
        let offsets: Vec<(u64, u64)> = events.iter().map(|e| (e.webhook, e.offset)).collect();
        assert_eq!(
            offsets,
            [(hooks[0].id, 1000), (hooks[1].id, 1000), (hooks[0].id, 1022), (hooks[1].id, 1022)]
        );
        count_queued(&hooks, &events);
        assert_eq!(hooks[1].stats.backlog(), 2);
        let body =
            body(&[(1000, events[0].line.to_vec()), (1022, events[2].line.to_vec()), (7, b"{}".to_vec())]);
        let parsed: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(parsed["events"][1]["id"], 1022);
        assert_eq!(parsed["events"][1]["rcpt"], "a@x");
        assert_eq!(parsed["events"][2], serde_json::json!({"id": 7}));
    }
}

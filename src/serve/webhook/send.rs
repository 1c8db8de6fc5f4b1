//! The webhooks' sender: one task per webhook on a thread of its own with a tokio runtime (as
//! the HTTP API's), reading the spool's events in order and POSTing them (see the parent
//! module for what happens on each answer). One connection per webhook, kept alive between
//! requests; HTTPS with rustls (ring), the certificate checked against Mozilla's roots or
//! `--webhook-ca-file`.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Bytes;
use hyper::client::conn::http1::SendRequest;
use tokio::sync::watch;

use super::sign::{HEADER, Secret};
use super::{Webhook, body};
use crate::rt::http_client::connect;
use crate::serve::commit::Committer;
use crate::serve::spool::SpoolRead;

/// How often a webhook with nothing to send looks for events.
const POLL: Duration = Duration::from_millis(200);
/// How long events wait for more before a request that is not full goes.
const LINGER: Duration = Duration::from_secs(1);
/// The longest one request may take, connecting included.
const TIMEOUT: Duration = Duration::from_secs(15);
/// Backoff after a failed request: from the first, doubling up to the last.
const BACKOFF: (Duration, Duration) = (Duration::from_secs(1), Duration::from_secs(300));
/// The most of an answer's body read (and thrown away).
const ANSWER: usize = 64 * 1024;

/// What the sender needs.
pub struct WebhookConfig {
    pub webhooks: Vec<Arc<Webhook>>,
    /// Replaced in place by a reload (SIGHUP).
    pub secret: Arc<arc_swap::ArcSwap<Secret>>,
    /// For `https://` webhooks: a verifying client configuration.
    pub tls: Arc<rustls::ClientConfig>,
    /// Events in one request at most.
    pub batch: usize,
}

/// The sender, running.
pub struct Sender {
    stop: watch::Sender<bool>,
    thread: Option<JoinHandle<()>>,
}

impl Sender {
    /// Starts sending what `reader` holds for each webhook, forgetting what was delivered
    /// through `committer`.
    pub fn start(
        config: WebhookConfig,
        reader: Arc<dyn SpoolRead>,
        committer: Arc<Committer>,
    ) -> std::io::Result<Sender> {
        let (stop, stopped) = watch::channel(false);
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let thread = std::thread::Builder::new().name("webhooks".into()).spawn(move || {
            let config = Arc::new(config);
            runtime.block_on(async move {
                let tasks: Vec<_> = config
                    .webhooks
                    .iter()
                    .map(|w| {
                        let task = Task {
                            webhook: Arc::clone(w),
                            config: Arc::clone(&config),
                            reader: Arc::clone(&reader),
                            committer: Arc::clone(&committer),
                            stopped: stopped.clone(),
                        };
                        tokio::spawn(task.run())
                    })
                    .collect();
                for task in tasks {
                    let _ = task.await;
                }
            });
        })?;
        Ok(Sender { stop, thread: Some(thread) })
    }

    /// Stops at once: a request under way is given up (its events stay in the spool and go
    /// again at the next start, with the same ids).
    pub fn stop(mut self) {
        let _ = self.stop.send(true);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Sender {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

struct Task {
    webhook: Arc<Webhook>,
    config: Arc<WebhookConfig>,
    reader: Arc<dyn SpoolRead>,
    committer: Arc<Committer>,
    stopped: watch::Receiver<bool>,
}

/// What became of one request.
enum Sent {
    Delivered,
    /// Not now: kept and tried again.
    Retry(String),
    /// Refused for good: dropped.
    Refused(u16),
}

impl Task {
    async fn run(self) {
        let webhook = Arc::clone(&self.webhook);
        let (label, stats) = (webhook.url.label(), &webhook.stats);
        let mut stopped = self.stopped.clone();
        let mut after: Option<u64> = None;
        let mut connection: Option<SendRequest<Full<Bytes>>> = None;
        let mut backoff = BACKOFF.0;
        let mut waiting_since: Option<Instant> = None;
        let mut failing = false;
        while !*stopped.borrow() {
            let events = match self.reader.events(self.webhook.id, after, self.config.batch) {
                Ok(events) => events,
                Err(e) => {
                    eprintln!("volley serve: webhook {label}: reading its events from the spool: {e}");
                    pause(&mut stopped, Duration::from_secs(5)).await;
                    continue;
                }
            };
            if events.is_empty() {
                waiting_since = None;
                pause(&mut stopped, POLL).await;
                continue;
            }
            if events.len() < self.config.batch {
                let since = *waiting_since.get_or_insert_with(Instant::now);
                if since.elapsed() < LINGER {
                    pause(&mut stopped, POLL.min(LINGER.saturating_sub(since.elapsed()))).await;
                    continue;
                }
            }
            waiting_since = None;
            let offsets: Vec<u64> = events.iter().map(|(offset, _)| *offset).collect();
            let body = body(&events);
            let sent = tokio::select! {
                sent = self.post(&mut connection, body) => sent,
                _ = stopped.changed() => return,
            };
            match sent {
                Sent::Delivered => {
                    if failing {
                        eprintln!("volley serve: webhook {label} takes events again");
                        failing = false;
                    }
                    stats.delivered.fetch_add(offsets.len() as u64, Ordering::Relaxed);
                    after = offsets.last().copied();
                    self.committer.forget_events(self.webhook.id, offsets);
                    backoff = BACKOFF.0;
                }
                Sent::Refused(status) => {
                    eprintln!(
                        "volley serve: webhook {label} refused {} events with {status}: dropped (only \
                         408, 429 and 5xx are tried again)",
                        offsets.len()
                    );
                    stats.dropped.fetch_add(offsets.len() as u64, Ordering::Relaxed);
                    after = offsets.last().copied();
                    self.committer.forget_events(self.webhook.id, offsets);
                }
                Sent::Retry(why) => {
                    stats.failed_requests.fetch_add(1, Ordering::Relaxed);
                    connection = None;
                    if !failing {
                        eprintln!(
                            "volley serve: webhook {label}: {why}; its events wait and are tried again"
                        );
                        failing = true;
                    }
                    pause(&mut stopped, backoff).await;
                    backoff = (backoff * 2).min(BACKOFF.1);
                }
            }
        }
    }

    async fn post(&self, connection: &mut Option<SendRequest<Full<Bytes>>>, body: Vec<u8>) -> Sent {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let signature = self.config.secret.load().sign(now, &body);
        let url = &self.webhook.url;
        let exchange = async {
            if connection.as_ref().is_none_or(SendRequest::is_closed) {
                let tls = url.https.then_some(&self.config.tls);
                *connection = Some(connect(&url.host, url.port, tls).await?);
            }
            let Some(sender) = connection.as_mut() else { return Err("no connection".to_owned()) };
            sender.ready().await.map_err(|e| e.to_string())?;
            let request = hyper::Request::post(&url.target)
                .header(hyper::header::HOST, url.authority())
                .header(hyper::header::CONTENT_TYPE, "application/json")
                .header(hyper::header::USER_AGENT, concat!("volley/", env!("CARGO_PKG_VERSION")))
                .header(HEADER, signature)
                .body(Full::new(Bytes::from(body)))
                .map_err(|e| e.to_string())?;
            let response = sender.send_request(request).await.map_err(|e| e.to_string())?;
            let status = response.status().as_u16();
            // Read (a bounded part of) the answer, so the connection can carry the next request.
            let _ = Limited::new(response.into_body(), ANSWER).collect().await;
            Ok::<u16, String>(status)
        };
        match tokio::time::timeout(TIMEOUT, exchange).await {
            Err(_) => Sent::Retry(format!("no answer within {}s", TIMEOUT.as_secs())),
            Ok(Err(e)) => Sent::Retry(e),
            Ok(Ok(status)) if (200..300).contains(&status) => Sent::Delivered,
            Ok(Ok(status)) if status == 408 || status == 429 || status >= 500 => {
                Sent::Retry(format!("answered {status}"))
            }
            Ok(Ok(status)) => Sent::Refused(status),
        }
    }
}

/// Waits `wait`, or less if told to stop.
async fn pause(stopped: &mut watch::Receiver<bool>, wait: Duration) {
    tokio::select! {
        _ = tokio::time::sleep(wait) => {}
        _ = stopped.changed() => {}
    }
}

/// A verifying TLS client configuration for webhooks: Mozilla's roots, or `ca_file`'s
/// certificates (also trusted as the receiver's own), speaking HTTP/1.1.
pub fn tls_config(
    ca_file: Option<&std::path::Path>,
) -> Result<Arc<rustls::ClientConfig>, crate::tls::TlsError> {
    let tls = crate::tls::ClientTls::new(crate::tls::TlsPolicy::Verify, true, ca_file, false)?;
    let mut config = (*tls.config).clone();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

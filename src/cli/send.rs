//! `volley send`.

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clap::Args;

use mailvolley::cluster;
use mailvolley::engine::Snapshot;
use mailvolley::plot;
use mailvolley::send::template::{Attachment, MessageSpec, content_type_for};
use mailvolley::send::unsubscribe::{Secret, Unsubscribe, UnsubscribeError};
use mailvolley::send::{self, SendConfig, SendReport};

use super::delivery::DeliveryArgs;
use super::metrics::MetricsArgs;

/// Exit codes of `volley send` (also in `--help` and the README).
pub const EXIT_DOC: &str = "Exit codes: 0 every recipient has its final record in the log (delivered, bounced, expired, \
rejected, suppressed or uncertain); 1 stopped early (Ctrl-C, SIGTERM, an unreadable input): run again with --resume LOG; \
2 usage error or failure to start (nothing sent); 3 the delivery log could not be written: sending stopped, and \
records that could not be written were printed on stderr. With --queue: 0 once every row of the shared campaign \
is final (on any node), 1 stopped before that.";

#[derive(Debug, Args)]
pub struct SendArgs {
    /// Recipients: CSV with a header row and an address column (`email`, `e-mail`, `e_mail`,
    /// `mail` or `email address`, any case), separated by `,`, `;` or tabs (read from the
    /// header row), or JSONL (one object per line, an `email` key); `-` reads stdin. Every
    /// other column or key is a template variable.
    ///
    /// With --queue, only the node(s) that load the campaign are given it.
    #[arg(long, value_name = "FILE", required_unless_present = "queue")]
    recipients: Option<PathBuf>,
    /// The message: an RFC 5322 message (headers, blank line, body) that is a minijinja
    /// template. Missing To, Date and Message-ID headers are added (From from --from).
    #[arg(long, value_name = "FILE", conflicts_with_all = ["subject", "text", "html", "attach"])]
    message: Option<PathBuf>,
    /// Build the message instead: its Subject (a template).
    #[arg(long)]
    subject: Option<String>,
    /// The text/plain part: a template file.
    #[arg(long, value_name = "FILE")]
    text: Option<PathBuf>,
    /// The text/html part: a template file (with --text: multipart/alternative).
    #[arg(long, value_name = "FILE")]
    html: Option<PathBuf>,
    /// Attach FILE (base64), repeatable.
    #[arg(long, value_name = "FILE")]
    attach: Vec<PathBuf>,
    /// The From header: 'addr@domain' or 'Name <addr@domain>'. Message-IDs use its domain.
    #[arg(long)]
    from: Option<String>,
    /// The envelope sender, a template ('bounces+{{ id }}@example.com' for VERP)
    /// [default: the From address].
    #[arg(long, value_name = "TEMPLATE")]
    mail_from: Option<String>,
    /// One-click unsubscribe (RFC 8058): every message gets `List-Unsubscribe: <URL>` with
    /// `{{ token }}` replaced by the recipient's token, and `List-Unsubscribe-Post:
    /// List-Unsubscribe=One-Click`. Must be https:// and hold `{{ token }}`. The body may use
    /// `{{ unsubscribe_url }}`. Needs a secret (--unsubscribe-secret-file or
    /// $VOLLEY_UNSUBSCRIBE_SECRET); `volley token verify` checks a token.
    #[arg(long, value_name = "URL")]
    unsubscribe_url: Option<String>,
    /// An address for unsubscribe requests by mail: added to List-Unsubscribe as
    /// `<mailto:ADDRESS?subject=unsubscribe%20TOKEN>`.
    #[arg(long, value_name = "ADDRESS")]
    unsubscribe_mailto: Option<String>,
    /// The HMAC-SHA256 key of the unsubscribe tokens: a file of at least 16 bytes (a final
    /// line break is ignored) [default: $VOLLEY_UNSUBSCRIBE_SECRET]. Keep it: tokens are
    /// checked with it.
    #[arg(long, value_name = "FILE")]
    unsubscribe_secret_file: Option<PathBuf>,
    /// The campaign's id: Message-IDs (`<ID.LINE@domain>`) and unsubscribe tokens carry it.
    /// Give each campaign its own [default: random; --resume keeps the log's].
    #[arg(long, value_name = "ID", value_parser = parse_campaign, conflicts_with = "resume")]
    campaign: Option<String>,
    /// The delivery log (JSONL) [default: next to the input, named for the input and the
    /// start time]. Must not exist (use --resume to continue one). `--log /dev/null` runs
    /// without one: nothing records who got the message, and nothing can be resumed.
    #[arg(long, value_name = "FILE", conflicts_with = "resume")]
    log: Option<PathBuf>,
    /// Continue an interrupted campaign: skip every recipient LOG has a final record for, send
    /// the rest, and append to LOG. Give the same input and message: a recipients file that
    /// changed since the campaign started is refused.
    #[arg(long, value_name = "LOG")]
    resume: Option<PathBuf>,
    /// Send to every row even when an address repeats (by default a repeated address is
    /// sent once and its later rows are logged rejected; 8 bytes of memory per address).
    #[arg(long)]
    allow_duplicates: bool,
    /// Never send to the addresses or domains in FILE (repeatable): one per line
    /// (`ann@example.com`, `example.com` or `@example.com`; `#` comments), or a CSV whose
    /// first column is the address. Each such recipient is logged `suppressed`.
    #[arg(long, value_name = "FILE")]
    suppress: Vec<PathBuf>,
    /// Read, render and resolve, send nothing: show the first rendered message and a summary.
    #[arg(long)]
    dry_run: bool,
    /// Share the campaign with other nodes through Redis: every node is started with the
    /// same message and options and this URL (NAME is the campaign's id); the node(s) given
    /// --recipients load its rows once, and every node sends its share, writes its own log,
    /// and takes over the rows of a node that stops. `volley status URL` shows the whole.
    #[arg(long, value_name = "redis://HOST:PORT/NAME", value_parser = super::parse_queue_url, conflicts_with_all = ["resume", "campaign", "dry_run"])]
    queue: Option<cluster::QueueUrl>,
    /// This node's name in a shared campaign: unique among the nodes; a node restarted under
    /// its name at once takes back the rows it held [default: the host name].
    #[arg(long, value_name = "NAME", requires = "queue", value_parser = super::parse_node_name)]
    node: Option<String>,
    /// Rows held this long by a node that stopped keeping them (it died, or lost Redis) are
    /// taken over by the others.
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = super::duration, requires = "queue")]
    claim_idle: Duration,
    /// The Redis password, from a file (never on the command line).
    #[arg(long, value_name = "FILE", requires = "queue")]
    redis_password_file: Option<PathBuf>,
    #[command(flatten)]
    delivery: DeliveryArgs,
    /// Print the report as JSON on stdout.
    #[arg(long)]
    json: bool,
    /// Write the run's TLS reports (RFC 8460's JSON, one file per policy domain: a recipient
    /// domain with an MTA-STS policy, or an MX host with DANE records; sessions that
    /// negotiated TLS as it asks, failures by type and MX host, failed policy fetches and
    /// TLSA lookups) into DIR at the end, named as the RFC names them
    /// (`SENDER!DOMAIN!BEGIN!END.json`; SENDER is the --helo name). `volley tls-report send
    /// DIR` delivers them.
    #[arg(long, value_name = "DIR")]
    tls_report: Option<PathBuf>,
    /// Draw the campaign as an SVG picture: recipients' attempts per second by outcome, and
    /// the queue time by percentile for the busiest destinations.
    #[arg(long, value_name = "FILE.svg")]
    plot: Option<PathBuf>,
    /// No live progress on stderr.
    #[arg(long)]
    quiet: bool,
    #[command(flatten)]
    metrics: MetricsArgs,
}

fn parse_campaign(s: &str) -> Result<String, String> {
    send::check_campaign_id(s).map(|()| s.to_owned())
}

fn read_text(path: &PathBuf, flag: &str) -> anyhow::Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("{flag} {}", path.display()))
}

fn message_spec(args: &SendArgs) -> anyhow::Result<MessageSpec> {
    let mut spec = MessageSpec {
        message: args.message.as_ref().map(|p| read_text(p, "--message")).transpose()?,
        subject: args.subject.clone(),
        text: args.text.as_ref().map(|p| read_text(p, "--text")).transpose()?,
        html: args.html.as_ref().map(|p| read_text(p, "--html")).transpose()?,
        from: args.from.clone(),
        mail_from: args.mail_from.clone(),
        attachments: Vec::new(),
        unsubscribe: None,
        headers: Vec::new(),
    };
    if args.unsubscribe_url.is_some() || args.unsubscribe_mailto.is_some() {
        let secret =
            Secret::load(args.unsubscribe_secret_file.as_deref())?.ok_or(UnsubscribeError::NoSecret)?;
        let (url, mailto) = (args.unsubscribe_url.as_deref(), args.unsubscribe_mailto.as_deref());
        spec.unsubscribe = Some(Unsubscribe::new(url, mailto, secret)?);
    } else if args.unsubscribe_secret_file.is_some() {
        bail!("--unsubscribe-secret-file is for --unsubscribe-url or --unsubscribe-mailto");
    }
    for path in &args.attach {
        let bytes = std::fs::read(path).with_context(|| format!("--attach {}", path.display()))?;
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("attachment").to_owned();
        spec.attachments.push(Attachment { content_type: content_type_for(&name).to_owned(), name, bytes });
    }
    Ok(spec)
}

fn config(args: &SendArgs) -> anyhow::Result<SendConfig> {
    let (log, resume) = match (&args.resume, &args.log) {
        (Some(path), _) => {
            if !path.exists() {
                bail!("--resume {}: no such log", path.display());
            }
            (path.clone(), true)
        }
        (None, Some(path)) => (path.clone(), false),
        (None, None) => match (&args.queue, &args.recipients) {
            (Some(url), _) => (send::default_node_log_path(&url.campaign, &node_name(args)), false),
            (None, Some(recipients)) => (send::default_log_path(recipients), false),
            (None, None) => bail!("--recipients is required"),
        },
    };
    if !resume && log.is_file() {
        bail!("the log {} exists: continue it with --resume {0}, or choose another --log", log.display());
    }
    if resume && !log.is_file() {
        bail!("--resume {}: not a regular file (a delivery log is one)", log.display());
    }
    let queue = match &args.queue {
        Some(url) => {
            if args.claim_idle < Duration::from_secs(1) {
                bail!("--claim-idle must be at least 1s (rows are kept fresh every third of it)");
            }
            Some(send::QueueConfig {
                server: super::redis_server(url, args.redis_password_file.as_deref())?,
                node: node_name(args),
                claim_idle: args.claim_idle,
            })
        }
        None => None,
    };
    Ok(SendConfig {
        delivery: args.delivery.config()?,
        recipients: args.recipients.clone(),
        queue,
        campaign: args.campaign.clone(),
        message: message_spec(args)?,
        dedupe: !args.allow_duplicates,
        suppress: args.suppress.clone(),
        log,
        resume,
        progress: !args.quiet,
        metrics: args.metrics.metrics_listen.is_some(),
        tls_report: args.tls_report.clone(),
    })
}

fn node_name(args: &SendArgs) -> String {
    args.node.clone().unwrap_or_else(cluster::default_node_name)
}

/// Destinations `--plot` draws the queue time of (the busiest).
const PLOTTED_DESTINATIONS: usize = 8;

/// Attempts that ended between `last` and `now`, per second.
fn campaign_second(last: &Snapshot, now: &Snapshot) -> plot::CampaignSecond {
    plot::CampaignSecond {
        at: now.elapsed.as_secs_f64(),
        delivered: now.rate_since(last, |s| s.delivered),
        deferred: now.rate_since(last, |s| s.deferred),
        bounced: now.rate_since(last, |s| s.bounced),
    }
}

pub fn run(args: SendArgs) -> anyhow::Result<ExitCode> {
    let config = config(&args)?;
    if args.dry_run {
        let mut out = std::io::stdout().lock();
        send::dry_run::run(&config, &mut out)?;
        return Ok(ExitCode::SUCCESS);
    }
    // A file size limit must surface as an error on the log, not kill the process (SIGXFSZ).
    // SAFETY: setting a signal's disposition to "ignore" has no preconditions.
    unsafe {
        libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
    }
    let interrupts = super::interrupts()?;
    let log = config.log.clone();
    if !args.quiet {
        eprintln!("volley send: logging to {}", log.display());
    }
    let mut sending = match send::start(config) {
        Ok(s) => s,
        Err(e @ send::SendError::Log { .. }) => {
            eprintln!("volley: {e}");
            return Ok(ExitCode::from(3));
        }
        Err(e) => return Err(e.into()),
    };
    let metrics_listener = args.metrics.start(|| Arc::new(sending.metrics()))?;
    if sending.cut_tail() > 0 {
        eprintln!(
            "volley send: cut {} octets of a last line that a killed run left half-written from {}",
            sending.cut_tail(),
            log.display()
        );
    }
    let mut stopping = false;
    let mut aborted = false;
    let mut seconds = Vec::new();
    let mut last = sending.snapshot();
    let mut next_second = Instant::now() + Duration::from_secs(1);
    while !sending.is_finished() {
        std::thread::sleep(Duration::from_millis(20));
        if args.plot.is_some() && Instant::now() >= next_second {
            let now = sending.snapshot();
            seconds.push(campaign_second(&last, &now));
            last = now;
            next_second += Duration::from_secs(1);
        }
        let presses = interrupts.load(Ordering::Relaxed);
        if sending.log_failed() && !stopping {
            // Start nothing more; what is in flight finishes, and its records go to stderr.
            sending.stop();
            stopping = true;
        } else if presses >= 2 && !aborted {
            eprintln!("volley: stopping now: transactions in flight are abandoned");
            sending.abort();
            aborted = true;
        } else if presses == 1 && !stopping {
            eprintln!("volley: stopping: finishing transactions in flight (Ctrl-C again to abandon them)");
            sending.stop();
            stopping = true;
        }
    }
    let end = sending.snapshot();
    let report = sending.finish().context("finishing the run")?;
    if let Some(path) = &args.plot {
        seconds.push(campaign_second(&last, &end));
        let busiest: Vec<plot::Curve> = report
            .books
            .domains
            .iter()
            .filter_map(|d| d.queue_ms.as_ref().map(|h| plot::curve_in(&d.domain, h, 1.0)))
            .take(PLOTTED_DESTINATIONS)
            .collect();
        let picture = plot::campaign_svg(&seconds, &busiest).context("--plot")?;
        std::fs::write(path, picture).with_context(|| format!("--plot {}", path.display()))?;
    }
    if let Some(m) = metrics_listener {
        m.stop().context("stopping the metrics listener")?;
    }
    if args.json {
        let mut out = std::io::stdout().lock();
        serde_json::to_writer_pretty(&mut out, &json_report(&report, &log))?;
        writeln!(out)?;
    } else {
        print!("{}", text_report(&report, &log));
    }
    if let Err(e) = &report.tls_report_files {
        eprintln!("volley: {e}");
    }
    if let Some(e) = &report.books.log_error {
        eprintln!("volley: {e}");
        return Ok(ExitCode::from(3));
    }
    if let Some(e) = &report.input_error {
        eprintln!("volley: {e}");
    }
    if let (Some(recipients), None) = (&args.recipients, &args.queue)
        && report.admitted == 0
        && report.skipped == 0
        && report.input_done
        && report.input_error.is_none()
    {
        eprintln!(
            "volley send: warning: {} has no recipient rows (a header row alone?): nothing was sent",
            recipients.display()
        );
    }
    if args.queue.is_some() && !report.all_final() {
        eprintln!(
            "volley: {} recipients of this node have no final record: they stay pending under node {}; run \
             it again with the same --node to take them back, or the other nodes take them over after \
             --claim-idle",
            report.unfinished,
            node_name(&args)
        );
        return Ok(ExitCode::from(1));
    }
    if !report.all_final() {
        let unread = if report.input_done { "" } else { ", and the input was not read to its end" };
        eprintln!(
            "volley: {} recipients have no final record yet{unread}: continue with --resume {}",
            report.unfinished,
            log.display()
        );
        return Ok(ExitCode::from(1));
    }
    Ok(ExitCode::SUCCESS)
}

/// Domains listed in the text report; the JSON report lists them all.
const TOP_DOMAINS: usize = 20;

fn text_report(r: &SendReport, log: &std::path::Path) -> String {
    use std::fmt::Write as _;
    let t = &r.books.tally;
    let mut s = String::new();
    let _ = writeln!(s, "volley send: campaign {} in {:.1}s", r.campaign, r.elapsed.as_secs_f64());
    let _ = write!(s, "recipients: {} this run", r.admitted);
    if r.resumed_finals.is_some() {
        let _ = write!(s, ", {} skipped (final in the resumed log)", r.skipped);
    }
    let _ = writeln!(s);
    let _ = writeln!(
        s,
        "  delivered {}  bounced {}  expired {}  rejected {}  suppressed {}  uncertain {}  unfinished {}  (deferred attempts {})",
        t.delivered, t.bounced, t.expired, t.rejected, t.suppressed, t.uncertain, r.unfinished, t.deferred
    );
    let secs = r.elapsed.as_secs_f64().max(1e-9);
    let e = &r.engine.stats;
    let _ = writeln!(
        s,
        "rate: {:.0} delivered/s; connections {}, TLS sessions {}, plaintext {}",
        t.delivered as f64 / secs,
        e.connections,
        e.tls.negotiated.values().sum::<u64>(),
        e.tls.plaintext
    );
    if !r.tls.is_empty() {
        let _ = writeln!(s, "MTA-STS domains (TLS sessions as their policies ask / failed):");
        for t in &r.tls {
            let _ = writeln!(s, "  {:<32} {:>9} {:>9}", t.domain, t.successes, t.failures);
        }
    }
    match &r.tls_report_files {
        Ok(files) if !files.is_empty() => {
            let _ = writeln!(s, "TLS reports: {} written", files.len());
        }
        Ok(_) => {}
        Err(e) => {
            let _ = writeln!(s, "TLS reports: NOT written: {e}");
        }
    }
    if let Some(err) = &e.last_session_error {
        let _ = writeln!(s, "last session error: {err}");
    }
    if !r.books.categories.is_empty() {
        let _ = write!(s, "why:");
        for (category, n) in &r.books.categories {
            let parts: Vec<String> =
                [("bounced", n.bounced), ("expired", n.expired), ("deferred", n.deferred)]
                    .into_iter()
                    .filter(|(_, count)| *count > 0)
                    .map(|(what, count)| format!("{count} {what}"))
                    .collect();
            let _ = write!(s, "  {} {}", category.as_str(), parts.join(", "));
        }
        let _ = writeln!(s);
    }
    for sh in &r.books.shaping {
        let times = if sh.times == 1 { String::new() } else { format!(" ({} times)", sh.times) };
        let _ = writeln!(
            s,
            "shaping: {} {} from {} until {}{times} by reaction {}: {}",
            sh.destination, sh.action, sh.first, sh.until, sh.rule, sh.reply
        );
    }
    if e.suspended > 0 {
        let _ = writeln!(
            s,
            "shaping: {} recipients deferred unattempted while their destination was suspended",
            e.suspended
        );
    }
    if e.shaping_events_dropped > 0 {
        let _ = writeln!(
            s,
            "shaping: {} events not logged (the log thread fell behind)",
            e.shaping_events_dropped
        );
    }
    if let Some(c) = &r.cluster {
        let _ = writeln!(
            s,
            "shared campaign: {} rows acknowledged ({} counted as this node's), {} taken over from stopped \
             nodes, {} lost to others, {} left unacknowledged; {} Redis calls",
            c.acked, c.counted, c.taken_over, c.lost, c.unacked, c.commands
        );
    }
    let _ = writeln!(s, "log: {}", log.display());
    if !r.books.domains.is_empty() {
        let _ = writeln!(
            s,
            "{:<32} {:>9} {:>9} {:>8} {:>8} {:>9} {:>7} {:>7}",
            "domain", "delivered", "deferred", "bounced", "expired", "uncertain", "p50", "p99"
        );
        for d in r.books.domains.iter().take(TOP_DOMAINS) {
            let ms = |v: Option<u64>| v.map_or("-".to_owned(), mailvolley::deliver::ledger::fmt_ms);
            let _ = writeln!(
                s,
                "{:<32} {:>9} {:>9} {:>8} {:>8} {:>9} {:>7} {:>7}",
                d.domain,
                d.tally.delivered,
                d.tally.deferred,
                d.tally.bounced,
                d.tally.expired,
                d.tally.uncertain,
                ms(d.p50_ms),
                ms(d.p99_ms)
            );
        }
        if r.books.domains.len() > TOP_DOMAINS {
            let _ =
                writeln!(s, "({} more domains: see --json or the log)", r.books.domains.len() - TOP_DOMAINS);
        }
        if let Some(t) = &r.books.other_domains {
            let _ = writeln!(
                s,
                "(and the domains past the {} busiest, together: delivered {} deferred {} bounced {} expired {} uncertain {})",
                mailvolley::deliver::ledger::MAX_DOMAIN_BOOKS,
                t.delivered,
                t.deferred,
                t.bounced,
                t.expired,
                t.uncertain
            );
        }
    }
    s
}

fn json_report(r: &SendReport, log: &std::path::Path) -> serde_json::Value {
    let e = &r.engine.stats;
    serde_json::json!({
        "campaign": r.campaign,
        "elapsed_s": r.elapsed.as_secs_f64(),
        "log": log.display().to_string(),
        "admitted": r.admitted,
        "skipped": r.skipped,
        "unfinished": r.unfinished,
        "input_read_to_end": r.input_done,
        "stopped_early": r.stopped,
        "input_error": r.input_error,
        "log_error": r.books.log_error,
        "unrecorded": r.books.unrecorded,
        "recipients": r.books.tally,
        "categories": r.books.categories,
        "shaping": r.books.shaping,
        "suspended_unattempted": e.suspended,
        "connections": e.connections,
        "tls_sessions": e.tls.negotiated.values().sum::<u64>(),
        "plaintext_sessions": e.tls.plaintext,
        "shared": r.cluster.as_ref().map(|c| serde_json::json!({
            "acked": c.acked,
            "counted": c.counted,
            "taken_over": c.taken_over,
            "lost": c.lost,
            "unacked": c.unacked,
            "redis_calls": c.commands,
        })),
        "domains": r.books.domains,
        "other_domains": r.books.other_domains,
        "mta_sts": r.tls.iter().map(|t| serde_json::json!({
            "domain": t.domain,
            "successful_sessions": t.successes,
            "failed_sessions": t.failures,
        })).collect::<Vec<_>>(),
        "tls_reports": match &r.tls_report_files {
            Ok(files) => serde_json::json!(files.iter().map(|f| f.display().to_string()).collect::<Vec<_>>()),
            Err(e) => serde_json::json!({"error": e}),
        },
    })
}

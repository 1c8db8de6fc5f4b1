//! A node's side of a shared campaign: the thread that talks to Redis while the engine sends.
//!
//! It reads rows through the consumer group for the job source ([`QueueRows`]), keeping at
//! most [`WINDOW`] read and not yet taken by the source, so the node reads as fast as its
//! engine takes jobs (the engine's bounded queues hold it back), and no faster: the source wakes
//! it as soon as it has taken room for the next batch; acknowledges rows whose final record the ledger has
//! made durable ([`Acks`], the ledger's `on_durable` hook); keeps the rows it holds its own
//! while they wait (the keep script, every third of `--claim-idle`); takes over rows idle past
//! `--claim-idle` under a node that stopped (XAUTOCLAIM); holds its name's lease; and tells the
//! source when every row of the campaign is final. Nothing here blocks the engine's cores or
//! the producer: the source only looks at a channel.
//!
//! When Redis cannot be reached the worker pauses (intake stops; the engine delivers what the
//! node holds, and acknowledgements wait in memory) and reconnects with backoff, doubling from
//! 100 ms to 5 s.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::finish::{Final, FinishArgs, Totals};
use super::held::Held;
use super::{ClusterError, GROUP, Keys, Server, entry, scripts};
use crate::deliver::ledger::{OnDurable, Settled};
use crate::send::input::{Item, line_of};

/// Rows read ahead of the job source at most: enough that the source never waits (at 100,000
/// messages a second, 20 ms of work, refilled in batches of [`READ_BATCH`] chunks that take a
/// millisecond each). What a node holds in all, taken by its source and not yet final, is
/// bounded apart ([`HOLD_MIN`]).
pub const WINDOW: usize = 2_000;

/// Rows a node holds not yet final at most: at least [`HOLD_MIN`], else what it makes final in
/// [`HOLD_FOR`] at its recent rate. Without it a node's engine takes rows as fast as it can
/// queue them (tens of thousands), and the first node up takes a small campaign whole; a fixed
/// small bound instead caps a node's rate at that many per log commit (2,000 per ~60 ms was
/// 33,000 a second). So a node starts with a share and grows it as fast as it sends.
const HOLD_MIN: usize = 2_000;
const HOLD_FOR: Duration = Duration::from_millis(500);

/// How often the rate of final rows is measured.
const RATE_EVERY: Duration = Duration::from_millis(100);

/// Chunks read per XREADGROUP or XAUTOCLAIM call (500 rows).
const READ_BATCH: usize = 500 / entry::CHUNK;

/// How long the worker waits, with nothing done in a round, before the next: from
/// [`IDLE_WAIT_MIN`], doubling while rounds find nothing, up to [`IDLE_WAIT_MAX`]. Rows being
/// loaded are read soon after they come (at the fixed 20 ms a campaign's first 100 ms ran at a
/// quarter of the rate), and an idle node still asks Redis at most 50 times a second. (XREADGROUP's
/// BLOCK would wake it at once, but Redis ends a block's timeout only at its next tick, up to
/// 100 ms late: a campaign's end waited for it.)
const IDLE_WAIT_MIN: Duration = Duration::from_millis(1);
const IDLE_WAIT_MAX: Duration = Duration::from_millis(20);

/// Rows recorded final per call of the finish script (and chunks acknowledged), and chunks kept
/// fresh per call of the keep script.
const ACK_BATCH: usize = 500;
const KEEP_BATCH: usize = 1000;

/// How often to look whether the whole campaign is final, while this node holds nothing
/// (while it holds a chunk, the campaign cannot be).
const COMPLETE_EVERY: Duration = Duration::from_millis(50);

/// How long the worker keeps trying, at the end, to acknowledge what the log made final.
const FLUSH_FOR: Duration = Duration::from_secs(10);

/// What the worker hands the job source.
enum Fetched {
    Rows(Vec<Item>),
    /// Rows another node took over (this one was cut off from Redis past `--claim-idle`): drop
    /// them if they are only waiting.
    Lost(Vec<u64>),
    /// Every row of the campaign is final.
    Complete,
    /// The node cannot go on (its name was taken, the loader failed).
    Failed(String),
}

/// What wakes the worker between its rounds.
enum Wake {
    /// What a commit of the log made final, to record.
    Finals(Vec<Final>),
    /// The source took rows down to [`REFILL_AT`]: read again now, not at the next wake.
    Room,
}

/// Rows read ahead and not yet taken at which the worker reads the next batch: room for one.
const REFILL_AT: usize = WINDOW - READ_BATCH * entry::CHUNK;

/// What the job source reads next from the campaign.
pub enum QueueRead {
    Row(Item),
    /// Nothing now; look again soon.
    Later,
    /// Every row of the campaign is final: this node's input has ended.
    Complete,
}

/// The job source's end of the worker.
pub struct QueueRows {
    rows: Receiver<Fetched>,
    /// Rows read and not yet taken (shared with the worker, which reads while it is low).
    ahead: Arc<AtomicUsize>,
    /// Wakes the worker when taking rows made room for a batch: waiting for its next round
    /// (up to 20 ms, or the next log commit) left the engine without rows at 100,000 a second.
    wake: Sender<Wake>,
    ready: VecDeque<Item>,
    lost: Vec<u64>,
    complete: bool,
    loader_error: Option<Arc<Mutex<Option<String>>>>,
}

impl QueueRows {
    /// The next row, or why there is none.
    pub fn next_row(&mut self) -> std::io::Result<QueueRead> {
        if let Some(item) = self.ready.pop_front() {
            self.took_one();
            return Ok(QueueRead::Row(item));
        }
        while let Ok(fetched) = self.rows.try_recv() {
            match fetched {
                Fetched::Rows(rows) => self.ready.extend(rows),
                Fetched::Lost(lines) => self.lost.extend(lines),
                Fetched::Complete => self.complete = true,
                Fetched::Failed(why) => return Err(std::io::Error::other(why)),
            }
            if !self.ready.is_empty() {
                break;
            }
        }
        if let Some(error) = self.loader_error.as_ref().and_then(|e| e.lock().ok().and_then(|e| e.clone())) {
            return Err(std::io::Error::other(format!("loading the campaign stopped: {error}")));
        }
        Ok(match self.ready.pop_front() {
            Some(item) => {
                self.took_one();
                QueueRead::Row(item)
            }
            None if self.complete => QueueRead::Complete,
            None => QueueRead::Later,
        })
    }

    fn took_one(&self) {
        if self.ahead.fetch_sub(1, Ordering::AcqRel) == REFILL_AT + 1 {
            let _ = self.wake.send(Wake::Room);
        }
    }

    /// Rows another node has taken over since the last call.
    pub fn take_lost(&mut self) -> Vec<u64> {
        std::mem::take(&mut self.lost)
    }
}

/// The ledger's end: what each commit of the log made final, to acknowledge.
pub struct Acks(Sender<Wake>);

impl Acks {
    /// The ledger's `on_durable` hook.
    pub fn hook(self) -> OnDurable {
        Box::new(move |durable| {
            let finals: Vec<Final> = durable
                .settled
                .into_iter()
                .filter_map(|s| match s {
                    // The domain is taken on the cluster thread, not this (the log) thread.
                    Settled::Final { id, status, rcpt, .. } => Some(Final(id, status, rcpt)),
                    Settled::Retry { .. } => None,
                })
                .collect();
            if !finals.is_empty() {
                // The worker outlives the ledger (it is stopped after the ledger's end).
                let _ = self.0.send(Wake::Finals(finals));
            }
        })
    }
}

/// What a worker needs.
pub struct WorkerConfig {
    pub server: Server,
    pub node: String,
    /// Rows idle this long under another node are taken over.
    pub claim_idle: Duration,
    /// The CSV header rows are decoded with (`None`: JSONL).
    pub columns: Option<Arc<[String]>>,
    /// The source's counts: how many rows wait for a retry.
    /// The loader's error, if this node loads: the source stops on it.
    pub loader_error: Option<Arc<Mutex<Option<String>>>>,
}

/// A running worker.
pub struct WorkerHandle {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<WorkerReport>,
}

/// What a worker says at its end.
#[derive(Debug, Default, Clone)]
pub struct WorkerReport {
    /// Rows acknowledged, and counted (not finished before by another node).
    pub acked: u64,
    pub counted: u64,
    /// Final rows it could not acknowledge (Redis unreachable at the end): pending under this
    /// node, they will be taken over and sent again by another.
    pub unacked: u64,
    /// Rows taken over from other nodes.
    pub taken_over: u64,
    /// Rows this node lost to another while cut off.
    pub lost: u64,
    /// Commands sent to Redis (a script call counts one).
    pub commands: u64,
}

impl WorkerHandle {
    /// Acknowledges what is left and ends: call after the ledger has ended.
    pub fn finish(self) -> WorkerReport {
        self.stop.store(true, Ordering::Release);
        self.thread.thread().unpark();
        self.thread.join().unwrap_or_default()
    }
}

/// Takes the node's name and starts the worker.
pub fn start(config: WorkerConfig) -> Result<(QueueRows, Acks, WorkerHandle), ClusterError> {
    let keys = config.server.keys();
    let mut con = config.server.connect()?;
    let name = super::NameLease::take(&mut con, &config.server, &config.node)?;
    let (rows_tx, rows_rx) = std::sync::mpsc::sync_channel(64);
    let (acks_tx, acks_rx) = std::sync::mpsc::channel();
    let stop = Arc::new(AtomicBool::new(false));
    let now = Instant::now();
    let loader_error = config.loader_error.clone();
    let ahead = Arc::new(AtomicUsize::new(0));
    let worker = Worker {
        ahead: Arc::clone(&ahead),
        keys,
        name,
        con: Some(con),
        down: None,
        rows: rows_tx,
        acks: acks_rx,
        unacked: Vec::new(),
        unfinished: 0,
        rate: 0.0,
        finals_since: 0,
        rate_since: now,
        held: Held::default(),
        own_cursor: Some("0".into()),
        idle_wait: IDLE_WAIT_MIN,
        claim_cursor: "0-0".into(),
        next_keep: now + config.claim_idle / 3,
        next_claim: now,
        next_lease: now + super::NAME_RENEW,
        next_complete: now,
        complete_sent: false,
        stop: Arc::clone(&stop),
        report: WorkerReport::default(),
        finish: scripts::finish(),
        keep: scripts::keep(),
        totals: None,
        config,
    };
    let thread = std::thread::Builder::new()
        .name("cluster".into())
        .spawn(move || worker.run())
        .map_err(|e| ClusterError::Layout { campaign: String::new(), what: format!("starting: {e}") })?;
    let queue = QueueRows {
        rows: rows_rx,
        ahead,
        wake: acks_tx.clone(),
        ready: VecDeque::new(),
        lost: Vec::new(),
        complete: false,
        loader_error,
    };
    Ok((queue, Acks(acks_tx), WorkerHandle { stop, thread }))
}

struct Worker {
    config: WorkerConfig,
    keys: Keys,
    name: super::NameLease,
    con: Option<redis::Connection>,
    /// While Redis is unreachable: the wait before the next reconnection.
    down: Option<Duration>,
    rows: SyncSender<Fetched>,
    /// Rows handed to the source and not yet taken by it.
    ahead: Arc<AtomicUsize>,
    acks: Receiver<Wake>,
    /// Final rows not yet recorded in Redis.
    unacked: Vec<Final>,
    /// Rows handed to the source and not yet final (nor lost).
    unfinished: usize,
    /// Rows made final per second lately, and those counted since `rate_since`.
    rate: f64,
    finals_since: usize,
    rate_since: Instant,
    /// Chunks pending under this node, and their rows not yet recorded final.
    held: Held,
    /// Reading this node's own pending rows first (a restart under the same name): the next id.
    own_cursor: Option<String>,
    /// The wait after the next round that does nothing ([`IDLE_WAIT_MIN`]).
    idle_wait: Duration,
    claim_cursor: String,
    next_keep: Instant,
    next_claim: Instant,
    next_lease: Instant,
    next_complete: Instant,
    complete_sent: bool,
    stop: Arc<AtomicBool>,
    report: WorkerReport,
    finish: redis::Script,
    keep: redis::Script,
    /// The node's counts as its hash holds them; `None` until read, and again after any
    /// error (a call whose reply was lost may have recorded its rows).
    totals: Option<Totals>,
}

/// What went wrong in a step: Redis (reconnect and go on) or the node (stop).
enum StepError {
    Redis(redis::RedisError),
    Fatal(String),
}

impl From<redis::RedisError> for StepError {
    fn from(e: redis::RedisError) -> Self {
        StepError::Redis(e)
    }
}

impl Worker {
    fn run(mut self) -> WorkerReport {
        let mut flush_until = None;
        loop {
            while let Ok(wake) = self.acks.try_recv() {
                self.woken(wake);
            }
            let stopping = self.stop.load(Ordering::Acquire);
            if stopping {
                let until = *flush_until.get_or_insert_with(|| Instant::now() + FLUSH_FOR);
                if self.unacked.is_empty() || Instant::now() >= until {
                    break;
                }
            }
            let busy = match self.connected() {
                Some(()) => match self.step(stopping) {
                    Ok(busy) => busy,
                    Err(StepError::Redis(e)) => {
                        self.lost_connection(&e);
                        false
                    }
                    Err(StepError::Fatal(why)) => {
                        let _ = self.rows.send(Fetched::Failed(why));
                        self.stop.store(true, Ordering::Release);
                        false
                    }
                },
                None => false,
            };
            if busy {
                self.idle_wait = IDLE_WAIT_MIN;
            } else {
                let wait = self.down.unwrap_or(self.idle_wait);
                self.idle_wait = (self.idle_wait * 2).min(IDLE_WAIT_MAX);
                match self.acks.recv_timeout(wait) {
                    Ok(wake) => self.woken(wake),
                    Err(RecvTimeoutError::Timeout) => {}
                    // The ledger is gone: only the stop flag matters now.
                    Err(RecvTimeoutError::Disconnected) => std::thread::park_timeout(wait),
                }
            }
        }
        self.report.unacked = self.unacked.len() as u64;
        if let Some(con) = &mut self.con {
            // Free the name at once: a restart of this node need not wait for the lease.
            let _ = self.name.release(con);
        }
        self.report
    }

    fn woken(&mut self, wake: Wake) {
        match wake {
            Wake::Finals(finals) => self.took_finals(finals),
            Wake::Room => {}
        }
    }

    /// Final rows from the ledger: to record, and counted for the rate.
    fn took_finals(&mut self, finals: Vec<Final>) {
        self.unfinished = self.unfinished.saturating_sub(finals.len());
        self.finals_since += finals.len();
        self.unacked.extend(finals);
    }

    /// Rows this node may hold not yet final now (see [`HOLD_MIN`]).
    fn hold(&mut self) -> usize {
        let elapsed = self.rate_since.elapsed();
        // A whole share made final is a measure too: a node starting at 200,000 rows a second
        // makes its first 2,000 final in ~10 ms, and would otherwise hold 2,000 for 100 ms.
        if elapsed >= RATE_EVERY || (self.finals_since >= HOLD_MIN && elapsed >= RATE_EVERY / 20) {
            // The last period's rate, or the earlier one fading: a pause between log commits
            // does not shrink the share at once.
            let now = self.finals_since as f64 / elapsed.as_secs_f64();
            self.rate = now.max(self.rate * 0.8);
            self.finals_since = 0;
            self.rate_since = Instant::now();
        }
        HOLD_MIN.max((self.rate * HOLD_FOR.as_secs_f64()) as usize)
    }

    /// Makes sure of a connection, reconnecting when the backoff allows.
    fn connected(&mut self) -> Option<()> {
        if self.con.is_some() {
            return Some(());
        }
        let backoff = self.down?;
        match self.config.server.connect() {
            Ok(con) => {
                eprintln!(
                    "volley send: redis {}: connected again; taking rows again",
                    self.config.server.url.server
                );
                self.con = Some(con);
                self.down = None;
                self.totals = None;
                // The lease and the rows held may have lapsed while away: see to them now.
                self.next_lease = Instant::now();
                self.next_keep = Instant::now();
                Some(())
            }
            Err(_) => {
                self.down = Some((backoff * 2).min(Duration::from_secs(5)));
                None
            }
        }
    }

    fn lost_connection(&mut self, e: &redis::RedisError) {
        self.con = None;
        self.totals = None;
        if self.down.is_none() {
            eprintln!(
                "volley send: redis {}: {e}; not taking rows until it is back (delivering what this node holds)",
                self.config.server.url.server
            );
            self.down = Some(Duration::from_millis(100));
        }
    }

    /// One round: the lease, acknowledgements, keeping rows, reading rows, the end. Whether it
    /// did anything (else the caller waits a little).
    fn step(&mut self, stopping: bool) -> Result<bool, StepError> {
        // The lease first: after a reconnection it may have lapsed, and the finish script
        // writes only for the lease's holder.
        let now = Instant::now();
        if now >= self.next_lease {
            self.renew_lease()?;
            self.next_lease = now + super::NAME_RENEW;
        }
        let mut busy = self.flush()?;
        if stopping {
            return Ok(busy);
        }
        if now >= self.next_keep {
            self.keep_held()?;
            self.next_keep = now + self.config.claim_idle / 3;
        }
        let batch = READ_BATCH * entry::CHUNK;
        if self.ahead.load(Ordering::Acquire) + batch <= WINDOW && self.unfinished + batch <= self.hold() {
            let got = self.read()?;
            busy |= got > 0;
            if got == 0 && now >= self.next_claim {
                let claimed = self.claim()?;
                busy |= claimed > 0;
                if claimed == 0 {
                    self.next_claim = now + (self.config.claim_idle / 4).max(Duration::from_millis(100));
                }
            }
        }
        let holds = !self.held.is_empty() || !self.unacked.is_empty();
        if !busy && !holds && !self.complete_sent && now >= self.next_complete {
            self.next_complete = now + COMPLETE_EVERY;
            if self.campaign_complete()? {
                self.complete_sent = true;
                let _ = self.rows.send(Fetched::Complete);
            }
        }
        Ok(busy)
    }

    fn con(&mut self) -> &mut redis::Connection {
        // Only called from `step`, which runs when connected.
        match &mut self.con {
            Some(con) => con,
            None => unreachable!("step runs only when connected"),
        }
    }

    /// Records final rows, a batch per script call, and acknowledges the chunks they finish
    /// (in the next call: a chunk is acknowledged only once its rows are recorded).
    fn flush(&mut self) -> Result<bool, StepError> {
        if (self.unacked.is_empty() && !self.held.has_done()) || self.con.is_none() {
            return Ok(false);
        }
        let mut totals = match self.totals.take() {
            Some(totals) => totals,
            None => {
                let key = self.keys.counts(&self.config.node);
                let read: redis::RedisResult<Totals> = match &mut self.con {
                    Some(con) => redis::cmd("HGETALL").arg(&key).query(con),
                    None => return Ok(false),
                };
                self.report.commands += 1;
                read?
            }
        };
        while !self.unacked.is_empty() || self.held.has_done() {
            let take = self.unacked.len().min(ACK_BATCH);
            let chunks = self.held.take_done(ACK_BATCH);
            let mut batch: Vec<&Final> = self.unacked[..take].iter().collect();
            // All or nothing: rows another node made final first are left out, and the rest
            // recorded in the next call (each call leaves out at least one more row).
            let counted = loop {
                let args = FinishArgs::of(batch.iter().copied());
                let mut call = self.finish.key(&self.keys.rows);
                call.key(&self.keys.results).key(self.keys.counts(&self.config.node));
                call.key(&self.keys.done).key(self.name.key());
                call.arg(GROUP).arg(&self.config.node).arg(self.name.token());
                args.push(&mut call, &totals);
                call.arg(&chunks[..]);
                let already: redis::RedisResult<Vec<u64>> = match &mut self.con {
                    Some(con) => call.invoke(con),
                    None => Ok(Vec::new()),
                };
                self.report.commands += 1;
                match already {
                    Ok(already) if already.is_empty() => {
                        args.add_to(&mut totals);
                        break args.lines.len();
                    }
                    Ok(already) => batch.retain(|f| !already.contains(&f.0)),
                    Err(e) => {
                        self.held.unacked(chunks);
                        if e.code() == Some("NODETAKEN") {
                            return Err(self.node_taken());
                        }
                        return Err(e.into());
                    }
                }
            };
            self.report.counted += counted as u64;
            self.report.acked += take as u64;
            for Final(line, ..) in self.unacked.drain(..take) {
                self.held.finished(line);
            }
        }
        self.totals = Some(totals);
        Ok(true)
    }

    fn renew_lease(&mut self) -> Result<(), StepError> {
        let renewed = match &mut self.con {
            Some(con) => self.name.renew(con)?,
            None => return Ok(()),
        };
        self.report.commands += 1;
        if !renewed {
            return Err(self.node_taken());
        }
        Ok(())
    }

    fn node_taken(&self) -> StepError {
        StepError::Fatal(
            ClusterError::NodeTaken {
                node: self.config.node.clone(),
                campaign: self.config.server.url.campaign.clone(),
            }
            .to_string(),
        )
    }

    /// Resets the idle time of every chunk held; drops those another node has.
    fn keep_held(&mut self) -> Result<(), StepError> {
        let held = self.held.ids();
        let mut lost = Vec::new();
        for chunk in held.chunks(KEEP_BATCH) {
            let mut call = self.keep.key(&self.keys.rows);
            call.arg(GROUP).arg(&self.config.node).arg(chunk);
            let gone: Vec<u64> = match &mut self.con {
                Some(con) => call.invoke(con)?,
                None => return Ok(()),
            };
            self.report.commands += 1;
            for first in gone {
                lost.extend(self.held.lose(first));
            }
        }
        if !lost.is_empty() {
            self.report.lost += lost.len() as u64;
            self.unfinished = self.unfinished.saturating_sub(lost.len());
            let _ = self.rows.send(Fetched::Lost(lost));
        }
        Ok(())
    }

    /// Reads new chunks (this node's own pending ones first, after a restart); how many.
    fn read(&mut self) -> Result<usize, StepError> {
        let cursor = self.own_cursor.clone().unwrap_or_else(|| ">".into());
        let reply: redis::Value = redis::cmd("XREADGROUP")
            .arg("GROUP")
            .arg(GROUP)
            .arg(&self.config.node)
            .arg("COUNT")
            .arg(READ_BATCH)
            .arg("STREAMS")
            .arg(&self.keys.rows)
            .arg(&cursor)
            .query(self.con())?;
        self.report.commands += 1;
        let entries = entry::read_reply(reply);
        // A chunk of its own read again (a restart) may have rows final already.
        let own = self.own_cursor.is_some();
        if own {
            match entries.last() {
                Some(last) => self.own_cursor = Some(format!("0-{}", last.line)),
                None => self.own_cursor = None,
            }
        }
        Ok(self.hand_over(entries, own)?.0)
    }

    /// Takes over chunks idle past `--claim-idle` (their node stopped); how many.
    fn claim(&mut self) -> Result<usize, StepError> {
        let reply: redis::Value = redis::cmd("XAUTOCLAIM")
            .arg(&self.keys.rows)
            .arg(GROUP)
            .arg(&self.config.node)
            .arg(self.config.claim_idle.as_millis() as u64)
            .arg(&self.claim_cursor)
            .arg("COUNT")
            .arg(READ_BATCH)
            .query(self.con())?;
        self.report.commands += 1;
        let (cursor, claimed) = entry::claim_reply(reply);
        self.claim_cursor = cursor;
        let (chunks, rows) = self.hand_over(claimed, true)?;
        self.report.taken_over += rows as u64;
        Ok(chunks)
    }

    /// Decodes chunks into rows for the source, skipping chunks it already holds and, with
    /// `taken`, rows already recorded final (a chunk taken over, or read again after a
    /// restart). How many chunks were new, and how many rows it handed over.
    fn hand_over(&mut self, entries: Vec<entry::Entry>, taken: bool) -> Result<(usize, usize), StepError> {
        let columns = self.config.columns.as_ref();
        let mut chunks = Vec::with_capacity(entries.len());
        for e in entries {
            if !self.held.contains(e.line) {
                chunks.push(entry::Chunk::of(&e, columns).map_err(StepError::Fatal)?);
            }
        }
        if taken && !chunks.is_empty() {
            // The bytes of the done bitmap each chunk's lines fall in (bit 0 is the first
            // octet's high bit, as SETBIT numbers them).
            let mut pipe = redis::pipe();
            for c in &chunks {
                pipe.cmd("GETRANGE").arg(&self.keys.done).arg(c.first / 8).arg(c.last / 8);
            }
            let bits: Vec<Vec<u8>> = pipe.query(self.con())?;
            self.report.commands += 1;
            for (c, bytes) in chunks.iter_mut().zip(bits) {
                let base = c.first / 8;
                let done = |line: u64| {
                    bytes.get((line / 8 - base) as usize).is_some_and(|b| b & (0x80 >> (line % 8)) != 0)
                };
                c.items.retain(|item| !done(line_of(item)));
            }
        }
        let new = chunks.len();
        let n: usize = chunks.iter().map(|c| c.items.len()).sum();
        self.ahead.fetch_add(n, Ordering::AcqRel);
        self.unfinished += n;
        for c in chunks {
            let lines = c.items.iter().map(line_of).collect();
            self.held.take(c.first, c.last, lines);
            if c.items.is_empty() {
                continue;
            }
            // Each chunk's rows as decoded, not gathered into one vector: that copied every
            // row once more into a vector of tens of kilobytes a batch, grown as it went.
            // Bounded: the source drains it every turn; a full channel waits for it.
            let mut fetched = Fetched::Rows(c.items);
            loop {
                match self.rows.try_send(fetched) {
                    Ok(()) => break,
                    Err(TrySendError::Full(back)) => {
                        fetched = back;
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    Err(TrySendError::Disconnected(_)) => break,
                }
            }
        }
        Ok((new, n))
    }

    /// Every row is in and none is pending under any node.
    fn campaign_complete(&mut self) -> Result<bool, StepError> {
        let keys = self.keys.clone();
        let meta = super::load::Meta::read(self.con(), &keys)?;
        if !meta.loaded {
            return Ok(false);
        }
        let group = super::status::group_info(self.con(), &keys)?;
        self.report.commands += 2;
        Ok(group.pending == 0 && group.last_delivered >= meta.last_chunk)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn taking_rows_down_to_the_refill_mark_wakes_the_worker_once() {
        let (rows_tx, rows) = std::sync::mpsc::sync_channel(4);
        let (wake, woken) = std::sync::mpsc::channel();
        let ahead = Arc::new(AtomicUsize::new(WINDOW));
        let mut queue = QueueRows {
            rows,
            ahead: Arc::clone(&ahead),
            wake,
            ready: VecDeque::new(),
            lost: Vec::new(),
            complete: false,
            loader_error: None,
        };
        let row = |line| Err(crate::send::input::BadRow { line, email: None, reason: String::new() });
        rows_tx.send(Fetched::Rows((0..WINDOW as u64).map(row).collect())).unwrap();
        for taken in 1..=WINDOW {
            assert!(matches!(queue.next_row().unwrap(), QueueRead::Row(_)));
            let wakes = woken.try_iter().filter(|w| matches!(w, Wake::Room)).count();
            // Room for a batch: the worker reads now instead of at its next round.
            let expected = usize::from(WINDOW - taken == REFILL_AT);
            assert_eq!(wakes, expected, "after {taken} taken");
        }
        assert_eq!(ahead.load(Ordering::Acquire), 0);
        assert!(matches!(queue.next_row().unwrap(), QueueRead::Later));
    }
}

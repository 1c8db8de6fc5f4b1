//! serve's spool workload on fjall and on redb, one after the other in one run, so the store is
//! chosen by measurement (issue 27). Every commit that acknowledges intake is durable (fdatasync
//! or fsync) before the next one starts, as serve's group commit will be.
//!
//! Phases, per store, in a fresh directory:
//! 1. intake: MESSAGES messages (SIZE octets of content, RCPTS recipients each, a 24-octet state
//!    row per recipient) in durable batches of 1, 16 and 128 messages: messages/s and the
//!    batch commit's p50/p99.
//! 2. attempts: every recipient's state row rewritten (a deferral), durable batches of 128.
//! 3. finals: every message and its recipient rows deleted, durable batches of 128; then the
//!    directory's size (is the space given back?).
//! 4. restart: BACKLOG messages written (durable every 1,024), the store closed, opened again
//!    and every recipient row read: how long a restart takes to rebuild the schedule.
//!
//!   cargo run --release -- DIR            # MESSAGES=20000 SIZE=2000 RCPTS=1 BACKLOG=200000

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

fn env(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// One embedded store, as the spool would use it: two tables (messages, recipient states),
/// batches committed durably.
trait Store {
    fn name(&self) -> &'static str;
    /// Writes `puts` and removes `dels` in one batch, durable when it returns (if `durable`).
    fn commit(&mut self, puts: &[(Table, Vec<u8>, Vec<u8>)], dels: &[(Table, Vec<u8>)], durable: bool);
    /// Reads every recipient row; returns how many.
    fn scan_recipients(&self) -> usize;
}

#[derive(Clone, Copy)]
enum Table {
    Messages,
    Recipients,
}

struct Fjall {
    db: fjall::Database,
    messages: fjall::Keyspace,
    recipients: fjall::Keyspace,
}

impl Fjall {
    fn open(dir: &Path) -> Fjall {
        let db = fjall::Database::builder(dir).open().expect("fjall open");
        // Message content kept apart from the keys (KV separation), as large values should be.
        let blobs = fjall::KeyspaceCreateOptions::default().with_kv_separation(Some(fjall::KvSeparationOptions::default()));
        let messages = db.keyspace("messages", || blobs).expect("keyspace");
        let recipients = db.keyspace("recipients", fjall::KeyspaceCreateOptions::default).expect("keyspace");
        Fjall { db, messages, recipients }
    }
}

impl Store for Fjall {
    fn name(&self) -> &'static str {
        "fjall"
    }

    fn commit(&mut self, puts: &[(Table, Vec<u8>, Vec<u8>)], dels: &[(Table, Vec<u8>)], durable: bool) {
        let mut batch = self.db.batch();
        for (t, k, v) in puts {
            let ks = match t {
                Table::Messages => &self.messages,
                Table::Recipients => &self.recipients,
            };
            batch.insert(ks, k.clone(), v.clone());
        }
        for (t, k) in dels {
            let ks = match t {
                Table::Messages => &self.messages,
                Table::Recipients => &self.recipients,
            };
            batch.remove(ks, k.clone());
        }
        batch.commit().expect("commit");
        if durable {
            self.db.persist(fjall::PersistMode::SyncData).expect("persist");
        }
    }

    fn scan_recipients(&self) -> usize {
        self.recipients.iter().map(|g| g.into_inner().expect("read")).count()
    }
}

const MESSAGES: redb::TableDefinition<&[u8], &[u8]> = redb::TableDefinition::new("messages");
const RECIPIENTS: redb::TableDefinition<&[u8], &[u8]> = redb::TableDefinition::new("recipients");

struct Redb {
    db: redb::Database,
}

impl Redb {
    fn open(dir: &Path) -> Redb {
        std::fs::create_dir_all(dir).expect("dir");
        let db = redb::Database::create(dir.join("spool.redb")).expect("redb open");
        let tx = db.begin_write().expect("tx");
        tx.open_table(MESSAGES).expect("table");
        tx.open_table(RECIPIENTS).expect("table");
        tx.commit().expect("commit");
        Redb { db }
    }
}

impl Store for Redb {
    fn name(&self) -> &'static str {
        "redb"
    }

    fn commit(&mut self, puts: &[(Table, Vec<u8>, Vec<u8>)], dels: &[(Table, Vec<u8>)], durable: bool) {
        let mut tx = self.db.begin_write().expect("tx");
        if !durable {
            tx.set_durability(redb::Durability::None).expect("durability");
        }
        {
            let mut messages = tx.open_table(MESSAGES).expect("table");
            let mut recipients = tx.open_table(RECIPIENTS).expect("table");
            for (t, k, v) in puts {
                match t {
                    Table::Messages => messages.insert(k.as_slice(), v.as_slice()).expect("insert"),
                    Table::Recipients => recipients.insert(k.as_slice(), v.as_slice()).expect("insert"),
                };
            }
            for (t, k) in dels {
                match t {
                    Table::Messages => messages.remove(k.as_slice()).expect("remove"),
                    Table::Recipients => recipients.remove(k.as_slice()).expect("remove"),
                };
            }
        }
        tx.commit().expect("commit");
    }

    fn scan_recipients(&self) -> usize {
        use redb::{ReadableDatabase as _, ReadableTable as _};
        let tx = self.db.begin_read().expect("read tx");
        let table = tx.open_table(RECIPIENTS).expect("table");
        table.iter().expect("iter").map(|r| r.expect("row")).count()
    }
}

fn message_rows(id: u64, size: usize, rcpts: usize) -> Vec<(Table, Vec<u8>, Vec<u8>)> {
    let mut rows = Vec::with_capacity(rcpts + 1);
    let content: Vec<u8> = (0..size).map(|i| b'a' + ((i as u64 + id) % 26) as u8).collect();
    rows.push((Table::Messages, id.to_be_bytes().to_vec(), content));
    for r in 0..rcpts as u32 {
        rows.push((Table::Recipients, recipient_key(id, r), vec![0u8; 24]));
    }
    rows
}

fn recipient_key(id: u64, r: u32) -> Vec<u8> {
    let mut k = id.to_be_bytes().to_vec();
    k.extend_from_slice(&r.to_be_bytes());
    k
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn dir_size(dir: &Path) -> u64 {
    let mut total = 0;
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let meta = entry.metadata().expect("meta");
        total += if meta.is_dir() { dir_size(&entry.path()) } else { meta.len() };
    }
    total
}

fn run(store: &mut dyn Store, dir: &Path, size: usize, rcpts: usize, messages: usize) {
    let mut next_id = 0u64;
    for batch in [1usize, 16, 128] {
        let count = if batch == 1 { messages / 4 } else { messages };
        let mut latencies = Vec::new();
        let started = Instant::now();
        let mut done = 0;
        while done < count {
            let rows: Vec<_> = (0..batch)
                .flat_map(|_| {
                    next_id += 1;
                    message_rows(next_id, size, rcpts)
                })
                .collect();
            let t = Instant::now();
            store.commit(&rows, &[], true);
            latencies.push(t.elapsed());
            done += batch;
        }
        let secs = started.elapsed().as_secs_f64();
        latencies.sort();
        println!(
            "{:6} intake, batches of {batch:3}: {:8.0} msg/s, commit p50 {:6.2} ms p99 {:6.2} ms",
            store.name(),
            done as f64 / secs,
            percentile(&latencies, 0.5).as_secs_f64() * 1e3,
            percentile(&latencies, 0.99).as_secs_f64() * 1e3
        );
    }
    let ids: Vec<u64> = (1..=next_id).collect();
    let started = Instant::now();
    for chunk in ids.chunks(128) {
        let rows: Vec<_> = chunk
            .iter()
            .flat_map(|&id| (0..rcpts as u32).map(move |r| (Table::Recipients, recipient_key(id, r), vec![1u8; 24])))
            .collect();
        store.commit(&rows, &[], true);
    }
    println!(
        "{:6} attempts (state rows rewritten, batches of 128): {:8.0} recipients/s",
        store.name(),
        (ids.len() * rcpts) as f64 / started.elapsed().as_secs_f64()
    );
    let before = dir_size(dir);
    let started = Instant::now();
    for chunk in ids.chunks(128) {
        let dels: Vec<_> = chunk
            .iter()
            .flat_map(|&id| {
                std::iter::once((Table::Messages, id.to_be_bytes().to_vec()))
                    .chain((0..rcpts as u32).map(move |r| (Table::Recipients, recipient_key(id, r))))
            })
            .collect();
        store.commit(&[], &dels, true);
    }
    let secs = started.elapsed().as_secs_f64();
    std::thread::sleep(Duration::from_secs(2)); // background compaction, if any
    println!(
        "{:6} finals (deleted, batches of 128): {:8.0} msg/s; on disk {:.1} MiB full, {:.1} MiB after deleting all",
        store.name(),
        ids.len() as f64 / secs,
        before as f64 / 1048576.0,
        dir_size(dir) as f64 / 1048576.0
    );
}

fn restart(open: &dyn Fn(&Path) -> Box<dyn Store>, dir: &Path, size: usize, rcpts: usize, backlog: usize) {
    {
        let mut store = open(dir);
        let mut id = 0u64;
        while (id as usize) < backlog {
            let rows: Vec<_> = (0..1024)
                .flat_map(|_| {
                    id += 1;
                    message_rows(id, size, rcpts)
                })
                .collect();
            store.commit(&rows, &[], true);
        }
    }
    let started = Instant::now();
    let store = open(dir);
    let opened = started.elapsed();
    let n = store.scan_recipients();
    println!(
        "{:6} restart with {backlog} messages waiting ({:.0} MiB): open {:.0} ms, read {n} recipient rows {:.0} ms",
        store.name(),
        dir_size(dir) as f64 / 1048576.0,
        opened.as_secs_f64() * 1e3,
        (started.elapsed() - opened).as_secs_f64() * 1e3
    );
}

fn main() {
    let base = PathBuf::from(std::env::args().nth(1).unwrap_or_else(|| "/tmp/spool-compare".into()));
    let (messages, size, rcpts, backlog) =
        (env("MESSAGES", 20_000), env("SIZE", 2_000), env("RCPTS", 1), env("BACKLOG", 200_000));
    println!("{messages} messages of {size} octets, {rcpts} recipient(s) each; restart with {backlog}");
    let opens: [(&str, &dyn Fn(&Path) -> Box<dyn Store>); 2] = [
        ("fjall", &|d: &Path| Box::new(Fjall::open(d)) as Box<dyn Store>),
        ("redb", &|d: &Path| Box::new(Redb::open(d)) as Box<dyn Store>),
    ];
    for (name, open) in opens {
        let dir = base.join(name);
        let _ = std::fs::remove_dir_all(&dir);
        let mut store = open(&dir);
        run(store.as_mut(), &dir, size, rcpts, messages);
        drop(store);
        let dir = base.join(format!("{name}-restart"));
        let _ = std::fs::remove_dir_all(&dir);
        restart(open, &dir, size, rcpts, backlog);
        let _ = std::fs::remove_dir_all(base.join(name));
        let _ = std::fs::remove_dir_all(&dir);
    }
}

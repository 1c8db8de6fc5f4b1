//! Joining a campaign, and loading its rows once.
//!
//! Every node checks what it was started with against the campaign's meta (the message's
//! digest; a loader, its input's digest too) before it sends anything. Nodes given
//! `--recipients` are loaders: a lock (`SET NX PX`, refreshed by each batch) lets one of them
//! add the rows; the others stand by and take over from where it stopped if its lock expires
//! (the load script skips lines already in). Rows are read exactly as `send` reads a file,
//! de-duplicated here (once for the whole campaign), and added in chunks of
//! [`entry::CHUNK`] rows, [`BATCH`] rows per script call.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::{ClusterError, Keys, Server, ensure_group, entry, scripts};
use crate::send::hashing::Fingerprints;
use crate::send::input::Rows;
use crate::send::source::{duplicate, fingerprint};

/// Rows per call of the load script (in chunks of [`entry::CHUNK`]): a call stays well under a
/// millisecond of Redis's single thread while the round trips stay a thousandth per row.
pub const BATCH: usize = 1000;

/// The loader's lock lives this long without a batch (a loader that dies frees it then).
const LOCK_TTL: Duration = Duration::from_secs(30);

/// How long a node without `--recipients` waits for the campaign to be loaded by another.
pub const WAIT_FOR_CAMPAIGN: Duration = Duration::from_secs(60);

/// What the campaign's meta says.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Meta {
    /// The message's digest, set by the first loader.
    pub message: Option<String>,
    /// The recipients file's digest (`input::digest`).
    pub input: Option<String>,
    /// A CSV input's header (every node binds its template to it); `None` for JSONL.
    pub columns: Option<Vec<String>>,
    /// Every row is in the stream.
    pub loaded: bool,
    /// Rows in the stream, the last line added, and the id (first line) of the last chunk.
    pub rows: u64,
    pub loaded_to: u64,
    pub last_chunk: u64,
}

impl Meta {
    pub fn read(con: &mut redis::Connection, keys: &Keys) -> redis::RedisResult<Meta> {
        let fields: Vec<Option<String>> = redis::cmd("HMGET")
            .arg(&keys.meta)
            .arg(&["message", "input", "columns", "loaded", "rows", "loaded_to", "last_chunk"])
            .query(con)?;
        let get = |i: usize| fields.get(i).cloned().flatten();
        let number = |i: usize| get(i).and_then(|v| v.parse().ok()).unwrap_or(0);
        Ok(Meta {
            message: get(0),
            input: get(1),
            columns: get(2).filter(|c| !c.is_empty()).and_then(|c| serde_json::from_str(&c).ok()),
            loaded: get(3).as_deref() == Some("1"),
            rows: number(4),
            loaded_to: number(5),
            last_chunk: number(6),
        })
    }
}

/// The recipients file a loader adds.
#[derive(Debug, Clone)]
pub struct Input {
    pub path: PathBuf,
    /// `input::digest` of the file.
    pub digest: String,
    /// Send one message per address.
    pub dedupe: bool,
}

/// What a node learns by joining: the header its template binds to, and, for a loader, where
/// the thread adding rows while the node sends says why it stopped, if it failed. (The thread
/// is not joined: it ends once the campaign is loaded, or with the process.)
pub struct Joined {
    pub columns: Option<Arc<[String]>>,
    pub loader_error: Option<LoaderError>,
}

/// Why a loader stopped, once it has failed.
pub type LoaderError = Arc<Mutex<Option<String>>>;

/// Checks the node against the campaign (creating it if this node loads it first), and starts
/// loading if this node has the input. `message`: the digest of this node's message.
pub fn join(
    server: &Server,
    node: &str,
    message: &str,
    input: Option<Input>,
) -> Result<Joined, ClusterError> {
    let keys = server.keys();
    let mut con = server.connect()?;
    ensure_group(&mut con, &keys).map_err(|e| server.error(e))?;
    let campaign = &server.url.campaign;
    let meta = match &input {
        Some(input) => {
            let rows = Rows::open(&input.path)
                .map_err(|e| layout(campaign, format!("{}: {e}", input.path.display())))?;
            let columns = rows.columns().map(|c| c.to_vec());
            let columns = match columns {
                Some(c) => serde_json::to_string(&c).unwrap_or_default(),
                None => String::new(),
            };
            // The first loader names what the campaign is; HSETNX leaves a later one's alone,
            // and the checks below then compare.
            redis::pipe()
                .cmd("HSETNX")
                .arg(&keys.meta)
                .arg("message")
                .arg(message)
                .ignore()
                .cmd("HSETNX")
                .arg(&keys.meta)
                .arg("input")
                .arg(&input.digest)
                .ignore()
                .cmd("HSETNX")
                .arg(&keys.meta)
                .arg("columns")
                .arg(columns)
                .ignore()
                .query::<()>(&mut con)
                .map_err(|e| server.error(e))?;
            let meta = Meta::read(&mut con, &keys).map_err(|e| server.error(e))?;
            if meta.input.as_deref() != Some(&input.digest) {
                return Err(ClusterError::InputDiffers {
                    campaign: campaign.clone(),
                    path: input.path.display().to_string(),
                    theirs: meta.input.unwrap_or_default(),
                    ours: input.digest.clone(),
                });
            }
            meta
        }
        None => wait_for_campaign(server, &keys, &mut con)?,
    };
    if meta.message.as_deref() != Some(message) {
        return Err(ClusterError::MessageDiffers {
            campaign: campaign.clone(),
            theirs: meta.message.unwrap_or_default(),
            ours: message.to_owned(),
        });
    }
    redis::cmd("SADD").arg(&keys.nodes).arg(node).query::<()>(&mut con).map_err(|e| server.error(e))?;
    let columns = meta.columns.map(Arc::from);
    let loader_error = match input {
        Some(input) if !meta.loaded => Some(start_loading(server.clone(), node.to_owned(), input)?),
        _ => None,
    };
    Ok(Joined { columns, loader_error })
}

fn layout(campaign: &str, what: String) -> ClusterError {
    ClusterError::Layout { campaign: campaign.to_owned(), what }
}

/// Waits (bounded) for a loader to name the campaign's message.
fn wait_for_campaign(
    server: &Server,
    keys: &Keys,
    con: &mut redis::Connection,
) -> Result<Meta, ClusterError> {
    let deadline = Instant::now() + WAIT_FOR_CAMPAIGN;
    let mut said = false;
    loop {
        let meta = Meta::read(con, keys).map_err(|e| server.error(e))?;
        if meta.message.is_some() {
            return Ok(meta);
        }
        if Instant::now() >= deadline {
            return Err(layout(
                &server.url.campaign,
                format!(
                    "no node has loaded it in {}s: start one node with --recipients",
                    WAIT_FOR_CAMPAIGN.as_secs()
                ),
            ));
        }
        if !said {
            eprintln!(
                "volley send: waiting for a node with --recipients to load campaign {}",
                server.url.campaign
            );
            said = true;
        }
        // Often: nodes waiting for a campaign should be reading as soon as rows come, or the
        // first node up takes them all.
        std::thread::sleep(Duration::from_millis(25));
    }
}

fn start_loading(server: Server, node: String, input: Input) -> Result<LoaderError, ClusterError> {
    let error = Arc::new(Mutex::new(None));
    let slot = Arc::clone(&error);
    std::thread::Builder::new()
        .name("cluster-load".into())
        .spawn(move || {
            if let Err(e) = load_when_free(&server, &node, &input)
                && let Ok(mut slot) = slot.lock()
            {
                *slot = Some(e);
            }
        })
        .map_err(|e| layout("", format!("starting the loader: {e}")))?;
    Ok(error)
}

/// Stands by until the campaign is loaded, loading whenever this node holds the lock.
/// Errors with Redis are waited out; an input that cannot be read ends it.
fn load_when_free(server: &Server, node: &str, input: &Input) -> Result<(), String> {
    let keys = server.keys();
    let token = format!("{node}:{}:{}", std::process::id(), crate::send::new_campaign_id());
    let mut con = None;
    loop {
        let attempt = (|| -> Result<bool, LoadError> {
            let c = match &mut con {
                Some(c) => c,
                None => con.insert(server.connect().map_err(|e| LoadError::Redis(e.to_string()))?),
            };
            let meta = Meta::read(c, &keys).map_err(LoadError::redis)?;
            if meta.loaded {
                return Ok(true);
            }
            if !super::take_lease(c, &keys.loader, &token, LOCK_TTL).map_err(LoadError::redis)? {
                return Ok(false);
            }
            load(c, &keys, &token, input, meta.loaded_to)?;
            Ok(true)
        })();
        match attempt {
            Ok(true) => return Ok(()),
            Ok(false) => std::thread::sleep(LOCK_TTL / 6),
            Err(LoadError::Input(e)) => return Err(e),
            Err(LoadError::Redis(e)) => {
                // Redis is down or another loader took over (this one stalled past its lock):
                // stand by and look again.
                eprintln!("volley send: loading campaign {}: {e}; retrying", server.url.campaign);
                con = None;
                std::thread::sleep(Duration::from_secs(1));
            }
        }
    }
}

enum LoadError {
    Redis(String),
    Input(String),
}

impl LoadError {
    fn redis(e: redis::RedisError) -> LoadError {
        LoadError::Redis(e.to_string())
    }
}

/// Adds every row past line `loaded_to` (the last one in), in batches, while holding the lock.
fn load(
    con: &mut redis::Connection,
    keys: &Keys,
    token: &str,
    input: &Input,
    loaded_to: u64,
) -> Result<(), LoadError> {
    let input_error = |e: std::io::Error| LoadError::Input(format!("reading {}: {e}", input.path.display()));
    let mut rows = Rows::open(&input.path).map_err(input_error)?;
    let script = scripts::load();
    let mut seen = input.dedupe.then(Fingerprints::default);
    let mut chunks: Vec<Chunk> = Vec::with_capacity(BATCH / entry::CHUNK);
    let mut open = Chunk::default();
    loop {
        let item = rows.next_row().map_err(input_error)?;
        let end = item.is_none();
        if let Some(mut item) = item {
            // Every row goes through the set, those already in too, so that duplicates are
            // decided as one reading of the whole file would.
            if let (Ok(row), Some(seen)) = (&item, &mut seen)
                && !seen.insert(fingerprint(row.email.as_str()))
            {
                item = Err(duplicate(row));
            }
            let line = crate::send::input::line_of(&item);
            if line > loaded_to {
                if open.rows == 0 {
                    open.first = line;
                }
                open.last = line;
                open.rows += 1;
                entry::encode_row(&mut open.payload, &item);
                if open.rows == entry::CHUNK {
                    chunks.push(std::mem::take(&mut open));
                }
            }
        }
        if end && open.rows > 0 {
            chunks.push(std::mem::take(&mut open));
        }
        if chunks.len() * entry::CHUNK >= BATCH || end {
            let mut call = script.key(&keys.rows);
            call.key(&keys.meta).key(&keys.loader).arg(token).arg(LOCK_TTL.as_millis() as u64).arg(if end {
                "1"
            } else {
                "0"
            });
            for c in &chunks {
                call.arg(c.first).arg(c.last).arg(c.rows).arg(&c.payload[..]);
            }
            call.invoke::<u64>(con).map_err(LoadError::redis)?;
            chunks.clear();
        }
        if end {
            return Ok(());
        }
    }
}

/// Rows on their way into one stream entry.
#[derive(Default)]
struct Chunk {
    first: u64,
    last: u64,
    rows: usize,
    payload: Vec<u8>,
}

//! Several machines on one campaign, through Redis (`send --queue redis://HOST:PORT/CAMPAIGN`,
//! `volley status`).
//!
//! A campaign's rows live in one Redis stream, in chunks of up to a hundred consecutive rows,
//! each entry's id being `0-FIRST` (its first row's input line; a line is the recipient's id
//! everywhere in volley): a loader (`load.rs`) adds them once, in batches; every node reads
//! chunks through one consumer group (`worker.rs`), delivers their rows with its own engine and
//! log, marks a row final (a bit of the `done` bitmap, which also counts it once) only once its
//! final record is durable in that log, and acknowledges a chunk (XACK) once all its rows are.
//! A chunk a node has taken stays pending under that node, kept fresh while rows of it wait for
//! a retry; a node that dies stops keeping its chunks fresh, and after `--claim-idle` the others
//! take them over (XAUTOCLAIM) and send the rows not yet marked final. The engine knows nothing
//! of this: the worker is one more input of `send`'s job source.
//!
//! Every key of a campaign shares the hash tag `{CAMPAIGN}`, so under Redis Cluster a campaign
//! lives on one shard and its scripts may touch all its keys.

pub mod bench;
pub mod entry;
mod finish;
pub mod held;
pub mod limiter;
pub mod limits;
pub mod load;
pub mod status;
pub mod worker;

use std::time::Duration;

use thiserror::Error;

/// The consumer group every node reads through.
pub const GROUP: &str = "volley";

/// How long a node's connection waits for Redis before counting it as down.
const IO_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Error)]
pub enum ClusterError {
    #[error("{0}: expected redis://HOST:PORT/NAME (NAME: letters, digits, `-`, `_`, inner `.`)")]
    Url(String),
    #[error(
        "{0}: a password in the URL would show on the command line and in ps; put it in a file and give \
         --redis-password-file"
    )]
    PasswordInUrl(String),
    #[error("redis {url}: {error}")]
    Redis { url: String, error: redis::RedisError },
    #[error("--redis-password-file {path}: {error}")]
    Password { path: String, error: std::io::Error },
    #[error(
        "campaign {campaign} was loaded with another message (its digest {theirs}, this node's {ours}): every \
         node must be started with the same message and message options"
    )]
    MessageDiffers { campaign: String, theirs: String, ours: String },
    #[error(
        "campaign {campaign} was loaded from another recipients file (its digest {theirs}, {path}'s {ours}): \
         give the same file, or another campaign name"
    )]
    InputDiffers { campaign: String, path: String, theirs: String, ours: String },
    #[error(
        "node {node} is already working on {campaign} (another volley with the same --node?); give each \
         node its own name"
    )]
    NodeTaken { node: String, campaign: String },
    #[error("campaign {campaign}: {what}")]
    Layout { campaign: String, what: String },
}

/// Where a campaign lives: a Redis server and the campaign's name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueUrl {
    /// `redis://HOST:PORT` (with `/DB` if given as `?db=N`), as the client takes it.
    pub server: String,
    pub campaign: String,
    /// As the user gave it.
    text: String,
}

impl std::fmt::Display for QueueUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

impl QueueUrl {
    /// Parses `redis://HOST[:PORT]/NAME[?db=N]`. A password in the URL is refused: it would be
    /// on the command line.
    pub fn parse(text: &str) -> Result<QueueUrl, ClusterError> {
        let bad = || ClusterError::Url(text.to_owned());
        let rest = text.strip_prefix("redis://").ok_or_else(bad)?;
        let (rest, db) = match rest.split_once("?db=") {
            Some((rest, db)) => (rest, Some(db.parse::<u16>().map_err(|_| bad())?)),
            None => (rest, None),
        };
        let (authority, name) = rest.split_once('/').ok_or_else(bad)?;
        if authority.contains('@') {
            return Err(ClusterError::PasswordInUrl(text.to_owned()));
        }
        if authority.is_empty() || crate::send::check_campaign_id(name).is_err() {
            return Err(bad());
        }
        let authority = if authority.contains(':') && !authority.ends_with(']') {
            authority.to_owned()
        } else {
            format!("{authority}:6379")
        };
        let server = match db {
            Some(db) => format!("redis://{authority}/{db}"),
            None => format!("redis://{authority}"),
        };
        Ok(QueueUrl { server, campaign: name.to_owned(), text: text.to_owned() })
    }
}

/// The keys of one campaign.
#[derive(Debug, Clone)]
pub struct Keys {
    /// What every node must agree on (digests, columns) and the loader's progress: a hash.
    pub meta: String,
    /// The rows: a stream of chunks, entry id `0-FIRST` (see `entry.rs`).
    pub rows: String,
    /// Final records, a batch per entry, for the merged view: a stream.
    pub results: String,
    /// The loader's lock: a string holding the loading node's token, with a time to live.
    pub loader: String,
    /// Every node that has worked on the campaign: a set.
    pub nodes: String,
    /// Reactions (suspensions, slowings) for every node to apply: a hash by destination key.
    pub reactions: String,
    /// Rows final on some node: a bitmap, bit LINE.
    pub done: String,
    prefix: String,
}

impl Keys {
    pub fn new(campaign: &str) -> Keys {
        let prefix = format!("volley:{{{campaign}}}:");
        Keys {
            meta: format!("{prefix}meta"),
            rows: format!("{prefix}rows"),
            results: format!("{prefix}results"),
            loader: format!("{prefix}loader"),
            nodes: format!("{prefix}nodes"),
            reactions: format!("{prefix}reactions"),
            done: format!("{prefix}done"),
            prefix,
        }
    }

    /// A shared limit of the destination whose fleet key is `destination` (`conn`: leases;
    /// `msg`, `cturn`: rate gates).
    pub fn limit(&self, destination: &str, what: &str) -> String {
        format!("{}limit:{destination}:{what}", self.prefix)
    }

    /// A node's final rows by status (`s:STATUS`) and by domain and status
    /// (`d:DOMAIN:STATUS`): a hash only that node writes, whole values at a time (see
    /// `finish.lua`); the campaign's counts are the sums over its nodes.
    pub fn counts(&self, node: &str) -> String {
        format!("{}counts:{node}", self.prefix)
    }

    /// A node's lease: held while the node runs, so a second process with its name is refused.
    pub fn node(&self, node: &str) -> String {
        format!("{}node:{node}", self.prefix)
    }
}

/// Checks a node's name: it is the consumer's name and part of keys and counts.
pub fn check_node_name(name: &str) -> Result<(), String> {
    if name.is_empty()
        || name.len() > 64
        || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
    {
        return Err("must be 1 to 64 letters, digits, `-`, `_` or `.`".into());
    }
    Ok(())
}

/// This machine's name, the default node name.
pub fn default_node_name() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname writes at most that much.
    let ok = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) } == 0;
    let name: String = match ok {
        true => buf.iter().take_while(|&&b| b != 0).map(|&b| b as char).collect(),
        false => String::new(),
    };
    let name: String =
        name.chars().filter(|c| c.is_ascii_alphanumeric() || "-_.".contains(*c)).take(64).collect();
    if name.is_empty() { "node".into() } else { name }
}

/// How to reach the campaign's Redis.
#[derive(Clone)]
pub struct Server {
    pub url: QueueUrl,
    /// Read from `--redis-password-file`, never from the command line (nor from `Debug`).
    pub password: Option<String>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let password = self.password.as_ref().map(|_| "<hidden>");
        f.debug_struct("Server").field("url", &self.url).field("password", &password).finish()
    }
}

impl Server {
    /// A connection with timeouts on every read and write, so a dead server is an error
    /// (and a reconnection), not a hang.
    pub fn connect(&self) -> Result<redis::Connection, ClusterError> {
        let error = |error| ClusterError::Redis { url: self.url.server.clone(), error };
        let mut info =
            redis::IntoConnectionInfo::into_connection_info(self.url.server.as_str()).map_err(error)?;
        if let Some(password) = &self.password {
            let settings = info.redis_settings().clone().set_password(password.clone());
            info = info.set_redis_settings(settings);
        }
        let client = redis::Client::open(info).map_err(error)?;
        let con = client.get_connection_with_timeout(IO_TIMEOUT).map_err(error)?;
        con.set_read_timeout(Some(IO_TIMEOUT)).map_err(error)?;
        con.set_write_timeout(Some(IO_TIMEOUT)).map_err(error)?;
        Ok(con)
    }

    pub fn error(&self, error: redis::RedisError) -> ClusterError {
        ClusterError::Redis { url: self.url.server.clone(), error }
    }

    pub fn keys(&self) -> Keys {
        Keys::new(&self.url.campaign)
    }
}

/// Reads a password file (one line; a final line break is ignored).
pub fn read_password(path: &std::path::Path) -> Result<String, ClusterError> {
    let text = std::fs::read_to_string(path)
        .map_err(|error| ClusterError::Password { path: path.display().to_string(), error })?;
    Ok(text.trim_end_matches(['\r', '\n']).to_owned())
}

/// Takes the lease `key` for `token` for `ttl` if no one holds it (`SET NX PX`): whether it
/// was taken. Node names and the loader's lock are such leases.
pub fn take_lease(
    con: &mut redis::Connection,
    key: &str,
    token: &str,
    ttl: Duration,
) -> redis::RedisResult<bool> {
    let taken: Option<String> =
        redis::cmd("SET").arg(key).arg(token).arg("NX").arg("PX").arg(ttl.as_millis() as u64).query(con)?;
    Ok(taken.is_some())
}

/// A node's lease on its name lives this long without a renewal, renewed every
/// [`NAME_RENEW`]: a node that dies frees its name in at most this long.
pub const NAME_TTL: Duration = Duration::from_secs(15);
pub const NAME_RENEW: Duration = Duration::from_secs(3);

/// A node's name, held as a lease while it runs, so that a second process given the same name
/// is refused (its rows, its connection leases are the first one's).
pub struct NameLease {
    key: String,
    token: String,
}

impl NameLease {
    /// The lease's key and this process's token in it: what a script checks before it writes
    /// what only this node may.
    pub fn key(&self) -> &str {
        &self.key
    }

    pub fn token(&self) -> &str {
        &self.token
    }

    /// Takes the name of `node`. A lease left by an earlier run of this node (killed) is waited
    /// out: it expires within [`NAME_TTL`]. One that a live node keeps renewing is refused,
    /// which shows within one renewal: its time to live grows instead of running down.
    pub fn take(con: &mut redis::Connection, server: &Server, node: &str) -> Result<NameLease, ClusterError> {
        let key = server.keys().node(node);
        let token = format!("{}:{}", std::process::id(), crate::send::new_campaign_id());
        let err = |e| server.error(e);
        let mut last_ttl: Option<i64> = None;
        loop {
            if take_lease(con, &key, &token, NAME_TTL).map_err(err)? {
                return Ok(NameLease { key, token });
            }
            let ttl: i64 = redis::cmd("PTTL").arg(&key).query(con).map_err(err)?;
            if last_ttl.is_some_and(|last| ttl > last) {
                return Err(ClusterError::NodeTaken {
                    node: node.to_owned(),
                    campaign: server.url.campaign.clone(),
                });
            }
            if last_ttl.is_none() {
                eprintln!(
                    "volley: node {node} holds a lease on {}: waiting to see whether it is alive",
                    server.url.campaign
                );
            }
            last_ttl = Some(ttl);
            // Past the holder's next renewal, or past the lease's end, whichever is first.
            let wait =
                Duration::from_millis(ttl.max(0) as u64 + 50).min(NAME_RENEW + Duration::from_millis(500));
            std::thread::sleep(wait);
        }
    }

    /// Renews the lease; takes it again if it lapsed (Redis restarted without its data, or
    /// this node was cut off past [`NAME_TTL`]). False if another process has the name now.
    pub fn renew(&self, con: &mut redis::Connection) -> redis::RedisResult<bool> {
        let renewed: u64 = scripts::refresh()
            .key(&self.key)
            .arg(&self.token)
            .arg(NAME_TTL.as_millis() as u64)
            .invoke(con)?;
        if renewed == 1 {
            return Ok(true);
        }
        take_lease(con, &self.key, &self.token, NAME_TTL)
    }

    /// Frees the name at once (a restart need not wait for the lease), if it is still ours.
    pub fn release(&self, con: &mut redis::Connection) -> redis::RedisResult<()> {
        scripts::give_back().key(&self.key).arg(&self.token).invoke(con)
    }
}

/// Creates the consumer group (and the stream) if no node has yet.
pub fn ensure_group(con: &mut redis::Connection, keys: &Keys) -> redis::RedisResult<()> {
    let created: redis::RedisResult<()> =
        redis::cmd("XGROUP").arg("CREATE").arg(&keys.rows).arg(GROUP).arg("0").arg("MKSTREAM").query(con);
    match created {
        Err(e) if e.code() == Some("BUSYGROUP") => Ok(()),
        other => other,
    }
}

/// The Lua scripts, each in its own file under `src/cluster/scripts/`.
pub mod scripts {
    /// Adds a batch of rows (loader only); see the file.
    pub fn load() -> redis::Script {
        redis::Script::new(include_str!("scripts/load.lua"))
    }
    /// Acknowledges final rows and counts each once; see the file.
    pub fn finish() -> redis::Script {
        redis::Script::new(include_str!("scripts/finish.lua"))
    }
    /// Keeps a node's rows its own while they wait; see the file.
    pub fn keep() -> redis::Script {
        redis::Script::new(include_str!("scripts/keep.lua"))
    }
    /// A node's connection leases to a destination; see the file.
    pub fn lease() -> redis::Script {
        redis::Script::new(include_str!("scripts/lease.lua"))
    }
    /// A block of turns from a fleet-wide rate (GCRA); see the file.
    pub fn tokens() -> redis::Script {
        redis::Script::new(include_str!("scripts/tokens.lua"))
    }
    /// A reaction one node applied, for all; see the file.
    pub fn react() -> redis::Script {
        redis::Script::new(include_str!("scripts/react.lua"))
    }
    /// Refreshes a lease held by a token; see the file.
    pub fn refresh() -> redis::Script {
        redis::Script::new(include_str!("scripts/refresh.lua"))
    }
    /// Deletes a lease held by a token; see the file.
    pub fn give_back() -> redis::Script {
        redis::Script::new(include_str!("scripts/give_back.lua"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_urls() {
        let u = QueueUrl::parse("redis://127.0.0.1:6390/spring-sale").unwrap();
        assert_eq!((u.server.as_str(), u.campaign.as_str()), ("redis://127.0.0.1:6390", "spring-sale"));
        let u = QueueUrl::parse("redis://redis.internal/c1?db=2").unwrap();
        assert_eq!(u.server, "redis://redis.internal:6379/2");
        assert_eq!(u.to_string(), "redis://redis.internal/c1?db=2");
        let u = QueueUrl::parse("redis://[::1]/c1").unwrap();
        assert_eq!(u.server, "redis://[::1]:6379");
        for bad in
            ["http://x/c", "redis://x", "redis://x/", "redis:///c", "redis://x/a b", "redis://x/c?db=z"]
        {
            assert!(matches!(QueueUrl::parse(bad), Err(ClusterError::Url(_))), "{bad}");
        }
        assert!(matches!(QueueUrl::parse("redis://:pw@x/c"), Err(ClusterError::PasswordInUrl(_))));
    }

    #[test]
    fn keys_share_the_campaigns_hash_tag() {
        let k = Keys::new("c1");
        for key in [
            &k.meta,
            &k.rows,
            &k.results,
            &k.counts("n1"),
            &k.loader,
            &k.nodes,
            &k.reactions,
            &k.done,
            &k.node("n1"),
        ] {
            assert!(key.starts_with("volley:{c1}:"), "{key}");
        }
        assert!(
            check_node_name("node-1.a").is_ok()
                && check_node_name("a b").is_err()
                && check_node_name("").is_err()
        );
    }
}

//! Load tests from several generators (`bench --queue redis://HOST:PORT/RUN --nodes N`): they
//! start together, each sends its share, and each publishes its run (counters and V2
//! histograms, [`crate::bench::saved`]); the last to finish, and `volley status`, print the
//! merged report.
//!
//! Keys: `volley:{RUN}:bench:nodes` (N, set by the first), `:bench:joined` (a set of node
//! names), `:bench:start` (the agreed start, Unix milliseconds, set by the first node to see
//! all N joined), `:bench:runs` (a hash: node → its run as JSON), `:bench:done` (runs
//! published, counted: the one that makes it N prints the merge); all expire a week after the
//! last write. A RUN name is for one test: a node name already in it is refused.

use std::time::{Duration, Instant};

use super::{ClusterError, Server};
use crate::bench::saved::SavedRun;
use crate::serve::intake::now_ms;

/// A run's keys expire this long after its last write: results stay for `volley status`, and
/// Redis does not keep every test forever.
const KEEP: Duration = Duration::from_secs(7 * 86_400);

/// Sets every key of the run to expire [`KEEP`] from now.
fn keep(server: &Server, con: &mut redis::Connection) -> redis::RedisResult<()> {
    let mut pipe = redis::pipe();
    for what in ["nodes", "joined", "start", "runs", "done"] {
        pipe.cmd("EXPIRE").arg(key(server, what)).arg(KEEP.as_secs()).ignore();
    }
    pipe.query(con)
}

/// How long after the last node joins the run starts: every node must see the start time
/// before it comes (they poll every 50 ms).
const START_AFTER: Duration = Duration::from_millis(1000);

/// This node's place in the run: its index (by name) among the `of` nodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Share {
    pub index: usize,
    pub of: usize,
}

impl Share {
    /// This node's part of `total` messages: an equal share, the first `total % of` nodes one
    /// more.
    pub fn of_messages(&self, total: u64) -> u64 {
        let of = self.of as u64;
        total / of + u64::from((self.index as u64) < total % of)
    }
}

fn key(server: &Server, what: &str) -> String {
    format!("volley:{{{}}}:bench:{what}", server.url.campaign)
}

/// Joins the run and waits until every node has, then until the agreed start. Nodes' clocks
/// are assumed in step (NTP): the start is a wall-clock time.
pub fn barrier(server: &Server, node: &str, nodes: usize, wait: Duration) -> Result<Share, ClusterError> {
    let mut con = server.connect()?;
    let e = |e| server.error(e);
    let run = || server.url.campaign.clone();
    redis::cmd("SET").arg(key(server, "nodes")).arg(nodes).arg("NX").query::<()>(&mut con).map_err(e)?;
    let agreed: Option<usize> = redis::cmd("GET").arg(key(server, "nodes")).query(&mut con).map_err(e)?;
    if agreed != Some(nodes) {
        return Err(ClusterError::Layout {
            campaign: run(),
            what: format!("the run was started with --nodes {}; this node says {nodes}", agreed.unwrap_or(0)),
        });
    }
    let joined: u64 = redis::cmd("SADD").arg(key(server, "joined")).arg(node).query(&mut con).map_err(e)?;
    if joined == 0 {
        return Err(ClusterError::NodeTaken { node: node.to_owned(), campaign: run() });
    }
    keep(server, &mut con).map_err(e)?;
    let deadline = Instant::now() + wait;
    let members: Vec<String> = loop {
        let members: Vec<String> =
            redis::cmd("SMEMBERS").arg(key(server, "joined")).query(&mut con).map_err(e)?;
        if members.len() >= nodes {
            break members;
        }
        if Instant::now() >= deadline {
            // Leave, so a later try with the same name is not refused.
            let _: redis::RedisResult<()> =
                redis::cmd("SREM").arg(key(server, "joined")).arg(node).query(&mut con);
            return Err(ClusterError::Layout {
                campaign: run(),
                what: format!("only {} of {nodes} nodes joined in {}s", members.len(), wait.as_secs()),
            });
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let start_at = now_ms() + START_AFTER.as_millis() as u64;
    redis::cmd("SET").arg(key(server, "start")).arg(start_at).arg("NX").query::<()>(&mut con).map_err(e)?;
    let start: u64 = redis::cmd("GET").arg(key(server, "start")).query(&mut con).map_err(e)?;
    let now = now_ms();
    if start > now {
        std::thread::sleep(Duration::from_millis(start - now));
    }
    let mut sorted = members;
    sorted.sort();
    let index = sorted.iter().position(|m| m == node).unwrap_or(0);
    Ok(Share { index, of: nodes })
}

/// Publishes this node's run; every run, if this node's was the last.
pub fn publish(server: &Server, node: &str, run: &SavedRun) -> Result<Option<Vec<SavedRun>>, ClusterError> {
    let mut con = server.connect()?;
    let e = |e| server.error(e);
    redis::cmd("HSET")
        .arg(key(server, "runs"))
        .arg(node)
        .arg(run.to_json())
        .query::<()>(&mut con)
        .map_err(e)?;
    // Counted after the run is in: the one whose count reaches N is the last (two that both
    // read the hash full would both think so).
    let done: usize = redis::cmd("INCR").arg(key(server, "done")).query(&mut con).map_err(e)?;
    keep(server, &mut con).map_err(e)?;
    let nodes: Option<usize> = redis::cmd("GET").arg(key(server, "nodes")).query(&mut con).map_err(e)?;
    if done != nodes.unwrap_or(1) {
        return Ok(None);
    }
    let (all, _) = runs(server, &mut con)?;
    Ok(Some(all))
}

/// A run's published results: the runs readable, and how many were published.
pub fn runs(server: &Server, con: &mut redis::Connection) -> Result<(Vec<SavedRun>, usize), ClusterError> {
    let all: std::collections::BTreeMap<String, String> =
        redis::cmd("HGETALL").arg(key(server, "runs")).query(con).map_err(|e| server.error(e))?;
    let published = all.len();
    let mut runs = Vec::new();
    for (node, text) in all {
        let run = SavedRun::parse(&text).map_err(|e| ClusterError::Layout {
            campaign: server.url.campaign.clone(),
            what: format!("node {node}'s run: {e}"),
        })?;
        runs.push(run);
    }
    Ok((runs, published))
}

/// What `volley status` shows of a distributed bench run: `None` if RUN is not one.
pub fn status(server: &Server) -> Result<Option<(Vec<SavedRun>, usize)>, ClusterError> {
    let mut con = server.connect()?;
    let nodes: Option<usize> =
        redis::cmd("GET").arg(key(server, "nodes")).query(&mut con).map_err(|e| server.error(e))?;
    let Some(nodes) = nodes else { return Ok(None) };
    let (runs, _) = runs(server, &mut con)?;
    Ok(Some((runs, nodes)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_add_up_to_the_total() {
        for (total, of) in [(10u64, 3usize), (3, 3), (2, 3), (1_000_000, 7)] {
            let shares: Vec<u64> = (0..of).map(|index| Share { index, of }.of_messages(total)).collect();
            assert_eq!(shares.iter().sum::<u64>(), total, "{total} over {of}: {shares:?}");
            assert!(shares.iter().max().unwrap() - shares.iter().min().unwrap() <= 1);
        }
    }
}

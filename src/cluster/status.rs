//! What a campaign shared through Redis has come to, from any machine (`volley status`).

use std::collections::BTreeMap;

use serde::Serialize;

use super::load::Meta;
use super::{ClusterError, GROUP, Keys, Server, entry};

/// The consumer group's state.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GroupInfo {
    /// Chunks read by some node and not yet acknowledged.
    pub pending: u64,
    /// The id (first line) of the last chunk handed to any node.
    pub last_delivered: u64,
}

/// Reads the group's pending count and last delivered row (`XINFO GROUPS`).
pub fn group_info(con: &mut redis::Connection, keys: &Keys) -> redis::RedisResult<GroupInfo> {
    let groups: Vec<redis::Value> = redis::cmd("XINFO").arg("GROUPS").arg(&keys.rows).query(con)?;
    for group in groups {
        let fields = pairs(group);
        if fields.get("name").map(String::as_str) != Some(GROUP) {
            continue;
        }
        return Ok(GroupInfo {
            pending: fields.get("pending").and_then(|p| p.parse().ok()).unwrap_or(0),
            last_delivered: fields.get("last-delivered-id").and_then(|id| entry::line_of(id)).unwrap_or(0),
        });
    }
    Ok(GroupInfo::default())
}

/// A reply of alternating names and values (RESP2) or a map (RESP3), as text.
fn pairs(value: redis::Value) -> BTreeMap<String, String> {
    let text = |v: &redis::Value| -> Option<String> {
        match v {
            redis::Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
            redis::Value::SimpleString(s) => Some(s.clone()),
            redis::Value::Int(i) => Some(i.to_string()),
            _ => None,
        }
    };
    let mut out = BTreeMap::new();
    match value {
        redis::Value::Array(items) => {
            for pair in items.chunks(2) {
                if let [k, v] = pair
                    && let (Some(k), Some(v)) = (text(k), text(v))
                {
                    out.insert(k, v);
                }
            }
        }
        redis::Value::Map(items) => {
            for (k, v) in &items {
                if let (Some(k), Some(v)) = (text(k), text(v)) {
                    out.insert(k, v);
                }
            }
        }
        _ => {}
    }
    out
}

/// Final rows by status.
pub type Counts = BTreeMap<String, u64>;

/// A node's share.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct NodeStatus {
    pub finals: Counts,
    /// Chunks (of up to a hundred rows) it holds now: read, and not every row of them final.
    pub chunks: u64,
    /// Its name's lease is held: it is running.
    pub running: bool,
}

/// The merged view of a campaign.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct CampaignStatus {
    pub campaign: String,
    /// Every row is in the stream.
    pub loaded: bool,
    pub rows: u64,
    /// Rows final, by status.
    pub finals: Counts,
    /// Rows no node has read yet, and rows read and not yet final.
    pub waiting: u64,
    pub pending: u64,
    /// Chunks read and not yet acknowledged.
    pub pending_chunks: u64,
    pub domains: BTreeMap<String, Counts>,
    pub nodes: BTreeMap<String, NodeStatus>,
}

impl CampaignStatus {
    pub fn final_rows(&self) -> u64 {
        self.finals.values().sum()
    }

    /// Loaded, and every row has its final state.
    pub fn complete(&self) -> bool {
        self.loaded && self.final_rows() >= self.rows && self.pending_chunks == 0
    }
}

/// Reads a campaign's status; an error if Redis has no such campaign.
pub fn read(server: &Server) -> Result<CampaignStatus, ClusterError> {
    let keys = server.keys();
    let mut con = server.connect()?;
    let e = |e| server.error(e);
    let meta = Meta::read(&mut con, &keys).map_err(e)?;
    if meta.message.is_none() {
        return Err(ClusterError::Layout {
            campaign: server.url.campaign.clone(),
            what: "no such campaign".into(),
        });
    }
    let group = group_info(&mut con, &keys).map_err(e)?;
    let names: Vec<String> = redis::cmd("SMEMBERS").arg(&keys.nodes).query(&mut con).map_err(e)?;
    let consumers: Vec<redis::Value> =
        redis::cmd("XINFO").arg("CONSUMERS").arg(&keys.rows).arg(GROUP).query(&mut con).map_err(e)?;
    let mut status = CampaignStatus {
        campaign: server.url.campaign.clone(),
        loaded: meta.loaded,
        rows: meta.rows,
        pending_chunks: group.pending,
        ..CampaignStatus::default()
    };
    for name in names {
        let running: bool = redis::cmd("EXISTS").arg(keys.node(&name)).query(&mut con).map_err(e)?;
        // Each node's counts are its own hash; the campaign's are their sums.
        let counts: BTreeMap<String, u64> =
            redis::cmd("HGETALL").arg(keys.counts(&name)).query(&mut con).map_err(e)?;
        let mut node = NodeStatus { running, ..NodeStatus::default() };
        for (key, n) in counts {
            if let Some(s) = key.strip_prefix("s:") {
                *status.finals.entry(s.to_owned()).or_default() += n;
                node.finals.insert(s.to_owned(), n);
            } else if let Some((domain, s)) = key.strip_prefix("d:").and_then(|k| k.rsplit_once(':')) {
                *status.domains.entry(domain.to_owned()).or_default().entry(s.to_owned()).or_default() += n;
            }
        }
        status.nodes.insert(name, node);
    }
    for consumer in consumers {
        let fields = pairs(consumer);
        if let Some(name) = fields.get("name") {
            let pending = fields.get("pending").and_then(|p| p.parse().ok()).unwrap_or(0);
            status.nodes.entry(name.clone()).or_default().chunks = pending;
        }
    }
    // Rows handed to some node: the `upto` of the last chunk read.
    let read_rows = match group.last_delivered {
        0 => 0,
        first => {
            let id = format!("0-{first}");
            let reply: redis::Value =
                redis::cmd("XRANGE").arg(&keys.rows).arg(&id).arg(&id).query(&mut con).map_err(e)?;
            entry::read_range(reply)
                .first()
                .and_then(|c| std::str::from_utf8(c.field("upto")?).ok()?.parse().ok())
                .unwrap_or(0)
        }
    };
    status.waiting = status.rows.saturating_sub(read_rows);
    status.pending = read_rows.saturating_sub(status.final_rows());
    Ok(status)
}

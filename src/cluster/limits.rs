//! Limits that hold for the whole fleet of a shared campaign: each destination's connections
//! (`--connections`, shaping rules), its message rate (`--destination-rate`, rules' `rate`), its
//! new-connection rate (`--connection-rate`, rules' `connection_rate`), and the run's `--rate`.
//!
//! The engine knows only [`Fleet`]: tokens and leases it is granted, and what its cores wanted.
//! Every destination a node's routes make is registered here (`Routes::on_new_destination`),
//! and the limits thread (`limiter.rs`) settles each one with Redis every [`TICK`]:
//! - **connections** are leases (`lease.lua`): a node asks for the whole limit whenever a slot
//!   is held back by its leases, keeps what it has open, gives back leases it does not use,
//!   and all of them once the destination has been idle on it for [`RELEASE_AFTER`]; a lease
//!   lives [`LEASE_TTL`] unless renewed, so a dead node's connections return to the fleet
//!   then. Redis grants what the other nodes leave of the limit, and while another node waits,
//!   no more than a fair share (the limit split among the nodes wanting some): a node granted
//!   fewer than it has open sheds the rest (its sessions end once their messages in flight
//!   are answered), and counts against the limit with what it has open until they are closed,
//!   so the fleet's connections never pass the limit.
//! - **rates** are GCRA gates on Redis's clock (`tokens.lua`), taken in blocks of up to
//!   [`AHEAD`] worth of turns, only by a node that used or wanted turns since the last tick.
//!   Over any span the fleet sends at most one block more than the rate allows; turns a node
//!   takes and does not use are lost, never added.
//!
//! The run-wide `--rate` is one more gate (key `run`), which the engine takes every message's
//! turn from as well.
//!
//! **Reactions** (a `[TSS04]` suspension, a slowing) one node's engine applies are recorded
//! (`react.lua`, the later one standing) and applied by every node's cluster thread to its
//! destination of the same key within a tick: a provider that asks one node to stop has the
//! fleet stop.

use std::hash::Hasher;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant, SystemTime};

use super::{Keys, scripts};
use crate::deliver::route::OnDestination;
use crate::engine::Destination;
use crate::engine::shaping::{Action, Fleet, ShapingEvent};
use crate::serve::source::{instant_of, wall_ms_of};

/// How often each destination's tokens and leases are settled.
pub const TICK: Duration = Duration::from_millis(100);

/// Turns a node may take ahead of the rate's schedule: two ticks' worth, so a node at the rate
/// does not run dry between ticks.
const AHEAD: Duration = Duration::from_millis(200);

/// A lease lives this long unless renewed (every [`RENEW`]). Renewing is also how a node
/// holding leases hears that another waits for its share: so twice a second, not once per
/// lifetime.
const LEASE_TTL: Duration = Duration::from_secs(10);
const RENEW: Duration = Duration::from_millis(500);

/// A node gives its leases on a destination back once it has had no connection open there for
/// this long.
const RELEASE_AFTER: Duration = Duration::from_secs(2);

struct Shared {
    /// The destination's key in Redis (a hash of what names it the same on every node).
    key: String,
    /// The destination; `None` for the run's own rate (`--rate`), which has no connections.
    destination: Option<Weak<Destination>>,
    fleet: Arc<Fleet>,
    /// Connections in all (zero: not counted).
    limit: u64,
    message_interval_us: u64,
    connection_interval_us: u64,
    /// Tokens in hand after the last tick (what was used since shows as fewer).
    messages_had: i64,
    turns_had: i64,
    /// Leases as last granted, the open connections Redis was last told of, when that was, and
    /// since when nothing is open.
    leased: u64,
    open_told: u64,
    renewed: Option<Instant>,
    idle_since: Option<Instant>,
    /// The first tick has taken its first blocks.
    primed: bool,
}

impl Shared {
    /// `destination`'s limits under `key` (or, without one, a gate with no limits yet).
    fn new(key: String, fleet: Arc<Fleet>, destination: Option<&Arc<Destination>>) -> Shared {
        Shared {
            key,
            destination: destination.map(Arc::downgrade),
            fleet,
            limit: destination.map_or(0, |d| d.max_connections.max(1) as u64),
            message_interval_us: destination.map_or(0, |d| d.shaping.message_rate_interval() / 1000),
            connection_interval_us: destination.map_or(0, |d| d.shaping.connection_rate_interval() / 1000),
            messages_had: 0,
            turns_had: 0,
            leased: 0,
            open_told: 0,
            renewed: None,
            idle_since: None,
            primed: false,
        }
    }
}

/// The fleet-wide limits of one node's destinations.
#[derive(Clone, Default)]
pub struct FleetLimits {
    registry: Arc<Mutex<Vec<Shared>>>,
    /// Reactions this node's engine applied, to record: destination key and value.
    reactions_out: Arc<Mutex<Vec<(String, u64, String)>>>,
    /// The latest reaction applied (or made here) per destination key, until when (Unix ms).
    applied: Arc<Mutex<std::collections::HashMap<String, u64>>>,
    /// The thread settling the limits (see `limiter.rs`): a new destination wakes it, so its
    /// first jobs need not wait for the next tick.
    settler: Arc<Mutex<Option<std::thread::Thread>>>,
}

/// A reaction as recorded: `UNTIL_MS RULE suspend` or `UNTIL_MS RULE slow RATE|- CONNECTIONS`.
fn encode_reaction(until_ms: u64, rule: &str, action: &Action) -> String {
    let rule: String = rule.chars().map(|c| if c.is_whitespace() { '_' } else { c }).collect();
    match action {
        Action::Suspend => format!("{until_ms} {rule} suspend"),
        Action::Slow { rate, connections } => format!(
            "{until_ms} {rule} slow {} {}",
            rate.map_or("-".to_owned(), |r| r.to_string()),
            connections.unwrap_or(0)
        ),
    }
}

fn decode_reaction(value: &str) -> Option<(u64, Action)> {
    let mut parts = value.split(' ');
    let until = parts.next()?.parse().ok()?;
    let _rule = parts.next()?;
    let action = match parts.next()? {
        "suspend" => Action::Suspend,
        "slow" => {
            let rate = match parts.next()? {
                "-" => None,
                r => Some(r.parse().ok()?),
            };
            let connections = parts.next()?.parse::<usize>().ok().filter(|&c| c > 0);
            Action::Slow { rate, connections }
        }
        _ => return None,
    };
    Some((until, action))
}

impl FleetLimits {
    pub fn new() -> FleetLimits {
        FleetLimits::default()
    }

    /// The hook for the node's routes: every destination made shares its limits.
    pub fn hook(&self) -> OnDestination {
        let registry = Arc::clone(&self.registry);
        let settler = Arc::clone(&self.settler);
        Arc::new(move |destination: &Arc<Destination>, key: &str| {
            let fleet = Arc::new(Fleet::default());
            destination.shaping.share_with_fleet(Arc::clone(&fleet));
            let mut h = crate::hash::Fx::default();
            h.write(key.as_bytes());
            let shared = Shared::new(format!("{:016x}", h.finish()), fleet, Some(destination));
            if let Ok(mut registry) = registry.lock() {
                registry.push(shared);
            }
            if let Some(thread) = settler.lock().ok().and_then(|t| t.clone()) {
                thread.unpark();
            }
        })
    }

    /// The thread that settles the limits (woken when a destination is made).
    pub fn settled_by(&self, thread: std::thread::Thread) {
        if let Ok(mut settler) = self.settler.lock() {
            *settler = Some(thread);
        }
    }

    /// The ledger's hook: reactions the engine applies here are recorded for the fleet.
    pub fn shaping_hook(&self) -> crate::deliver::ledger::OnShaping {
        let (registry, out, applied) =
            (Arc::clone(&self.registry), Arc::clone(&self.reactions_out), Arc::clone(&self.applied));
        Box::new(move |e: &ShapingEvent| {
            let key = registry.lock().ok().and_then(|r| {
                r.iter()
                    .find(|d| {
                        d.destination
                            .as_ref()
                            .and_then(Weak::upgrade)
                            .is_some_and(|x| Arc::ptr_eq(&x, &e.destination))
                    })
                    .map(|d| d.key.clone())
            });
            let Some(key) = key else { return };
            let until = wall_ms_of(e.until, Instant::now(), SystemTime::now());
            if let Ok(mut applied) = applied.lock() {
                let seen = applied.entry(key.clone()).or_default();
                *seen = (*seen).max(until);
            }
            if let Ok(mut out) = out.lock() {
                out.push((key, until, encode_reaction(until, &e.rule, &e.action)));
            }
        })
    }

    /// Records this node's reactions and applies the fleet's; how many calls it made.
    fn react(&self, con: &mut redis::Connection, keys: &Keys) -> redis::RedisResult<u64> {
        let out = match self.reactions_out.lock() {
            Ok(mut out) => std::mem::take(&mut *out),
            Err(_) => Vec::new(),
        };
        let mut calls = 0;
        for (i, (key, until, value)) in out.iter().enumerate() {
            let recorded: redis::RedisResult<u64> =
                scripts::react().key(&keys.reactions).arg(key).arg(*until).arg(value).invoke(con);
            if let Err(e) = recorded {
                // Kept for the next tick, after a reconnection.
                if let Ok(mut left) = self.reactions_out.lock() {
                    left.splice(0..0, out[i..].iter().cloned());
                }
                return Err(e);
            }
            calls += 1;
        }
        let all: std::collections::HashMap<String, String> =
            redis::cmd("HGETALL").arg(&keys.reactions).query(con)?;
        calls += 1;
        let (now, wall) = (Instant::now(), SystemTime::now());
        let now_ms = wall_ms_of(now, now, wall);
        for (key, value) in all {
            let Some((until_ms, action)) = decode_reaction(&value) else { continue };
            if until_ms <= now_ms {
                continue;
            }
            let fresh = match self.applied.lock() {
                Ok(mut applied) => {
                    let seen = applied.entry(key.clone()).or_default();
                    let fresh = until_ms > *seen;
                    *seen = (*seen).max(until_ms);
                    fresh
                }
                Err(_) => false,
            };
            if !fresh {
                continue;
            }
            let until = instant_of(until_ms, now, wall);
            if let Ok(registry) = self.registry.lock() {
                for d in registry.iter().filter(|d| d.key == key) {
                    if let Some(destination) = d.destination.as_ref().and_then(Weak::upgrade) {
                        destination.shaping.apply(&action, now, until);
                    }
                }
            }
        }
        Ok(calls)
    }

    /// The run's own rate (`--rate`), shared by the fleet: the engine takes its turns from the
    /// returned tokens too.
    pub fn run_rate(&self, rate: crate::engine::shaping::Rate) -> Arc<Fleet> {
        let fleet = Arc::new(Fleet::default());
        let mut shared = Shared::new("run".into(), Arc::clone(&fleet), None);
        shared.message_interval_us = rate.interval_nanos() / 1000;
        if let Ok(mut registry) = self.registry.lock() {
            registry.push(shared);
        }
        fleet
    }

    /// Gives back every connection lease this node holds (at its end, its connections
    /// closed), so the fleet need not wait for them to expire; how many calls it made.
    pub fn release(&self, con: &mut redis::Connection, keys: &Keys, node: &str) -> redis::RedisResult<u64> {
        let held: Vec<String> = match self.registry.lock() {
            Ok(registry) => registry.iter().filter(|d| d.leased > 0).map(|d| d.key.clone()).collect(),
            Err(_) => return Ok(0),
        };
        for key in &held {
            lease(con, keys, key, node, Lease { want: 0, limit: 0, open: 0 })?;
        }
        Ok(held.len() as u64)
    }

    /// Settles every destination's tokens and leases with Redis; how many calls it made.
    pub fn tick(
        &self,
        con: &mut redis::Connection,
        keys: &Keys,
        node: &str,
        now: Instant,
    ) -> redis::RedisResult<u64> {
        // Taken out while Redis is asked, so the producer's hook never waits on the network.
        let mut all = match self.registry.lock() {
            Ok(mut registry) => std::mem::take(&mut *registry),
            Err(_) => return Ok(0),
        };
        let mut calls = 0;
        let mut result = Ok(());
        for d in &mut all {
            if result.is_ok() {
                result = settle(d, con, keys, node, now, &mut calls);
            }
        }
        // Destinations no longer used, with nothing leased, are forgotten.
        all.retain(|d| d.destination.as_ref().is_none_or(|w| w.strong_count() > 0) || d.leased > 0);
        if let Ok(mut registry) = self.registry.lock() {
            all.append(&mut registry);
            *registry = all;
        }
        result?;
        Ok(calls + self.react(con, keys)?)
    }
}

/// What a node tells `lease.lua` of a destination: the connections it wants, the fleet's
/// limit, and what it has open.
struct Lease {
    want: u64,
    limit: u64,
    open: u64,
}

/// Asks `lease.lua` for the destination `key`'s connections; the connections granted.
fn lease(
    con: &mut redis::Connection,
    keys: &Keys,
    key: &str,
    node: &str,
    l: Lease,
) -> redis::RedisResult<u64> {
    scripts::lease()
        .key(keys.limit(key, "conn"))
        .arg(node)
        .arg(l.want)
        .arg(l.limit)
        .arg(LEASE_TTL.as_millis() as u64)
        .arg(l.open)
        .invoke(con)
}

fn settle(
    d: &mut Shared,
    con: &mut redis::Connection,
    keys: &Keys,
    node: &str,
    now: Instant,
    calls: &mut u64,
) -> redis::RedisResult<()> {
    let gone = d.destination.as_ref().is_some_and(|w| w.strong_count() == 0);
    // Connections: keep what is open, one more when a slot waits for it, none once idle.
    let open = d.fleet.open();
    let wanted = d.fleet.take_wanted_connection();
    d.idle_since = match open {
        0 => Some(d.idle_since.unwrap_or(now)),
        _ => None,
    };
    let idle = d.idle_since.is_some_and(|since| now.duration_since(since) >= RELEASE_AFTER);
    // The first settling (a destination is made for a job about to go) counts as a want.
    let wanted = wanted || !d.primed;
    let want = if gone || (idle && !wanted) {
        0
    } else if wanted {
        // Every lease is open and slots wait: as many as the fleet leaves (its whole limit
        // at a run's start, not one more per tick).
        d.limit
    } else if open > 0 {
        // What is used: leases no slot needs go back to the fleet.
        open
    } else {
        // Between connections: kept, until idle for RELEASE_AFTER.
        d.leased
    };
    let renew = d.renewed.is_none_or(|at| now.duration_since(at) >= RENEW);
    // Asked again when what it wants or has open changed (the fleet counts what is open until
    // it is shed), when it waits for its share, and to renew.
    let changed = want != d.leased || open != d.open_told || (wanted && d.leased < d.limit);
    if d.limit > 0 && (changed || ((want > 0 || open > 0) && renew)) {
        let granted = lease(con, keys, &d.key, node, Lease { want, limit: d.limit, open })?;
        *calls += 1;
        d.leased = granted;
        d.open_told = open;
        d.renewed = Some(now);
        d.fleet.set_leases(granted);
    }
    if gone {
        return Ok(());
    }
    // Rates: a block when turns were used or wanted since the last tick (and a first block
    // at once: a destination is made for a job about to go).
    let first = !d.primed;
    d.primed = true;
    let wanted_messages = d.fleet.take_wanted_messages() > 0 || first;
    let gate = Gate { con, keys, key: &d.key, calls };
    d.messages_had =
        gate.take("msg", d.message_interval_us, d.fleet.messages(), d.messages_had, wanted_messages, |n| {
            d.fleet.grant_messages(n)
        })?;
    let gate = Gate { con, keys, key: &d.key, calls };
    d.turns_had = gate.take(
        "cturn",
        d.connection_interval_us,
        d.fleet.connection_turns(),
        d.turns_had,
        wanted || first,
        |n| d.fleet.grant_connection_turns(n),
    )?;
    Ok(())
}

/// One destination's rate gates in Redis.
struct Gate<'a> {
    con: &'a mut redis::Connection,
    keys: &'a Keys,
    key: &'a str,
    calls: &'a mut u64,
}

impl Gate<'_> {
    /// Tops up the turns in hand (`have`; `had` after the last tick) to a block when some were
    /// used or `wanted`; the turns in hand after.
    fn take(
        self,
        what: &str,
        interval_us: u64,
        have: i64,
        had: i64,
        wanted: bool,
        grant: impl Fn(u64),
    ) -> redis::RedisResult<i64> {
        if interval_us == 0 {
            return Ok(have);
        }
        let block = (AHEAD.as_micros() as u64 / interval_us).max(1) as i64;
        if have >= block || !(have < had || wanted) {
            return Ok(have);
        }
        let granted: u64 = scripts::tokens()
            .key(self.keys.limit(self.key, what))
            .arg(interval_us)
            .arg(block - have)
            .arg(AHEAD.as_micros() as u64)
            .invoke(self.con)?;
        *self.calls += 1;
        grant(granted);
        Ok(have + granted as i64)
    }
}

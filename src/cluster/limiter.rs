//! The thread that settles a node's fleet-wide limits with Redis ([`FleetLimits::tick`], every
//! [`TICK`]) on a connection of its own: `send --queue` and `serve --limits` both run one.
//!
//! While Redis cannot be reached the limits stay as last settled: the node keeps the
//! connections its leases allowed (their leases lapse in Redis after ten seconds, when other
//! nodes may take them: the overshoot the README names), the turns it holds run out, so
//! destinations with a shared rate wait, and a destination first seen meanwhile has no lease
//! and waits too. It reconnects with backoff, doubling from 100 ms to 5 s, and goes on.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::limits::{FleetLimits, TICK};
use super::{ClusterError, Keys, NAME_RENEW, NameLease, Server};

/// What a limiter needs.
pub struct LimiterConfig {
    pub server: Server,
    /// This node's name: its leases are held under it.
    pub node: String,
    pub limits: FleetLimits,
    /// Hold the node's name as a lease, so that a second process with the name is refused
    /// (its leases would be this one's). `send --queue`'s worker holds it already.
    pub hold_name: bool,
    /// Who says what happens on stderr (`volley serve`).
    pub who: &'static str,
}

/// A running limiter. Dropped without [`Limiter::stop`] (a start that failed later), its
/// thread is told to stop, and is not waited for.
pub struct Limiter {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<u64>>,
}

impl Limiter {
    /// Connects (an unreachable Redis at the start is an error: the limits could not hold),
    /// takes the node's name if asked, and starts the thread.
    pub fn start(config: LimiterConfig) -> Result<Limiter, ClusterError> {
        let mut con = config.server.connect()?;
        let name = match config.hold_name {
            true => Some(NameLease::take(&mut con, &config.server, &config.node)?),
            false => None,
        };
        let stop = Arc::new(AtomicBool::new(false));
        let limits = config.limits.clone();
        let run = Run { keys: config.server.keys(), con: Some(con), name, config, stop: Arc::clone(&stop) };
        let thread = std::thread::Builder::new()
            .name("limits".into())
            .spawn(move || run.run())
            .map_err(|e| ClusterError::Layout { campaign: String::new(), what: format!("starting: {e}") })?;
        limits.settled_by(thread.thread().clone());
        Ok(Limiter { stop, thread: Some(thread) })
    }

    /// Gives this node's leases back and frees its name (call once its connections are
    /// closed); the Redis calls the limiter made.
    pub fn stop(mut self) -> u64 {
        self.stop.store(true, Ordering::Release);
        let Some(thread) = self.thread.take() else { return 0 };
        thread.thread().unpark();
        thread.join().unwrap_or_default()
    }
}

impl Drop for Limiter {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(thread) = &self.thread {
            thread.thread().unpark();
        }
    }
}

struct Run {
    config: LimiterConfig,
    keys: Keys,
    con: Option<redis::Connection>,
    name: Option<NameLease>,
    stop: Arc<AtomicBool>,
}

impl Run {
    fn run(mut self) -> u64 {
        let mut calls = 0;
        let mut backoff: Option<Duration> = None;
        let mut next_name = Instant::now() + NAME_RENEW;
        let mut name_lost = false;
        while !self.stop.load(Ordering::Acquire) {
            let now = Instant::now();
            if self.con.is_none() {
                match self.config.server.connect() {
                    Ok(con) => {
                        eprintln!(
                            "{}: redis {}: connected again",
                            self.config.who, self.config.server.url.server
                        );
                        self.con = Some(con);
                        backoff = None;
                        next_name = now;
                    }
                    Err(_) => {
                        backoff =
                            Some(backoff.map_or(Duration::from_millis(100), |b| (b * 2).min(MAX_BACKOFF)))
                    }
                }
            }
            if let Some(con) = &mut self.con {
                let mut settle = || -> redis::RedisResult<u64> {
                    let mut made = 0;
                    if let Some(name) = &self.name
                        && now >= next_name
                    {
                        next_name = now + NAME_RENEW;
                        made += 1;
                        let ours = name.renew(con)?;
                        if ours == name_lost {
                            name_lost = !ours;
                            match ours {
                                false => eprintln!(
                                    "{}: node {} is now held by another process (the same --node?): the fleet's \
                                     limits are shared with it until it stops",
                                    self.config.who, self.config.node
                                ),
                                true => {
                                    eprintln!("{}: node {} is ours again", self.config.who, self.config.node)
                                }
                            }
                        }
                    }
                    Ok(made + self.config.limits.tick(con, &self.keys, &self.config.node, now)?)
                };
                match settle() {
                    Ok(made) => calls += made,
                    Err(e) => {
                        eprintln!(
                            "{}: redis {}: {e}; the fleet's limits stay as they were until it is back",
                            self.config.who, self.config.server.url.server
                        );
                        self.con = None;
                        backoff = Some(Duration::from_millis(100));
                    }
                }
            }
            let wait = backoff.unwrap_or(TICK).saturating_sub(now.elapsed());
            std::thread::park_timeout(wait);
        }
        if let Some(con) = &mut self.con {
            calls += self.config.limits.release(con, &self.keys, &self.config.node).unwrap_or(0);
            if let Some(name) = &self.name {
                let _ = name.release(con);
            }
        }
        calls
    }
}

/// The longest wait between two reconnections.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

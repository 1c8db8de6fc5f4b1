//! What flows into the engine: jobs (a message for a destination) from a job source.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use crate::proto::Message;

/// Where messages go: a set of addresses to try and the connection budget for them.
#[derive(Debug)]
pub struct Destination {
    /// Dense index assigned by the engine's caller; per-core pools are a Vec indexed by it.
    pub index: usize,
    /// A domain, a relay, or a load-test target: used in reports.
    pub name: String,
    pub addrs: Vec<SocketAddr>,
    /// Connections open at once to this destination, across all cores.
    pub max_connections: usize,
}

/// One message to deliver, with its bookkeeping.
#[derive(Debug)]
pub struct Job {
    pub id: u64,
    pub destination: Arc<Destination>,
    pub message: Message,
    /// When the job was due: its creation (closed loop) or its scheduled time (open loop).
    /// Latency is measured from here, so a stalled server cannot hide queueing delay.
    pub due: Instant,
    /// Delivery attempts made so far.
    pub attempts: u32,
    /// The connection of the last attempt, so a retry prefers another one.
    pub last_conn: u64,
    /// A retry of some recipients of a message already counted: only recipient totals change.
    pub partial: bool,
}

/// What a job source says when asked for work.
#[derive(Debug)]
pub enum Next {
    Job(Job),
    /// Nothing due before this instant.
    Wait(Instant),
    /// No more jobs, ever.
    Done,
}

/// A producer of jobs: `bench` generates them, `send` will read them from input.
pub trait JobSource: Send {
    fn next(&mut self, now: Instant) -> Next;
}

//! `volley sink`: a thread-per-core SMTP server that accepts everything as fast as it can, or
//! misbehaves on purpose. Benchmarks and volley's own tests run it in-process.

pub mod auth;
mod counters;
pub mod faults;
mod server;
pub mod session;
pub mod store;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

pub use counters::Counters;
pub use faults::Faults;
pub use server::{SinkHandle, start};

use crate::rng::Rng;
use crate::rt::Driver;

#[derive(Debug, Clone)]
pub struct SinkConfig {
    pub listen: SocketAddr,
    pub threads: usize,
    pub driver: Driver,
    pub hostname: String,
    pub pipelining: bool,
    pub chunking: bool,
    /// Advertise 8BITMIME; without it, `BODY=8BITMIME` and 8-bit content are refused (as a
    /// 7-bit-only server must), to test what a client sends such a server.
    pub eight_bit_mime: bool,
    /// Advertise SMTPUTF8; without it, the parameter and non-ASCII addresses are refused.
    pub smtputf8: bool,
    /// Advertised SIZE; larger messages get 552.
    pub max_size: u64,
    pub idle_timeout: Duration,
    pub max_messages_per_connection: Option<u64>,
    /// Across all threads; more get 421 at greeting.
    pub max_connections: Option<usize>,
    pub faults: Faults,
    pub seed: u64,
    pub dump: Option<PathBuf>,
    /// Stop once this many messages were accepted, across all threads.
    pub exit_after_messages: Option<u64>,
    /// Certificate and key for STARTTLS and the implicit-TLS listener.
    pub tls: Option<crate::tls::ServerTls>,
    /// Advertise STARTTLS (needs `tls`).
    pub starttls: bool,
    /// Also listen here for implicit TLS (port 465 style; needs `tls`).
    pub tls_listen: Option<SocketAddr>,
    /// Answer MAIL with 530 until the session is encrypted.
    pub require_tls: bool,
    /// Offer AUTH PLAIN and LOGIN against these users, and require it before MAIL.
    pub auth: Option<Arc<auth::Users>>,
    /// Offer and take AUTH only over TLS, so no password crosses the network in the clear
    /// (implied by `require_tls`).
    pub auth_needs_tls: bool,
    /// Greylist: refuse each recipient's first RCPT with 451 4.7.1, accept it from then on (as
    /// many receivers do to strangers), to test a sender's retries.
    pub greylist: bool,
    /// Keep each complete message here, and answer its end of data with what the store says
    /// (serve's submission listener). A server that keeps mail to pass on is nobody's open
    /// relay: MAIL then needs AUTH, or a peer in `trusted`.
    pub store: Option<Arc<dyn store::Store>>,
    /// Peers that may send without AUTH (with `store`).
    pub trusted: Vec<ipnet::IpNet>,
    /// How long sessions under way when the server stops may take to finish. With `store`,
    /// a new transaction is answered 421 from the moment it stops.
    pub shutdown_grace: Duration,
}

impl Default for SinkConfig {
    fn default() -> Self {
        SinkConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 2525)),
            threads: crate::rt::default_threads(),
            driver: Driver::Auto,
            hostname: "volley-sink".into(),
            pipelining: true,
            chunking: true,
            eight_bit_mime: true,
            smtputf8: true,
            max_size: 50 * 1024 * 1024,
            idle_timeout: Duration::from_secs(300),
            max_messages_per_connection: None,
            max_connections: None,
            faults: Faults::default(),
            seed: 0,
            dump: None,
            exit_after_messages: None,
            tls: None,
            starttls: false,
            tls_listen: None,
            require_tls: false,
            auth: None,
            auth_needs_tls: false,
            greylist: false,
            store: None,
            trusted: Vec::new(),
            shutdown_grace: Duration::from_secs(1),
        }
    }
}

/// The little that is shared across cores: a stop flag and connection-level counts. Nothing here
/// is touched per message unless `exit_after_messages` is set.
#[derive(Debug, Default)]
pub struct Shared {
    pub stop: AtomicBool,
    pub accepted: AtomicU64,
    pub active_connections: AtomicUsize,
    /// The most connections open at once (what a fleet-wide connection limit is checked by).
    pub peak_connections: AtomicUsize,
    /// Recipients seen once (with `greylist`; a lock is fine on a fault path).
    pub greylisted: std::sync::Mutex<std::collections::HashSet<String>>,
}

/// One thread's state, owned by that thread alone.
pub struct Core {
    pub config: Arc<SinkConfig>,
    pub rng: Rng,
    pub counters: Counters,
    shared: Arc<Shared>,
    thread: u64,
    next_id: u64,
}

impl Core {
    pub fn new(config: Arc<SinkConfig>, shared: Arc<Shared>, thread: usize) -> Self {
        let rng = Rng::new(config.seed ^ (thread as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
        Core { config, rng, counters: Counters::default(), shared, thread: thread as u64, next_id: 0 }
    }

    /// A queue id unique across threads.
    fn next_message_id(&mut self) -> u64 {
        self.next_id += 1;
        (self.thread << 48) | self.next_id
    }

    /// With `greylist`: whether this is the recipient's first try (to be refused).
    fn greylists(&self, rcpt: &str) -> bool {
        self.config.greylist
            && self.shared.greylisted.lock().is_ok_and(|mut seen| seen.insert(rcpt.to_ascii_lowercase()))
    }

    /// The server is stopping: no new transaction (with a store: see `SinkConfig::store`).
    fn stopping(&self) -> bool {
        self.config.store.is_some() && self.shared.stop.load(Ordering::Relaxed)
    }

    /// Whether a peer may send without AUTH.
    pub fn trusts(&self, peer: std::net::IpAddr) -> bool {
        let peer = peer.to_canonical();
        self.config.trusted.iter().any(|net| net.contains(&peer))
    }

    fn message_accepted(&self) {
        if let Some(limit) = self.config.exit_after_messages {
            if self.shared.accepted.fetch_add(1, Ordering::Relaxed) + 1 >= limit {
                self.shared.stop.store(true, Ordering::Relaxed);
            }
        }
    }
}

//! volley: a high-throughput bulk SMTP sending engine.
//!
//! - [`proto`]: the SMTP protocol, sans-IO (parsers, encoders, client and server state).
//! - [`rt`]: thread-per-core runtime plumbing (monoio, io_uring or epoll).
//! - [`engine`]: the sending engine fed by job sources.
//! - [`deliver`]: routes, DKIM, retries, failure categories and the delivery log, for any sender.
//! - [`send`]: a campaign from a file of recipients (rows, templates, de-duplication, resume).
//! - [`serve`]: the long-running service: intake over SMTP and HTTP into a durable spool,
//!   delivery from it, and what operators and applications need around it.
//! - [`sink`]: the built-in receiving server, with fault injection.
//! - [`tls`]: TLS on rustls, sans-IO, with a thin async adapter.

pub mod bench;
pub mod check;
pub mod cluster;
pub mod deliver;
pub mod engine;
pub mod hash;
pub mod metrics;
pub mod plot;
pub mod proto;
pub mod report;
pub mod rng;
pub mod rt;
pub mod send;
pub mod serve;
pub mod sink;
pub mod testkit;
pub mod tls;

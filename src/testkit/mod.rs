//! Peers for tests and benchmarks that are not SMTP: volley's own sink lives in [`crate::sink`].

pub mod dkim;
pub mod dns;
pub mod dnssec;
pub mod https;

//! `volley serve`: a long-running service that takes messages from applications over SMTP
//! submission ([`smtp`], on the sink's server) and an HTTP API ([`http`], with [`keys`],
//! [`idempotency`] and compiled [`templates`] kept for contents that come again), makes each durable before saying yes ([`intake`], then [`commit`]'s
//! group commit into the [`spool`], values laid out by [`record`], waiting recipients
//! filed by due time in its schedule, [`due`]), and delivers it with
//! `deliver` as `send` does: the spool's job source ([`source`]) and the order of syncs that
//! keeps the spool and the log in step ([`run`]); a sender hears of recipients that bounced or
//! expired ([`dsn`]); an operator sees and steers the queue ([`queue`]); applications hear of
//! every record through signed [`webhook`]s and read a message's [`status`]; the receivers'
//! domains get daily TLS reports ([`tls_reports`]).

pub mod commit;
pub mod dsn;
pub mod due;
pub mod http;
pub mod idempotency;
pub mod intake;
pub mod keys;
pub mod metrics;
pub mod queue;
pub mod record;
pub mod run;
pub mod smtp;
pub mod source;
pub mod spool;
pub mod status;
pub mod templates;
pub mod tls_reports;
pub mod webhook;

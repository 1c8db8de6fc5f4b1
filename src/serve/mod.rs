//! `volley serve`'s parts, built in steps (issue 27). So far the spool: every accepted message
//! and its recipients' states, durable before intake answers ([`spool`]), written by one
//! group-commit thread that batches concurrent injections into one sync ([`commit`]), in a
//! value layout of its own ([`record`]); the job source that feeds the engine from it
//! ([`source`]); delivery on a spool, with the order of syncs that keeps it and the log in
//! step ([`run`]). Intake (SMTP, HTTP) and the command come next, on `deliver` as `send` is.

pub mod commit;
pub mod http;
pub mod idempotency;
pub mod intake;
pub mod keys;
pub mod record;
pub mod run;
pub mod smtp;
pub mod source;
pub mod spool;

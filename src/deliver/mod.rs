//! Delivery: what any sender needs between "this recipient, this message" and a final record,
//! whatever the recipients come from: `send` (a campaign from a file), `check`, and `serve` (a
//! spool).
//!
//! - what the user said about all of it: [`config`] (one [`DeliveryConfig`] for `send` and
//!   `serve`);
//! - where a recipient's mail goes: [`dns`] (MX and address lookups on their own thread) and
//!   [`route`] (destinations, MX rollup, answers kept for their TTL);
//! - what an operator holds back: [`hold`] (suspensions by destination, domain or MX host);
//! - how it is sent there: [`shaping`] (per-provider limits and reactions, from rules files
//!   read by [`rules_file`]), [`mime`] (re-encoding what some servers refuse) and [`dkim`]
//!   (signatures);
//! - what became of it: [`ledger`] (the log thread: the one place outcomes become records and
//!   deferrals become retries, by [`crate::engine::retry`]'s decision), [`pending`] (a recipient
//!   between attempts), [`bounce`] (failure categories), [`log`] (records and the delivery log
//!   with group commit) and [`books`] (per-domain statistics).
//!
//! A recipient is known here by an opaque `u64` id: a campaign uses its input line, a spool
//! its message's. Nothing here knows rows, templates or files of recipients.

pub mod books;
pub mod bounce;
pub mod config;
pub mod dane;
pub mod dispatch;
pub mod dkim;
pub mod dns;
pub mod hold;
pub mod ledger;
pub mod log;
pub mod mime;
pub mod mta_sts;
pub mod pending;
pub mod route;
pub mod rules_file;
pub mod shaping;
pub mod tls_report;

use std::sync::Arc;
use std::time::Duration;

pub use config::{DeliveryConfig, Routing};

use crate::engine::{EngineConfig, Rate, Reactions, RetryPolicy};

/// Longest a session holds an outcome the server gave before proving the session in step
/// (a checkpoint EHLO with CHUNKING, where no `354` proves it). A held outcome is not yet in
/// the log, so a run killed meanwhile sends it again (`send --resume`, `serve` restarting):
/// this, the log thread's pick-up and `log::SYNC_EVERY` make the window. A checkpoint costs one
/// round trip of one connection's pipeline (see docs/BENCHMARKS.md).
pub const HELD_AT_MOST: Duration = Duration::from_millis(20);

/// Jobs the engine may set aside for destinations that cannot take more for now (rate
/// limited, slow) before the source is asked for more: a few megabytes.
const PARKED_JOBS: usize = 50_000;
/// Sessions each core runs at once, over all destinations (fewer if the open-files limit is
/// lower): thousands of small domains at once get as many sessions, each a few tens of KB.
const SESSIONS_PER_CORE: usize = 1024;

/// The engine's settings for a store-and-forward sender (`send`, `serve`), from the user's
/// session, TLS and connection settings in `base`: every outcome handed back to the ledger
/// (`retry` is the schedule, so the engine retries nothing itself), jobs parked for busy
/// destinations, sessions bounded, held outcomes proven within [`HELD_AT_MOST`], refusals
/// kept under what gets a sender tarpitted, and a TLS failure deferred rather than given up.
pub fn engine_config(
    base: EngineConfig,
    retry: RetryPolicy,
    reactions: Option<Arc<Reactions>>,
    rate: Option<Rate>,
) -> EngineConfig {
    let threads = base.threads;
    let mut config = EngineConfig {
        retry,
        outcomes: true,
        park: PARKED_JOBS,
        sessions_per_core: crate::rt::sessions_per_core(SESSIONS_PER_CORE, threads),
        rate,
        reactions,
        give_up_on_tls: false,
        ..base
    };
    config.client.sync_after = Some(HELD_AT_MOST);
    // A list's dead addresses must not get the run tarpitted (see `Refusals`).
    config.client.refusals = Some(crate::proto::client::Refusals::CAREFUL);
    config
}

/// `domain` in lower case, copied only if it is not already: the form routes and books are
/// keyed by.
pub fn lowercase(domain: &str) -> std::borrow::Cow<'_, str> {
    if domain.bytes().any(|b| b.is_ascii_uppercase()) {
        domain.to_ascii_lowercase().into()
    } else {
        domain.into()
    }
}

/// Writes `bytes` as the whole of `path`: to a temporary file beside it, synced, then renamed
/// over it (and the directory synced), so a crash leaves the old file or the new, never half.
pub fn write_synced(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = std::path::PathBuf::from(tmp);
    let mut file = std::fs::File::create(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn lowercase_copies_only_what_has_capitals() {
        assert_eq!(super::lowercase("Mixed.Example"), "mixed.example");
        assert!(matches!(super::lowercase("lower.example"), std::borrow::Cow::Borrowed(_)));
    }
}

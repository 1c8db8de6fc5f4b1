//! What every way in (SMTP submission, the HTTP API) does with a message it was handed: make it
//! fit to send (re-encoded where some servers would refuse it, DKIM-signed, a trace header),
//! refuse it while the service stops or the disk runs low, make it durable in the spool with
//! whatever else arrived meanwhile (group commit), and only then hand it to delivery and say
//! yes. Each way in maps a [`Refused`] to its own protocol's answer.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::SyncSender;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use thiserror::Error;

use super::commit::{CommitError, Committer};
use super::idempotency::IdempotencyKey;
use super::metrics::{IntakeMeter, Via};
use super::source::Arrival;
use super::spool::{Accepted, Admission, Group, SpoolError};
use crate::deliver::dkim::Dkim;
use crate::deliver::mime;
use crate::proto::Body;

/// Why a message was not taken. Every variant but `Content` is the service's state, not the
/// message's: the client should try again later.
#[derive(Debug, Clone, Error)]
pub enum Refused {
    #[error("the service is shutting down")]
    Stopping,
    /// Below `--min-free-space`, or the disk said it is full.
    #[error("the spool's disk is (nearly) full")]
    NoSpace,
    /// The message cannot be sent as it is (and nothing of it was kept).
    #[error("{0}")]
    Content(String),
    #[error("{0}")]
    Spool(CommitError),
}

impl Refused {
    /// The client may succeed by trying the same message later.
    pub fn is_temporary(&self) -> bool {
        match self {
            Refused::Content(_) => false,
            Refused::Spool(CommitError::Spool(e)) => !matches!(**e, SpoolError::TooManyRecipients(_)),
            _ => true,
        }
    }
}

/// A message's way into the spool and on to delivery; cheap to clone, one per listener.
#[derive(Clone)]
pub struct Intake {
    committer: Arc<Committer>,
    arrivals: SyncSender<Arrival>,
    dkim: Option<Arc<Dkim>>,
    space: Arc<SpaceCheck>,
    stopping: Arc<AtomicBool>,
    meter: Arc<IntakeMeter>,
}

impl std::fmt::Debug for Intake {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Intake").field("spool", &self.space.dir).finish_non_exhaustive()
    }
}

impl Intake {
    pub(super) fn new(
        committer: Arc<Committer>,
        arrivals: SyncSender<Arrival>,
        dkim: Option<Arc<Dkim>>,
        spool_dir: PathBuf,
        min_free_space: u64,
    ) -> Intake {
        Intake {
            committer,
            arrivals,
            dkim,
            space: Arc::new(SpaceCheck::new(spool_dir, min_free_space)),
            stopping: Arc::default(),
            meter: Arc::default(),
        }
    }

    /// What this intake (and every clone) counts, for metrics.
    pub fn meter(&self) -> &Arc<IntakeMeter> {
        &self.meter
    }

    /// From now on every message is refused with [`Refused::Stopping`] (for every clone).
    pub fn stop(&self) {
        self.stopping.store(true, Ordering::Release);
    }

    pub fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::Acquire)
    }

    /// The content as it will be spooled and sent: `content` (a whole message with CRLF line
    /// endings) made fit for any server (see [`mime`]), signed with the DKIM keys, and the
    /// trace header `trace` (a complete `Received:` field, CRLF-terminated) ahead of it.
    pub fn prepare(&self, content: &[u8], trace: &str) -> Result<Arc<[u8]>, Refused> {
        let body = mime::fit_for_any_server(Body::new(content)).map_err(Refused::Content)?;
        let head = match &self.dkim {
            Some(dkim) => Some(dkim.sign(body.bytes()).map_err(Refused::Content)?),
            None => None,
        };
        let head = head.as_ref().map_or(&[][..], |h| &h.bytes()[..]);
        let mut out = Vec::with_capacity(head.len() + trace.len() + body.bytes().len());
        out.extend_from_slice(head);
        out.extend_from_slice(trace.as_bytes());
        out.extend_from_slice(body.bytes());
        Ok(out.into())
    }

    /// Makes `messages` durable together (all or none), hands them to delivery, and gives
    /// their ids. Only an `Ok` may be answered with a yes. With an Idempotency-Key (`scope`
    /// is who presented it) seen before, nothing is written or sent: the answer is what the
    /// key admitted the first time.
    pub async fn accept(
        &self,
        messages: Vec<Accepted>,
        idempotency: Option<(&str, Arc<str>)>,
        via: Via,
    ) -> Result<Admission, Refused> {
        let result = self.admit(messages, idempotency, via).await;
        if result.is_err() {
            self.meter.refused(via);
        }
        result
    }

    async fn admit(
        &self,
        messages: Vec<Accepted>,
        idempotency: Option<(&str, Arc<str>)>,
        via: Via,
    ) -> Result<Admission, Refused> {
        if self.is_stopping() {
            return Err(Refused::Stopping);
        }
        if self.space.is_short() {
            return Err(Refused::NoSpace);
        }
        let (key, idempotency_key) = match idempotency {
            Some((scope, key)) => (Some(IdempotencyKey::new(scope, &key, now_ms())), Some(key)),
            None => (None, None),
        };
        let group = Group { messages: messages.clone(), idempotency: key };
        let handed = Instant::now();
        let admission = self.committer.admit(group).await.map_err(|e| match e {
            e if e.is_full() => Refused::NoSpace,
            e => Refused::Spool(e),
        })?;
        let Admission::New(ids) = &admission else { return Ok(admission) };
        let accepted_at = Instant::now();
        let recipients = messages.iter().map(|m| m.recipients.len() as u64).sum();
        let micros = accepted_at.duration_since(handed).as_micros() as u64;
        self.meter.accepted(via, ids.len() as u64, recipients, micros);
        for (id, message) in ids.iter().zip(messages) {
            // Blocks only while delivery has `ARRIVALS` messages it has not taken yet: intake
            // slows to what delivery takes. Delivery gone (stopping): the message is in the
            // spool for the next start.
            let arrival = Arrival { id: *id, message, idempotency_key: idempotency_key.clone(), accepted_at };
            let _ = self.arrivals.send(arrival);
        }
        Ok(admission)
    }
}

/// `--min-free-space`, checked before each acceptance. A `statvfs` per request was a twentieth of
/// the HTTP thread's time, so a reading well above the minimum (by [`SPACE_SLACK`]) stands for
/// [`SPACE_FRESH_MS`]: filling the slack that fast takes 640 MB/s of intake. Nearer the minimum,
/// every request reads it again.
struct SpaceCheck {
    dir: PathBuf,
    min: u64,
    origin: Instant,
    /// Until when (ms after `origin`) the last reading stands; 0: read at the next request.
    plenty_until_ms: AtomicU64,
}

const SPACE_SLACK: u64 = 64 * 1024 * 1024;
const SPACE_FRESH_MS: u64 = 100;

impl SpaceCheck {
    fn new(dir: PathBuf, min: u64) -> SpaceCheck {
        SpaceCheck { dir, min, origin: Instant::now(), plenty_until_ms: AtomicU64::new(0) }
    }

    /// The spool's file system has less than the minimum free (one it cannot read is not).
    fn is_short(&self) -> bool {
        if self.min == 0 {
            return false;
        }
        let now = self.origin.elapsed().as_millis() as u64;
        if now < self.plenty_until_ms.load(Ordering::Relaxed) {
            return false;
        }
        let Some(free) = free_space(&self.dir) else { return false };
        if free.saturating_sub(self.min) >= SPACE_SLACK {
            self.plenty_until_ms.store(now + SPACE_FRESH_MS, Ordering::Relaxed);
        }
        free < self.min
    }
}

/// Octets free for unprivileged users on the file system holding `dir`.
pub fn free_space(dir: &std::path::Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt as _;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    let mut stat = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: `path` is a NUL-terminated string and `stat` room for the result, which is read
    // only when the call succeeded.
    let stat = unsafe {
        if libc::statvfs(path.as_ptr(), stat.as_mut_ptr()) != 0 {
            return None;
        }
        stat.assume_init()
    };
    Some(stat.f_bavail.saturating_mul(stat.f_frsize))
}

/// A `Received:` field (RFC 5321 §4.4), CRLF-terminated: from whom (the name it gave, if any,
/// and its address), by this host, with which protocol, when.
pub fn received_field(
    name: Option<&str>,
    peer: std::net::IpAddr,
    hostname: &str,
    protocol: &str,
    received_ms: u64,
) -> String {
    // The client's name is its own to choose: only what cannot break the field stays.
    let name: String = name
        .unwrap_or("")
        .chars()
        .filter(|c| c.is_ascii_graphic() && !matches!(c, '(' | ')' | ';'))
        .take(255)
        .collect();
    let from = if name.is_empty() { format!("[{peer}]") } else { format!("{name} ([{peer}])") };
    let date = mail_builder::headers::date::Date::new((received_ms / 1000) as i64).to_rfc822();
    format!("Received: from {from}\r\n\tby {hostname} (volley) with {protocol};\r\n\t{date}\r\n")
}

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_space_is_read_from_the_file_system() {
        let free = free_space(&std::env::temp_dir()).expect("statvfs on the temp dir");
        assert!(free > 0);
        assert_eq!(free_space(std::path::Path::new("/no/such/dir")), None);
    }

    #[test]
    fn plenty_of_space_is_read_again_only_after_a_while_and_a_shortage_every_time() {
        let dir = std::env::temp_dir();
        let free = free_space(&dir).expect("statvfs on the temp dir");
        let plenty = SpaceCheck::new(dir.clone(), 1);
        assert!(free > SPACE_SLACK + 1, "the temp dir's file system has room for the test");
        assert!(!plenty.is_short());
        let until = plenty.plenty_until_ms.load(Ordering::Relaxed);
        assert!(until > 0, "a reading well above the minimum stands for a while");
        assert!(!plenty.is_short());
        assert_eq!(plenty.plenty_until_ms.load(Ordering::Relaxed), until, "and was not read again");

        let short = SpaceCheck::new(dir.clone(), u64::MAX);
        assert!(short.is_short());
        assert!(short.is_short());
        assert_eq!(short.plenty_until_ms.load(Ordering::Relaxed), 0, "a shortage is never taken on trust");

        // Just above the minimum: not short, but read again at the next request.
        let near = SpaceCheck::new(dir.clone(), free.saturating_sub(SPACE_SLACK / 2));
        let short = near.is_short();
        // (Other processes may have written or freed space since `free` was read.)
        let now = free_space(&dir).expect("statvfs on the temp dir");
        assert_eq!(short, now < near.min);
        if now.saturating_sub(near.min) < SPACE_SLACK / 4 * 3 {
            assert_eq!(near.plenty_until_ms.load(Ordering::Relaxed), 0);
        }

        assert!(!SpaceCheck::new(dir, 0).is_short(), "no minimum: never short");
    }
}

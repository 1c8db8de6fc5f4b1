//! Idempotency keys of the HTTP API: a request that carries an `Idempotency-Key` already seen
//! (for the same API key, within [`KEPT_FOR`]) is answered as the first one was and sends
//! nothing. The spool keeps each key with the messages it admitted, written in the same atomic
//! batch, so a key is durable exactly when its messages are: a crash cannot keep one without
//! the other.

use std::time::Duration;

use super::record::{DecodeError, Reader, Writer};
use super::spool::MessageId;

/// How long a key is remembered.
pub const KEPT_FOR: Duration = Duration::from_secs(24 * 3600);

/// A key, scoped to who presented it: two API keys may choose the same Idempotency-Key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyKey {
    /// `scope NUL key`: the store's key.
    bytes: Vec<u8>,
    /// Forgotten after this (milliseconds since the Unix epoch).
    pub expires_ms: u64,
}

impl IdempotencyKey {
    pub fn new(scope: &str, key: &str, now_ms: u64) -> IdempotencyKey {
        let mut bytes = Vec::with_capacity(scope.len() + key.len() + 1);
        bytes.extend_from_slice(scope.as_bytes());
        bytes.push(0);
        bytes.extend_from_slice(key.as_bytes());
        IdempotencyKey { bytes, expires_ms: now_ms + KEPT_FOR.as_millis() as u64 }
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }
}

/// What a key admitted: each message's id and first recipient (what the answer is made of).
pub type Admitted = Vec<(MessageId, String)>;

pub fn encode(expires_ms: u64, admitted: &Admitted) -> Vec<u8> {
    let mut w = Writer::new(16 + admitted.len() * 40).u64(expires_ms).u32(admitted.len() as u32);
    for (id, rcpt) in admitted {
        w = w.u64(id.0).str(rcpt);
    }
    w.done()
}

/// `(expires_ms, admitted)`.
pub fn decode(value: &[u8]) -> Result<(u64, Admitted), DecodeError> {
    let mut r = Reader::new(value)?;
    let expires = r.u64()?;
    let n = r.u32()?;
    let mut admitted = Vec::with_capacity(n.min(1024) as usize);
    for _ in 0..n {
        admitted.push((MessageId(r.u64()?), r.str()?.to_owned()));
    }
    r.end()?;
    Ok((expires, admitted))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_is_scoped_and_its_value_reads_back() {
        let a = IdempotencyKey::new("app", "k1", 1000);
        assert_ne!(a.as_bytes(), IdempotencyKey::new("ops", "k1", 1000).as_bytes());
        assert_ne!(
            IdempotencyKey::new("ap", "pk1", 0).as_bytes(),
            IdempotencyKey::new("app", "k1", 0).as_bytes()
        );
        assert_eq!(a.expires_ms, 1000 + 86_400_000);
        let admitted = vec![(MessageId(7), "a@x.test".to_owned()), (MessageId(8), "b@y.test".to_owned())];
        assert_eq!(decode(&encode(5, &admitted)).unwrap(), (5, admitted));
        assert!(decode(&encode(5, &Vec::new())[..10]).is_err());
    }
}

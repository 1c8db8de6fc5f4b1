//! The spool's schedule: every waiting recipient filed under the time its next attempt is due,
//! so delivery can read, in order, the recipients whose time is near and keep no more than
//! those in memory ([`super::source`]); the rest wait on disk, however many there are.
//!
//! Key: due time (milliseconds since the Unix epoch), message id, recipient index, each
//! big-endian, so the store's order is the schedule's. Value: all a recipient's job is made of
//! but its message's content (read when the attempt is due): attempts so far, when the message
//! was received, its sender, the address.

use super::record::{Reader, Writer};
use super::spool::{MessageId, SpoolError, corrupt};
use crate::proto::Address;

/// A waiting recipient as the schedule holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scheduled {
    pub message: MessageId,
    /// Its place in the message's envelope.
    pub index: u32,
    /// When its next attempt is due (milliseconds since the Unix epoch).
    pub due_ms: u64,
    /// Attempts so far (0: never tried).
    pub attempts: u32,
    /// When its message was received (its age, for `--max-age`, counts from here).
    pub received_ms: u64,
    /// `None` is the null reverse-path.
    pub sender: Option<Address>,
    pub address: Address,
}

pub const KEY_LEN: usize = 20;

pub fn key(due_ms: u64, message: MessageId, index: u32) -> [u8; KEY_LEN] {
    let mut k = [0u8; KEY_LEN];
    k[..8].copy_from_slice(&due_ms.to_be_bytes());
    k[8..16].copy_from_slice(&message.0.to_be_bytes());
    k[16..].copy_from_slice(&index.to_be_bytes());
    k
}

pub fn value(s: &Scheduled) -> Vec<u8> {
    let sender = s.sender.as_ref().map_or("", Address::as_str);
    Writer::new(24 + sender.len() + s.address.as_str().len())
        .u32(s.attempts)
        .u64(s.received_ms)
        .u8(u8::from(s.sender.is_some()))
        .str(sender)
        .str(s.address.as_str())
        .done()
}

pub fn decode(key: &[u8], value: &[u8]) -> Result<Scheduled, SpoolError> {
    let name = || key.iter().map(|b| format!("{b:02x}")).collect::<String>();
    let Ok(key) = <&[u8; KEY_LEN]>::try_from(key) else {
        return Err(corrupt("due", &name(), "a key of the wrong length"));
    };
    let field = |at: usize| u64::from_be_bytes(key[at..at + 8].try_into().unwrap_or_default());
    let (due_ms, message) = (field(0), MessageId(field(8)));
    let index = u32::from_be_bytes(key[16..].try_into().unwrap_or_default());
    let read = || -> Result<Scheduled, Box<dyn std::error::Error>> {
        let mut r = Reader::new(value)?;
        let attempts = r.u32()?;
        let received_ms = r.u64()?;
        let has_sender = r.u8()? == 1;
        let sender = r.str()?;
        let sender = if has_sender { Some(Address::new(sender)?) } else { None };
        let address = Address::new(r.str()?)?;
        r.end()?;
        Ok(Scheduled { message, index, due_ms, attempts, received_ms, sender, address })
    };
    read().map_err(|e| corrupt("due", &name(), e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_entry_reads_back_and_keys_sort_by_due_time_first() {
        let s = Scheduled {
            message: MessageId(7),
            index: 3,
            due_ms: 1_700_000_000_000,
            attempts: 2,
            received_ms: 1_699_999_000_000,
            sender: Some(Address::new("app@example.com").unwrap()),
            address: Address::new("a@x.test").unwrap(),
        };
        let k = key(s.due_ms, s.message, s.index);
        assert_eq!(decode(&k, &value(&s)).unwrap(), s);
        let null = Scheduled { sender: None, ..s.clone() };
        assert_eq!(decode(&k, &value(&null)).unwrap(), null);
        assert!(key(1, MessageId(9), 0) < key(2, MessageId(1), 0), "sooner first, whatever the message");
        assert!(key(2, MessageId(0), 0) <= key(2, MessageId(0), 1), "then by message and place");
        assert!(decode(&k[..12], &value(&s)).is_err(), "a short key");
        assert!(decode(&k, &value(&s)[..10]).is_err(), "a short value");
    }
}

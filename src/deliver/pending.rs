//! A recipient between attempts. Whether and when it is tried again is
//! [`crate::engine::retry`]'s decision, applied by the ledger.

use std::time::Instant;

use crate::engine::Payload;
use crate::proto::Address;

/// A recipient between attempts: its message (to be rendered by a core, or rendered by the
/// first attempt and kept for the rest) and its history.
#[derive(Debug)]
pub struct Pending {
    /// The recipient's id (see [`crate::deliver`]).
    pub id: u64,
    pub rcpt: Address,
    pub message: Payload,
    /// When it was first admitted: queue time and maximum age count from here.
    pub born: Instant,
    pub attempts: u32,
}

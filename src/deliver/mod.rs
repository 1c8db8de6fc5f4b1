//! Delivery: what any sender needs between "this recipient, this message" and a final record,
//! whatever the recipients come from. `send` (a campaign from a file) and `check` use it today,
//! `serve` (a spool) next.
//!
//! - where a recipient's mail goes: [`dns`] (MX and address lookups on their own thread) and
//!   [`route`] (destinations, MX rollup, answers kept for their TTL);
//! - how it is sent there: [`shaping`] (per-provider limits and reactions, from rules files
//!   read by [`rules_file`]) and [`dkim`] (signatures);
//! - what became of it: [`ledger`] (the log thread: the one place outcomes become records and
//!   deferrals become retries, by [`crate::engine::retry`]'s decision), [`pending`] (a recipient
//!   between attempts), [`bounce`] (failure categories), [`log`] (records and the delivery log
//!   with group commit) and [`books`] (per-domain statistics).
//!
//! A recipient is known here by an opaque `u64` id: a campaign uses its input line, a spool
//! its message's. Nothing here knows rows, templates or files of recipients.

pub mod books;
pub mod bounce;
pub mod dispatch;
pub mod dkim;
pub mod dns;
pub mod ledger;
pub mod log;
pub mod pending;
pub mod route;
pub mod rules_file;
pub mod shaping;

/// `domain` in lower case, copied only if it is not already: the form routes and books are
/// keyed by.
pub fn lowercase(domain: &str) -> std::borrow::Cow<'_, str> {
    if domain.bytes().any(|b| b.is_ascii_uppercase()) {
        domain.to_ascii_lowercase().into()
    } else {
        domain.into()
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn lowercase_copies_only_what_has_capitals() {
        assert_eq!(super::lowercase("Mixed.Example"), "mixed.example");
        assert!(matches!(super::lowercase("lower.example"), std::borrow::Cow::Borrowed(_)));
    }
}

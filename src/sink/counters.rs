//! What the sink saw. One `Counters` per core, updated without sharing, merged at exit.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use crate::report::json_object;

#[derive(Clone, PartialEq, Eq)]
pub struct Counters {
    pub connections: u64,
    /// Turned away with 421 at greeting (`--max-connections`).
    pub connections_refused: u64,
    /// MAIL commands accepted.
    pub transactions: u64,
    pub messages_accepted: u64,
    /// Messages whose content was answered negatively (size, injected failure, dump error).
    pub messages_rejected: u64,
    /// Transactions open when the client went away.
    pub transactions_aborted: u64,
    /// Content octets received (after unstuffing).
    pub bytes: u64,
    /// Syntax errors, bad sequences, overlong lines.
    pub protocol_errors: u64,
    pub bare_lf: u64,
    /// CRs in DATA content not followed by LF (with bare LFs, what smuggling attempts look like).
    pub bare_cr: u64,
    pub injected_disconnects: u64,
    pub idle_timeouts: u64,
    pub dump_errors: u64,
    /// TLS sessions set up (after STARTTLS or on the implicit-TLS listener), handshakes that
    /// failed, and plaintext octets a client sent behind STARTTLS, discarded unread.
    pub tls_sessions: u64,
    pub tls_failures: u64,
    pub tls_discarded: u64,
    pub auth_successes: u64,
    pub auth_failures: u64,
    /// Successful authentications per user.
    pub auth_users: BTreeMap<String, u64>,
    /// Replies sent, by code.
    pub replies: Vec<u64>,
}

impl Default for Counters {
    fn default() -> Self {
        Counters {
            connections: 0,
            connections_refused: 0,
            transactions: 0,
            messages_accepted: 0,
            messages_rejected: 0,
            transactions_aborted: 0,
            bytes: 0,
            protocol_errors: 0,
            bare_lf: 0,
            bare_cr: 0,
            injected_disconnects: 0,
            idle_timeouts: 0,
            dump_errors: 0,
            tls_sessions: 0,
            tls_failures: 0,
            tls_discarded: 0,
            auth_successes: 0,
            auth_failures: 0,
            auth_users: BTreeMap::new(),
            replies: vec![0; 600],
        }
    }
}

/// Shows only the reply codes that were sent, not 600 zeros.
impl std::fmt::Debug for Counters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut d = f.debug_struct("Counters");
        for (name, v) in self.scalars() {
            d.field(name, &v);
        }
        d.field("replies", &self.reply_counts().collect::<Vec<_>>()).finish()
    }
}

impl Counters {
    pub fn reply(&mut self, code: u16) {
        if let Some(n) = self.replies.get_mut(usize::from(code)) {
            *n += 1;
        }
    }

    pub fn merge(&mut self, o: &Counters) {
        self.connections += o.connections;
        self.connections_refused += o.connections_refused;
        self.transactions += o.transactions;
        self.messages_accepted += o.messages_accepted;
        self.messages_rejected += o.messages_rejected;
        self.transactions_aborted += o.transactions_aborted;
        self.bytes += o.bytes;
        self.protocol_errors += o.protocol_errors;
        self.bare_lf += o.bare_lf;
        self.bare_cr += o.bare_cr;
        self.injected_disconnects += o.injected_disconnects;
        self.idle_timeouts += o.idle_timeouts;
        self.dump_errors += o.dump_errors;
        for (a, b) in self.replies.iter_mut().zip(&o.replies) {
            *a += b;
        }
        self.tls_sessions += o.tls_sessions;
        self.tls_failures += o.tls_failures;
        self.tls_discarded += o.tls_discarded;
        self.auth_successes += o.auth_successes;
        self.auth_failures += o.auth_failures;
        for (user, n) in &o.auth_users {
            *self.auth_users.entry(user.clone()).or_default() += n;
        }
    }

    fn scalars(&self) -> [(&'static str, u64); 18] {
        [
            ("connections", self.connections),
            ("connections_refused", self.connections_refused),
            ("transactions", self.transactions),
            ("messages_accepted", self.messages_accepted),
            ("messages_rejected", self.messages_rejected),
            ("transactions_aborted", self.transactions_aborted),
            ("bytes", self.bytes),
            ("protocol_errors", self.protocol_errors),
            ("bare_lf", self.bare_lf),
            ("bare_cr", self.bare_cr),
            ("injected_disconnects", self.injected_disconnects),
            ("idle_timeouts", self.idle_timeouts),
            ("dump_errors", self.dump_errors),
            ("tls_sessions", self.tls_sessions),
            ("tls_failures", self.tls_failures),
            ("tls_discarded", self.tls_discarded),
            ("auth_successes", self.auth_successes),
            ("auth_failures", self.auth_failures),
        ]
    }

    fn reply_counts(&self) -> impl Iterator<Item = (usize, u64)> + '_ {
        self.replies.iter().enumerate().filter(|&(_, &n)| n > 0).map(|(c, &n)| (c, n))
    }

    pub fn table(&self, seconds: f64) -> String {
        let mut s = String::new();
        for (name, v) in self.scalars() {
            let _ = writeln!(s, "{name:<22} {v:>14}");
        }
        if seconds > 0.0 {
            let _ = writeln!(
                s,
                "{:<22} {:>14.0}",
                "messages_per_second",
                self.messages_accepted as f64 / seconds
            );
        }
        if !self.auth_users.is_empty() {
            let _ = writeln!(s, "authenticated by user:");
            for (user, n) in &self.auth_users {
                let _ = writeln!(s, "  {user:<20} {n:>14}");
            }
        }
        let _ = writeln!(s, "replies by code:");
        for (code, n) in self.reply_counts() {
            let _ = writeln!(s, "  {code:<20} {n:>14}");
        }
        s
    }

    pub fn json(&self, seconds: f64) -> String {
        let replies = json_object(self.reply_counts().map(|(c, n)| (c.to_string(), n.to_string())));
        let mut fields: Vec<(String, String)> =
            self.scalars().iter().map(|(k, v)| ((*k).to_owned(), v.to_string())).collect();
        fields.push(("seconds".into(), format!("{seconds:.3}")));
        fields.push(("replies".into(), replies));
        let users = json_object(self.auth_users.iter().map(|(u, n)| (u.clone(), n.to_string())));
        fields.push(("auth_users".into(), users));
        json_object(fields)
    }
}

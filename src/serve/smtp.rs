//! SMTP submission: volley's SMTP server (the sink's sans-IO session and its driver, which own
//! the protocol, AUTH, STARTTLS, limits and who may send) with the spool as its store. The end
//! of data is answered `250` only once the message is durable ([`Intake::accept`]).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use super::intake::{Intake, Refused, now_ms, received_field};
use super::metrics::Via;
use super::spool::{Accepted, Admission};
use crate::sink::store::{Store, Stored, Submission};

/// Stores submitted messages in the spool.
#[derive(Debug)]
pub struct SpoolStore {
    intake: Intake,
    /// This host's name, for the trace header.
    hostname: Arc<str>,
}

impl SpoolStore {
    pub fn new(intake: Intake, hostname: &str) -> SpoolStore {
        SpoolStore { intake, hostname: hostname.into() }
    }
}

impl Store for SpoolStore {
    fn store(&self, m: Submission) -> Pin<Box<dyn Future<Output = Stored>>> {
        let intake = self.intake.clone();
        let hostname = Arc::clone(&self.hostname);
        Box::pin(async move {
            if has_bare_line_ending(&m.content) {
                // What SMTP smuggling is made of; and a receiver may read such lines either way.
                let text = "5.5.2 Bare CR or LF in the message: lines must end with CRLF".into();
                return Stored::Refused { code: 550, text };
            }
            let received_ms = now_ms();
            let content = match intake.prepare(&m.content, &trace(&m, &hostname, received_ms)) {
                Ok(content) => content,
                Err(refused) => return answer(&refused),
            };
            let origin = match &m.user {
                Some(user) => user.clone(),
                None => format!("smtp:{}", m.peer),
            };
            let accepted =
                Accepted { sender: m.sender, recipients: m.recipients, content, received_ms, origin };
            match intake.accept(vec![accepted], None, Via::Smtp).await {
                Ok(Admission::New(ids)) => {
                    Stored::Queued(ids.first().map_or_else(String::new, |id| format!("{:X}", id.0)))
                }
                // No key, no replay; said rather than assumed.
                Ok(Admission::Replay(_)) => Stored::Refused { code: 451, text: "4.3.0 Not stored".into() },
                Err(refused) => answer(&refused),
            }
        })
    }
}

/// The SMTP reply to a refusal: "try later" for the service's state, a permanent refusal for
/// the message's own fault.
fn answer(refused: &Refused) -> Stored {
    let (code, text) = match refused {
        Refused::Stopping => (421, "4.3.2 Service shutting down, try later".to_owned()),
        Refused::NoSpace => (452, "4.3.1 Insufficient system storage".to_owned()),
        Refused::Content(reason) => (554, format!("5.6.0 {reason}")),
        Refused::Spool(e) if !refused.is_temporary() => (552, format!("5.5.3 {e}")),
        Refused::Spool(_) => (451, "4.3.0 Local error in processing, try later".to_owned()),
    };
    Stored::Refused { code, text }
}

/// The `Received:` field for a submitted message (the protocol names of RFC 3848: ESMTP, with
/// S for TLS and A for AUTH).
fn trace(m: &Submission, hostname: &str, received_ms: u64) -> String {
    let protocol = match (m.secure, m.user.is_some()) {
        (false, false) => "ESMTP",
        (true, false) => "ESMTPS",
        (false, true) => "ESMTPA",
        (true, true) => "ESMTPSA",
    };
    received_field(Some(&m.helo), m.peer, hostname, protocol, received_ms)
}

/// Whether a CR or LF appears other than as CRLF.
fn has_bare_line_ending(content: &[u8]) -> bool {
    memchr::memchr2_iter(b'\r', b'\n', content).any(|at| match content[at] {
        b'\r' => content.get(at + 1) != Some(&b'\n'),
        _ => at == 0 || content[at - 1] != b'\r',
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_crlf_ends_a_line() {
        assert!(!has_bare_line_ending(b"a\r\nb\r\n"));
        assert!(!has_bare_line_ending(b""));
        assert!(has_bare_line_ending(b"a\nb\r\n"));
        assert!(has_bare_line_ending(b"\n"));
        assert!(has_bare_line_ending(b"a\rb\r\n"));
        assert!(has_bare_line_ending(b"a\r"));
    }

    #[test]
    fn the_trace_field_names_the_client_as_it_came() {
        let m = Submission {
            sender: None,
            recipients: Vec::new(),
            content: Vec::new(),
            user: Some("app".into()),
            helo: "client.test (spoofed)\x01".into(),
            peer: [127, 0, 0, 9].into(),
            secure: true,
        };
        let t = trace(&m, "mx.volley.test", 1_700_000_000_000);
        assert!(t.starts_with("Received: from client.testspoofed ([127.0.0.9])\r\n"), "{t}");
        assert!(t.contains("by mx.volley.test (volley) with ESMTPSA;\r\n\t"), "{t}");
        assert!(t.ends_with("+0000\r\n"), "{t}");
        assert!(crate::proto::Head::new(t.as_bytes()).is_ok(), "a valid header field: {t}");
    }
}

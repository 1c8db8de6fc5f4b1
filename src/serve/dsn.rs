//! Delivery status notifications (RFC 3464): a relay that accepted a message and then could not
//! deliver it to a recipient (bounced, or expired) owes its sender a report, as a
//! `multipart/report` from the null sender, so that no report is ever answered by another
//! (RFC 5321 §4.5.5). Made by the spool writer from the message it still holds, in the batch
//! before the one that lets the message go, and delivered like any accepted message.

use std::fmt::Write as _;

use super::spool::{Accepted, Stored};
use crate::deliver::ledger::Failed;

/// The report to `message`'s sender about `failed` (its recipients that will not get it), or
/// `None` when the message had the null sender. `hostname` is this host's name; `now_ms`
/// the time of the report.
pub fn report(message: &Stored, failed: &[&Failed], hostname: &str, now_ms: u64) -> Option<Accepted> {
    let sender = message.sender.clone()?;
    if failed.is_empty() {
        return None;
    }
    let date = |ms: u64| mail_builder::headers::date::Date::new((ms / 1000) as i64).to_rfc822();
    let boundary = format!("volley-dsn-{:x}-{now_ms:x}", message.id.0);
    let mut m = String::with_capacity(2048);
    let _ = write!(
        m,
        "From: Mail Delivery System <MAILER-DAEMON@{hostname}>\r\n\
         To: <{sender}>\r\n\
         Subject: Undelivered Mail Returned to Sender\r\n\
         Date: {}\r\n\
         Message-ID: <dsn.{}.{now_ms}@{hostname}>\r\n\
         Auto-Submitted: auto-replied\r\n\
         MIME-Version: 1.0\r\n\
         Content-Type: multipart/report; report-type=delivery-status;\r\n\tboundary=\"{boundary}\"\r\n\
         \r\n\
         This is a delivery status notification (RFC 3464).\r\n\
         \r\n\
         --{boundary}\r\n\
         Content-Type: text/plain; charset=utf-8\r\n\
         \r\n\
         This is the mail system at {hostname}.\r\n\
         \r\n\
         Your message could not be delivered to the recipients below.\r\n\
         \r\n",
        date(now_ms),
        message.id.0,
    );
    for f in failed {
        let why = if f.expired { "gave up retrying" } else { "refused" };
        let _ = write!(m, "<{}>: {why}: {}\r\n", f.rcpt, one_line(&f.text));
    }
    let _ = write!(
        m,
        "\r\n--{boundary}\r\n\
         Content-Type: message/delivery-status\r\n\
         \r\n\
         Reporting-MTA: dns; {hostname}\r\n\
         Arrival-Date: {}\r\n",
        date(message.received_ms)
    );
    for f in failed {
        let _ = write!(
            m,
            "\r\nFinal-Recipient: rfc822; {}\r\nAction: failed\r\nStatus: {}\r\n",
            f.rcpt,
            status(f)
        );
        if let Some(mx) = &f.mx {
            let _ = write!(m, "Remote-MTA: dns; {mx}\r\n");
        }
        if let Some(code) = f.code {
            let _ = write!(m, "Diagnostic-Code: smtp; {code} {}\r\n", one_line(&f.text));
        }
    }
    let _ = write!(m, "\r\n--{boundary}\r\nContent-Type: text/rfc822-headers\r\n\r\n");
    let mut content = m.into_bytes();
    content.extend_from_slice(header_section(&message.content));
    content.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    Some(Accepted {
        sender: None,
        recipients: vec![sender],
        content: content.into(),
        received_ms: now_ms,
        origin: "dsn".into(),
    })
}

/// The RFC 3463 status of a failure: the server's enhanced code, else one for what happened.
fn status(f: &Failed) -> String {
    match f.enhanced {
        // A permanent failure is reported as one even if the last answer was a 4xx.
        Some(e) if e.class == 5 || !f.expired => format!("{}.{}.{}", e.class, e.subject, e.detail),
        // Still deferred when its time ran out: delivery time expired.
        _ if f.expired => "4.4.7".to_owned(),
        _ => "5.0.0".to_owned(),
    }
}

/// Text for one header or body line: line breaks and control characters made spaces.
fn one_line(text: &str) -> String {
    text.chars().map(|c| if c.is_control() { ' ' } else { c }).collect()
}

/// The header section of a message, its last line break included (all of it if it has no
/// body).
fn header_section(content: &[u8]) -> &[u8] {
    match memchr::memmem::find(content, b"\r\n\r\n") {
        Some(at) => &content[..at + 2],
        None => content,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::proto::{Address, EnhancedCode};
    use crate::serve::spool::MessageId;

    fn stored(sender: Option<&str>) -> Stored {
        Stored {
            id: MessageId(7),
            sender: sender.map(|s| Address::new(s).unwrap()),
            content: b"From: app@example.com\r\nSubject: Receipt\r\n\r\nsecret body\r\n".to_vec(),
            received_ms: 1_700_000_000_000,
            origin: "app".into(),
            recipient_count: 2,
        }
    }

    fn failed(rcpt: &str, expired: bool, enhanced: Option<EnhancedCode>) -> Failed {
        Failed {
            rcpt: Arc::from(rcpt),
            expired,
            code: Some(550),
            enhanced,
            text: "5.1.1 No such user\r\nhere".into(),
            mx: Some("mx.example.net".into()),
        }
    }

    #[test]
    fn a_report_names_each_failed_recipient_and_the_original_headers_only() {
        let (a, b) = (
            failed("a@example.net", false, Some(EnhancedCode::new(5, 1, 1))),
            failed("b@example.net", true, None),
        );
        let dsn =
            report(&stored(Some("app@example.com")), &[&a, &b], "mx.volley.test", 1_700_000_100_000).unwrap();
        assert_eq!(dsn.sender, None, "from the null sender: never answered by another report");
        assert_eq!(dsn.recipients, [Address::new("app@example.com").unwrap()]);
        let text = String::from_utf8(dsn.content.to_vec()).unwrap();
        for expected in [
            "Content-Type: multipart/report; report-type=delivery-status;",
            "Auto-Submitted: auto-replied",
            "Reporting-MTA: dns; mx.volley.test",
            "Final-Recipient: rfc822; a@example.net\r\nAction: failed\r\nStatus: 5.1.1\r\nRemote-MTA: dns; mx.example.net\r\nDiagnostic-Code: smtp; 550 5.1.1 No such user  here\r\n",
            "Final-Recipient: rfc822; b@example.net\r\nAction: failed\r\nStatus: 4.4.7\r\n",
            "Content-Type: text/rfc822-headers\r\n\r\nFrom: app@example.com\r\nSubject: Receipt\r\n",
        ] {
            assert!(text.contains(expected), "{expected:?} in\n{text}");
        }
        assert!(!text.contains("secret body"), "headers only, not the body");
        assert!(crate::proto::Body::new(&dsn.content).bytes().len() == dsn.content.len());
        assert!(!text.split("\r\n").any(|l| l.len() > 998), "no line too long");
    }

    #[test]
    fn no_report_for_the_null_sender_or_nothing_failed() {
        let a = failed("a@example.net", false, None);
        assert!(report(&stored(None), &[&a], "h", 0).is_none());
        assert!(report(&stored(Some("app@example.com")), &[], "h", 0).is_none());
        assert_eq!(status(&a), "5.0.0");
    }
}

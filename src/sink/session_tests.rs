//! The session's rules in memory, without sockets.

use std::sync::Arc;

use super::*;
use crate::sink::{Core, Shared, SinkConfig};

fn core() -> Core {
    Core::new(Arc::new(SinkConfig::default()), Arc::new(Shared::default()), 0)
}

/// Feeds `input` in pieces of `step` bytes, as reads would deliver it; returns the replies.
fn run(input: &[u8], step: usize) -> (String, Core) {
    let mut core = core();
    let mut s = Session::new(1, false);
    let mut out = Vec::new();
    s.greet(&mut core, 1, &mut out);
    let mut pending: Vec<u8> = Vec::new();
    for piece in input.chunks(step.max(1)) {
        pending.extend_from_slice(piece);
        let (n, action) = s.process(&mut core, &pending, &mut out);
        pending.drain(..n);
        if action == Action::Close {
            break;
        }
        assert_eq!(action, Action::Continue);
    }
    (String::from_utf8(out).unwrap(), core)
}

fn codes(replies: &str) -> Vec<&str> {
    replies.lines().filter(|l| l.as_bytes().get(3) != Some(&b'-')).map(|l| &l[..3]).collect()
}

#[test]
fn overlong_line_with_its_end_in_the_same_read_regression() {
    // The LF ending an overlong line arrived in the same read as the next command; the whole
    // read was discarded once, swallowing that command.
    let mut input = format!("NOOP {}\r\n", "x".repeat(600)).into_bytes();
    input.extend_from_slice(b"NOOP\r\n");
    for step in [1, 7, 512, 4096] {
        let (replies, core) = run(&input, step);
        assert_eq!(codes(&replies), vec!["220", "500", "250"], "step {step}");
        assert_eq!(core.counters.protocol_errors, 1);
    }
}

#[test]
fn same_replies_whatever_the_read_boundaries() {
    let script = b"EHLO t\r\nMAIL FROM:<a@test>\r\nRCPT TO:<b@test>\r\nDATA\r\n..x\r\n.\r\n\
                   MAIL FROM:<a@test>\r\nRCPT TO:<b@test>\r\nBDAT 3\r\nabcBDAT 2 LAST\r\nde\
                   RSET\r\nQUIT\r\n";
    let (whole, _) = run(script, script.len());
    for step in [1, 2, 3, 5, 64] {
        let (replies, core) = run(script, step);
        assert_eq!(codes(&replies), codes(&whole), "step {step}");
        assert_eq!(core.counters.messages_accepted, 2);
        assert_eq!(core.counters.bytes, 4 + 5, ".x CRLF, then abc + de");
    }
    assert_eq!(
        codes(&whole),
        vec!["220", "250", "250", "250", "354", "250", "250", "250", "250", "250", "250", "221"]
    );
}

#[test]
fn dumping_sink_does_not_buffer_content_past_the_size_limit() {
    let config = SinkConfig { dump: Some(std::env::temp_dir()), max_size: 10_000, ..SinkConfig::default() };
    let mut core = Core::new(Arc::new(config), Arc::new(Shared::default()), 0);
    for (open, chunked) in [(&b"DATA\r\n"[..], false), (&b"BDAT 4000000 LAST\r\n"[..], true)] {
        let mut s = Session::new(1, false);
        let mut out = Vec::new();
        s.greet(&mut core, 1, &mut out);
        s.process(&mut core, b"EHLO t\r\nMAIL FROM:<a@test>\r\nRCPT TO:<b@test>\r\n", &mut out);
        s.process(&mut core, open, &mut out);
        let line = [b'x'; 4094];
        let mut chunk = line.to_vec();
        chunk.extend_from_slice(b"\r\n");
        for _ in 0..1000 {
            let (n, _) = s.process(&mut core, &chunk, &mut out);
            assert_eq!(n, chunk.len());
            assert!(s.txn.body.len() <= 10_000 + chunk.len(), "chunked {chunked}: {}", s.txn.body.len());
        }
        if !chunked {
            s.process(&mut core, b".\r\n", &mut out);
            assert!(
                String::from_utf8_lossy(&out)
                    .ends_with("552 5.3.4 Message size exceeds fixed maximum message size\r\n")
            );
        }
    }
}

/// A session under `config`, fed `input` whole; returns the replies and the last action.
fn run_with(config: SinkConfig, secure: bool, input: &[u8]) -> (String, Action, Session, Core) {
    let mut core = Core::new(Arc::new(config), Arc::new(Shared::default()), 0);
    let mut s = Session::new(1, secure);
    let mut out = Vec::new();
    s.greet(&mut core, 1, &mut out);
    let mut pos = 0;
    let mut action = Action::Continue;
    while pos < input.len() {
        let (n, a) = s.process(&mut core, &input[pos..], &mut out);
        pos += n;
        action = a;
        if a != Action::Continue {
            break;
        }
    }
    (String::from_utf8(out).unwrap(), action, s, core)
}

fn tls_config() -> SinkConfig {
    let tls = crate::tls::ServerTls::self_signed(&["localhost".into()]).unwrap();
    SinkConfig { tls: Some(tls), starttls: true, ..SinkConfig::default() }
}

fn auth_config() -> SinkConfig {
    let users = super::auth::Users::parse("alice:s3cret\n").unwrap();
    SinkConfig { auth: Some(Arc::new(users)), ..tls_config() }
}

#[test]
fn starttls_stops_reading_and_the_session_starts_over() {
    // Everything after STARTTLS in the same read is left unconsumed: the driver discards it.
    let input = b"EHLO t\r\nSTARTTLS\r\nMAIL FROM:<a@test>\r\n";
    let (replies, action, mut s, mut core) = run_with(tls_config(), false, input);
    assert!(replies.contains("250-STARTTLS\r\n"), "{replies}");
    assert_eq!(codes(&replies), vec!["220", "250", "220"]);
    assert_eq!(action, Action::StartTls);
    s.tls_started();
    let mut out = Vec::new();
    // RFC 3207: EHLO again; STARTTLS is no longer offered, and a second one is refused.
    s.process(&mut core, b"MAIL FROM:<a@test>\r\nEHLO t\r\nSTARTTLS\r\n", &mut out);
    let replies = String::from_utf8(out).unwrap();
    assert!(!replies.contains("250-STARTTLS") && !replies.contains("250 STARTTLS"), "{replies}");
    assert_eq!(codes(&replies), vec!["503", "250", "502"]);
    // Not offered without --starttls.
    let (replies, _, _, _) = run_with(SinkConfig::default(), false, b"EHLO t\r\nSTARTTLS\r\n");
    assert!(!replies.contains("250-STARTTLS") && codes(&replies).ends_with(&["502"]));
}

#[test]
fn require_tls_refuses_mail_in_plaintext() {
    let config = || SinkConfig { require_tls: true, ..tls_config() };
    let (replies, _, _, _) = run_with(config(), false, b"EHLO t\r\nMAIL FROM:<a@test>\r\n");
    assert!(replies.ends_with("530 5.7.0 Must issue a STARTTLS command first\r\n"), "{replies}");
    let (replies, _, _, _) = run_with(config(), true, b"EHLO t\r\nMAIL FROM:<a@test>\r\n");
    assert!(replies.ends_with("250 2.1.0 Ok\r\n"), "{replies}");
}

#[test]
fn auth_is_required_before_mail_and_counted_per_user() {
    let plain_ok =
        b"EHLO t\r\nMAIL FROM:<a@test>\r\nAUTH PLAIN AGFsaWNlAHMzY3JldA==\r\nMAIL FROM:<a@test>\r\n";
    let (replies, _, _, core) = run_with(auth_config(), true, plain_ok);
    assert!(replies.contains("250-AUTH PLAIN LOGIN\r\n"), "{replies}");
    assert_eq!(codes(&replies), vec!["220", "250", "530", "235", "250"]);
    assert_eq!(core.counters.auth_users.get("alice"), Some(&1));

    let login = b"EHLO t\r\nAUTH LOGIN\r\nYWxpY2U=\r\nd3Jvbmc=\r\nAUTH LOGIN\r\nYWxpY2U=\r\nczNjcmV0\r\n";
    let (replies, _, _, core) = run_with(auth_config(), true, login);
    assert_eq!(codes(&replies), vec!["220", "250", "334", "334", "535", "334", "334", "235"]);
    assert!(replies.contains("535 5.7.8"), "{replies}");
    assert_eq!((core.counters.auth_failures, core.counters.auth_successes), (1, 1));

    // Unknown mechanism, cancelled exchange, AUTH twice.
    let odd =
        b"EHLO t\r\nAUTH CRAM-MD5\r\nAUTH PLAIN\r\n*\r\nAUTH PLAIN AGFsaWNlAHMzY3JldA==\r\nAUTH PLAIN x\r\n";
    let (replies, _, _, _) = run_with(auth_config(), true, odd);
    assert_eq!(codes(&replies), vec!["220", "250", "504", "334", "501", "235", "503"]);
}

#[test]
fn a_sink_without_8bitmime_or_smtputf8_refuses_what_needs_them() {
    let seven = || SinkConfig { eight_bit_mime: false, smtputf8: false, ..SinkConfig::default() };
    let (replies, _, _, _) = run_with(seven(), false, b"EHLO t\r\n");
    assert!(!replies.contains("8BITMIME") && !replies.contains("SMTPUTF8"), "{replies}");
    let input = "EHLO t\r\nMAIL FROM:<a@test> BODY=8BITMIME\r\nMAIL FROM:<a@test> SMTPUTF8\r\n\
                 MAIL FROM:<ä@test>\r\nMAIL FROM:<a@test>\r\nRCPT TO:<ö@test>\r\nRCPT TO:<b@test>\r\n\
                 DATA\r\nGrüße\r\n.\r\nMAIL FROM:<a@test>\r\nRCPT TO:<b@test>\r\nBDAT 3 LAST\r\nä!\
                 MAIL FROM:<a@test>\r\nRCPT TO:<b@test>\r\nDATA\r\nplain\r\n.\r\n";
    let (replies, _, _, core) = run_with(seven(), false, input.as_bytes());
    assert_eq!(
        codes(&replies),
        vec![
            "220", "250", "555", "555", "553", "250", "553", "250", "354", "554", "250", "250", "554", "250",
            "250", "354", "250"
        ],
        "{replies}"
    );
    assert!(replies.contains("554 5.6.0 8-bit content"), "{replies}");
    assert_eq!(core.counters.messages_accepted, 1, "only the 7-bit message");
    // With the extensions, the same is taken.
    let (replies, _, _, core) = run_with(SinkConfig::default(), false, input.as_bytes());
    assert!(replies.contains("250-8BITMIME") && replies.contains("250-SMTPUTF8"), "{replies}");
    assert_eq!(core.counters.messages_accepted, 3);
}

/// A store that is never called: the session only says when to call it.
#[derive(Debug)]
struct NoStore;

impl crate::sink::store::Store for NoStore {
    fn store(&self, _: Submission) -> std::pin::Pin<Box<dyn std::future::Future<Output = Stored>>> {
        unreachable!("the driver calls the store, not the session")
    }
}

fn keeping(configure: impl FnOnce(&mut SinkConfig)) -> (Core, Arc<Shared>) {
    let mut config = SinkConfig { store: Some(Arc::new(NoStore)), ..SinkConfig::default() };
    configure(&mut config);
    let shared = Arc::new(Shared::default());
    (Core::new(Arc::new(config), Arc::clone(&shared), 0), shared)
}

/// Feeds `input` at once; the replies and the action it stopped at.
fn feed(s: &mut Session, core: &mut Core, input: &[u8]) -> (String, Action, usize) {
    let mut out = Vec::new();
    let (n, action) = s.process(core, input, &mut out);
    (String::from_utf8(out).unwrap(), action, n)
}

#[test]
fn a_server_that_keeps_mail_is_no_open_relay() {
    let (mut core, _) = keeping(|_| {});
    let mut s = Session::new(1, false);
    s.set_peer([192, 0, 2, 1].into(), false);
    let (replies, ..) = feed(&mut s, &mut core, b"EHLO x\r\nMAIL FROM:<a@test>\r\n");
    assert_eq!(codes(&replies), ["250", "554"], "no users file, a stranger: relay access denied");

    let (mut core, _) = keeping(|c| c.auth = Some(Arc::new(auth::Users::single("u", "p"))));
    let mut s = Session::new(1, false);
    s.set_peer([192, 0, 2, 1].into(), false);
    let (replies, ..) = feed(&mut s, &mut core, b"EHLO x\r\nMAIL FROM:<a@test>\r\n");
    assert_eq!(codes(&replies), ["250", "530"], "AUTH first");
}

#[test]
fn auth_only_over_tls_when_asked() {
    let (mut core, _) = keeping(|c| {
        c.auth = Some(Arc::new(auth::Users::single("u", "p")));
        c.auth_needs_tls = true;
    });
    let mut s = Session::new(1, false);
    let (replies, ..) = feed(&mut s, &mut core, b"EHLO x\r\nAUTH PLAIN AHUAcA==\r\n");
    assert!(!replies.contains("AUTH"), "not offered in plaintext: {replies}");
    assert_eq!(codes(&replies), ["250", "530"]);
    let mut s = Session::new(2, true);
    let (replies, ..) = feed(&mut s, &mut core, b"EHLO x\r\nAUTH PLAIN AHUAcA==\r\nMAIL FROM:<a@test>\r\n");
    assert!(replies.contains("AUTH PLAIN LOGIN"), "{replies}");
    assert_eq!(codes(&replies), ["250", "235", "250"]);
}

#[test]
fn the_end_of_data_waits_for_the_store_and_says_what_it_said() {
    let (mut core, shared) = keeping(|_| {});
    let mut s = Session::new(1, false);
    s.set_peer([127, 0, 0, 1].into(), true);
    let input = b"EHLO app.test\r\nMAIL FROM:<a@test>\r\nRCPT TO:<b@test>\r\nDATA\r\nSubject: x\r\n\r\n..hi\r\n.\r\nNOOP\r\n";
    let (replies, action, n) = feed(&mut s, &mut core, input);
    assert_eq!(action, Action::Store);
    assert_eq!(codes(&replies), ["250", "250", "250", "354"], "no answer to the end of data yet");
    assert_eq!(&input[n..], b"NOOP\r\n", "the rest waits for the store's answer");
    let m = s.take_submission();
    assert_eq!((m.sender.unwrap().as_str(), m.recipients.len()), ("a@test", 1));
    assert_eq!(m.content, b"Subject: x\r\n\r\n.hi\r\n", "unstuffed");
    assert_eq!((m.helo.as_str(), m.user, m.secure), ("app.test", None, false));
    let mut out = Vec::new();
    assert_eq!(s.stored(&mut core, Stored::Queued("1F".into()), &mut out), Action::Continue);
    assert_eq!(String::from_utf8(out).unwrap(), "250 2.0.0 Ok: queued as 1F\r\n");
    let mut out = Vec::new();
    let refused = Stored::Refused { code: 452, text: "4.3.1 Insufficient system storage".into() };
    assert_eq!(s.stored(&mut core, refused, &mut out), Action::Continue, "a refusal keeps the session");
    assert!(!s.in_transaction(), "the transaction is over either way");

    // Stopping: a new transaction gets 421 and the connection closes.
    shared.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (replies, action, _) = feed(&mut s, &mut core, b"MAIL FROM:<a@test>\r\n");
    assert_eq!((codes(&replies), action), (vec!["421"], Action::Close));
}

//! STARTTLS and AUTH in the state machine: the transitions, the policies, the injection rule,
//! and that secrets stay on the wire.

use super::*;

const TLS_CAPS: &str = "PIPELINING\nSTARTTLS\nAUTH PLAIN LOGIN XOAUTH2\nENHANCEDSTATUSCODES";
const SECURE_CAPS: &str = "PIPELINING\nAUTH PLAIN LOGIN XOAUTH2\nENHANCEDSTATUSCODES";

fn tls_config(starttls: StartTls) -> ClientConfig {
    let mut c = config();
    c.starttls = starttls;
    c
}

fn with_auth(mut c: ClientConfig, mechanism: Option<Mechanism>, allow_plaintext: bool) -> ClientConfig {
    c.auth = Some(Arc::new(Credentials {
        user: "alice".into(),
        secret: Secret::new("s3cret".into()),
        mechanism,
        allow_plaintext,
    }));
    c
}

fn tls_server(caps: &'static str) -> Server {
    let mut s = Server::new(caps);
    s.caps_after_tls = SECURE_CAPS;
    s
}

fn commands(p: &Pair) -> Vec<String> {
    p.server.seen.iter().map(|c| cmd_key(c).to_owned()).collect()
}

fn closed_with(p: &Pair) -> SessionError {
    match &p.closed {
        Some(Some(e)) => e.clone(),
        other => panic!("session not failed: {other:?}"),
    }
}

#[test]
fn starttls_upgrades_then_says_ehlo_again() {
    for policy in [StartTls::IfOffered, StartTls::Required] {
        let mut p = Pair::new(tls_server(TLS_CAPS), tls_config(policy));
        p.send(msgs(2));
        assert_eq!(p.results(), vec![(0, Delivered), (1, Delivered)]);
        assert_eq!(p.tls_handshakes, 1);
        assert!(p.client.is_secure());
        assert_eq!(commands(&p)[..4], ["EHLO", "STARTTLS", "EHLO", "MAIL"]);
        // Capabilities are those said over TLS.
        assert!(!p.client.capabilities().unwrap().starttls);
        // STARTTLS went alone: nothing pipelined behind it.
        assert!(p.written().iter().any(|w| w == "STARTTLS\r\n"), "{:?}", p.written());
    }
}

#[test]
fn no_starttls_offered() {
    // Opportunistic: plaintext.
    let mut p = Pair::new(Server::new(PIPE_CAPS), tls_config(StartTls::IfOffered));
    p.send(msgs(1));
    assert_eq!(p.results(), vec![(0, Delivered)]);
    assert!(!p.client.is_secure());
    // Required: the session fails before any transaction; it never downgrades.
    let mut p = Pair::new(Server::new(PIPE_CAPS), tls_config(StartTls::Required));
    p.send(msgs(1));
    assert!(p.done.is_empty() && !p.ready);
    let e = closed_with(&p);
    assert_eq!(e, SessionError::TlsUnavailable { reply: None });
    assert!(e.is_persistent());
    assert!(!commands(&p).iter().any(|c| c == "MAIL"));
}

#[test]
fn starttls_refused() {
    // Opportunistic: go on in plaintext on the same session.
    let server = || tls_server(TLS_CAPS).rule("STARTTLS", Action::Reply("454 4.7.0 TLS not available"));
    let mut p = Pair::new(server(), tls_config(StartTls::IfOffered));
    p.send(msgs(1));
    assert_eq!(p.results(), vec![(0, Delivered)]);
    assert_eq!(p.tls_handshakes, 0);
    assert_eq!(commands(&p)[..3], ["EHLO", "STARTTLS", "MAIL"]);
    // Required: fail; a 4xx may pass, so it is not a reason to give up on the server.
    let mut p = Pair::new(server(), tls_config(StartTls::Required));
    p.send(msgs(1));
    let e = closed_with(&p);
    assert!(matches!(&e, SessionError::TlsUnavailable { reply: Some(r) } if r.code == 454), "{e}");
    assert!(!e.is_persistent());
    // A positive reply other than 220 is no answer to STARTTLS.
    let server = tls_server(TLS_CAPS).rule("STARTTLS", Action::Reply("250 2.0.0 ok"));
    let mut p = Pair::new(server, tls_config(StartTls::IfOffered));
    p.send(msgs(1));
    assert!(closed_with(&p).is_violation());
}

#[test]
fn bytes_behind_the_220_are_an_injection() {
    // CVE-2011-0411: a man in the middle appends a reply after 220; read after the handshake it
    // would pass for the server's word over TLS.
    // The 220 with the injected bytes behind it, in the same read, and how many they are.
    let cases: [(&'static [u8], usize); 2] =
        [(b"220 2.0.0 ready\r\n250 2.0.0 injected\r\n", 20), (b"220 2.0.0 ready\r\nx", 1)];
    for (raw, extra) in cases {
        let server = tls_server(TLS_CAPS).rule("STARTTLS", Action::Raw(raw));
        let mut p = Pair::new(server, tls_config(StartTls::Required));
        p.send(msgs(1));
        assert_eq!(p.tls_handshakes, 0, "no handshake is started on a tainted stream");
        assert_eq!(closed_with(&p), SessionError::TlsInjection(extra));
        assert!(p.done.is_empty());
    }
}

#[test]
fn auth_plain_after_tls() {
    let config = with_auth(tls_config(StartTls::Required), None, false);
    let mut p = Pair::new(tls_server(TLS_CAPS), config);
    p.send(msgs(1));
    assert_eq!(p.results(), vec![(0, Delivered)]);
    assert_eq!(commands(&p)[..5], ["EHLO", "STARTTLS", "EHLO", "AUTH", "MAIL"]);
    assert!(p.server.seen.contains(&"AUTH PLAIN AGFsaWNlAHMzY3JldA==".to_owned()));
    assert!(p.handshake.unwrap().auth.is_some());
}

#[test]
fn auth_login_exchange() {
    let server = tls_server(SECURE_CAPS)
        .rule("AUTH LOGIN", Action::Reply("334 VXNlcm5hbWU6"))
        .rule("YWxpY2U=", Action::Reply("334 UGFzc3dvcmQ6"))
        .rule("czNjcmV0", Action::Reply("235 2.7.0 ok"));
    let mut p = Pair::new(server, with_auth(config(), Some(Mechanism::Login), true));
    p.send(msgs(1));
    assert_eq!(p.results(), vec![(0, Delivered)]);
    assert_eq!(p.server.seen[1..4], ["AUTH LOGIN", "YWxpY2U=", "czNjcmV0"]);
}

#[test]
fn auth_refusals_end_the_session_with_the_servers_words() {
    let cases: [(&'static str, Option<Mechanism>, u16, bool); 4] = [
        ("535 5.7.8 Authentication credentials invalid", None, 535, true),
        ("534 5.7.9 Authentication mechanism is too weak", None, 534, true),
        ("454 4.7.0 Temporary authentication failure", None, 454, false),
        ("535 5.7.8 bad token", Some(Mechanism::Xoauth2), 535, true),
    ];
    for (reply, mechanism, code, persistent) in cases {
        let server = tls_server(SECURE_CAPS).rule("AUTH", Action::Reply(reply));
        let mut p = Pair::new(server, with_auth(config(), mechanism, true));
        p.send(msgs(1));
        assert!(p.done.is_empty() && !p.ready, "{reply}");
        let e = closed_with(&p);
        assert!(matches!(&e, SessionError::Auth { reply, .. } if reply.code == code), "{e}");
        assert_eq!(e.is_persistent(), persistent, "{e}");
        assert!(!e.to_string().contains("s3cret"));
    }
    // XOAUTH2's JSON error challenge gets the empty line, then the refusal is reported.
    let server = tls_server(SECURE_CAPS)
        .rule("AUTH XOAUTH2", Action::Reply("334 eyJzdGF0dXMiOiI0MDEifQ=="))
        // The empty line: the third line of the session (EHLO and AUTH before it).
        .rule_nth("", 2, Action::Reply("535 5.7.8 Username and Password not accepted"));
    let mut p = Pair::new(server, with_auth(config(), Some(Mechanism::Xoauth2), true));
    p.send(msgs(1));
    assert!(
        matches!(closed_with(&p), SessionError::Auth { mechanism: "XOAUTH2", reply } if reply.code == 535)
    );
    // 250 is no answer to AUTH: out of step.
    let server = tls_server(SECURE_CAPS).rule("AUTH", Action::Reply("250 2.0.0 ok"));
    let mut p = Pair::new(server, with_auth(config(), None, true));
    p.send(msgs(1));
    assert!(closed_with(&p).is_violation());
}

#[test]
fn auth_is_not_attempted_when_it_cannot_be() {
    // Over plaintext, unless allowed.
    let mut p = Pair::new(Server::new(SECURE_CAPS), with_auth(config(), None, false));
    p.send(msgs(1));
    let e = closed_with(&p);
    assert!(matches!(&e, SessionError::AuthImpossible(why) if why.contains("not encrypted")), "{e}");
    assert!(!commands(&p).iter().any(|c| c == "AUTH"), "credentials never went out");
    // A mechanism the server does not offer.
    let mut p =
        Pair::new(Server::new("PIPELINING\nAUTH PLAIN"), with_auth(config(), Some(Mechanism::Login), true));
    p.send(msgs(1));
    assert!(matches!(closed_with(&p), SessionError::AuthImpossible(why) if why.contains("LOGIN")));
    // No AUTH at all.
    let mut p = Pair::new(Server::new(PIPE_CAPS), with_auth(config(), None, true));
    p.send(msgs(1));
    assert!(matches!(closed_with(&p), SessionError::AuthImpossible(_)));
    assert!(closed_with(&p).is_persistent());
}

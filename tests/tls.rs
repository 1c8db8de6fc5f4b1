//! TLS and AUTH end to end: the engine against volley's sink (STARTTLS, implicit TLS,
//! --require-tls, --auth) and against scripted servers that attack or break TLS.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::scripted::{Fault, Script, Scripted};
use mailvolley::bench::{self, BenchSource, Content, Plan};
use mailvolley::engine::{self, Destination, EngineConfig, Report, RetryPolicy};
use mailvolley::proto::client::{Credentials, Mechanism, Secret};
use mailvolley::proto::{ClientConfig, Domain, Timeouts};
use mailvolley::sink::auth::Users;
use mailvolley::sink::{Counters, SinkHandle};
use mailvolley::tls::{ClientTls, ServerTls, TlsPolicy};

const MESSAGES: u64 = 300;

fn config(tls: Option<ClientTls>) -> EngineConfig {
    let mut client = ClientConfig::new(Domain::new("test.invalid").unwrap());
    client.timeouts = Timeouts::uniform(Duration::from_secs(5), Duration::from_secs(5));
    let mut config = EngineConfig::new(client);
    config.threads = 2;
    config.retry = RetryPolicy::Immediate { retries: 2 };
    config.reconnect_backoff = Duration::from_millis(10);
    config.reconnect_backoff_max = Duration::from_millis(100);
    config.failing_after = Duration::from_secs(2);
    config.tls = tls;
    config
}

fn tls(policy: TlsPolicy, implicit: bool, ca: Option<&std::path::Path>) -> Option<ClientTls> {
    Some(ClientTls::new(policy, implicit, ca, false).unwrap())
}

fn credentials(user: &str, password: &str, mechanism: Option<Mechanism>) -> Option<Arc<Credentials>> {
    Some(Arc::new(Credentials {
        user: user.into(),
        secret: Secret::new(password.into()),
        mechanism,
        allow_plaintext: false,
    }))
}

fn run(addr: SocketAddr, name: Option<&str>, config: EngineConfig) -> Report {
    let mut destination = Destination::new(0, "target", vec![addr], 4);
    if let Some(name) = name {
        destination = destination.with_tls_name(ClientTls::server_name(name).unwrap());
    }
    let destination = Arc::new(destination);
    let content = Content::new(bench::default_content(1000, 1)).unwrap();
    let plan = Plan { messages: Some(MESSAGES), ..Plan::default() };
    let source = BenchSource::new(plan, Arc::clone(&destination), content);
    let running = engine::start(config, Box::new(source)).unwrap();
    let report = common::join_within(running, Duration::from_secs(60));
    let s = &report.stats;
    assert_eq!(s.delivered + s.deferred + s.bounced + s.uncertain + s.unsent, MESSAGES, "{}", brief(&report));
    report
}

fn brief(r: &Report) -> String {
    let s = &r.stats;
    format!(
        "delivered {} deferred {} bounced {} tls {:?} auth {} errors {:?} last {:?}",
        s.delivered, s.deferred, s.bounced, s.tls, s.authenticated, s.session_errors, s.last_session_error
    )
}

fn tls_sink(configure: impl FnOnce(&mut mailvolley::sink::SinkConfig)) -> SinkHandle {
    common::sink(|c| {
        c.threads = 2;
        c.tls = Some(ServerTls::self_signed(&["localhost".into(), "127.0.0.1".into()]).unwrap());
        c.starttls = true;
        configure(c);
    })
}

fn encrypted(r: &Report) -> u64 {
    r.stats.tls.full + r.stats.tls.resumed
}

#[test]
fn each_policy_against_a_sink_offering_starttls() {
    let sink = tls_sink(|_| {});
    let addr = sink.local_addr();
    let r = run(addr, None, config(None));
    assert_eq!((r.stats.delivered, encrypted(&r)), (MESSAGES, 0), "{}", brief(&r));
    assert!(r.stats.starttls_offered > 0);
    for policy in [TlsPolicy::Opportunistic, TlsPolicy::Required] {
        let r = run(addr, None, config(tls(policy, false, None)));
        assert_eq!(r.stats.delivered, MESSAGES, "{policy:?}: {}", brief(&r));
        assert_eq!(encrypted(&r), r.stats.connections, "{policy:?}: every session encrypted: {}", brief(&r));
        assert!(r.stats.tls.negotiated.keys().all(|(v, _)| *v == "TLSv1.3"));
        assert!(!r.stats.histogram(engine::Metric::Tls).is_empty());
    }
    let counters = sink.stop().unwrap();
    assert_eq!(counters.messages_accepted, 3 * MESSAGES);
    assert!(counters.tls_sessions > 0);
}

#[test]
fn verify_checks_the_certificate_against_the_given_ca() {
    let dir = common::temp_dir("verify");
    let certified = rcgen::generate_simple_self_signed(vec!["mx.volley.test".to_owned()]).unwrap();
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert, certified.cert.pem()).unwrap();
    std::fs::write(&key, certified.key_pair.serialize_pem()).unwrap();
    let sink = common::sink(|c| {
        c.tls = Some(ServerTls::from_files(&cert, &key).unwrap());
        c.starttls = true;
    });
    let addr = sink.local_addr();
    // The right CA and name: delivered, encrypted.
    let r = run(addr, Some("mx.volley.test"), config(tls(TlsPolicy::Verify, false, Some(&cert))));
    assert_eq!(r.stats.delivered, MESSAGES, "{}", brief(&r));
    assert!(encrypted(&r) > 0);
    // The wrong name, or a CA that does not vouch for it: nothing sent, and the run stops
    // trying at once (a new connection would only be refused again).
    for (name, ca) in [("other.volley.test", Some(cert.as_path())), ("mx.volley.test", None)] {
        let started = Instant::now();
        let r = run(addr, Some(name), config(tls(TlsPolicy::Verify, false, ca)));
        assert_eq!(r.stats.delivered, 0, "{name}: {}", brief(&r));
        assert!(r.stats.session_errors.contains_key("TLS certificate refused"), "{}", brief(&r));
        assert!(started.elapsed() < Duration::from_secs(2), "given up at once, not after the failing window");
    }
    assert_eq!(sink.stop().unwrap().messages_accepted, MESSAGES);
}

/// `openssl req -x509` makes a CA certificate; given as --ca-file it is trusted as that server's
/// own (pinning), for its names only. Refusals say what to do.
#[test]
fn a_self_signed_ca_certificate_given_as_ca_file_is_trusted_as_itself() {
    let dir = common::temp_dir("pinned");
    let make = |name: &str| {
        let mut params = rcgen::CertificateParams::new(vec![name.to_owned()]).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        (cert.pem(), key.serialize_pem())
    };
    let (cert_pem, key_pem) = make("relay.volley.test");
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert, &cert_pem).unwrap();
    std::fs::write(&key, &key_pem).unwrap();
    let sink = common::sink(|c| {
        c.tls = Some(ServerTls::from_files(&cert, &key).unwrap());
        c.starttls = true;
    });
    let addr = sink.local_addr();
    let r = run(addr, Some("relay.volley.test"), config(tls(TlsPolicy::Verify, false, Some(&cert))));
    assert_eq!(r.stats.delivered, MESSAGES, "{}", brief(&r));
    assert!(encrypted(&r) > 0);

    // Pinned, but for another name: refused, saying why.
    let r = run(addr, Some("other.volley.test"), config(tls(TlsPolicy::Verify, false, Some(&cert))));
    assert_eq!(r.stats.delivered, 0, "{}", brief(&r));
    let why = r.stats.last_session_error.clone().unwrap_or_default();
    assert!(why.contains("not for the name connected to"), "{why}");
    // Another CA certificate for the same name is not this one.
    let other = dir.join("other.pem");
    std::fs::write(&other, make("relay.volley.test").0).unwrap();
    let r = run(addr, Some("relay.volley.test"), config(tls(TlsPolicy::Verify, false, Some(&other))));
    assert_eq!(r.stats.delivered, 0, "{}", brief(&r));
    let why = r.stats.last_session_error.clone().unwrap_or_default();
    assert!(why.contains("--ca-file"), "{why}");
    assert_eq!(sink.stop().unwrap().messages_accepted, MESSAGES);
}

#[test]
fn required_never_downgrades_and_opportunistic_does() {
    let sink = common::sink(|c| c.threads = 2); // no STARTTLS
    let addr = sink.local_addr();
    let r = run(addr, None, config(tls(TlsPolicy::Required, false, None)));
    assert_eq!(r.stats.delivered, 0, "{}", brief(&r));
    assert!(r.stats.session_errors.contains_key("TLS unavailable"), "{}", brief(&r));
    let r = run(addr, None, config(tls(TlsPolicy::Opportunistic, false, None)));
    assert_eq!(r.stats.delivered, MESSAGES, "{}", brief(&r));
    // Every session that got going went on in plaintext. (Not `== connections`: under a loaded
    // machine a connection opened as the last jobs were taken may close before its EHLO.)
    let t = &r.stats.tls;
    assert!(t.negotiated.is_empty() && t.failed == 0 && t.plaintext >= 1, "{}", brief(&r));
    assert!(t.plaintext <= r.stats.connections);
    assert_eq!(sink.stop().unwrap().messages_accepted, MESSAGES);
}

#[test]
fn a_failed_handshake_falls_back_to_plaintext_under_opportunistic_only() {
    let server = Scripted::start(Script::new(&["PIPELINING", "STARTTLS"], "250 2.0.0 Ok", Fault::BrokenTls));
    let r = run(server.addr, None, config(tls(TlsPolicy::Opportunistic, false, None)));
    assert_eq!(r.stats.delivered, MESSAGES, "{}", brief(&r));
    assert!(r.stats.tls.failed >= 1 && r.stats.tls.plaintext >= 1, "{}", brief(&r));
    assert_eq!(server.accepted(), MESSAGES);

    let server = Scripted::start(Script::new(&["PIPELINING", "STARTTLS"], "250 2.0.0 Ok", Fault::BrokenTls));
    let r = run(server.addr, None, config(tls(TlsPolicy::Required, false, None)));
    assert_eq!(r.stats.delivered, 0, "{}", brief(&r));
    assert_eq!(server.accepted(), 0);
}

#[test]
fn bytes_injected_behind_the_220_fail_the_session() {
    let server =
        Scripted::start(Script::new(&["PIPELINING", "STARTTLS"], "250 2.0.0 Ok", Fault::InjectAfterStartTls));
    let r = run(server.addr, None, config(tls(TlsPolicy::Required, false, None)));
    assert_eq!(r.stats.delivered, 0, "{}", brief(&r));
    assert!(r.stats.session_errors.contains_key("TLS injection"), "{}", brief(&r));
    assert_eq!(r.stats.tls.full + r.stats.tls.failed, 0, "no handshake on a tainted stream");
}

#[test]
fn implicit_tls_listener() {
    let sink = tls_sink(|c| {
        c.starttls = false;
        c.tls_listen = Some(SocketAddr::from(([127, 0, 0, 1], 0)));
    });
    let addr = sink.tls_addr().unwrap();
    let mut config = config(tls(TlsPolicy::Required, true, None));
    // Reconnect often, so later connections can resume earlier sessions.
    config.client.max_messages = 50;
    let r = run(addr, None, config);
    assert_eq!(r.stats.delivered, MESSAGES, "{}", brief(&r));
    assert_eq!(encrypted(&r), r.stats.connections);
    assert!(r.stats.tls.resumed > 0, "later connections resume: {}", brief(&r));
    let counters: Counters = sink.stop().unwrap();
    assert_eq!(counters.messages_accepted, MESSAGES);
}

#[test]
fn require_tls_sink() {
    let sink = tls_sink(|c| c.require_tls = true);
    let addr = sink.local_addr();
    let r = run(addr, None, config(None));
    assert_eq!((r.stats.delivered, r.stats.bounced), (0, MESSAGES), "530 5.7.0 bounces: {}", brief(&r));
    assert_eq!(r.stats.codes.get(&530), Some(&MESSAGES));
    let r = run(addr, None, config(tls(TlsPolicy::Required, false, None)));
    assert_eq!(r.stats.delivered, MESSAGES, "{}", brief(&r));
    sink.stop().unwrap();
}

#[test]
fn auth_success_failure_and_wrong_mechanism() {
    let sink = tls_sink(|c| c.auth = Some(Arc::new(Users::parse("alice:s3cret\n").unwrap())));
    let addr = sink.local_addr();
    let with = |creds| {
        let mut c = config(tls(TlsPolicy::Required, false, None));
        c.client.auth = creds;
        c
    };
    for mechanism in [None, Some(Mechanism::Login)] {
        let r = run(addr, None, with(credentials("alice", "s3cret", mechanism)));
        assert_eq!(r.stats.delivered, MESSAGES, "{mechanism:?}: {}", brief(&r));
        assert_eq!(r.stats.authenticated, r.stats.connections);
        assert!(!r.stats.histogram(engine::Metric::Auth).is_empty());
    }
    // A wrong password: refused with 535, given up at once, and the password is nowhere.
    let started = Instant::now();
    let r = run(addr, None, with(credentials("alice", "wrong-password", None)));
    assert_eq!(r.stats.delivered, 0, "{}", brief(&r));
    let last = r.stats.last_session_error.clone().unwrap_or_default();
    assert!(last.contains("535 5.7.8"), "{last}");
    assert!(!brief(&r).contains("wrong-password"));
    assert!(started.elapsed() < Duration::from_secs(2));
    // A mechanism the server does not offer.
    let r = run(addr, None, with(credentials("alice", "s3cret", Some(Mechanism::Xoauth2))));
    assert_eq!(r.stats.delivered, 0);
    assert!(r.stats.last_session_error.unwrap_or_default().contains("XOAUTH2"));
    // No credentials: 530 5.7.0 to MAIL, bounced.
    let r = run(addr, None, config(tls(TlsPolicy::Required, false, None)));
    assert_eq!(r.stats.codes.get(&530), Some(&MESSAGES), "{}", brief(&r));
    let counters = sink.stop().unwrap();
    assert_eq!(counters.messages_accepted, 2 * MESSAGES);
    assert!(counters.auth_failures >= 1);
    assert!(counters.auth_users.get("alice").copied().unwrap_or(0) >= 2);
}

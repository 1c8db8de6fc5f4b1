//! The record layer against an in-memory peer: no sockets.

use std::path::PathBuf;

use super::*;
use crate::tls::{ClientTls, ServerTls, TlsPolicy};

/// Moves ciphertext both ways until neither side has anything to send. Plaintext each side
/// received is returned (client's, server's).
fn pump(client: &mut TlsLayer, server: &mut TlsLayer) -> Result<(Vec<u8>, Vec<u8>), TlsError> {
    let (mut to_client, mut to_server) = (Vec::new(), Vec::new());
    for _ in 0..16 {
        let mut wire = Vec::new();
        client.take_output(&mut wire);
        server.receive(&wire, &mut to_server)?;
        let mut back = Vec::new();
        server.take_output(&mut back);
        client.receive(&back, &mut to_client)?;
        if !client.wants_write() && !server.wants_write() {
            break;
        }
    }
    Ok((to_client, to_server))
}

fn temp_pem(name: &str, contents: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("volley-tls-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("cert.pem");
    std::fs::write(&path, contents).unwrap();
    path
}

/// A server with a fresh self-signed certificate for `names`, and that certificate in PEM.
fn server_for(names: &[&str]) -> (ServerTls, String) {
    let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
    let certified = rcgen::generate_simple_self_signed(names).unwrap();
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(certified.key_pair.serialize_der().into());
    let config = super::super::config::tests_server_config(vec![certified.cert.der().clone()], key);
    (ServerTls { config, self_signed: true }, certified.cert.pem())
}

fn client(policy: TlsPolicy, ca: Option<&std::path::Path>) -> ClientTls {
    ClientTls::new(policy, false, ca, false).unwrap()
}

fn connect(client: &ClientTls, name: &str, server: &ServerTls) -> (TlsLayer, TlsLayer, Result<(), TlsError>) {
    let mut c = TlsLayer::client(client.config.clone(), ClientTls::server_name(name).unwrap()).unwrap();
    let mut s = TlsLayer::server(server.config.clone()).unwrap();
    let res = pump(&mut c, &mut s).map(|_| ());
    (c, s, res)
}

#[test]
fn handshake_then_data_both_ways() {
    let (server, _) = server_for(&["mx.test"]);
    let client = client(TlsPolicy::Required, None);
    let (mut c, mut s, res) = connect(&client, "mx.test", &server);
    res.unwrap();
    assert!(!c.is_handshaking() && !s.is_handshaking());
    let info = c.info().unwrap();
    assert_eq!(info.version, "TLSv1.3");
    assert_eq!(info.kind, HandshakeKind::Full);
    assert_eq!(info.cipher_suite, "TLS13_AES_128_GCM_SHA256");

    c.send(&[b"EHLO a\r\n", b"MAIL FROM:<>\r\n"]).unwrap();
    let (_, at_server) = pump(&mut c, &mut s).unwrap();
    assert_eq!(at_server, b"EHLO a\r\nMAIL FROM:<>\r\n");
    s.send(&[b"250 ok\r\n"]).unwrap();
    let (at_client, _) = pump(&mut c, &mut s).unwrap();
    assert_eq!(at_client, b"250 ok\r\n");
}

#[test]
fn large_writes_arrive_whole() {
    let (server, _) = server_for(&["mx.test"]);
    let (mut c, mut s, res) = connect(&client(TlsPolicy::Required, None), "mx.test", &server);
    res.unwrap();
    let body: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    c.send(&[&body[..70_000], &body[70_000..]]).unwrap();
    let (_, at_server) = pump(&mut c, &mut s).unwrap();
    assert_eq!(at_server, body);
}

#[test]
fn close_notify_is_seen_and_an_unannounced_end_is_not_clean() {
    let (server, _) = server_for(&["mx.test"]);
    let client = client(TlsPolicy::Required, None);
    let (mut c, mut s, res) = connect(&client, "mx.test", &server);
    res.unwrap();
    c.close();
    pump(&mut c, &mut s).unwrap();
    assert!(s.peer_closed());
    assert!(s.end_of_stream(), "close_notify came before the end");

    let (mut c, mut s, res) = connect(&client, "mx.test", &server);
    res.unwrap();
    assert!(!s.end_of_stream(), "TCP end without close_notify");
    // And the client side too.
    assert!(!c.end_of_stream());
}

#[test]
fn a_truncated_record_yields_nothing() {
    let (server, _) = server_for(&["mx.test"]);
    let (mut c, mut s, res) = connect(&client(TlsPolicy::Required, None), "mx.test", &server);
    res.unwrap();
    c.send(&[b"250 this reply is cut in half\r\n"]).unwrap();
    let mut wire = Vec::new();
    c.take_output(&mut wire);
    let mut plain = Vec::new();
    s.receive(&wire[..wire.len() / 2], &mut plain).unwrap();
    assert!(plain.is_empty(), "half a record surfaced as plaintext");
    assert!(!s.end_of_stream(), "a cut stream is not a clean end");
    assert!(plain.is_empty());
}

#[test]
fn plaintext_where_records_belong_is_refused() {
    // The server side of the injection rule: commands a client pipelined behind STARTTLS in
    // plaintext reach the TLS layer and fail it; they are never taken as commands.
    let (server, _) = server_for(&["mx.test"]);
    let mut s = TlsLayer::server(server.config.clone()).unwrap();
    let mut plain = Vec::new();
    assert!(s.receive(b"MAIL FROM:<a@b.test>\r\n", &mut plain).is_err());
    assert!(plain.is_empty());
}

#[test]
fn verify_checks_the_chain_and_the_name() {
    let (server, pem) = server_for(&["mx.test", "127.0.0.1"]);
    let ca = temp_pem("verify", &pem);
    let verify = client(TlsPolicy::Verify, Some(&ca));
    assert!(verify.verifies);
    // Trusted and the right name (or address).
    connect(&verify, "mx.test", &server).2.unwrap();
    connect(&verify, "127.0.0.1", &server).2.unwrap();
    // The right chain, the wrong name.
    let err = connect(&verify, "other.test", &server).2.unwrap_err();
    assert!(err.to_string().contains("certificate"), "{err}");
    // A certificate nobody vouches for: Mozilla's roots do not know it.
    let public_roots = client(TlsPolicy::Verify, None);
    let err = connect(&public_roots, "mx.test", &server).2.unwrap_err();
    assert!(err.to_string().contains("certificate"), "{err}");
    // Not checked under `required`, nor with --insecure.
    connect(&client(TlsPolicy::Required, None), "other.test", &server).2.unwrap();
    let insecure = ClientTls::new(TlsPolicy::Verify, false, None, true).unwrap();
    assert!(!insecure.verifies);
    connect(&insecure, "other.test", &server).2.unwrap();
}

#[test]
fn the_second_connection_resumes() {
    let (server, _) = server_for(&["mx.test"]);
    let client = client(TlsPolicy::Required, None);
    let (c, _, res) = connect(&client, "mx.test", &server);
    res.unwrap();
    assert_eq!(c.info().unwrap().kind, HandshakeKind::Full);
    let (c, _, res) = connect(&client, "mx.test", &server);
    res.unwrap();
    assert_eq!(c.info().unwrap().kind, HandshakeKind::Resumed);
    // Tickets are per server name.
    let (c, _, res) = connect(&client, "other.test", &server);
    res.unwrap();
    assert_eq!(c.info().unwrap().kind, HandshakeKind::Full);
    // And none at all when resumption is off.
    let full = client.without_resumption();
    for _ in 0..2 {
        let (c, _, res) = connect(&full, "mx.test", &server);
        res.unwrap();
        assert_eq!(c.info().unwrap().kind, HandshakeKind::Full);
    }
}

#[test]
fn bad_key_files_are_clear_errors() {
    let missing = std::path::Path::new("/nonexistent/volley.pem");
    let err = ServerTls::from_files(missing, missing).unwrap_err();
    assert!(err.to_string().contains("/nonexistent/volley.pem"), "{err}");
    let empty = temp_pem("empty", "not a pem file\n");
    let err = ServerTls::from_files(&empty, &empty).unwrap_err();
    assert!(err.to_string().contains("no certificate"), "{err}");
    let err = ClientTls::new(TlsPolicy::Verify, false, Some(&empty), false).unwrap_err();
    assert!(err.to_string().contains("no certificate"), "{err}");
}

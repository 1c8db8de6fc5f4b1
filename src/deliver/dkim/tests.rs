use super::*;
use crate::testkit::dkim::DkimResult;

pub(crate) fn key_path(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/dkim").join(name)
}

fn spec(domain: &str, selector: &str, file: &str) -> KeySpec {
    KeySpec { domain: domain.into(), selector: selector.into(), path: key_path(file) }
}

const MESSAGE: &str = "From: News <news@example.com>\r\nTo: ann@example.net\r\nSubject: Hello Ann\r\n\
    Date: Mon, 23 Nov 2026 10:00:00 +0000\r\nMessage-ID: <1.c@example.com>\r\nX-Other: not signed\r\n\r\n\
    Dear Ann,\r\nyour code is 42.\r\n";

fn verify(dkim: &Dkim, message: &[u8]) -> Vec<DkimResult> {
    crate::testkit::dkim::verify(dkim.records(), message)
}

fn signed(dkim: &Dkim, message: &[u8]) -> Vec<u8> {
    let head = dkim.sign(message).expect("signs");
    [head.bytes().as_ref(), message].concat()
}

#[test]
fn key_specs_parse_or_say_what_is_expected() {
    let ok = "Example.COM:s1:/keys/a:b.pem".parse::<KeySpec>().unwrap();
    assert_eq!(
        ok,
        KeySpec { domain: "example.com".into(), selector: "s1".into(), path: "/keys/a:b.pem".into() }
    );
    assert_eq!("mail.example.com:2026-11._x:k.pem".parse::<KeySpec>().unwrap().selector, "2026-11._x");
    for bad in [
        "",
        "example.com",
        "example.com:s1",
        "example.com:s1:",
        ":s1:k.pem",
        "example.com::k.pem",
        "exa mple.com:s1:k",
        "a..b:s1:k",
    ] {
        let e = bad.parse::<KeySpec>().unwrap_err();
        assert!(e.to_string().contains("DOMAIN:SELECTOR:KEYFILE"), "{bad}: {e}");
    }
}

#[test]
fn every_key_type_signs_and_mail_auth_verifies_it() {
    for (file, algorithm) in [
        ("rsa2048.pem", "rsa-sha256"),
        ("rsa2048-pkcs1.pem", "rsa-sha256"),
        ("ed25519.pem", "ed25519-sha256"),
    ] {
        let dkim = Dkim::load(&[spec("example.com", "s1", file)]).unwrap().unwrap();
        let message = signed(&dkim, MESSAGE.as_bytes());
        let text = String::from_utf8_lossy(&message);
        assert!(text.starts_with("DKIM-Signature: v=1; a=") && text.contains(algorithm), "{file}: {text}");
        assert!(
            text.contains("c=relaxed/relaxed") && text.contains("d=example.com") && text.contains("s=s1")
        );
        assert_eq!(verify(&dkim, &message), [DkimResult::Pass], "{file}");
    }
}

#[test]
fn the_signature_covers_the_identifying_headers_and_claims_the_absent_ones() {
    let dkim = Dkim::load(&[spec("example.com", "s1", "ed25519.pem")]).unwrap().unwrap();
    let head = dkim.sign(MESSAGE.as_bytes()).unwrap();
    let text = String::from_utf8_lossy(head.bytes()).replace(['\r', '\n', '\t', ' '], "");
    let h = text.split(";h=").nth(1).and_then(|t| t.split(';').next()).expect("an h= tag");
    // Present ones are signed; absent ones are listed too (RFC 6376 §5.4: "signed" as empty),
    // so nobody on the way can add a Reply-To or a List-Unsubscribe without breaking it.
    let mut names: Vec<_> = h.split(':').map(str::to_ascii_lowercase).collect();
    names.sort();
    let mut all: Vec<_> = SIGNED_HEADERS.iter().map(|n| n.to_ascii_lowercase()).collect();
    all.sort();
    assert_eq!(names, all);
    let text = String::from_utf8(signed(&dkim, MESSAGE.as_bytes())).unwrap();
    let added = text.replace("X-Other:", "Reply-To: evil@example.org\r\nX-Other:");
    assert!(matches!(verify(&dkim, added.as_bytes()).as_slice(), [DkimResult::Fail(_)]));
}

#[test]
fn a_changed_body_or_signed_header_fails_verification() {
    let dkim = Dkim::load(&[spec("example.com", "s1", "rsa2048.pem")]).unwrap().unwrap();
    let message = signed(&dkim, MESSAGE.as_bytes());
    let text = String::from_utf8(message).unwrap();
    for (what, changed) in [
        ("body", text.replace("code is 42", "code is 43")),
        ("subject", text.replace("Subject: Hello Ann", "Subject: Hello Bob")),
        ("from", text.replace("news@example.com", "news@example.org")),
    ] {
        let results = verify(&dkim, changed.as_bytes());
        // mail-auth calls a body hash mismatch "neutral", a bad signature "fail": never a pass.
        assert!(
            matches!(results.as_slice(), [DkimResult::Fail(_) | DkimResult::Neutral(_)]),
            "{what}: {results:?}"
        );
    }
    // An unsigned header may change (relaxed canonicalisation, not in h=).
    let results = verify(&dkim, text.replace("not signed", "changed").as_bytes());
    assert_eq!(results, [DkimResult::Pass]);
}

#[test]
fn several_keys_give_one_signature_each_and_all_verify() {
    let dkim =
        Dkim::load(&[spec("example.com", "rsa", "rsa2048.pem"), spec("esp.example", "ed", "ed25519.pem")])
            .unwrap()
            .unwrap();
    let message = signed(&dkim, MESSAGE.as_bytes());
    assert_eq!(String::from_utf8_lossy(&message).matches("DKIM-Signature:").count(), 2);
    assert_eq!(verify(&dkim, &message), [DkimResult::Pass, DkimResult::Pass]);
}

#[test]
fn published_records_match_openssl_public_keys() {
    for (file, kind, public) in [
        ("rsa2048.pem", "rsa", "rsa2048.p"),
        ("rsa2048-pkcs1.pem", "rsa", "rsa2048.p"),
        ("ed25519.pem", "ed25519", "ed25519.p"),
    ] {
        let dkim = Dkim::load(&[spec("example.com", "sel", file)]).unwrap().unwrap();
        let expected = std::fs::read_to_string(key_path(public)).unwrap();
        let records: Vec<_> = dkim.records().map(|(n, r)| (n, r.to_owned())).collect();
        assert_eq!(
            records,
            [("sel._domainkey.example.com".to_owned(), format!("v=DKIM1; k={kind}; p={}", expected.trim()))]
        );
    }
}

#[test]
fn bad_keys_are_refused_at_load_naming_the_file() {
    let dir = std::env::temp_dir().join(format!("volley-dkim-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let not_pem = dir.join("not.pem");
    std::fs::write(&not_pem, "hello").unwrap();
    let cases = [
        (key_path("ec-p256.pem"), "neither RSA"),
        (key_path("rsa1024.pem"), "neither RSA"),
        (not_pem.clone(), "no PEM private key"),
        (dir.join("missing.pem"), "No such file"),
        (dir.clone(), "not a key file"),
    ];
    for (path, why) in cases {
        let spec = KeySpec { domain: "example.com".into(), selector: "s".into(), path: path.clone() };
        let e = Dkim::load(&[spec]).unwrap_err().to_string();
        assert!(e.contains(&path.display().to_string()) && e.contains(why), "{}: {e}", path.display());
    }
    assert!(Dkim::load(&[]).unwrap().is_none());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn debug_output_names_keys_without_their_material() {
    let dkim = Dkim::load(&[spec("example.com", "s1", "ed25519.pem")]).unwrap().unwrap();
    assert_eq!(format!("{dkim:?}"), r#"Dkim { keys: ["example.com:s1"] }"#);
}

/// mail-auth's own signer with the same key and settings: what [`Dkim::sign`] must equal.
fn reference<K: mail_auth::common::crypto::SigningKey>(key: K, message: &[u8]) -> Option<Vec<u8>> {
    use mail_auth::common::headers::HeaderWriter;
    use mail_auth::dkim::{Canonicalization, DkimSigner};
    let signer = DkimSigner::from_key(key)
        .domain("example.com")
        .selector("s1")
        .headers(SIGNED_HEADERS)
        .header_canonicalization(Canonicalization::Relaxed)
        .body_canonicalization(Canonicalization::Relaxed);
    signer.sign(message).ok().map(|s| s.to_header().into_bytes())
}

fn reference_for(file: &str, message: &[u8]) -> Option<Vec<u8>> {
    use rustls::pki_types::pem::PemObject;
    let der = PrivateKeyDer::from_pem_file(key_path(file)).unwrap();
    match file {
        "ed25519.pem" => {
            let PrivateKeyDer::Pkcs8(der) = der else { panic!("a PKCS#8 key") };
            reference(Ed25519Key::from_pkcs8_maybe_unchecked_der(der.secret_pkcs8_der()).unwrap(), message)
        }
        _ => reference(RsaKey::<Sha256>::from_key_der(der).unwrap(), message),
    }
}

/// Ours and mail-auth's, made within the same second (`t=`), as header bytes.
fn ours_and_reference(dkim: &Dkim, file: &str, message: &[u8]) -> (Option<Vec<u8>>, Option<Vec<u8>>) {
    let mut pair = (None, None);
    for _ in 0..3 {
        let ours = dkim.sign(message).ok().map(|h| h.bytes().to_vec());
        pair = (ours, reference_for(file, message));
        if pair.0 == pair.1 {
            break; // else maybe a second boundary between the two: again
        }
    }
    pair
}

/// Header sections that test how fields are found: repeated, folded, odd case, a line with no
/// colon (mail-auth ends the header section there), bare LF, no body, no blank line, empty.
const ODD_MESSAGES: [&str; 12] = [
    MESSAGE,
    "From: a@example.com\r\nTo: b@example.net\r\nTo: c@example.net\r\nCc: d@example.net\r\nReply-To: e@example.com\r\n\
     Received: x\r\nReceived: y\r\n\r\nbody\r\n",
    "FROM: a@example.com\r\nsubject: Hi\r\nmessage-id: <1@x>\r\nLIST-UNSUBSCRIBE: <mailto:u@x>\r\n\r\nbody\r\n",
    "From: a@example.com\r\nSubject: a\r\n  folded\r\n\tand again  \r\nTo:b@x\r\n\r\n  spaced   body  \r\n\r\n\r\n",
    "From : a@example.com\r\nTo:  b@x  \r\n\r\nx\r\n",
    "From: a@example.com\r\nBogus line\r\nTo: b@x\r\n\r\nbody\r\n",
    "From: a@example.com\nTo: b@x\n\nbare LF body\n",
    "From: a@example.com\r\nTo: b@x\r\n",
    "",
    "\r\nonly a body\r\n",
    "From: a@example.com",
    "From: a@example.com\r\nLonely\nTo: b@x\r\n\r\nbody",
];

#[test]
fn signatures_are_byte_for_byte_those_of_mail_auths_own_signer() {
    for file in ["ed25519.pem", "rsa2048.pem"] {
        let dkim = Dkim::load(&[spec("example.com", "s1", file)]).unwrap().unwrap();
        for message in ODD_MESSAGES {
            let (ours, theirs) = ours_and_reference(&dkim, file, message.as_bytes());
            assert_eq!(
                ours.as_deref().map(String::from_utf8_lossy),
                theirs.as_deref().map(String::from_utf8_lossy),
                "{file}: {message:?}"
            );
        }
    }
}

#[test]
fn a_threads_reused_signature_follows_each_messages_fields_and_each_loads_keys() {
    // The same thread signs with two loads in turn, messages whose fields differ each time.
    let a = Dkim::load(&[spec("example.com", "s1", "ed25519.pem")]).unwrap().unwrap();
    let b = Dkim::load(&[spec("example.com", "s1", "rsa2048.pem")]).unwrap().unwrap();
    for i in [0, 1, 0, 2, 2, 5, 0, 11] {
        for (dkim, file) in [(&a, "ed25519.pem"), (&b, "rsa2048.pem")] {
            let (ours, theirs) = ours_and_reference(dkim, file, ODD_MESSAGES[i].as_bytes());
            assert_eq!(ours, theirs, "{file}: message {i}");
        }
    }
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]

    #[test]
    fn any_header_section_signs_as_mail_auth_signs_it(
        parts in proptest::collection::vec(0usize..14, 0..12),
        body in "[a-z \\t\\r\\n]{0,40}",
    ) {
        const PIECES: [&str; 14] = [
            "From: a@example.com\r\n", "to: b@x\r\n", "Subject: s\r\n", "Subject: t\r\n  u\r\n",
            "X-Other: o\r\n", "Bogus\r\n", "Lone LF\n", "Cc:\r\n", "\r\n", "\n", " folded\r\n",
            "DATE:  d  \r\n", "Reply-To: r\n", ":\r\n",
        ];
        let message: String = parts.iter().map(|&i| PIECES[i]).collect::<String>() + &body;
        let dkim = Dkim::load(&[spec("example.com", "s1", "ed25519.pem")]).unwrap().unwrap();
        let (ours, theirs) = ours_and_reference(&dkim, "ed25519.pem", message.as_bytes());
        proptest::prop_assert_eq!(ours, theirs, "{:?}", message);
    }
}

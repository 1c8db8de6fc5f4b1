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

//! DKIM signing per message: the raw signature (ring, through mail-auth's key types) next to
//! what `send` pays per message (canonicalisation, body hash, header assembly, signature).
//! Run: `cargo bench --bench dkim`; compare with `volley send --dkim` (docs/BENCHMARKS.md).

use std::hint::black_box;
use std::path::Path;

use criterion::{Criterion, criterion_group, criterion_main};
use mail_auth::common::crypto::{Ed25519Key, RsaKey, Sha256, SigningKey};
use mail_auth::common::headers::Writable;
use mailvolley::deliver::dkim::{Dkim, KeySpec};
use rustls::pki_types::PrivateKeyDer;
use rustls::pki_types::pem::PemObject;

/// The message `scripts/bench-send.sh` sends, rendered: ~900 octets.
fn message() -> Vec<u8> {
    let mut m = b"From: Bench <news@example.com>\r\nSubject: Hello Name7 from City7\r\nTo: user7@d7.bench.test\r\n\
Date: Mon, 23 Nov 2026 10:00:00 +0000\r\nMessage-ID: <7.c@example.com>\r\n\r\nDear Name7,\r\nyour code is 3c7d.\r\n"
        .to_vec();
    m.extend(std::iter::repeat_n(b'x', 700));
    m.extend_from_slice(b"\r\n");
    m
}

fn key(file: &str) -> KeySpec {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/dkim").join(file);
    KeySpec { domain: "example.com".into(), selector: "s".into(), path }
}

fn pem(file: &str) -> PrivateKeyDer<'static> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/dkim").join(file);
    PrivateKeyDer::from_pem_file(path).expect("a test key")
}

/// What the raw signature signs: a relaxed header block of about this size.
struct Bytes<'a>(&'a [u8]);

impl Writable for Bytes<'_> {
    fn write(self, writer: &mut impl mail_auth::common::headers::Writer) {
        writer.write(self.0);
    }
}

fn dkim(c: &mut Criterion) {
    let message = message();
    let headers = &message[..300];
    let mut g = c.benchmark_group("dkim");
    let rsa = RsaKey::<Sha256>::from_key_der(pem("rsa2048.pem")).unwrap();
    g.bench_function("raw sign rsa-2048", |b| b.iter(|| rsa.sign(Bytes(black_box(headers))).unwrap()));
    let PrivateKeyDer::Pkcs8(ed) = pem("ed25519.pem") else { panic!("a PKCS#8 key") };
    let ed = Ed25519Key::from_pkcs8_maybe_unchecked_der(ed.secret_pkcs8_der()).unwrap();
    g.bench_function("raw sign ed25519", |b| b.iter(|| ed.sign(Bytes(black_box(headers))).unwrap()));
    for (name, file) in [("send sign rsa-2048", "rsa2048.pem"), ("send sign ed25519", "ed25519.pem")] {
        let signer = Dkim::load(&[key(file)]).unwrap().unwrap();
        g.bench_function(name, |b| b.iter(|| signer.sign(black_box(&message)).unwrap()));
    }
    g.finish();
}

criterion_group!(benches, dkim);
criterion_main!(benches);

//! DKIM signing (RFC 6376; Ed25519-SHA256 per RFC 8463) of every message, on the core that
//! composes it, so signing runs on all cores in parallel. Keys are loaded once, at start: a bad
//! key file stops the run before anything is sent, never one message at a time.
//!
//! Each `--dkim DOMAIN:SELECTOR:KEYFILE` adds one signature (relaxed/relaxed, `t=` the signing
//! time), computed over the rendered message alone; the `DKIM-Signature` lines travel as the
//! message's per-message head, ahead of the content they sign.

mod sign;

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use mail_auth::common::crypto::{Ed25519Key, RsaKey, Sha256};
use mail_auth::dkim::Signature;
use rustls::pki_types::PrivateKeyDer;
use rustls::pki_types::pem::PemObject;
use thiserror::Error;

use crate::proto::body::Head;

/// The header fields signed when present (absent ones are left out of `h=`): what identifies
/// the message and its author, its MIME structure, and the RFC 8058 unsubscribe pair, which a
/// relay must not be able to change (RFC 8058 §4 requires them signed).
pub const SIGNED_HEADERS: [&str; 17] = [
    "From",
    "Sender",
    "Reply-To",
    "To",
    "Cc",
    "Subject",
    "Date",
    "Message-ID",
    "In-Reply-To",
    "References",
    "MIME-Version",
    "Content-Type",
    "Content-Transfer-Encoding",
    "List-Unsubscribe",
    "List-Unsubscribe-Post",
    "List-Id",
    "Feedback-ID",
];

// `sign::sign` keeps which of them a message has in a u32.
const _: () = assert!(SIGNED_HEADERS.len() <= 32);

/// One `--dkim DOMAIN:SELECTOR:KEYFILE`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeySpec {
    pub domain: String,
    pub selector: String,
    pub path: PathBuf,
}

#[derive(Debug, Error)]
pub enum DkimError {
    #[error("--dkim {0}: expected DOMAIN:SELECTOR:KEYFILE (the key a PEM file, RSA or Ed25519)")]
    Spec(String),
    #[error("--dkim key {path}: {error}")]
    Read { path: String, error: std::io::Error },
    #[error("--dkim key {path}: {reason}")]
    Key { path: String, reason: String },
}

impl FromStr for KeySpec {
    type Err = DkimError;

    fn from_str(s: &str) -> Result<KeySpec, DkimError> {
        // The path is last, so it may itself contain colons.
        let mut parts = s.splitn(3, ':');
        let (Some(domain), Some(selector), Some(path)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(DkimError::Spec(s.to_owned()));
        };
        let label_ok = |t: &str| {
            !t.is_empty()
                && t.split('.').all(|l| {
                    !l.is_empty() && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
                })
        };
        if !label_ok(domain) || !label_ok(selector) || path.is_empty() {
            return Err(DkimError::Spec(s.to_owned()));
        }
        Ok(KeySpec { domain: domain.to_ascii_lowercase(), selector: selector.to_owned(), path: path.into() })
    }
}

/// A key, as mail-auth holds it.
enum Signer {
    Rsa(RsaKey<Sha256>),
    Ed25519(Ed25519Key),
}

/// Numbers each loaded [`Dkim`], so a thread's [`sign::Scratch`] knows whose signatures it holds.
static LOADS: AtomicU64 = AtomicU64::new(1);

/// A loaded key: its signer and what a receiver needs in DNS to check it.
struct Key {
    spec: KeySpec,
    signer: Signer,
    /// What each of its signatures starts from (v=, a=, d=, s=, c=, the names of h=).
    template: Signature,
    /// The TXT record to publish at `SELECTOR._domainkey.DOMAIN`.
    record: String,
}

/// The keys every message is signed with, in `--dkim` order.
pub struct Dkim {
    keys: Vec<Key>,
    /// This load's number (see [`LOADS`]).
    id: u64,
}

impl std::fmt::Debug for Dkim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key material.
        let names: Vec<_> =
            self.keys.iter().map(|k| format!("{}:{}", k.spec.domain, k.spec.selector)).collect();
        f.debug_struct("Dkim").field("keys", &names).finish()
    }
}

impl Dkim {
    /// Loads every key; `None` when there are none.
    pub fn load(specs: &[KeySpec]) -> Result<Option<Dkim>, DkimError> {
        if specs.is_empty() {
            return Ok(None);
        }
        let keys = specs.iter().map(load_key).collect::<Result<Vec<_>, _>>()?;
        Ok(Some(Dkim { keys, id: LOADS.fetch_add(1, Ordering::Relaxed) }))
    }

    /// The `DKIM-Signature` lines for `message` (CRLF-normalised header section and body), one
    /// per key, as header lines to send ahead of it.
    pub fn sign(&self, message: &[u8]) -> Result<Head, String> {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let mut lines = Vec::with_capacity(512 * self.keys.len());
        let templates = || self.keys.iter().map(|k| k.template.clone()).collect();
        sign::with_scratch(self.id, templates, |scratch| {
            for (key, sig) in self.keys.iter().zip(&mut scratch.signatures) {
                let data = &mut scratch.data;
                match &key.signer {
                    Signer::Rsa(k) => sign::sign(k, sig, &SIGNED_HEADERS, message, now, data, &mut lines),
                    Signer::Ed25519(k) => sign::sign(k, sig, &SIGNED_HEADERS, message, now, data, &mut lines),
                }
                .map_err(|e| format!("DKIM signing for {}/{}: {e}", key.spec.domain, key.spec.selector))?;
            }
            Ok::<(), String>(())
        })?;
        Head::new(&lines).map_err(|e| format!("DKIM signature header: {e}"))
    }

    /// `(name, TXT record)` to publish for each key, e.g. `("s1._domainkey.example.com",
    /// "v=DKIM1; k=ed25519; p=...")`.
    pub fn records(&self) -> impl Iterator<Item = (String, &str)> {
        self.keys
            .iter()
            .map(|k| (format!("{}._domainkey.{}", k.spec.selector, k.spec.domain), k.record.as_str()))
    }

    /// The signing domains (`d=`), in `--dkim` order.
    pub fn domains(&self) -> impl Iterator<Item = &str> {
        self.keys.iter().map(|k| k.spec.domain.as_str())
    }
}

fn load_key(spec: &KeySpec) -> Result<Key, DkimError> {
    let path = spec.path.display().to_string();
    let bad = |reason: String| DkimError::Key { path: path.clone(), reason };
    let pem = read_key_file(&spec.path).map_err(|error| DkimError::Read { path: path.clone(), error })?;
    let der = PrivateKeyDer::from_pem_slice(&pem)
        .map_err(|e| bad(format!("no PEM private key (PKCS#8 or PKCS#1) in it: {e}")))?;
    let b64 = |bytes: &[u8]| base64::engine::general_purpose::STANDARD.encode(bytes);
    // An RSA key in either container, with its record.
    let rsa = |der: PrivateKeyDer<'_>| {
        let key = RsaKey::<Sha256>::from_key_der(der)
            .map_err(|e| format!("not a usable RSA key ({e}; 2048 to 8192 bits)"))?;
        let record = format!("v=DKIM1; k=rsa; p={}", b64(&rsa_spki(&key.public_key())));
        let template = sign::template(&key, &spec.domain, &spec.selector, &SIGNED_HEADERS);
        Ok::<_, String>((Signer::Rsa(key), template, record))
    };
    let (signer, template, record) = match der {
        PrivateKeyDer::Pkcs1(_) => rsa(der).map_err(bad)?,
        PrivateKeyDer::Pkcs8(ref pkcs8) => match rsa(der.clone_key()) {
            Ok(rsa) => rsa,
            Err(rsa_error) => {
                // OpenSSL writes Ed25519 keys as PKCS#8 v1 (no public key inside): accepted.
                let key = Ed25519Key::from_pkcs8_maybe_unchecked_der(pkcs8.secret_pkcs8_der())
                    .map_err(|e| bad(format!("neither RSA ({rsa_error}) nor Ed25519 ({e})")))?;
                let record = format!("v=DKIM1; k=ed25519; p={}", b64(&key.public_key()));
                let template = sign::template(&key, &spec.domain, &spec.selector, &SIGNED_HEADERS);
                (Signer::Ed25519(key), template, record)
            }
        },
        _ => return Err(bad("an EC (SEC1) key: DKIM signs with RSA or Ed25519".into())),
    };
    Ok(Key { spec: spec.clone(), signer, template, record })
}

/// The key file, refused when it is not a regular file of sane size (a DKIM key is a few KB;
/// a device or a huge file is a mistake on the command line).
fn read_key_file(path: &Path) -> std::io::Result<Vec<u8>> {
    const MAX: u64 = 64 * 1024;
    let meta = std::fs::metadata(path)?;
    if !meta.is_file() || meta.len() > MAX {
        return Err(std::io::Error::other(format!("not a key file (a regular file of at most {MAX} bytes)")));
    }
    std::fs::read(path)
}

/// An RSA public key (PKCS#1 `RSAPublicKey`, as ring gives it) wrapped in the
/// SubjectPublicKeyInfo that DKIM's `p=` carries for `k=rsa` (RFC 6376 §3.6.1).
fn rsa_spki(pkcs1: &[u8]) -> Vec<u8> {
    // AlgorithmIdentifier { rsaEncryption, NULL }.
    const ALGORITHM: [u8; 15] =
        [0x30, 0x0d, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01, 0x05, 0x00];
    let mut bit_string = vec![0x00];
    bit_string.extend_from_slice(pkcs1);
    let mut inner = ALGORITHM.to_vec();
    der_push(&mut inner, 0x03, &bit_string);
    let mut out = Vec::with_capacity(inner.len() + 4);
    der_push(&mut out, 0x30, &inner);
    out
}

/// Appends a DER element: tag, definite length, content.
fn der_push(out: &mut Vec<u8>, tag: u8, content: &[u8]) {
    out.push(tag);
    let len = content.len();
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes = len.to_be_bytes();
        let skip = bytes.iter().take_while(|&&b| b == 0).count();
        out.push(0x80 | (bytes.len() - skip) as u8);
        out.extend_from_slice(&bytes[skip..]);
    }
    out.extend_from_slice(content);
}

#[cfg(test)]
pub(crate) mod tests;

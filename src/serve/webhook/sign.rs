//! Webhook signatures, as Stripe signs its webhooks: `X-Volley-Signature: t=UNIX,v1=HEX`, where
//! HEX is HMAC-SHA256 under the shared secret of `t`, a `.`, and the body, exactly as sent.
//! A receiver recomputes it over the raw body and compares in constant time, and refuses a `t`
//! too far from its clock (a replayed request); `volley webhook verify` does the same.
//!
//! To roll a secret without losing a request: add the new one as a second line of the secret
//! file and reload (SIGHUP): every request then carries a `v1` for each line, so receivers
//! holding either verify; once they all hold the new one, remove the old line and reload.

use ring::hmac;

/// The header the signature travels in.
pub const HEADER: &str = "X-Volley-Signature";

/// The secrets shared with the receivers, one per line of the file (never printed).
#[derive(Clone)]
pub struct Secret(Vec<hmac::Key>);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error("not a signature: expected t=UNIX,v1=HEX")]
    Malformed,
    #[error("signed at {signed}, {off}s from now: more than the tolerance (a replay?)")]
    Stale { signed: u64, off: u64 },
    #[error("the signature does not match: another secret, or the body was changed")]
    Mismatch,
}

impl Secret {
    /// The secrets as a file holds them: each non-empty line, without surrounding white
    /// space; `None` if there is none.
    pub fn from_file_text(text: &str) -> Option<Secret> {
        let keys: Vec<hmac::Key> = text
            .lines()
            .map(str::trim)
            .filter(|line| !line.is_empty())
            .map(|line| hmac::Key::new(hmac::HMAC_SHA256, line.as_bytes()))
            .collect();
        (!keys.is_empty()).then_some(Secret(keys))
    }

    /// The header's value for `body`, signed at `t` (seconds since the Unix epoch): a `v1`
    /// for each secret.
    pub fn sign(&self, t: u64, body: &[u8]) -> String {
        let payload = signed_payload(t, body);
        let mut header = format!("t={t}");
        for key in &self.0 {
            header.push_str(",v1=");
            header.push_str(&hex(hmac::sign(key, &payload).as_ref()));
        }
        header
    }

    /// Checks `header` against `body` at `now` (seconds since the epoch), allowing `tolerance`
    /// seconds between the signature's time and now. Every `v1` given is tried against every
    /// secret (either side may be rolling its secret).
    pub fn verify(&self, header: &str, body: &[u8], now: u64, tolerance: u64) -> Result<(), VerifyError> {
        let mut t = None;
        let mut tags = Vec::new();
        for part in header.split(',') {
            match part.trim().split_once('=') {
                Some(("t", v)) => t = Some(v.parse::<u64>().map_err(|_| VerifyError::Malformed)?),
                Some(("v1", v)) => tags.push(unhex(v).ok_or(VerifyError::Malformed)?),
                Some(_) => {} // other schemes, for later
                None => return Err(VerifyError::Malformed),
            }
        }
        let t = t.ok_or(VerifyError::Malformed)?;
        if tags.is_empty() {
            return Err(VerifyError::Malformed);
        }
        let off = now.abs_diff(t);
        if off > tolerance {
            return Err(VerifyError::Stale { signed: t, off });
        }
        let payload = signed_payload(t, body);
        // ring compares in constant time.
        if self.0.iter().any(|key| tags.iter().any(|tag| hmac::verify(key, &payload, tag).is_ok())) {
            Ok(())
        } else {
            Err(VerifyError::Mismatch)
        }
    }
}

fn signed_payload(t: u64, body: &[u8]) -> Vec<u8> {
    let t = t.to_string();
    let mut payload = Vec::with_capacity(t.len() + 1 + body.len());
    payload.extend_from_slice(t.as_bytes());
    payload.push(b'.');
    payload.extend_from_slice(body);
    payload
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if text.len() % 2 != 0 {
        return None;
    }
    (0..text.len()).step_by(2).map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signature_verifies_with_its_secret_only_and_within_the_tolerance() {
        let secret = Secret::from_file_text("whsec-0123456789\n").unwrap();
        let body = br#"{"events":[{"id":1,"status":"delivered"}]}"#;
        let header = secret.sign(1_700_000_000, body);
        assert!(header.starts_with("t=1700000000,v1=") && header.len() == "t=1700000000,v1=".len() + 64);
        assert_eq!(secret.verify(&header, body, 1_700_000_100, 300), Ok(()));
        let other = Secret::from_file_text("another-secret").unwrap();
        assert_eq!(other.verify(&header, body, 1_700_000_000, 300), Err(VerifyError::Mismatch));
        assert_eq!(
            secret.verify(&header, b"{}", 1_700_000_000, 300),
            Err(VerifyError::Mismatch),
            "body changed"
        );
        assert!(matches!(secret.verify(&header, body, 1_700_001_000, 300), Err(VerifyError::Stale { .. })));
        let rolled = format!("{},v1={}", header, "00".repeat(32));
        assert_eq!(secret.verify(&rolled, body, 1_700_000_000, 300), Ok(()), "any v1 may match");
        for bad in ["", "t=1", "v1=00", "t=x,v1=00", "t=1,v1=0g", "garbage"] {
            assert_eq!(secret.verify(bad, body, 1, 300), Err(VerifyError::Malformed), "{bad:?}");
        }
        assert!(Secret::from_file_text("\n").is_none() && !format!("{secret:?}").contains("whsec"));
        // Rolling: two lines, two v1; a receiver with either secret verifies.
        let both = Secret::from_file_text("new-secret\nwhsec-0123456789\n").unwrap();
        let header = both.sign(1_700_000_000, body);
        assert_eq!(header.matches(",v1=").count(), 2);
        assert_eq!(secret.verify(&header, body, 1_700_000_000, 300), Ok(()), "the old one's receiver");
        let new = Secret::from_file_text("new-secret").unwrap();
        assert_eq!(new.verify(&header, body, 1_700_000_000, 300), Ok(()), "the new one's receiver");
    }

    /// The scheme is HMAC-SHA256 of `t.body`: checked against RFC 4231's test case 2 layout
    /// (key "Jefe") by recomputing it the way a receiver in another language would.
    #[test]
    fn the_tag_is_hmac_sha256_of_t_dot_body() {
        let secret = Secret::from_file_text("Jefe").unwrap();
        // "what do ya want " + "." + "for nothing?" is RFC 4231's message with t standing in.
        let key = hmac::Key::new(hmac::HMAC_SHA256, b"Jefe");
        let expected = hex(hmac::sign(&key, b"42.what do ya want for nothing?").as_ref());
        assert_eq!(secret.sign(42, b"what do ya want for nothing?"), format!("t=42,v1={expected}"));
        let rfc = hex(hmac::sign(&key, b"what do ya want for nothing?").as_ref());
        assert_eq!(rfc, "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843", "RFC 4231 4.3");
    }
}

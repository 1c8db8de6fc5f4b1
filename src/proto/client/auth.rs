//! SMTP AUTH (RFC 4954) on the client side: credentials, which mechanism to use, and the lines
//! each mechanism sends. The secret never leaves this module except base64-encoded on the wire;
//! `Debug` hides it, and errors never carry it.

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;

use crate::proto::ehlo::AuthMechanisms;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Mechanism {
    /// RFC 4616: user and password in one initial response.
    Plain,
    /// The de facto LOGIN exchange: user, then password, each after a 334 prompt.
    Login,
    /// Google's and Microsoft's OAuth 2.0 bearer token (the secret is the access token).
    Xoauth2,
}

impl Mechanism {
    pub fn name(self) -> &'static str {
        match self {
            Mechanism::Plain => "PLAIN",
            Mechanism::Login => "LOGIN",
            Mechanism::Xoauth2 => "XOAUTH2",
        }
    }

    fn flag(self) -> AuthMechanisms {
        match self {
            Mechanism::Plain => AuthMechanisms::PLAIN,
            Mechanism::Login => AuthMechanisms::LOGIN,
            Mechanism::Xoauth2 => AuthMechanisms::XOAUTH2,
        }
    }
}

/// A password or token. Shown as `***` by `Debug` and `Display`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(secret: String) -> Self {
        Secret(secret)
    }

    /// The secret itself, for the wire (and volley's own sink, to accept it).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    pub user: String,
    pub secret: Secret,
    /// Use this mechanism only; `None` picks PLAIN, then LOGIN, then XOAUTH2 from what the
    /// server offers.
    pub mechanism: Option<Mechanism>,
    /// Send credentials over a connection that is not encrypted.
    pub allow_plaintext: bool,
}

impl Credentials {
    /// The mechanism to use with a server offering `offered`, or why there is none.
    pub fn choose(&self, offered: AuthMechanisms) -> Result<Mechanism, String> {
        if offered.is_empty() {
            return Err("the server does not offer AUTH".into());
        }
        let wanted: &[Mechanism] = match &self.mechanism {
            Some(m) => std::slice::from_ref(m),
            None => &[Mechanism::Plain, Mechanism::Login, Mechanism::Xoauth2],
        };
        wanted.iter().copied().find(|m| offered.contains(m.flag())).ok_or_else(|| {
            let names: Vec<&str> = wanted.iter().map(|m| m.name()).collect();
            format!("the server offers none of {} (it offers {})", names.join(", "), offered)
        })
    }
}

/// Where an exchange stands: what the next `334` is answered with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum AuthStep {
    /// LOGIN sent: the user name comes next.
    LoginUser,
    /// The password comes next.
    LoginPassword,
    /// Everything was sent: only 235 or a refusal can follow. A 334 now is a challenge we
    /// have no answer for (XOAUTH2 sends its error this way): cancel, and read the refusal.
    Sent,
    /// Cancelled: the next reply is the refusal.
    Cancelled,
}

/// Writes the `AUTH` command line for `mechanism` and returns the step it leaves.
pub(super) fn start(out: &mut Vec<u8>, credentials: &Credentials, mechanism: Mechanism) -> AuthStep {
    out.extend_from_slice(b"AUTH ");
    out.extend_from_slice(mechanism.name().as_bytes());
    match mechanism {
        Mechanism::Plain => {
            // authzid (empty) NUL authcid NUL passwd
            let mut raw = Vec::with_capacity(credentials.user.len() + credentials.secret.0.len() + 2);
            raw.push(0);
            raw.extend_from_slice(credentials.user.as_bytes());
            raw.push(0);
            raw.extend_from_slice(credentials.secret.expose().as_bytes());
            out.push(b' ');
            push_b64(out, &raw);
            out.extend_from_slice(b"\r\n");
            AuthStep::Sent
        }
        Mechanism::Login => {
            out.extend_from_slice(b"\r\n");
            AuthStep::LoginUser
        }
        Mechanism::Xoauth2 => {
            let raw =
                format!("user={}\x01auth=Bearer {}\x01\x01", credentials.user, credentials.secret.expose());
            out.push(b' ');
            push_b64(out, raw.as_bytes());
            out.extend_from_slice(b"\r\n");
            AuthStep::Sent
        }
    }
}

/// Answers a `334` challenge at `step`; returns the next step.
pub(super) fn respond(
    out: &mut Vec<u8>,
    credentials: &Credentials,
    mechanism: Mechanism,
    step: AuthStep,
) -> AuthStep {
    match step {
        AuthStep::LoginUser => {
            push_b64(out, credentials.user.as_bytes());
            out.extend_from_slice(b"\r\n");
            AuthStep::LoginPassword
        }
        AuthStep::LoginPassword => {
            push_b64(out, credentials.secret.expose().as_bytes());
            out.extend_from_slice(b"\r\n");
            AuthStep::Sent
        }
        // XOAUTH2 reports a refused token as a 334 with a JSON error; the protocol's answer is
        // an empty line, after which the server sends its refusal (535 at Gmail).
        AuthStep::Sent if mechanism == Mechanism::Xoauth2 => {
            out.extend_from_slice(b"\r\n");
            AuthStep::Cancelled
        }
        // RFC 4954 §4: "*" cancels the exchange; the server answers 501.
        AuthStep::Sent | AuthStep::Cancelled => {
            out.extend_from_slice(b"*\r\n");
            AuthStep::Cancelled
        }
    }
}

fn push_b64(out: &mut Vec<u8>, raw: &[u8]) {
    let start = out.len();
    out.resize(start + base64::encoded_len(raw.len(), true).unwrap_or(0), 0);
    let n = B64.encode_slice(raw, &mut out[start..]).unwrap_or(0);
    out.truncate(start + n);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn creds(mechanism: Option<Mechanism>) -> Credentials {
        Credentials {
            user: "alice".into(),
            secret: Secret::new("s3cret".into()),
            mechanism,
            allow_plaintext: false,
        }
    }

    #[test]
    fn mechanism_choice() {
        let offered = |m: &[AuthMechanisms]| m.iter().fold(AuthMechanisms::default(), |a, &b| a | b);
        let cases: [(Option<Mechanism>, AuthMechanisms, Result<Mechanism, &str>); 6] = [
            (None, offered(&[AuthMechanisms::LOGIN, AuthMechanisms::PLAIN]), Ok(Mechanism::Plain)),
            (None, offered(&[AuthMechanisms::LOGIN, AuthMechanisms::CRAM_MD5]), Ok(Mechanism::Login)),
            (None, offered(&[AuthMechanisms::XOAUTH2]), Ok(Mechanism::Xoauth2)),
            (None, offered(&[AuthMechanisms::CRAM_MD5]), Err("offers none of PLAIN, LOGIN, XOAUTH2")),
            (Some(Mechanism::Login), offered(&[AuthMechanisms::PLAIN]), Err("offers none of LOGIN")),
            (None, AuthMechanisms::default(), Err("does not offer AUTH")),
        ];
        for (wanted, offered, expect) in cases {
            match (creds(wanted).choose(offered), expect) {
                (Ok(got), Ok(want)) => assert_eq!(got, want),
                (Err(got), Err(want)) => assert!(got.contains(want), "{got}"),
                (got, want) => panic!("{wanted:?} with {offered:?}: {got:?}, wanted {want:?}"),
            }
        }
    }

    #[test]
    fn wire_lines() {
        let c = creds(None);
        let mut out = Vec::new();
        assert_eq!(start(&mut out, &c, Mechanism::Plain), AuthStep::Sent);
        assert_eq!(out, b"AUTH PLAIN AGFsaWNlAHMzY3JldA==\r\n");

        out.clear();
        let mut step = start(&mut out, &c, Mechanism::Login);
        step = respond(&mut out, &c, Mechanism::Login, step);
        step = respond(&mut out, &c, Mechanism::Login, step);
        assert_eq!(step, AuthStep::Sent);
        assert_eq!(out, b"AUTH LOGIN\r\nYWxpY2U=\r\nczNjcmV0\r\n");
        // A further challenge is cancelled, not answered with the secret again.
        out.clear();
        assert_eq!(respond(&mut out, &c, Mechanism::Login, step), AuthStep::Cancelled);
        assert_eq!(out, b"*\r\n");

        out.clear();
        let step = start(&mut out, &c, Mechanism::Xoauth2);
        let line = std::str::from_utf8(&out).unwrap();
        let b64 = line.trim_end().strip_prefix("AUTH XOAUTH2 ").unwrap();
        assert_eq!(B64.decode(b64).unwrap(), b"user=alice\x01auth=Bearer s3cret\x01\x01");
        // Its error challenge is answered with an empty line.
        out.clear();
        assert_eq!(respond(&mut out, &c, Mechanism::Xoauth2, step), AuthStep::Cancelled);
        assert_eq!(out, b"\r\n");
    }

    #[test]
    fn the_secret_is_never_printed() {
        let c = creds(Some(Mechanism::Plain));
        assert!(!format!("{c:?}").contains("s3cret"));
        assert!(!format!("{}", c.secret).contains("s3cret"));
    }
}

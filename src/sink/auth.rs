//! SMTP AUTH (RFC 4954) for the sink and serve's submission: PLAIN and LOGIN against a
//! `user:password` file, where a password may be a bcrypt hash as `htpasswd -B` writes it
//! (`$2y$...`), so the file need not hold it.

use std::collections::HashMap;
use std::path::Path;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;

/// Users and passwords, from lines `user:password` or `user:$2y$...` (blank lines and `#`
/// comments skipped). They can be replaced while sessions read them (serve's SIGHUP): a
/// session's next AUTH sees the new ones, and none is dropped.
#[derive(Default)]
pub struct Users(arc_swap::ArcSwap<HashMap<String, Secret>>);

impl std::fmt::Debug for Users {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Names only.
        f.debug_set().entries(self.0.load().keys()).finish()
    }
}

/// A user's password as the file gives it.
#[derive(Clone)]
enum Secret {
    Plain(String),
    /// A bcrypt hash (`$2a$`, `$2b$`, `$2y$`): checked at its cost, about 3 ms at
    /// `htpasswd -B`'s default of 5, on the thread that serves the session.
    Bcrypt(String),
}

impl Users {
    pub fn load(path: &Path) -> Result<Users, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        Users::parse(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    pub fn parse(text: &str) -> Result<Users, String> {
        let mut users = HashMap::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim_end_matches('\r');
            if line.trim().is_empty() || line.starts_with('#') {
                continue;
            }
            // The password is never echoed, even in an error.
            let (user, password) =
                line.split_once(':').ok_or_else(|| format!("line {}: expected user:password", n + 1))?;
            if user.is_empty() {
                return Err(format!("line {}: empty user name", n + 1));
            }
            let secret = match password {
                p if ["$2a$", "$2b$", "$2y$"].iter().any(|v| p.starts_with(v)) => {
                    Secret::Bcrypt(p.to_owned())
                }
                p => Secret::Plain(p.to_owned()),
            };
            users.insert(user.to_owned(), secret);
        }
        if users.is_empty() {
            return Err("no user:password line".into());
        }
        Ok(Users(arc_swap::ArcSwap::from_pointee(users)))
    }

    /// One user (the built-in sink of `volley bench`, which accepts the bench's credentials).
    pub fn single(user: &str, password: &str) -> Users {
        let users = HashMap::from([(user.to_owned(), Secret::Plain(password.to_owned()))]);
        Users(arc_swap::ArcSwap::from_pointee(users))
    }

    /// From now on, `with`'s users and passwords instead.
    pub fn replace(&self, with: Users) {
        self.0.store(with.0.load_full());
    }

    /// Whether `name` is one of the users.
    pub fn contains(&self, name: &str) -> bool {
        self.0.load().contains_key(name)
    }

    /// How many users there are.
    pub fn len(&self) -> usize {
        self.0.load().len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.load().is_empty()
    }

    fn check(&self, user: &str, password: &str) -> bool {
        // Held while a bcrypt hash is checked (a few ms): a replacement meanwhile waits for
        // nothing, and this check is of the users as they were when it began.
        let users = self.0.load_full();
        match users.get(user) {
            Some(Secret::Plain(p)) => constant_time_eq(p.as_bytes(), password.as_bytes()),
            Some(Secret::Bcrypt(hash)) => bcrypt::verify(password, hash).unwrap_or(false),
            None => false,
        }
    }
}

/// Compares without stopping at the first difference, so timing tells nothing of the password.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// An exchange waiting for the client's next line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Exchange {
    /// `AUTH PLAIN` without an initial response: the whole response comes next.
    Plain,
    LoginUser,
    LoginPassword {
        user: String,
    },
}

/// What to answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// `334 <challenge>` and wait for the next line.
    Challenge(Exchange, &'static str),
    /// Authenticated as this user: 235.
    Success(String),
    /// A reply ending the exchange (code and text), and the user it was for, if known.
    Failure(u16, &'static str, Option<String>),
}

const BAD_CREDENTIALS: &str = "5.7.8 Authentication credentials invalid";
const BAD_BASE64: &str = "5.5.2 Cannot decode response";

/// The client sent `AUTH mechanism [initial]`.
pub fn start(users: &Users, mechanism: &str, initial: Option<&str>) -> Step {
    if mechanism.eq_ignore_ascii_case("PLAIN") {
        match initial {
            None => Step::Challenge(Exchange::Plain, ""),
            Some(line) => plain(users, line),
        }
    } else if mechanism.eq_ignore_ascii_case("LOGIN") {
        match initial {
            None => Step::Challenge(Exchange::LoginUser, "VXNlcm5hbWU6"),
            Some(line) => respond(users, Exchange::LoginUser, line),
        }
    } else {
        Step::Failure(504, "5.5.4 Unrecognized authentication type", None)
    }
}

/// The client answered a challenge with `line`.
pub fn respond(users: &Users, exchange: Exchange, line: &str) -> Step {
    if line == "*" {
        return Step::Failure(501, "5.0.0 Authentication cancelled", None);
    }
    match exchange {
        Exchange::Plain => plain(users, line),
        Exchange::LoginUser => match decode(line) {
            Some(user) => Step::Challenge(Exchange::LoginPassword { user }, "UGFzc3dvcmQ6"),
            None => Step::Failure(501, BAD_BASE64, None),
        },
        Exchange::LoginPassword { user } => match decode(line) {
            Some(password) if users.check(&user, &password) => Step::Success(user),
            Some(_) => Step::Failure(535, BAD_CREDENTIALS, Some(user)),
            None => Step::Failure(501, BAD_BASE64, None),
        },
    }
}

/// RFC 4616: `authzid NUL authcid NUL passwd`; acting for another user is not offered.
fn plain(users: &Users, line: &str) -> Step {
    let Some(raw) = decode(line) else { return Step::Failure(501, BAD_BASE64, None) };
    let mut parts = raw.split('\0');
    let (Some(authzid), Some(user), Some(password), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Step::Failure(501, "5.5.2 Malformed PLAIN response", None);
    };
    if !authzid.is_empty() && authzid != user {
        return Step::Failure(535, BAD_CREDENTIALS, Some(user.to_owned()));
    }
    if users.check(user, password) {
        Step::Success(user.to_owned())
    } else {
        Step::Failure(535, BAD_CREDENTIALS, Some(user.to_owned()))
    }
}

fn decode(line: &str) -> Option<String> {
    B64.decode(line.trim()).ok().and_then(|b| String::from_utf8(b).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn users() -> Users {
        Users::parse("# test users\nalice:s3cret\nbob:pa:ss\n").unwrap()
    }

    fn b64(s: &str) -> String {
        B64.encode(s)
    }

    #[test]
    fn users_file() {
        let u = users();
        assert!(u.check("alice", "s3cret"));
        assert!(u.check("bob", "pa:ss"), "only the first colon separates");
        assert!(!u.check("alice", "s3cre"));
        assert!(!u.check("carol", ""));
        // As `htpasswd -B -C 4` writes it (the crate writes $2b$; htpasswd $2y$, the same).
        let hash = bcrypt::hash("h4shed pw", 4).unwrap().replacen("$2b$", "$2y$", 1);
        let u = Users::parse(&format!("dora:{hash}\n")).unwrap();
        assert!(u.check("dora", "h4shed pw"));
        assert!(!u.check("dora", "h4shed pv"));
        assert!(!u.check("dora", &hash), "the hash is not the password");
        assert!(!format!("{u:?}").contains("$2y$"), "{u:?}");
        let err = Users::parse("alice\n").unwrap_err();
        assert!(err.contains("line 1"), "{err}");
        assert!(Users::parse("# nothing\n").is_err());
        let err = Users::parse("alice:topsecret\n:x\n").unwrap_err();
        assert!(!err.contains("topsecret"));
    }

    #[test]
    fn exchanges() {
        let u = users();
        let ok = Step::Success("alice".into());
        let bad = Step::Failure(535, BAD_CREDENTIALS, Some("alice".into()));
        assert_eq!(start(&u, "PLAIN", Some(&b64("\0alice\0s3cret"))), ok);
        assert_eq!(start(&u, "plain", Some(&b64("alice\0alice\0s3cret"))), ok);
        assert_eq!(start(&u, "PLAIN", Some(&b64("\0alice\0wrong"))), bad);
        assert_eq!(start(&u, "PLAIN", Some(&b64("bob\0alice\0s3cret"))), bad, "authzid of another user");
        assert!(matches!(start(&u, "PLAIN", Some("!!!")), Step::Failure(501, ..)));
        assert!(matches!(start(&u, "PLAIN", Some(&b64("alice"))), Step::Failure(501, ..)));
        assert!(matches!(start(&u, "CRAM-MD5", None), Step::Failure(504, ..)));

        let Step::Challenge(ex, "") = start(&u, "PLAIN", None) else { panic!() };
        assert_eq!(respond(&u, ex.clone(), &b64("\0alice\0s3cret")), ok);
        assert!(matches!(respond(&u, ex, "*"), Step::Failure(501, ..)));

        let Step::Challenge(ex, "VXNlcm5hbWU6") = start(&u, "LOGIN", None) else { panic!() };
        let Step::Challenge(ex, "UGFzc3dvcmQ6") = respond(&u, ex, &b64("alice")) else { panic!() };
        assert_eq!(respond(&u, ex.clone(), &b64("s3cret")), ok);
        assert_eq!(respond(&u, ex, &b64("nope")), bad);
    }
}

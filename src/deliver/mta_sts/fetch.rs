//! Getting a domain's MTA-STS policy (RFC 8461 §3.3): `GET /.well-known/mta-sts.txt` from
//! `mta-sts.DOMAIN` over HTTPS, its certificate checked for that name; only a `200` counts
//! (redirects are refused, §3.3), with a `text/plain` body (when a type is given) of at most
//! [`MAX_POLICY_SIZE`] octets, all within a time limit. Runs on a tokio runtime (the I/O
//! thread's); the address comes from volley's own resolver, so tests and private zones work
//! as the delivery does.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Bytes;
use thiserror::Error;

use super::{MAX_POLICY_SIZE, Policy, PolicyError};

/// The policy's path (§3.2).
pub const PATH: &str = "/.well-known/mta-sts.txt";

/// How long a fetch may take (§3.3 asks for a limit, suggesting a minute or so for the whole
/// fetch): a domain's recipients wait for it, once per policy id.
pub const TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, Error)]
pub enum FetchError {
    #[error("{0}")]
    Connect(String),
    #[error("{host}: answered {status}")]
    Status { host: String, status: u16 },
    #[error("{host}: answered {status} (a redirect to {location:?}; RFC 8461 refuses them)")]
    Redirect { host: String, status: u16, location: String },
    #[error("{host}: the policy is {content_type:?}, not text/plain")]
    NotText { host: String, content_type: String },
    #[error("{host}: the policy is larger than {MAX_POLICY_SIZE} octets")]
    TooLarge { host: String },
    #[error("{host}: {why}")]
    Http { host: String, why: String },
    #[error("{host}: no policy within {limit:?}")]
    Timeout { host: String, limit: Duration },
    #[error("{host}: {error}")]
    Policy { host: String, error: PolicyError },
}

/// How policies are fetched.
#[derive(Debug, Clone)]
pub struct Fetcher {
    /// A verifying client configuration (Mozilla's roots, or a `--ca-file`).
    pub tls: Arc<rustls::ClientConfig>,
    /// 443, or another port for tests.
    pub port: u16,
    pub timeout: Duration,
}

impl Fetcher {
    /// `domain`'s policy, from `ip` (the address of `mta-sts.DOMAIN`).
    pub async fn fetch(&self, domain: &str, ip: std::net::IpAddr) -> Result<Policy, FetchError> {
        let host = format!("mta-sts.{}", domain.trim_end_matches('.'));
        let limit = self.timeout;
        match tokio::time::timeout(limit, self.exchange(&host, SocketAddr::new(ip, self.port))).await {
            Ok(result) => result,
            Err(_) => Err(FetchError::Timeout { host, limit }),
        }
    }

    async fn exchange(&self, host: &str, addr: SocketAddr) -> Result<Policy, FetchError> {
        let mut sender =
            crate::rt::http_client::connect_at(addr, host, &self.tls).await.map_err(FetchError::Connect)?;
        let http = |why: String| FetchError::Http { host: host.to_owned(), why };
        let request = hyper::Request::get(PATH)
            .header(hyper::header::HOST, host)
            .body(Full::new(Bytes::new()))
            .map_err(|e| http(e.to_string()))?;
        let response = sender.send_request(request).await.map_err(|e| http(e.to_string()))?;
        let status = response.status().as_u16();
        let header =
            |name| response.headers().get(name).map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
        if response.status().is_redirection() {
            let location = header(hyper::header::LOCATION).unwrap_or_default();
            return Err(FetchError::Redirect { host: host.to_owned(), status, location });
        }
        if status != 200 {
            return Err(FetchError::Status { host: host.to_owned(), status });
        }
        // §3.2: "text/plain", parameters aside; a server that names no type is given the
        // benefit of the doubt (the body must still parse as a policy).
        if let Some(content_type) = header(hyper::header::CONTENT_TYPE) {
            let essence = content_type.split(';').next().unwrap_or("").trim();
            if !essence.eq_ignore_ascii_case("text/plain") {
                return Err(FetchError::NotText { host: host.to_owned(), content_type });
            }
        }
        let body = Limited::new(response.into_body(), MAX_POLICY_SIZE)
            .collect()
            .await
            .map_err(|e| match e.downcast_ref::<http_body_util::LengthLimitError>() {
                Some(_) => FetchError::TooLarge { host: host.to_owned() },
                None => http(e.to_string()),
            })?
            .to_bytes();
        Policy::parse(&body).map_err(|error| FetchError::Policy { host: host.to_owned(), error })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::deliver::mta_sts::Mode;
    use crate::testkit::https::{HttpsStub, response as answer};

    /// A certificate for `name` (its own CA), and a client that trusts it.
    fn certified(name: &str) -> (Arc<rustls::ServerConfig>, Arc<rustls::ClientConfig>) {
        let dir = std::env::temp_dir().join(format!("volley-mta-sts-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let made = rcgen::generate_simple_self_signed(vec![name.to_owned()]).unwrap();
        let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
        std::fs::write(&cert, made.cert.pem()).unwrap();
        std::fs::write(&key, made.key_pair.serialize_pem()).unwrap();
        let server = crate::tls::ServerTls::from_files(&cert, &key).unwrap().config;
        let client =
            crate::tls::ClientTls::new(crate::tls::TlsPolicy::Verify, true, Some(&cert), false).unwrap();
        (server, client.config)
    }

    /// A server answering every request with `answer` (after `delay`), on a free loopback
    /// port.
    fn serve(tls: Arc<rustls::ServerConfig>, answer: Vec<u8>, delay: Duration) -> HttpsStub {
        HttpsStub::start("127.0.0.1:0".parse().unwrap(), tls, move |_| (answer.clone(), delay)).unwrap()
    }

    fn fetch(client: Arc<rustls::ClientConfig>, port: u16, timeout: Duration) -> Result<Policy, FetchError> {
        let fetcher = Fetcher { tls: client, port, timeout };
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(fetcher.fetch("a.test", "127.0.0.1".parse().unwrap()))
    }

    const POLICY: &[u8] = b"version: STSv1\r\nmode: enforce\r\nmx: mx.a.test\r\nmax_age: 86400\r\n";

    #[test]
    fn a_policy_is_fetched_from_its_well_known_path_over_checked_tls() {
        let (server, client) = certified("mta-sts.a.test");
        let server =
            serve(server, answer("200 OK", Some("text/plain; charset=utf-8"), "", POLICY), Duration::ZERO);
        let policy = fetch(client, server.addr().port(), Duration::from_secs(5)).unwrap();
        assert_eq!((policy.mode, policy.max_age), (Mode::Enforce, 86_400));
        let request = server.requests().concat();
        assert!(request.starts_with("GET /.well-known/mta-sts.txt HTTP/1.1\r\n"), "{request}");
        assert!(request.to_ascii_lowercase().contains("host: mta-sts.a.test\r\n"), "{request}");
    }

    #[test]
    fn what_is_refused() {
        let cases: [(&str, Option<&str>, &str, Vec<u8>); 4] = [
            ("301 Moved Permanently", None, "Location: https://elsewhere.test/p\r\n", Vec::new()),
            ("404 Not Found", Some("text/plain"), "", b"no".to_vec()),
            ("200 OK", Some("text/html"), "", POLICY.to_vec()),
            ("200 OK", Some("text/plain"), "", vec![b' '; MAX_POLICY_SIZE + 10]),
        ];
        for (status, content_type, extra, body) in cases {
            let (server, client) = certified("mta-sts.a.test");
            let server = serve(server, answer(status, content_type, extra, &body), Duration::ZERO);
            let error = fetch(client, server.addr().port(), Duration::from_secs(5)).unwrap_err();
            let ok = match status {
                "301 Moved Permanently" => {
                    matches!(&error, FetchError::Redirect { status: 301, location, .. } if location == "https://elsewhere.test/p")
                }
                "404 Not Found" => matches!(error, FetchError::Status { status: 404, .. }),
                _ if content_type == Some("text/html") => matches!(error, FetchError::NotText { .. }),
                _ => matches!(error, FetchError::TooLarge { .. }),
            };
            assert!(ok, "{status} {content_type:?}: {error}");
        }
    }

    #[test]
    fn a_certificate_for_another_name_or_a_silent_server_fails() {
        let (server, client) = certified("www.a.test");
        let server = serve(server, answer("200 OK", Some("text/plain"), "", POLICY), Duration::ZERO);
        let error = fetch(client, server.addr().port(), Duration::from_secs(5)).unwrap_err();
        assert!(matches!(error, FetchError::Connect(ref why) if why.contains("TLS")), "{error}");

        let (server, client) = certified("mta-sts.a.test");
        let server = serve(server, answer("200 OK", Some("text/plain"), "", POLICY), Duration::from_secs(2));
        let error = fetch(client, server.addr().port(), Duration::from_millis(300)).unwrap_err();
        assert!(matches!(error, FetchError::Timeout { .. }), "{error}");
    }
}

//! HTTP/1.1 on hyper's client, on tokio: [`connect`] (plain or TLS, for serve's webhooks and
//! anything else that keeps a connection), and [`call`], one request on one connection on a
//! runtime of its own, bounded in time and in the size of the answer, for volley's commands
//! that call an API (`volley queue` calling serve's; plain `http://`, as serve's API listens:
//! put it behind a TLS proxy to reach it from afar).

use std::time::Duration;

use http_body_util::{BodyExt, Full, Limited};
use hyper::Request;
use hyper::body::Bytes;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use std::sync::Arc;

/// The largest answer read.
const MAX_ANSWER: usize = 16 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("`{0}` is not an http://HOST:PORT address")]
    Url(String),
    #[error("connecting to {0}: {1}")]
    Connect(String, std::io::Error),
    #[error("{0}: no answer within {1:?}")]
    Timeout(String, Duration),
    #[error("{0}: {1}")]
    Http(String, String),
}

/// An API's address: `http://HOST:PORT`, with an optional path prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BaseUrl {
    /// `HOST:PORT`, as connected to and sent as `Host`.
    pub authority: String,
    /// The path before each request's own (no final `/`).
    pub prefix: String,
}

impl BaseUrl {
    pub fn parse(text: &str) -> Result<BaseUrl, ClientError> {
        let bad = || ClientError::Url(text.to_owned());
        let rest = text.strip_prefix("http://").ok_or_else(bad)?;
        let (authority, path) = rest.split_once('/').map_or((rest, ""), |(a, p)| (a, p));
        if authority.is_empty() || authority.contains('@') {
            return Err(bad());
        }
        let authority = if authority.rsplit_once(':').is_some_and(|(_, port)| port.parse::<u16>().is_ok()) {
            authority.to_owned()
        } else {
            format!("{authority}:80")
        };
        let prefix = match path.trim_end_matches('/') {
            "" => String::new(),
            p => format!("/{p}"),
        };
        Ok(BaseUrl { authority, prefix })
    }
}

/// An answer: its status and body.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub body: Bytes,
}

/// Sends one request (`path` after the base's prefix, with a `Bearer` key if given, a JSON
/// body if given) and reads its answer, all within `timeout`.
pub fn call(
    base: &BaseUrl,
    method: &str,
    path: &str,
    bearer: Option<&str>,
    json: Option<Vec<u8>>,
    timeout: Duration,
) -> Result<Answer, ClientError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| ClientError::Connect(base.authority.clone(), e))?;
    let what = format!("{method} {}{}{path}", base.authority, base.prefix);
    runtime.block_on(async {
        tokio::time::timeout(timeout, exchange(base, method, path, bearer, json, &what))
            .await
            .map_err(|_| ClientError::Timeout(what.clone(), timeout))?
    })
}

async fn exchange(
    base: &BaseUrl,
    method: &str,
    path: &str,
    bearer: Option<&str>,
    json: Option<Vec<u8>>,
    what: &str,
) -> Result<Answer, ClientError> {
    let http = |e: &dyn std::fmt::Display| ClientError::Http(what.to_owned(), e.to_string());
    let stream = tokio::net::TcpStream::connect(&base.authority)
        .await
        .map_err(|e| ClientError::Connect(base.authority.clone(), e))?;
    let mut sender = handshake(TokioIo::new(stream)).await.map_err(|e| http(&e))?;
    let mut request = Request::builder()
        .method(method)
        .uri(format!("{}{path}", base.prefix))
        .header(hyper::header::HOST, &base.authority);
    if let Some(key) = bearer {
        request = request.header(hyper::header::AUTHORIZATION, format!("Bearer {key}"));
    }
    if json.is_some() {
        request = request.header(hyper::header::CONTENT_TYPE, "application/json");
    }
    let request = request.body(Full::new(Bytes::from(json.unwrap_or_default()))).map_err(|e| http(&e))?;
    let response = sender.send_request(request).await.map_err(|e| http(&e))?;
    let status = response.status().as_u16();
    let body =
        Limited::new(response.into_body(), MAX_ANSWER).collect().await.map_err(|e| http(&*e))?.to_bytes();
    Ok(Answer { status, body })
}

/// A connection to `host`:`port`, over TLS with `tls` (the certificate checked against
/// `host`) or plain without, ready for requests. Its driver runs as a task of the current
/// runtime and ends with the connection (when the sender is dropped).
pub async fn connect(
    host: &str,
    port: u16,
    tls: Option<&Arc<rustls::ClientConfig>>,
) -> Result<SendRequest<Full<Bytes>>, String> {
    let authority = if host.contains(':') { format!("[{host}]:{port}") } else { format!("{host}:{port}") };
    let tcp = tokio::net::TcpStream::connect((host, port))
        .await
        .map_err(|e| format!("connecting to {authority}: {e}"))?;
    let _ = tcp.set_nodelay(true);
    match tls {
        Some(tls) => over_tls(tcp, host, tls, &authority).await,
        None => handshake(TokioIo::new(tcp)).await.map_err(|e| e.to_string()),
    }
}

/// A connection to `addr` over TLS with `tls`, the certificate checked against `name` (a host
/// whose address volley's own resolver found), ready for requests.
pub async fn connect_at(
    addr: std::net::SocketAddr,
    name: &str,
    tls: &Arc<rustls::ClientConfig>,
) -> Result<SendRequest<Full<Bytes>>, String> {
    let tcp = tokio::net::TcpStream::connect(addr).await.map_err(|e| format!("connecting to {addr}: {e}"))?;
    let _ = tcp.set_nodelay(true);
    over_tls(tcp, name, tls, &format!("{name} at {addr}")).await
}

/// TLS on `tcp` for `name` (checked against its certificate), then HTTP/1.1; `what` names the
/// peer in errors.
async fn over_tls(
    tcp: tokio::net::TcpStream,
    name: &str,
    tls: &Arc<rustls::ClientConfig>,
    what: &str,
) -> Result<SendRequest<Full<Bytes>>, String> {
    let server =
        rustls::pki_types::ServerName::try_from(name.to_owned()).map_err(|e| format!("{name}: {e}"))?;
    let stream = tokio_rustls::TlsConnector::from(Arc::clone(tls))
        .connect(server, tcp)
        .await
        .map_err(|e| format!("TLS with {what}: {e}"))?;
    handshake(TokioIo::new(stream)).await.map_err(|e| e.to_string())
}

async fn handshake<T>(io: T) -> Result<SendRequest<Full<Bytes>>, hyper::Error>
where
    T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (sender, connection) = hyper::client::conn::http1::handshake(io).await?;
    tokio::spawn(connection);
    Ok(sender)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_base_url_is_plain_http_with_a_port_and_an_optional_prefix() {
        let url = |s: &str| BaseUrl::parse(s).map(|b| (b.authority, b.prefix));
        assert_eq!(url("http://127.0.0.1:8025").unwrap(), ("127.0.0.1:8025".into(), String::new()));
        assert_eq!(url("http://mail.test/volley/").unwrap(), ("mail.test:80".into(), "/volley".into()));
        assert_eq!(url("http://[::1]:8025/").unwrap(), ("[::1]:8025".into(), String::new()));
        for bad in ["https://x:1", "127.0.0.1:8025", "http://", "http://u:p@x:1"] {
            assert!(url(bad).is_err(), "{bad}");
        }
    }
}

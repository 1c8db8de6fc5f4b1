//! An HTTPS server for tests: one request per connection, each answered by the test's own
//! function from the request's head (an MTA-STS policy, a redirect, a slow answer). Blocking
//! rustls on a thread per connection; stops when dropped.

use std::io::Write as _;
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// What the server sends for a request: the whole response, after a delay.
pub type Answer = (Vec<u8>, Duration);

pub struct HttpsStub {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    requests: Arc<Mutex<Vec<String>>>,
    bodies: Arc<Mutex<Vec<Vec<u8>>>>,
    thread: Option<JoinHandle<()>>,
}

impl HttpsStub {
    /// Listens on `listen` with `tls`; `answer` is given each request's head (request line
    /// and headers).
    pub fn start(
        listen: SocketAddr,
        tls: Arc<rustls::ServerConfig>,
        answer: impl Fn(&str) -> Answer + Send + Sync + 'static,
    ) -> std::io::Result<HttpsStub> {
        let listener = TcpListener::bind(listen)?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let requests = Arc::new(Mutex::new(Vec::new()));
        let bodies = Arc::new(Mutex::new(Vec::new()));
        let (s, r, b) = (Arc::clone(&stop), Arc::clone(&requests), Arc::clone(&bodies));
        let answer = Arc::new(answer);
        let thread = std::thread::Builder::new().name("https-stub".into()).spawn(move || {
            while !s.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((tcp, _)) => {
                        let (tls, r, answer) = (Arc::clone(&tls), Arc::clone(&r), Arc::clone(&answer));
                        let b = Arc::clone(&b);
                        std::thread::spawn(move || {
                            let _ = tcp.set_nonblocking(false);
                            let _ = tcp.set_read_timeout(Some(Duration::from_secs(5)));
                            let Ok(conn) = rustls::ServerConnection::new(tls) else { return };
                            let mut stream = rustls::StreamOwned::new(conn, tcp);
                            let Some((head, body)) = read_request(&mut stream) else { return };
                            r.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(head.clone());
                            b.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(body);
                            let (response, delay) = answer(&head);
                            std::thread::sleep(delay);
                            let _ = stream.write_all(&response);
                            stream.conn.send_close_notify();
                            let _ = stream.flush();
                        });
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        })?;
        Ok(HttpsStub { addr, stop, requests, bodies, thread: Some(thread) })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The bodies of the requests read so far (as long as their `Content-Length`), in order.
    pub fn bodies(&self) -> Vec<Vec<u8>> {
        self.bodies.lock().map(|b| b.clone()).unwrap_or_default()
    }

    /// The heads of the requests read so far, in order.
    pub fn requests(&self) -> Vec<String> {
        self.requests.lock().map(|r| r.clone()).unwrap_or_default()
    }
}

impl Drop for HttpsStub {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A request's head, and its body as long as its `Content-Length` says (none without one).
fn read_request(stream: &mut impl std::io::Read) -> Option<(String, Vec<u8>)> {
    let mut data = Vec::new();
    let mut buf = [0u8; 4096];
    let end = loop {
        if let Some(at) = data.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => return None,
            Ok(n) => data.extend_from_slice(&buf[..n]),
        }
    };
    let head = String::from_utf8_lossy(&data[..end]).into_owned();
    let length = head
        .lines()
        .find_map(|l| l.split_once(':').filter(|(n, _)| n.eq_ignore_ascii_case("content-length")))
        .and_then(|(_, v)| v.trim().parse::<usize>().ok())
        .unwrap_or(0);
    let mut body = data.split_off(end);
    while body.len() < length {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => body.extend_from_slice(&buf[..n]),
        }
    }
    body.truncate(length);
    Some((head, body))
}

/// A response: `status` (`200 OK`), an optional content type, extra header lines (each ended
/// by CRLF), and the body.
pub fn response(status: &str, content_type: Option<&str>, extra: &str, body: &[u8]) -> Vec<u8> {
    let mut head = format!("HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n", body.len());
    if let Some(t) = content_type {
        head.push_str(&format!("Content-Type: {t}\r\n"));
    }
    head.push_str(extra);
    head.push_str("\r\n");
    let mut out = head.into_bytes();
    out.extend_from_slice(body);
    out
}

/// The `Host` header of a request's head, lower case.
pub fn host_of(head: &str) -> Option<String> {
    head.lines().find_map(|line| {
        let (name, value) = line.split_once(':')?;
        name.trim().eq_ignore_ascii_case("host").then(|| value.trim().to_ascii_lowercase())
    })
}

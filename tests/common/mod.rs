//! Helpers shared by the integration tests: an in-process sink and a raw scripted client.
#![allow(dead_code)]

pub mod campaign;
pub mod redis;
pub mod scripted;
pub mod serve;
pub mod webhook;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use mailvolley::proto::{Reply, ReplyParser};
use mailvolley::sink::{self, SinkConfig, SinkHandle};

/// A sink on an ephemeral loopback port.
pub fn sink(configure: impl FnOnce(&mut SinkConfig)) -> SinkHandle {
    let mut config = SinkConfig {
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        threads: 1,
        idle_timeout: Duration::from_secs(30),
        ..SinkConfig::default()
    };
    configure(&mut config);
    sink::start(config).expect("sink starts")
}

/// Sinks playing MX hosts: one per `127.0.0.x` on `port`, each dumping into `dir/sinkX`, with
/// STARTTLS offered when given a certificate.
pub fn mx_sinks(
    dir: &std::path::Path,
    port: u16,
    hosts: Vec<(u8, Option<mailvolley::tls::ServerTls>)>,
) -> std::collections::BTreeMap<u8, SinkHandle> {
    let mut sinks = std::collections::BTreeMap::new();
    for (x, tls) in hosts {
        let dump = dir.join(format!("sink{x}"));
        std::fs::create_dir_all(&dump).unwrap();
        let starttls = tls.is_some();
        let config = SinkConfig {
            listen: SocketAddr::from(([127, 0, 0, x], port)),
            threads: 1,
            dump: Some(dump),
            idle_timeout: Duration::from_secs(30),
            tls,
            starttls,
            ..SinkConfig::default()
        };
        sinks.insert(x, sink::start(config).expect("sink starts"));
    }
    sinks
}

/// A client that writes exactly the bytes it is given and parses replies with volley's parser.
pub struct Raw {
    pub stream: TcpStream,
    buf: Vec<u8>,
    parser: ReplyParser,
    /// How many reads returned data.
    pub reads: usize,
}

impl Raw {
    pub fn connect(addr: SocketAddr) -> Raw {
        let stream = TcpStream::connect(addr).expect("connect");
        stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        stream.set_nodelay(true).unwrap();
        Raw { stream, buf: Vec::new(), parser: ReplyParser::new(), reads: 0 }
    }

    /// Connects and consumes the greeting.
    pub fn greeted(addr: SocketAddr) -> Raw {
        let mut c = Raw::connect(addr);
        assert_eq!(c.reply().code, 220);
        c
    }

    pub fn send(&mut self, bytes: impl AsRef<[u8]>) {
        self.stream.write_all(bytes.as_ref()).expect("write");
    }

    /// The next reply; panics on a timeout or a closed connection.
    pub fn reply(&mut self) -> Reply {
        self.try_reply().expect("a reply before the connection closed")
    }

    /// The next reply, or `None` if the server closed the connection first.
    pub fn try_reply(&mut self) -> Option<Reply> {
        loop {
            if let Some((r, n)) = self.parser.parse(&self.buf).expect("well-formed reply") {
                let reply = r.to_owned();
                self.buf.drain(..n);
                return Some(reply);
            }
            let mut chunk = [0u8; 65536];
            match self.stream.read(&mut chunk) {
                Ok(0) => return None,
                Ok(n) => {
                    self.reads += 1;
                    self.buf.extend_from_slice(&chunk[..n]);
                }
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return None,
                Err(e) => panic!("read: {e}"),
            }
        }
    }

    pub fn codes(&mut self, n: usize) -> Vec<u16> {
        (0..n).map(|_| self.reply().code).collect()
    }

    /// Sends one command and returns the reply code.
    pub fn cmd(&mut self, line: &str) -> u16 {
        self.send(format!("{line}\r\n"));
        self.reply().code
    }

    /// Whether the server has closed the connection (reads EOF with nothing pending).
    pub fn closed(&mut self) -> bool {
        self.try_reply().is_none()
    }

    /// The server closed with FIN (EOF), not with a reset. Panics on a reset.
    pub fn closed_cleanly(&mut self) -> bool {
        let mut chunk = [0u8; 65536];
        loop {
            match self.stream.read(&mut chunk) {
                Ok(0) => return true,
                Ok(_) => continue,
                Err(e) => panic!("connection ended with {e} instead of a clean close"),
            }
        }
    }

    pub fn ehlo(&mut self) {
        self.send("EHLO tester\r\n");
        assert_eq!(self.reply().code, 250);
    }
}

/// Runs `body` (raw DATA content, terminator included) through one transaction.
pub fn data_transaction(c: &mut Raw, content: &[u8]) -> Reply {
    c.send("MAIL FROM:<a@test>\r\nRCPT TO:<b@test>\r\nDATA\r\n");
    assert_eq!(c.codes(3), vec![250, 250, 354]);
    c.send(content);
    c.reply()
}

/// The files `--dump` wrote, sorted by name, split into envelope and content.
pub fn dumped(dir: &std::path::Path) -> Vec<(String, Vec<u8>)> {
    let mut names: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "msg"))
        .collect();
    names.sort();
    names
        .into_iter()
        .map(|p| {
            let data = std::fs::read(&p).unwrap();
            let split = data.windows(4).position(|w| w == b"\r\n\r\n").expect("envelope separator");
            (String::from_utf8(data[..split].to_vec()).unwrap(), data[split + 4..].to_vec())
        })
        .collect()
}

/// Waits for an engine run to end (failing the test past `limit`) and returns its report.
pub fn join_within(
    running: mailvolley::engine::Running,
    limit: std::time::Duration,
) -> mailvolley::engine::Report {
    let deadline = std::time::Instant::now() + limit;
    while !running.is_finished() {
        assert!(std::time::Instant::now() < deadline, "run did not finish within {limit:?}");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    running.join().unwrap()
}

/// A fresh empty directory under the target dir.
pub fn temp_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("volley-test-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// `json` read as a TLS report by Stalwart's parser (mail-auth), an RFC 8460 implementation
/// not ours: it must read, with a date range, and every policy and result type one the RFC
/// names (the parser maps an unknown one to `Other`).
pub fn tls_report_read_by_mail_auth(json: &[u8]) -> mail_auth::report::tlsrpt::TlsReport {
    use mail_auth::report::tlsrpt::{PolicyType, ResultType, TlsReport};
    let report = TlsReport::parse_json(json).expect("mail-auth reads the report");
    assert!(report.date_range.start_datetime.to_timestamp() > 0, "start-datetime: {report:?}");
    assert!(
        report.date_range.end_datetime.to_timestamp() >= report.date_range.start_datetime.to_timestamp(),
        "{report:?}"
    );
    assert!(
        !report.report_id.is_empty() && report.organization_name.is_some() && report.contact_info.is_some()
    );
    for policy in &report.policies {
        assert_ne!(policy.policy.policy_type, PolicyType::Other, "{report:?}");
        assert!(!policy.policy.policy_domain.is_empty(), "{report:?}");
        let failed: u32 = policy.failure_details.iter().map(|f| f.failed_session_count).sum();
        assert_eq!(failed, policy.summary.total_failure, "{report:?}");
        assert!(policy.failure_details.iter().all(|f| f.result_type != ResultType::Other), "{report:?}");
    }
    report
}

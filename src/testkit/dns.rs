//! A tiny authoritative DNS responder over UDP, for tests and benchmarks of `send` on loopback:
//! MX, A and AAAA records from a zone text, and the failures a sender must survive (NXDOMAIN for
//! names it does not know, SERVFAIL, slow answers, no answer at all).
//!
//! Zone text, one record per line (`#` starts a comment):
//! ```text
//! example.test     MX 10 mx1.example.test
//! mx1.example.test A 127.0.0.2
//! v6.test          AAAA ::1
//! example.test     TXT v=spf1 ip4:127.0.0.0/8 -all   # the rest of the line, one string
//! 2.0.0.127.in-addr.arpa PTR mx1.example.test
//! null.test        MX 0 .
//! broken.test      SERVFAIL
//! slow.test        DELAY 3000      # answers after 3 s (records as usual)
//! gone.test        DROP            # never answers
//! ```

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use hickory_resolver::proto::op::{Message, MessageType, ResponseCode};
use hickory_resolver::proto::rr::rdata::{A, AAAA, MX, PTR, TXT};
use hickory_resolver::proto::rr::{Name, RData, Record, RecordType};

/// Records' TTL, in seconds.
const TTL: u32 = 300;

#[derive(Debug, Default, Clone)]
struct Entry {
    mx: Vec<(u16, String)>,
    a: Vec<Ipv4Addr>,
    aaaa: Vec<Ipv6Addr>,
    txt: Vec<String>,
    ptr: Vec<String>,
    servfail: bool,
    drop: bool,
    delay: Option<Duration>,
}

/// The names the responder knows.
#[derive(Debug, Default, Clone)]
pub struct Zone {
    names: HashMap<String, Entry>,
}

impl FromStr for Zone {
    type Err = String;

    fn from_str(text: &str) -> Result<Zone, String> {
        let mut zone = Zone::default();
        for (i, line) in text.lines().enumerate() {
            let line = line.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.get(1).is_some_and(|t| t.eq_ignore_ascii_case("TXT")) {
                // A TXT record is the rest of the line (comments and all: `#` is cut above).
                let (name, rest) = (fields[0], line[fields[0].len()..].trim_start());
                let text = rest[3..].trim();
                zone.names.entry(normalise(name)).or_default().txt.push(text.to_owned());
                continue;
            }
            let bad = || format!("zone line {}: {line:?}", i + 1);
            let name = fields.first().ok_or_else(bad)?;
            let entry = zone.names.entry(normalise(name)).or_default();
            match fields.get(1).map(|t| t.to_ascii_uppercase()).as_deref() {
                Some("MX") if fields.len() == 4 => {
                    entry.mx.push((fields[2].parse().map_err(|_| bad())?, normalise(fields[3])))
                }
                Some("A") if fields.len() == 3 => entry.a.push(fields[2].parse().map_err(|_| bad())?),
                Some("AAAA") if fields.len() == 3 => entry.aaaa.push(fields[2].parse().map_err(|_| bad())?),
                Some("PTR") if fields.len() == 3 => entry.ptr.push(normalise(fields[2])),
                Some("SERVFAIL") => entry.servfail = true,
                Some("DROP") => entry.drop = true,
                Some("DELAY") if fields.len() == 3 => {
                    entry.delay = Some(Duration::from_millis(fields[2].parse().map_err(|_| bad())?))
                }
                _ => return Err(bad()),
            }
        }
        Ok(zone)
    }
}

fn normalise(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

/// A running responder; stops when dropped.
pub struct DnsStub {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    queries: Arc<AtomicU64>,
    /// Every question asked, as `name TYPE` (the name as it came, lower-cased).
    log: Arc<std::sync::Mutex<Vec<String>>>,
    thread: Option<JoinHandle<()>>,
}

impl DnsStub {
    /// Serves `zone` on `addr` (port 0 picks one).
    pub fn start(addr: SocketAddr, zone: Zone) -> std::io::Result<DnsStub> {
        let socket = UdpSocket::bind(addr)?;
        socket.set_read_timeout(Some(Duration::from_millis(50)))?;
        let addr = socket.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let queries = Arc::new(AtomicU64::new(0));
        let log = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (s, q, l) = (Arc::clone(&stop), Arc::clone(&queries), Arc::clone(&log));
        let zone = Arc::new(zone);
        let thread = std::thread::Builder::new()
            .name("dns-stub".into())
            .spawn(move || serve(socket, zone, s, q, l))?;
        Ok(DnsStub { addr, stop, queries, log, thread: Some(thread) })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Queries received so far.
    pub fn queries(&self) -> u64 {
        self.queries.load(Ordering::Relaxed)
    }

    /// The questions asked so far, in order, as `name TYPE` (`xn--bcher-kva.test MX`).
    pub fn questions(&self) -> Vec<String> {
        self.log.lock().map(|l| l.clone()).unwrap_or_default()
    }
}

impl Drop for DnsStub {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve(
    socket: UdpSocket,
    zone: Arc<Zone>,
    stop: Arc<AtomicBool>,
    queries: Arc<AtomicU64>,
    log: Arc<std::sync::Mutex<Vec<String>>>,
) {
    let mut buf = [0u8; 4096];
    while !stop.load(Ordering::Relaxed) {
        let Ok((n, peer)) = socket.recv_from(&mut buf) else { continue };
        queries.fetch_add(1, Ordering::Relaxed);
        let Ok(request) = Message::from_vec(&buf[..n]) else { continue };
        let Some(query) = request.queries().first().cloned() else { continue };
        let name = normalise(&query.name().to_ascii());
        if let Ok(mut log) = log.lock() {
            // The labels' octets as they came on the wire, not hickory's rendering of them.
            let wire: Vec<String> =
                query.name().iter().map(|l| String::from_utf8_lossy(l).to_ascii_lowercase()).collect();
            log.push(format!("{} {}", wire.join("."), query.query_type()));
        }
        let entry = zone.names.get(&name);
        if entry.is_some_and(|e| e.drop) {
            continue;
        }
        let mut response = Message::new();
        response
            .set_id(request.id())
            .set_message_type(MessageType::Response)
            .set_op_code(request.op_code())
            .set_recursion_desired(request.recursion_desired())
            .set_recursion_available(true)
            .set_authoritative(true)
            .add_query(query.clone());
        match entry {
            None => {
                response.set_response_code(ResponseCode::NXDomain);
            }
            Some(e) if e.servfail => {
                response.set_response_code(ResponseCode::ServFail);
            }
            Some(e) => {
                for rdata in answers(e, query.query_type()) {
                    response.add_answer(Record::from_rdata(query.name().clone(), TTL, rdata));
                }
            }
        }
        let Ok(bytes) = response.to_vec() else { continue };
        match entry.and_then(|e| e.delay) {
            Some(delay) => {
                let Ok(socket) = socket.try_clone() else { continue };
                std::thread::spawn(move || {
                    std::thread::sleep(delay);
                    let _ = socket.send_to(&bytes, peer);
                });
            }
            None => {
                let _ = socket.send_to(&bytes, peer);
            }
        }
    }
}

fn answers(e: &Entry, kind: RecordType) -> Vec<RData> {
    match kind {
        RecordType::MX => {
            e.mx.iter()
                .map(|(pref, host)| {
                    let exchange = if host.is_empty() {
                        Name::root()
                    } else {
                        Name::from_ascii(format!("{host}.")).unwrap_or_else(|_| Name::root())
                    };
                    RData::MX(MX::new(*pref, exchange))
                })
                .collect()
        }
        RecordType::A => e.a.iter().map(|ip| RData::A(A(*ip))).collect(),
        RecordType::AAAA => e.aaaa.iter().map(|ip| RData::AAAA(AAAA(*ip))).collect(),
        // Long texts are split into strings of 255 octets, as a zone file would have them.
        RecordType::TXT => e
            .txt
            .iter()
            .map(|t| {
                let chunks = t.as_bytes().chunks(255).map(|c| String::from_utf8_lossy(c).into_owned());
                RData::TXT(TXT::new(chunks.collect()))
            })
            .collect(),
        RecordType::PTR => e
            .ptr
            .iter()
            .filter_map(|host| Name::from_ascii(format!("{host}.")).ok())
            .map(|name| RData::PTR(PTR(name)))
            .collect(),
        _ => Vec::new(),
    }
}

/// Convenience for tests: the address of `127.0.0.x`.
pub fn loopback(x: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, x))
}

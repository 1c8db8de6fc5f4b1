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
//! short.test       TTL 5           # its records live 5 s (300 s otherwise)
//! ```
//!
//! And DNSSEC (see [`super::dnssec`]), for resolvers that ask for it (the DO bit):
//! ```text
//! test             SIGNED          # a signed zone; its key is in DnsStub::trust_anchor()
//! _25._tcp.mx.test TLSA 3 1 1 0a1b...   # usage selector matching data (hex)
//! plain.test       ZONE            # a zone of its own, unsigned: delegated without DS
//! bad.test         BOGUS           # this name's signatures do not verify
//! ```
//! A name belongs to the nearest `SIGNED` or `ZONE` at or above it; names in none are
//! answered without SOA or signatures, as before.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use hickory_resolver::proto::op::{Edns, Message, MessageType, ResponseCode};
use hickory_resolver::proto::rr::rdata::{A, AAAA, MX, PTR, SOA, TLSA, TXT};
use hickory_resolver::proto::rr::{Name, RData, Record, RecordType};

use super::dnssec::{self, Signer};

/// Records' TTL, in seconds.
const TTL: u32 = 300;

#[derive(Debug, Default, Clone)]
struct Entry {
    mx: Vec<(u16, String)>,
    a: Vec<Ipv4Addr>,
    aaaa: Vec<Ipv6Addr>,
    txt: Vec<String>,
    ptr: Vec<String>,
    /// Usage, selector, matching type, data.
    tlsa: Vec<(u8, u8, u8, Vec<u8>)>,
    servfail: bool,
    drop: bool,
    delay: Option<Duration>,
    /// The apex of a signed zone, of an unsigned one.
    signed: bool,
    zone: bool,
    /// Its signatures are made not to verify.
    bogus: bool,
    /// Its records' TTL, if not [`TTL`].
    ttl: Option<u32>,
}

impl Entry {
    /// The types of the records it has (what an NSEC record at it lists).
    fn types(&self) -> Vec<RecordType> {
        let mut types = Vec::new();
        for (has, kind) in [
            (!self.mx.is_empty(), RecordType::MX),
            (!self.a.is_empty(), RecordType::A),
            (!self.aaaa.is_empty(), RecordType::AAAA),
            (!self.txt.is_empty(), RecordType::TXT),
            (!self.ptr.is_empty(), RecordType::PTR),
            (!self.tlsa.is_empty(), RecordType::TLSA),
        ] {
            if has {
                types.push(kind);
            }
        }
        types
    }
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
                Some("TLSA") if fields.len() == 6 => {
                    let number = |f: &str| f.parse::<u8>().map_err(|_| bad());
                    let data = hex(fields[5]).ok_or_else(bad)?;
                    entry.tlsa.push((number(fields[2])?, number(fields[3])?, number(fields[4])?, data));
                }
                Some("SIGNED") => entry.signed = true,
                Some("ZONE") => entry.zone = true,
                Some("BOGUS") => entry.bogus = true,
                Some("SERVFAIL") => entry.servfail = true,
                Some("DROP") => entry.drop = true,
                Some("TTL") if fields.len() == 3 => entry.ttl = Some(fields[2].parse().map_err(|_| bad())?),
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

fn hex(text: &str) -> Option<Vec<u8>> {
    if text.len() % 2 != 0 {
        return None;
    }
    (0..text.len()).step_by(2).map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok()).collect()
}

/// `name`'s parent (`None` for a single label).
fn parent(name: &str) -> Option<&str> {
    name.split_once('.').map(|(_, parent)| parent)
}

fn fqdn(name: &str) -> Name {
    Name::from_ascii(format!("{name}.")).unwrap_or_else(|_| Name::root())
}

impl Zone {
    fn is_apex(&self, name: &str) -> bool {
        self.names.get(name).is_some_and(|e| e.signed || e.zone)
    }

    /// The zone `name` is in: the nearest apex at or above it.
    fn apex_of<'a>(&self, mut name: &'a str) -> Option<&'a str> {
        loop {
            if self.is_apex(name) {
                return Some(name);
            }
            name = parent(name)?;
        }
    }

    /// Whether `name` has records or names below it (an empty non-terminal).
    fn exists(&self, name: &str) -> bool {
        let below = format!(".{name}");
        self.names.contains_key(name) || self.names.keys().any(|k| k.ends_with(&below))
    }

    /// The names of `apex`'s zone in canonical order, with the types each has: the NSEC chain.
    fn chain(&self, apex: &str) -> Vec<(Name, Vec<RecordType>)> {
        let mut owners = Vec::new();
        for (name, entry) in &self.names {
            let mut types = if name == apex {
                let mut types = vec![RecordType::SOA];
                if entry.signed {
                    types.push(RecordType::DNSKEY);
                }
                types
            } else if self.is_apex(name) {
                // A delegation point: the parent has its NS (and DS, if it is signed).
                if parent(name).and_then(|p| self.apex_of(p)) != Some(apex) {
                    continue;
                }
                let mut types = vec![RecordType::NS];
                if entry.signed {
                    types.push(RecordType::DS);
                }
                owners.push((fqdn(name), types));
                continue;
            } else if self.apex_of(name) == Some(apex) {
                Vec::new()
            } else {
                continue;
            };
            types.extend(entry.types());
            owners.push((fqdn(name), types));
        }
        owners.sort_by(|a, b| a.0.cmp(&b.0));
        owners
    }
}

/// A running responder; stops when dropped.
pub struct DnsStub {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    queries: Arc<AtomicU64>,
    /// Every question asked, as `name TYPE` (the name as it came, lower-cased).
    log: Arc<std::sync::Mutex<Vec<String>>>,
    thread: Option<JoinHandle<()>>,
    trust_anchor: String,
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
        let mut signers = HashMap::new();
        let mut trust_anchor = String::new();
        for (name, _) in zone.names.iter().filter(|(_, e)| e.signed) {
            let signer = Signer::new(&fqdn(name)).map_err(std::io::Error::other)?;
            // Keys of zones under a signed parent are vouched for by its DS records.
            let parent_signed = parent(name)
                .and_then(|p| zone.apex_of(p))
                .is_some_and(|a| zone.names.get(a).is_some_and(|e| e.signed));
            if !parent_signed {
                trust_anchor.push_str(&signer.anchor());
                trust_anchor.push('\n');
            }
            signers.insert(name.clone(), signer);
        }
        let zone = Arc::new(zone);
        let thread = std::thread::Builder::new()
            .name("dns-stub".into())
            .spawn(move || serve(socket, zone, signers, s, q, l))?;
        Ok(DnsStub { addr, stop, queries, log, thread: Some(thread), trust_anchor })
    }

    /// A trust-anchor file's text: the DNSKEY of each `SIGNED` zone without a signed parent.
    pub fn trust_anchor(&self) -> &str {
        &self.trust_anchor
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
    signers: HashMap<String, Signer>,
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
        let dnssec_ok = request.extensions().as_ref().is_some_and(|e| e.flags().dnssec_ok);
        if dnssec_ok {
            let mut edns = Edns::new();
            edns.set_dnssec_ok(true).set_max_payload(4096);
            response.set_edns(edns);
        }
        if entry.is_some_and(|e| e.servfail) {
            response.set_response_code(ResponseCode::ServFail);
        } else {
            let signers = if dnssec_ok { Some(&signers) } else { None };
            let answer = respond(&zone, signers, &name, query.name(), query.query_type());
            response.set_response_code(answer.code);
            response.add_answers(answer.answers);
            response.add_name_servers(answer.authority);
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

struct Response {
    code: ResponseCode,
    answers: Vec<Record>,
    authority: Vec<Record>,
}

/// The answer to `qname`'s `kind` records (`name`: the same, normalised), signed by
/// `signers` (when the resolver asked for DNSSEC) in a signed zone.
fn respond(
    zone: &Zone,
    signers: Option<&HashMap<String, Signer>>,
    name: &str,
    qname: &Name,
    kind: RecordType,
) -> Response {
    let entry = zone.names.get(name);
    let now =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as u32);
    // A zone's DS records are its parent's.
    let apex = match kind {
        RecordType::DS if zone.is_apex(name) => parent(name).and_then(|p| zone.apex_of(p)),
        _ => zone.apex_of(name),
    };
    let mut rdata = entry.map(|e| answers(e, kind)).unwrap_or_default();
    let own_signer = signers.and_then(|s| s.get(name));
    match kind {
        RecordType::SOA if zone.is_apex(name) => rdata.push(soa(name)),
        RecordType::DNSKEY => rdata.extend(own_signer.map(Signer::dnskey)),
        RecordType::DS if apex.is_some() => rdata.extend(own_signer.and_then(|s| s.ds().ok())),
        _ => {}
    }
    let ttl = entry.and_then(|e| e.ttl).unwrap_or(TTL);
    let answers: Vec<Record> = rdata.into_iter().map(|r| Record::from_rdata(qname.clone(), ttl, r)).collect();
    let Some(apex) = apex else {
        let code = if entry.is_some() { ResponseCode::NoError } else { ResponseCode::NXDomain };
        return Response { code, answers, authority: Vec::new() };
    };
    let signer = signers.and_then(|s| s.get(apex));
    if !answers.is_empty() {
        let signature = signer.and_then(|s| s.sign(&answers, ttl, now, entry.is_some_and(|e| e.bogus)));
        let mut answers = answers;
        answers.extend(signature);
        return Response { code: ResponseCode::NoError, answers, authority: Vec::new() };
    }
    // A denial: the zone's SOA, and in a signed zone the NSEC records that prove it: the one
    // at the name or covering it, and the one at or covering its parent (no wildcard there).
    let code = if zone.exists(name) { ResponseCode::NoError } else { ResponseCode::NXDomain };
    let soa = vec![Record::from_rdata(fqdn(apex), TTL, soa(apex))];
    let mut authority = soa.clone();
    if let Some(signer) = signer {
        authority.extend(signer.sign(&soa, TTL, now, false));
        let chain = zone.chain(apex);
        let wanted = fqdn(name);
        let mut proofs: Vec<usize> = Vec::new();
        for target in [wanted.clone(), wanted.base_name()] {
            let at = chain
                .iter()
                .rposition(|(owner, _)| *owner <= target)
                .unwrap_or(chain.len().saturating_sub(1));
            if !proofs.contains(&at) && at < chain.len() {
                proofs.push(at);
            }
        }
        for at in proofs {
            let (owner, types) = &chain[at];
            let next = &chain[(at + 1) % chain.len()].0;
            let record = vec![dnssec::nsec(owner, next, types, TTL)];
            authority.extend(signer.sign(&record, TTL, now, false));
            authority.extend(record);
        }
    }
    Response { code, answers: Vec::new(), authority }
}

/// The SOA record of a zone.
fn soa(apex: &str) -> RData {
    let (mname, rname) = (fqdn(&format!("ns.{apex}")), fqdn(&format!("hostmaster.{apex}")));
    RData::SOA(SOA::new(mname, rname, 1, 3600, 600, 86_400, TTL))
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
        RecordType::TLSA => e
            .tlsa
            .iter()
            .map(|(usage, selector, matching, data)| {
                RData::TLSA(TLSA::new((*usage).into(), (*selector).into(), (*matching).into(), data.clone()))
            })
            .collect(),
        _ => Vec::new(),
    }
}

/// Convenience for tests: the address of `127.0.0.x`.
pub fn loopback(x: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, x))
}

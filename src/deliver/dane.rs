//! DANE for SMTP (RFC 7672) on the DNS thread: for each MX host, whether DNSSEC vouches for
//! TLSA records at `_25._tcp.HOST`, looked up with a validating resolver of its own (the plain
//! one answers MX and address questions as before, unvalidated and cached apart).
//!
//! The rules (RFC 7672 §2.2): the host's address records are looked up validated first; only
//! when they are secure is its TLSA RRset looked for (an insecure name's TLSA records prove
//! nothing, §2.2.2). Secure TLSA records: STARTTLS is required and the certificate must match
//! one ([`crate::tls::dane`]); a secure set with none usable still requires TLS, unauthenticated
//! (§2.2). A secure denial, or an insecure answer: DANE does not apply. Anything else (a bogus
//! signature, a lookup that fails in a signed zone) makes the host unusable (§2.2.3): it is
//! skipped, and a domain with no usable host is deferred, never sent to in plaintext.
//!
//! DANE is only as good as the resolver's view of the DNSSEC chain: at start the trust
//! anchor's own zone must validate ([`Dane::probe`]); if it does not (an upstream that strips
//! signatures, or one not up yet), DANE is off, with a warning, as Postfix's `dane` level
//! falls back when its resolver does not validate; the DNS thread probes again every
//! [`DaneConfig::probe_again`] and turns DANE on once the zone validates.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use base64::Engine as _;
use hickory_resolver::TokioResolver;
use hickory_resolver::proto::ProtoErrorKind;
use hickory_resolver::proto::dnssec::{Algorithm, Proof, PublicKeyBuf, TrustAnchors};
use hickory_resolver::proto::rr::{Name, RData, RecordType};

use super::dns::{DnsConfig, describe, no_records, no_such_domain};
use crate::tls::dane::Tlsa;

/// How DANE is looked up.
#[derive(Debug, Clone)]
pub struct DaneConfig {
    /// DNSKEY records to trust (`NAME [TTL] [IN] DNSKEY FLAGS 3 ALG BASE64`); `None`: the
    /// root zone's keys built into hickory.
    pub trust_anchor: Option<PathBuf>,
    /// While the resolver's answers do not validate (see [`Dane::probe`]), how long to wait
    /// before asking again.
    pub probe_again: std::time::Duration,
}

impl DaneConfig {
    /// Validating up to `trust_anchor`'s keys (or the root's), probing again every minute
    /// while answers do not validate.
    pub fn new(trust_anchor: Option<PathBuf>) -> DaneConfig {
        DaneConfig { trust_anchor, probe_again: std::time::Duration::from_secs(60) }
    }
}

/// What DNSSEC says of one MX host's TLS.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum HostDane {
    /// Its addresses or its TLSA records are unsigned, or it has none: DANE does not apply.
    None,
    /// Validated TLSA records: STARTTLS required, the certificate matched against the usable
    /// ones (none usable: TLS required all the same, unauthenticated).
    Tlsa(Vec<Tlsa>),
    /// Its records failed validation, or could not be had from a signed zone: not to be used.
    Failed(String),
}

/// A trust-anchor file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum AnchorError {
    #[error("reading {0}: {1}")]
    Read(PathBuf, std::io::Error),
    #[error("{path} line {line}: {why}")]
    Line { path: PathBuf, line: usize, why: String },
    #[error("{0} has no DNSKEY record")]
    Empty(PathBuf),
}

/// Trust anchors and the zone they are for.
pub struct Anchors {
    pub keys: TrustAnchors,
    /// The owner of the first key: the zone whose validation proves the resolver works.
    pub zone: Name,
}

impl Anchors {
    pub fn root() -> Anchors {
        Anchors { keys: TrustAnchors::default(), zone: Name::root() }
    }

    pub fn load(path: &Path) -> Result<Anchors, AnchorError> {
        let text = std::fs::read_to_string(path).map_err(|e| AnchorError::Read(path.to_owned(), e))?;
        Anchors::parse(&text)
            .map_err(|(line, why)| AnchorError::Line { path: path.to_owned(), line, why })?
            .ok_or_else(|| AnchorError::Empty(path.to_owned()))
    }

    /// DNSKEY lines in zone-file form (`;` and `#` start comments); DS lines are refused
    /// (hickory trusts keys, not digests of them). `Ok(None)`: no key at all.
    pub fn parse(text: &str) -> Result<Option<Anchors>, (usize, String)> {
        let mut keys = TrustAnchors::empty();
        let mut zone = None;
        for (i, line) in text.lines().enumerate() {
            let line = line.split([';', '#']).next().unwrap_or("");
            let fields: Vec<&str> = line.split_whitespace().filter(|f| *f != "(" && *f != ")").collect();
            if fields.is_empty() {
                continue;
            }
            let bad = |why: &str| (i + 1, why.to_owned());
            let Some(at) = fields.iter().position(|f| f.eq_ignore_ascii_case("DNSKEY")) else {
                if fields.iter().any(|f| f.eq_ignore_ascii_case("DS")) {
                    return Err(bad("a DS record: give the DNSKEY record it is the digest of"));
                }
                return Err(bad("not a DNSKEY record"));
            };
            let [flags, protocol, algorithm, ..] = fields[at + 1..] else {
                return Err(bad("a DNSKEY record is FLAGS PROTOCOL ALGORITHM KEY"));
            };
            let number = |f: &str| f.parse::<u16>().map_err(|_| bad("FLAGS PROTOCOL ALGORITHM are numbers"));
            let (_flags, protocol, algorithm) = (number(flags)?, number(protocol)?, number(algorithm)?);
            if protocol != 3 {
                return Err(bad("a DNSKEY record's protocol is 3"));
            }
            let algorithm = u8::try_from(algorithm).map_err(|_| bad("no such algorithm"))?;
            let key = fields[at + 4..].concat();
            let key = base64::engine::general_purpose::STANDARD
                .decode(key)
                .map_err(|e| bad(&format!("the key is not base64: {e}")))?;
            if key.is_empty() {
                return Err(bad("the key is missing"));
            }
            if zone.is_none() {
                zone = Some(Name::from_ascii(fields[0]).map_err(|e| bad(&format!("owner name: {e}")))?);
            }
            keys.insert(&PublicKeyBuf::new(key, Algorithm::from_u8(algorithm)));
        }
        Ok(zone.map(|zone| Anchors { keys, zone }))
    }
}

/// The validating resolver.
pub struct Dane {
    resolver: TokioResolver,
    zone: Name,
}

impl Dane {
    /// A resolver asking `dns`'s server, validating up to `dane`'s trust anchors (built in a
    /// tokio runtime, as hickory asks).
    pub fn with(dns: &DnsConfig, dane: &DaneConfig) -> std::io::Result<Dane> {
        let anchors = match &dane.trust_anchor {
            Some(path) => Anchors::load(path).map_err(std::io::Error::other)?,
            None => Anchors::root(),
        };
        Dane::new(dns, anchors)
    }

    /// A resolver asking `dns`'s server, validating up to `anchors`.
    pub fn new(dns: &DnsConfig, anchors: Anchors) -> std::io::Result<Dane> {
        let resolver = super::dns::build_validating(dns, Arc::new(anchors.keys))?;
        Ok(Dane { resolver, zone: anchors.zone })
    }

    /// Whether the resolver's answers validate at all: the anchor zone's SOA must be secure.
    pub async fn probe(&self) -> Result<(), String> {
        let zone = &self.zone;
        match self.resolver.lookup(zone.clone(), RecordType::SOA).await {
            Ok(lookup) => {
                let proofs: Vec<Proof> = lookup.dnssec_iter().map(|r| r.proof()).collect();
                if !proofs.is_empty() && proofs.iter().all(Proof::is_secure) {
                    Ok(())
                } else {
                    Err(format!("the SOA record of {zone} does not validate ({})", proof_of(&proofs)))
                }
            }
            Err(e) => Err(format!("the SOA record of {zone}: {}", describe(&e))),
        }
    }

    /// What DNSSEC says of `host`'s TLS.
    pub async fn host(&self, host: &str) -> HostDane {
        self.host_until(host).await.0
    }

    /// What DNSSEC says of `host`'s TLS, and until when its TLSA records may be kept (their
    /// TTL; `None` when there are none): a key rollover is seen when they run out, not when
    /// the domain's MX answer does.
    pub async fn host_until(&self, host: &str) -> (HostDane, Option<Instant>) {
        let fqdn = format!("{}.", host.trim_end_matches('.'));
        // The addresses first: only a host whose name is signed can have TLSA records that count.
        match self.resolver.lookup_ip(fqdn.as_str()).await {
            Ok(ips) => {
                let proofs: Vec<Proof> = ips.as_lookup().dnssec_iter().map(|r| r.proof()).collect();
                if proofs.iter().any(|p| p.is_insecure()) || proofs.is_empty() {
                    return (HostDane::None, None);
                }
                if !proofs.iter().all(Proof::is_secure) {
                    let why = format!("{host}'s addresses do not validate ({})", proof_of(&proofs));
                    return (HostDane::Failed(why), None);
                }
            }
            // The plain resolver had its addresses: a validated lookup that fails (a timeout,
            // SERVFAIL) may be DNSSEC blocked on the path, so the host is not used (RFC 7672
            // §2.1.1) rather than sent to without DANE.
            Err(e) => {
                let dane = not_found(&e, host, "addresses").unwrap_or_else(|| {
                    HostDane::Failed(format!("{host}'s addresses, validated: {}", describe(&e)))
                });
                return (dane, None);
            }
        }
        let tlsa = format!("_25._tcp.{fqdn}");
        match self.resolver.lookup(tlsa.as_str(), RecordType::TLSA).await {
            Ok(lookup) => {
                let until = lookup.valid_until();
                let mut records = Vec::new();
                let mut proofs = Vec::new();
                for record in lookup.dnssec_iter() {
                    proofs.push(record.proof());
                    if let RData::TLSA(t) = record.into_parts().1 {
                        records.push(Tlsa {
                            usage: t.cert_usage().into(),
                            selector: t.selector().into(),
                            matching: t.matching().into(),
                            data: t.cert_data().to_vec(),
                        });
                    }
                }
                if proofs.iter().all(Proof::is_secure) && !records.is_empty() {
                    (HostDane::Tlsa(records), Some(until))
                } else if records.is_empty() || proofs.iter().any(|p| p.is_insecure()) {
                    (HostDane::None, None)
                } else {
                    (HostDane::Failed(format!("{tlsa} does not validate ({})", proof_of(&proofs))), None)
                }
            }
            Err(e) => {
                let dane = not_found(&e, host, "TLSA records")
                    .unwrap_or_else(|| HostDane::Failed(format!("{host}'s TLSA records: {}", describe(&e))));
                (dane, None)
            }
        }
    }
}

/// A failed lookup: a validated (or insecure) "no such records" is `Some(None)`; a denial that
/// did not validate, `Some(Failed)`; anything else (a timeout, SERVFAIL), `None`.
fn not_found(e: &hickory_resolver::ResolveError, host: &str, what: &str) -> Option<HostDane> {
    if no_records(e) || no_such_domain(e) {
        return Some(HostDane::None);
    }
    match e.proto().map(|p| p.kind()) {
        Some(ProtoErrorKind::Nsec { proof, .. }) if proof.is_insecure() => Some(HostDane::None),
        Some(ProtoErrorKind::Nsec { proof, .. }) => {
            Some(HostDane::Failed(format!("{host}'s {what}: the denial does not validate ({proof})")))
        }
        _ => None,
    }
}

fn proof_of(proofs: &[Proof]) -> String {
    let worst = proofs.iter().find(|p| !p.is_secure()).or(proofs.first());
    worst.map_or_else(|| "no records".to_owned(), Proof::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit::dns::{DnsStub, Zone};
    use hickory_resolver::proto::dnssec::PublicKey;

    #[test]
    fn trust_anchor_files_read_as_zone_files_write_them() {
        let text = "; the test root\n. 172800 IN DNSKEY 257 3 13 ( AAEC\n";
        let anchors = Anchors::parse(text).unwrap().unwrap();
        assert_eq!(anchors.zone, Name::root());
        assert_eq!(anchors.keys.len(), 1);
        let two = "test. IN DNSKEY 257 3 13 AAEC AwQF\nexample. DNSKEY 256 3 8 BgcI\n";
        let anchors = Anchors::parse(two).unwrap().unwrap();
        assert_eq!(anchors.zone, Name::from_ascii("test.").unwrap());
        assert_eq!(anchors.keys.len(), 2);
        assert_eq!(anchors.keys.get(0).map(|k| k.public_bytes().to_vec()), Some(vec![0, 1, 2, 3, 4, 5]));
        assert!(Anchors::parse("# nothing\n").unwrap().is_none());
        for (bad, why) in [
            (". IN DS 20326 8 2 E06D44B8", "DS"),
            (". IN DNSKEY 257 3", "FLAGS PROTOCOL"),
            (". IN DNSKEY 257 2 8 AAEC", "protocol is 3"),
            (". IN DNSKEY 257 3 8 !!", "base64"),
            ("hello", "not a DNSKEY"),
        ] {
            let (line, message) = Anchors::parse(&format!("\n{bad}")).err().unwrap();
            assert_eq!(line, 2);
            assert!(message.contains(why), "{bad}: {message}");
        }
    }

    fn hex(bytes: &str) -> Vec<u8> {
        (0..bytes.len()).step_by(2).map(|i| u8::from_str_radix(&bytes[i..i + 2], 16).unwrap()).collect()
    }

    /// Secure, insecure, bogus and absent TLSA records, as a validating resolver sees them
    /// from a signed test zone.
    #[test]
    fn hosts_are_classified_by_what_validates() {
        let digest = "0a".repeat(32);
        let zone: Zone = format!(
            "
            test SIGNED
            mx.test A 127.0.0.2
            _25._tcp.mx.test TLSA 3 1 1 {digest}
            bare.test A 127.0.0.3
            odd.test A 127.0.0.4
            _25._tcp.odd.test TLSA 0 0 1 {digest}
            bad.test A 127.0.0.5
            _25._tcp.bad.test TLSA 3 1 1 {digest}
            _25._tcp.bad.test BOGUS
            plain.test ZONE
            mx.plain.test A 127.0.0.6
            _25._tcp.mx.plain.test TLSA 3 1 1 {digest}
            "
        )
        .parse()
        .unwrap();
        let stub = DnsStub::start("127.0.0.1:0".parse().unwrap(), zone).unwrap();
        let anchors = Anchors::parse(stub.trust_anchor()).unwrap().unwrap();
        let dane = Dane::new(&DnsConfig::for_stub(stub.addr()), anchors).unwrap();
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(async {
            assert_eq!(dane.probe().await, Ok(()));
            let record = |usage| Tlsa {
                usage,
                selector: if usage == 3 { 1 } else { 0 },
                matching: 1,
                data: hex(&digest),
            };
            assert_eq!(dane.host("mx.test").await, HostDane::Tlsa(vec![record(3)]));
            assert_eq!(dane.host("odd.test").await, HostDane::Tlsa(vec![record(0)]), "secure, none usable");
            assert_eq!(dane.host("bare.test").await, HostDane::None, "a secure denial");
            assert_eq!(
                dane.host("mx.plain.test").await,
                HostDane::None,
                "an unsigned zone's records count for nothing"
            );
            let bad = dane.host("bad.test").await;
            assert!(matches!(&bad, HostDane::Failed(why) if why.contains("bad.test")), "{bad:?}");
        });
    }

    #[test]
    fn an_anchor_the_answers_do_not_validate_against_fails_the_probe() {
        let zone: Zone = "test SIGNED\nmx.test A 127.0.0.2\n".parse().unwrap();
        let stub = DnsStub::start("127.0.0.1:0".parse().unwrap(), zone).unwrap();
        let other: Zone = "test SIGNED\n".parse().unwrap();
        let other = DnsStub::start("127.0.0.1:0".parse().unwrap(), other).unwrap();
        let anchors = Anchors::parse(other.trust_anchor()).unwrap().unwrap();
        let dane = Dane::new(&DnsConfig::for_stub(stub.addr()), anchors).unwrap();
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let probe = runtime.block_on(dane.probe());
        assert!(probe.as_ref().is_err_and(|e| e.contains("test.")), "{probe:?}");
    }
}

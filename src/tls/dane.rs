//! Server certificates checked against an MX host's DNSSEC-validated TLSA records (DANE for
//! SMTP, RFC 7672 §3, with RFC 6698's records and RFC 7671's rules).
//!
//! Only the two usages SMTP can rely on are usable (RFC 7672 §3.1.3): DANE-EE(3), the server's
//! own certificate or key, checked without its names or dates (§3.1.1: the DNS, not a CA,
//! vouches for it); and DANE-TA(2), an authority's certificate or key that the server sends in
//! its chain, which then must verify up to it as a chain to a root would, names and dates
//! included (§3.1.2). PKIX-TA(0) and PKIX-EE(1) records are unusable, as are unknown selectors
//! and matching types: a set with none usable is told apart by [`Tlsa::usable`].

use std::collections::HashMap;
use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, Error, OtherError, RootCertStore, SignatureScheme,
};

/// Certificate usages (RFC 6698 §2.1.1) SMTP uses.
pub const DANE_TA: u8 = 2;
pub const DANE_EE: u8 = 3;

/// One TLSA record: what a certificate in the server's chain must match.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Tlsa {
    pub usage: u8,
    /// 0: the whole certificate; 1: its SubjectPublicKeyInfo.
    pub selector: u8,
    /// 0: the selected octets themselves; 1: their SHA-256; 2: their SHA-512.
    pub matching: u8,
    pub data: Vec<u8>,
}

/// The record as a zone file writes its data (`3 1 1 a1b2...`): how TLS reports name it.
impl std::fmt::Display for Tlsa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {} {} ", self.usage, self.selector, self.matching)?;
        self.data.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

impl Tlsa {
    /// Whether SMTP can use the record (RFC 7672 §3.1.3; unknown parameters are unusable,
    /// RFC 6698 §4.1, as is a digest of the wrong length).
    pub fn usable(&self) -> bool {
        let length_fits = match self.matching {
            0 => !self.data.is_empty(),
            1 => self.data.len() == 32,
            2 => self.data.len() == 64,
            _ => false,
        };
        matches!(self.usage, DANE_TA | DANE_EE) && self.selector <= 1 && length_fits
    }

    /// Whether `cert` (DER) matches the record.
    pub fn matches(&self, cert: &[u8]) -> bool {
        let selected = match self.selector {
            0 => cert,
            1 => match spki(cert) {
                Some(spki) => spki,
                None => return false,
            },
            _ => return false,
        };
        match self.matching {
            0 => selected == self.data.as_slice(),
            1 => ring::digest::digest(&ring::digest::SHA256, selected).as_ref() == self.data.as_slice(),
            2 => ring::digest::digest(&ring::digest::SHA512, selected).as_ref() == self.data.as_slice(),
            _ => false,
        }
    }
}

/// The certificate matched none of the host's TLSA records.
#[derive(Debug)]
pub struct NoTlsaMatch;

impl std::fmt::Display for NoTlsaMatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("it matches none of the host's TLSA records (DANE)")
    }
}

impl std::error::Error for NoTlsaMatch {}

/// Whether `error` says a certificate matched no TLSA record.
pub fn is_tlsa_mismatch(error: &CertificateError) -> bool {
    matches!(error, CertificateError::Other(OtherError(e)) if e.downcast_ref::<NoTlsaMatch>().is_some())
}

/// Checks a server's certificate against its host's usable TLSA records.
#[derive(Debug)]
pub struct DaneVerifier {
    records: Vec<Tlsa>,
    provider: Arc<CryptoProvider>,
}

impl DaneVerifier {
    /// `records`: the host's TLSA RRset; the unusable ones are left out.
    pub fn new(records: &[Tlsa], provider: Arc<CryptoProvider>) -> DaneVerifier {
        DaneVerifier { records: records.iter().filter(|r| r.usable()).cloned().collect(), provider }
    }

    fn any(&self, usage: u8, cert: &[u8]) -> bool {
        self.records.iter().any(|r| r.usage == usage && r.matches(cert))
    }
}

impl ServerCertVerifier for DaneVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        if self.any(DANE_EE, end_entity) {
            return Ok(ServerCertVerified::assertion());
        }
        let mut refused = None;
        for (i, anchor) in intermediates.iter().enumerate() {
            if !self.any(DANE_TA, anchor) {
                continue;
            }
            // The chain up to the matching certificate, which is trusted as a root is.
            let mut roots = RootCertStore::empty();
            roots.add(anchor.clone().into_owned())?;
            let chains =
                WebPkiServerVerifier::builder_with_provider(Arc::new(roots), Arc::clone(&self.provider))
                    .build()
                    .map_err(|e| Error::General(e.to_string()))?;
            match chains.verify_server_cert(end_entity, &intermediates[..i], server_name, ocsp_response, now)
            {
                Ok(verified) => return Ok(verified),
                Err(e) => refused = Some(e),
            }
        }
        // A chain to a matching authority that failed says why (a name, a date); else nothing matched.
        Err(refused.unwrap_or_else(|| {
            Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(NoTlsaMatch))))
        }))
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

/// A configuration for a destination's sessions when some of its MX hosts have TLSA records:
/// each such host's certificate is checked against its records (`hosts`, by lower-case name,
/// the name each session is opened for); the other hosts' by `otherwise` (TLS is required of
/// them all the same: one destination's sessions share one configuration).
pub fn client_config(
    hosts: HashMap<String, Vec<Tlsa>>,
    otherwise: Option<Arc<dyn ServerCertVerifier>>,
) -> Arc<ClientConfig> {
    let provider = super::config::client_provider();
    let verifier = Arc::new(ByHost::new(hosts, otherwise, Arc::clone(&provider)));
    // Infallible rather than a path that could leave a DANE destination unenforced: the
    // builder fails only for a provider without TLS 1.2 and 1.3 suites, and ring's built-in
    // one has both (every run's own configuration is built the same way at start).
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("ring's provider supports the default TLS versions")
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    Arc::new(config)
}

/// Picks the verifier by the host the session is for.
#[derive(Debug)]
struct ByHost {
    hosts: HashMap<String, DaneVerifier>,
    otherwise: Arc<dyn ServerCertVerifier>,
}

impl ByHost {
    fn new(
        hosts: HashMap<String, Vec<Tlsa>>,
        otherwise: Option<Arc<dyn ServerCertVerifier>>,
        provider: Arc<CryptoProvider>,
    ) -> ByHost {
        // A host whose records are all unusable still requires TLS, but not authenticated by
        // them (RFC 7672 §2.2): `otherwise` checks it.
        let hosts = hosts
            .into_iter()
            .map(|(h, r)| (h, DaneVerifier::new(&r, Arc::clone(&provider))))
            .filter(|(_, v)| !v.records.is_empty())
            .collect();
        let otherwise =
            otherwise.unwrap_or_else(|| Arc::new(super::config::AnyCertificate(Arc::clone(&provider))));
        ByHost { hosts, otherwise }
    }
}

impl ServerCertVerifier for ByHost {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        let dane = match server_name {
            ServerName::DnsName(name) => self.hosts.get(&name.as_ref().to_ascii_lowercase()),
            _ => None,
        };
        match dane {
            Some(dane) => dane.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now),
            None => {
                self.otherwise.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
            }
        }
    }

    // The handshake's signatures are checked alike whoever vouches for the key.
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.otherwise.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.otherwise.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.otherwise.supported_verify_schemes()
    }
}

/// The SubjectPublicKeyInfo of a certificate (DER), tag and length included: the seventh
/// element of its TBSCertificate, counting the optional `[0]` version (RFC 5280 §4.1).
pub fn spki(cert: &[u8]) -> Option<&[u8]> {
    let (certificate, _) = element(cert, 0x30)?;
    let (tbs, _) = element(certificate.contents, 0x30)?;
    let mut rest = tbs.contents;
    if rest.first() == Some(&0xa0) {
        rest = element(rest, 0xa0)?.1;
    }
    // serialNumber, signature, issuer, validity, subject.
    for tag in [0x02, 0x30, 0x30, 0x30, 0x30] {
        rest = element(rest, tag)?.1;
    }
    element(rest, 0x30).map(|(spki, _)| spki.whole)
}

struct Element<'a> {
    /// Tag, length and contents.
    whole: &'a [u8],
    contents: &'a [u8],
}

/// The DER element at the start of `input`, if it has tag `tag` and fits; and what follows it.
fn element(input: &[u8], tag: u8) -> Option<(Element<'_>, &[u8])> {
    let (&first, rest) = input.split_first()?;
    if first != tag {
        return None;
    }
    let (&len0, mut rest) = rest.split_first()?;
    let len = if len0 < 0x80 {
        usize::from(len0)
    } else {
        // Long form: 1 to 4 octets of length (0x80 alone is BER's indefinite length, not DER).
        let octets = usize::from(len0 & 0x7f);
        if octets == 0 || octets > 4 || rest.len() < octets {
            return None;
        }
        let (digits, after) = rest.split_at(octets);
        rest = after;
        digits.iter().fold(0usize, |n, &d| (n << 8) | usize::from(d))
    };
    if rest.len() < len {
        return None;
    }
    let header = input.len() - rest.len();
    let (contents, after) = rest.split_at(len);
    Some((Element { whole: &input[..header + len], contents }, after))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};

    struct Issued {
        der: CertificateDer<'static>,
        key: KeyPair,
    }

    fn self_signed(names: &[&str], ca: bool) -> (Issued, CertificateParams) {
        let mut params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
        if ca {
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        }
        let key = KeyPair::generate().unwrap();
        let der = params.clone().self_signed(&key).unwrap().der().clone();
        (Issued { der, key }, params)
    }

    fn signed_by(names: &[&str], ca: &(Issued, CertificateParams)) -> Issued {
        let params = CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
        let key = KeyPair::generate().unwrap();
        let issuer = ca.1.clone().self_signed(&ca.0.key).unwrap();
        let der = params.signed_by(&key, &issuer, &ca.0.key).unwrap().der().clone();
        Issued { der, key }
    }

    fn record(usage: u8, selector: u8, matching: u8, cert: &Issued) -> Tlsa {
        let selected = if selector == 0 { cert.der.to_vec() } else { cert.key.public_key_der() };
        let data = match matching {
            0 => selected,
            1 => ring::digest::digest(&ring::digest::SHA256, &selected).as_ref().to_vec(),
            _ => ring::digest::digest(&ring::digest::SHA512, &selected).as_ref().to_vec(),
        };
        Tlsa { usage, selector, matching, data }
    }

    fn verify(records: &[Tlsa], chain: &[&Issued], name: &str) -> Result<ServerCertVerified, Error> {
        let verifier = DaneVerifier::new(records, Arc::new(rustls::crypto::ring::default_provider()));
        let intermediates: Vec<_> = chain[1..].iter().map(|c| c.der.clone()).collect();
        let name = ServerName::try_from(name.to_owned()).unwrap();
        verifier.verify_server_cert(&chain[0].der, &intermediates, &name, &[], UnixTime::now())
    }

    #[test]
    fn each_host_is_checked_against_its_own_records() {
        let (a, _) = self_signed(&["a.test"], false);
        let (b, _) = self_signed(&["b.test"], false);
        let mut unusable = record(DANE_EE, 1, 1, &a);
        unusable.usage = 1;
        let hosts = HashMap::from([
            ("mx1.test".to_owned(), vec![record(DANE_EE, 1, 1, &a)]),
            ("mx3.test".to_owned(), vec![unusable]),
        ]);
        client_config(hosts.clone(), None);
        let verifier = ByHost::new(hosts, None, Arc::new(rustls::crypto::ring::default_provider()));
        let check = |cert: &Issued, host: &str| {
            let name = ServerName::try_from(host.to_owned()).unwrap();
            verifier.verify_server_cert(&cert.der, &[], &name, &[], UnixTime::now()).is_ok()
        };
        assert!(check(&a, "MX1.test"), "names compare without case");
        assert!(!check(&b, "mx1.test"), "another key for a host with records");
        assert!(check(&b, "mx2.test"), "a host without records: TLS, unauthenticated");
        assert!(check(&b, "mx3.test"), "a host with no usable record: the same");
    }

    #[test]
    fn the_public_key_is_found_in_the_certificate() {
        let (cert, _) = self_signed(&["mx.test"], false);
        assert_eq!(spki(&cert.der), Some(cert.key.public_key_der().as_slice()));
        assert_eq!(spki(&cert.der[..cert.der.len() - 1]), None, "cut short");
        assert_eq!(spki(b"\x30\x80"), None, "indefinite length");
        assert_eq!(spki(b""), None);
    }

    #[test]
    fn dane_ee_matches_the_server_certificate_whatever_its_names() {
        let (cert, _) = self_signed(&["elsewhere.test"], false);
        for (selector, matching) in [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2)] {
            let r = record(DANE_EE, selector, matching, &cert);
            assert!(r.usable());
            assert!(verify(&[r], &[&cert], "mx.test").is_ok(), "3 {selector} {matching}");
        }
        let (other, _) = self_signed(&["mx.test"], false);
        let refused = verify(&[record(DANE_EE, 1, 1, &other)], &[&cert], "mx.test").unwrap_err();
        assert!(matches!(&refused, Error::InvalidCertificate(e) if is_tlsa_mismatch(e)), "{refused:?}");
    }

    #[test]
    fn dane_ta_needs_a_chain_to_the_matching_authority_for_the_host_name() {
        let ca = self_signed(&["ca.test"], true);
        let server = signed_by(&["mx.test"], &ca);
        let ta = record(DANE_TA, 1, 1, &ca.0);
        assert!(verify(std::slice::from_ref(&ta), &[&server, &ca.0], "mx.test").is_ok());
        let refused = verify(std::slice::from_ref(&ta), &[&server, &ca.0], "other.test").unwrap_err();
        assert!(
            matches!(refused, Error::InvalidCertificate(CertificateError::NotValidForNameContext { .. })),
            "{refused:?}"
        );
        // The authority must be in the chain the server sends (RFC 7672 §3.1.2).
        assert!(verify(std::slice::from_ref(&ta), &[&server], "mx.test").is_err());
        // A DANE-TA record is no DANE-EE one: the server's own certificate does not stand for it.
        assert!(verify(&[record(DANE_TA, 0, 1, &server)], &[&server, &ca.0], "mx.test").is_err());
    }

    proptest::proptest! {
        /// Whatever a server sends, reading the key out of it neither panics nor reads past it;
        /// a real certificate with any octet changed still gives an element of itself, or none.
        #[test]
        fn the_der_reader_stays_in_bounds(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..300),
                                          at in 0usize..2000, octet in proptest::num::u8::ANY) {
            if let Some(found) = spki(&bytes) {
                proptest::prop_assert!(bytes.windows(found.len()).any(|w| w == found));
            }
            let mut cert = CERT.with(|c| c.clone());
            let i = at % cert.len();
            cert[i] = octet;
            if let Some(found) = spki(&cert) {
                proptest::prop_assert!(found.len() < cert.len() && found[0] == 0x30);
            }
        }
    }

    thread_local! {
        static CERT: Vec<u8> = self_signed(&["mx.test"], false).0.der.to_vec();
    }

    #[test]
    fn pkix_usages_and_unknown_parameters_are_unusable() {
        let (cert, _) = self_signed(&["mx.test"], false);
        for r in [
            record(0, 0, 1, &cert),
            record(1, 0, 1, &cert),
            Tlsa { selector: 2, ..record(DANE_EE, 0, 1, &cert) },
            Tlsa { matching: 3, ..record(DANE_EE, 0, 1, &cert) },
            Tlsa { data: vec![0; 31], ..record(DANE_EE, 0, 1, &cert) },
        ] {
            assert!(!r.usable(), "{r:?}");
            assert!(verify(&[r], &[&cert], "mx.test").is_err(), "unusable records match nothing");
        }
    }
}

//! DNSSEC for the test responder (see [`super::dns`]): each zone marked `SIGNED` gets an
//! ECDSA P-256 key made at start and its answers are signed as they go out (RFC 4034/4035:
//! RRSIG per RRset, DNSKEY at the apex, DS in the parent, NSEC chains for denials), so a
//! validating resolver trusting that key (the zone's [`Signer::anchor`] in a trust-anchor file)
//! sees secure, insecure (a zone delegated without DS) and bogus (a name marked `BOGUS`)
//! answers as it would on the Internet.

use base64::Engine as _;
use hickory_resolver::proto::dnssec::crypto::EcdsaSigningKey;
use hickory_resolver::proto::dnssec::rdata::{DNSKEY, DNSSECRData, DS, NSEC, RRSIG, SIG};
use hickory_resolver::proto::dnssec::{Algorithm, DigestType, PublicKey, SigningKey, TBS};
use hickory_resolver::proto::rr::{DNSClass, Name, RData, Record, RecordType};

/// Signatures hold from an hour ago to a day ahead: a clock a little off does not matter.
const VALIDITY: u32 = 86_400;

/// One signed zone's key.
pub struct Signer {
    apex: Name,
    key: EcdsaSigningKey,
    dnskey: DNSKEY,
    tag: u16,
}

impl Signer {
    pub fn new(apex: &Name) -> Result<Signer, String> {
        let algorithm = Algorithm::ECDSAP256SHA256;
        let pkcs8 = EcdsaSigningKey::generate_pkcs8(algorithm).map_err(|e| e.to_string())?;
        let key = EcdsaSigningKey::from_pkcs8(&pkcs8, algorithm).map_err(|e| e.to_string())?;
        let public = key.to_public_key().map_err(|e| e.to_string())?;
        // One key signs both the zone and its key set (a "combined signing key").
        let dnskey = DNSKEY::new(true, true, false, public);
        let tag = dnskey.calculate_key_tag().map_err(|e| e.to_string())?;
        Ok(Signer { apex: apex.clone(), key, dnskey, tag })
    }

    pub fn dnskey(&self) -> RData {
        RData::DNSSEC(DNSSECRData::DNSKEY(self.dnskey.clone()))
    }

    /// The DS record the parent zone publishes for this one (SHA-256).
    pub fn ds(&self) -> Result<RData, String> {
        let digest = self.dnskey.to_digest(&self.apex, DigestType::SHA256).map_err(|e| e.to_string())?;
        let ds = DS::new(self.tag, self.key.algorithm(), DigestType::SHA256, digest.as_ref().to_vec());
        Ok(RData::DNSSEC(DNSSECRData::DS(ds)))
    }

    /// A trust-anchor line for the key (`test. IN DNSKEY 257 3 13 ...`).
    pub fn anchor(&self) -> String {
        let key = base64::engine::general_purpose::STANDARD.encode(self.dnskey.public_key().public_bytes());
        let algorithm: u8 = self.key.algorithm().into();
        format!("{} IN DNSKEY {} 3 {algorithm} {key}", self.apex, self.dnskey.flags())
    }

    /// The RRSIG over `rrset` (records of one name and type); `corrupt`: one that does not
    /// verify.
    pub fn sign(&self, rrset: &[Record], ttl: u32, now: u32, corrupt: bool) -> Option<Record> {
        let first = rrset.first()?;
        let (expiration, inception) = (now + VALIDITY, now.saturating_sub(3600));
        let unsigned = SIG::new(
            first.record_type(),
            self.key.algorithm(),
            first.name().num_labels(),
            ttl,
            expiration,
            inception,
            self.tag,
            self.apex.clone(),
            Vec::new(),
        );
        let tbs = TBS::from_sig(first.name(), DNSClass::IN, &unsigned, rrset.iter()).ok()?;
        let mut signature = self.key.sign(&tbs).ok()?;
        if corrupt && let Some(last) = signature.last_mut() {
            *last ^= 0xff;
        }
        let rrsig = RRSIG::new(
            unsigned.type_covered(),
            unsigned.algorithm(),
            unsigned.num_labels(),
            ttl,
            expiration,
            inception,
            self.tag,
            self.apex.clone(),
            signature,
        );
        Some(Record::from_rdata(first.name().clone(), ttl, RData::DNSSEC(DNSSECRData::RRSIG(rrsig))))
    }
}

/// The NSEC record at `owner`, whose chain goes on to `next`, for the `types` there.
pub fn nsec(owner: &Name, next: &Name, types: &[RecordType], ttl: u32) -> Record {
    let rdata = NSEC::new_cover_self(next.clone(), types.iter().copied().chain([RecordType::RRSIG]));
    Record::from_rdata(owner.clone(), ttl, RData::DNSSEC(DNSSECRData::NSEC(rdata)))
}

//! Server certificates checked against `--ca-file`, where a certificate in the file is also
//! trusted as itself (pinning), and refusals explained in words a person can act on.
//!
//! A private relay's certificate is usually self-signed the usual way (`openssl req -x509`),
//! which makes it a CA certificate (`CA:TRUE`); webpki then refuses it as a server's own
//! certificate (`CaUsedAsEndEntity`) even when that very file is the trust anchor. Byte for
//! byte the certificate the user gave, it is accepted, provided it names the server: a pinned
//! certificate for another name is still refused.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{WebPkiServerVerifier, verify_server_name};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::ParsedCertificate;
use rustls::{CertificateError, DigitallySignedStruct, Error, OtherError, SignatureScheme};

#[derive(Debug)]
pub(super) struct Pinned {
    pub(super) chains: Arc<WebPkiServerVerifier>,
    /// The certificates of `--ca-file`, DER.
    pub(super) pinned: Vec<CertificateDer<'static>>,
}

impl ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        let refused = match self.chains.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        ) {
            Ok(verified) => return Ok(verified),
            Err(e) => e,
        };
        if self.pinned.iter().any(|p| p.as_ref() == end_entity.as_ref()) {
            verify_server_name(&ParsedCertificate::try_from(end_entity)?, server_name)?;
            return Ok(ServerCertVerified::assertion());
        }
        Err(refused)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.chains.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.chains.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.chains.supported_verify_schemes()
    }
}

/// Why a certificate was refused, and what to do about it.
pub(super) fn explain(error: &CertificateError) -> String {
    let what = match error {
        CertificateError::UnknownIssuer => {
            "signed by no authority volley trusts: give the authority's certificate (or the server's own, \
             to trust it as itself) with --ca-file"
        }
        CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
            "it is not for the name connected to: connect by a name it lists (--relay HOST), or give the \
             server a certificate for that name"
        }
        CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
            "it has expired: the server needs a new certificate"
        }
        CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
            "it is not valid yet: check this machine's clock and the server's"
        }
        CertificateError::Other(OtherError(e)) if format!("{e:?}").contains("CaUsedAsEndEntity") => {
            "the server presents a CA certificate as its own (a self-signed `openssl req -x509` one): give \
             that very certificate with --ca-file to trust it as itself"
        }
        e if super::dane::is_tlsa_mismatch(e) => {
            "its TLSA records in the DNS name another certificate: the receiver must publish records \
             for the certificate its server presents"
        }
        _ => "check the server's certificate chain, or give its authority with --ca-file",
    };
    // rustls shows a custom error by its Debug form: say ours in words.
    match error {
        e if super::dane::is_tlsa_mismatch(e) => format!("{what} ({})", super::dane::NoTlsaMatch),
        _ => format!("{what} ({error})"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_refusal_says_what_to_do() {
        for (error, advice) in [
            (CertificateError::UnknownIssuer, "--ca-file"),
            (CertificateError::NotValidForName, "a name it lists"),
            (CertificateError::Expired, "new certificate"),
            (CertificateError::NotValidYet, "clock"),
            (CertificateError::BadSignature, "chain"),
            (CertificateError::Other(OtherError(Arc::new(super::super::dane::NoTlsaMatch))), "TLSA records"),
        ] {
            assert!(explain(&error).contains(advice), "{error:?}: {}", explain(&error));
        }
    }
}

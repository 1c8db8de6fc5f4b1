//! TLS configurations: the client's, one per run and shared by every core (so sessions resume
//! across cores), chosen by policy; the sink's, from PEM files or a certificate made at start.

use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};

use super::TlsError;
use super::pinned::Pinned;

/// The `ring` provider: the only one built (aws-lc is slow to build here).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The client's provider: AES-128-GCM first. With AES instructions it encrypts faster than
/// AES-256 and its key schedule hashes with SHA-256 rather than SHA-384 (software-only SHA-512 in
/// ring: a tenth of a handshake's cost in profiles); it is TLS 1.3's mandatory suite, and a
/// server still picks by its own preference if it has one.
pub(super) fn client_provider() -> Arc<CryptoProvider> {
    let mut provider = rustls::crypto::ring::default_provider();
    let rank = |s: &rustls::SupportedCipherSuite| match s.suite() {
        rustls::CipherSuite::TLS13_AES_128_GCM_SHA256 => 0,
        rustls::CipherSuite::TLS13_AES_256_GCM_SHA384 => 1,
        _ => 2,
    };
    provider.cipher_suites.sort_by_key(rank);
    Arc::new(provider)
}

/// How much TLS a client insists on. One word each, shared by every command that sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum TlsPolicy {
    /// Plaintext; STARTTLS is never sent.
    None,
    /// STARTTLS when the server offers it, certificate not checked; plaintext when it is not
    /// offered, and on a new connection after a failed handshake.
    Opportunistic,
    /// Encrypted or nothing, certificate not checked.
    Required,
    /// Encrypted, with the certificate chain and name checked.
    Verify,
}

impl TlsPolicy {
    pub fn name(self) -> &'static str {
        match self {
            TlsPolicy::None => "none",
            TlsPolicy::Opportunistic => "opportunistic",
            TlsPolicy::Required => "required",
            TlsPolicy::Verify => "verify",
        }
    }

    /// Whether a session without TLS must fail rather than go on in plaintext.
    pub fn insists(self) -> bool {
        matches!(self, TlsPolicy::Required | TlsPolicy::Verify)
    }
}

/// A client's TLS settings for a run.
#[derive(Debug, Clone)]
pub struct ClientTls {
    pub policy: TlsPolicy,
    /// TLS from the first byte (port 465), rather than after STARTTLS.
    pub implicit: bool,
    /// The certificate is checked (policy `verify` without `--insecure`).
    pub verifies: bool,
    pub config: Arc<ClientConfig>,
}

impl ClientTls {
    /// `ca_file` replaces the built-in roots (Mozilla's, from `webpki-roots`); `insecure`
    /// turns checking off even under `verify`.
    pub fn new(
        policy: TlsPolicy,
        implicit: bool,
        ca_file: Option<&Path>,
        insecure: bool,
    ) -> Result<Self, TlsError> {
        let provider = client_provider();
        let verifies = policy == TlsPolicy::Verify && !insecure;
        let builder = ClientConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Setup(e.to_string()))?;
        let config = if verifies {
            builder
                .dangerous()
                .with_custom_certificate_verifier(checking(ca_file, &provider)?)
                .with_no_client_auth()
        } else {
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
                .with_no_client_auth()
        };
        // Resumption is on by default (an in-memory cache in the shared config); SNI is sent for
        // names, not for IP addresses.
        Ok(ClientTls { policy, implicit, verifies, config: Arc::new(config) })
    }

    /// Every connection makes a full handshake (to measure what one costs).
    pub fn without_resumption(mut self) -> Self {
        let mut config = (*self.config).clone();
        config.resumption = rustls::client::Resumption::disabled();
        self.config = Arc::new(config);
        self
    }

    /// The name a server is checked against (and sent as SNI): a DNS name or an IP address.
    pub fn server_name(host: &str) -> Result<ServerName<'static>, TlsError> {
        let host = host.trim_start_matches('[').trim_end_matches(']');
        ServerName::try_from(host.to_owned())
            .map_err(|e| TlsError::Setup(format!("server name {host:?}: {e}")))
    }
}

/// The sink's TLS: one configuration shared by its threads.
#[derive(Debug, Clone)]
pub struct ServerTls {
    pub config: Arc<ServerConfig>,
    /// The certificate was made at start (self-signed) rather than loaded.
    pub self_signed: bool,
}

impl ServerTls {
    /// From a PEM certificate chain and a PEM private key.
    pub fn from_files(cert: &Path, key: &Path) -> Result<Self, TlsError> {
        let certs = read_certs(cert)?;
        let key = PrivateKeyDer::from_pem_file(key)
            .map_err(|e| TlsError::Setup(format!("{}: {e}", key.display())))?;
        Ok(ServerTls { config: server_config(certs, key)?, self_signed: false })
    }

    /// A self-signed certificate for `names` (DNS names or IP addresses), made now.
    pub fn self_signed(names: &[String]) -> Result<Self, TlsError> {
        let certified =
            rcgen::generate_simple_self_signed(names.to_vec()).map_err(|e| TlsError::Setup(e.to_string()))?;
        let key = PrivateKeyDer::Pkcs8(certified.key_pair.serialize_der().into());
        Ok(ServerTls { config: server_config(vec![certified.cert.der().clone()], key)?, self_signed: true })
    }
}

#[cfg(test)]
pub(super) fn tests_server_config(
    certs: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Arc<ServerConfig> {
    server_config(certs, key).expect("valid test certificate")
}

fn server_config(
    certs: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<Arc<ServerConfig>, TlsError> {
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Setup(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| TlsError::Setup(e.to_string()))?;
    // Stateless tickets: resumption without a session cache shared by the threads.
    config.ticketer = rustls::crypto::ring::Ticketer::new().map_err(|e| TlsError::Setup(e.to_string()))?;
    Ok(Arc::new(config))
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs: Vec<_> = CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| TlsError::Setup(format!("{}: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(TlsError::Setup(format!("{}: no certificate in the file", path.display())));
    }
    Ok(certs)
}

/// The check of policy `verify`: chains against Mozilla's roots, or against `ca_file`'s
/// certificates, which are also trusted as the server's own (see `pinned`).
fn checking(ca_file: Option<&Path>, provider: &Arc<CryptoProvider>) -> Result<Arc<Pinned>, TlsError> {
    let mut roots = RootCertStore::empty();
    let mut pinned = Vec::new();
    match ca_file {
        Some(path) => {
            for cert in read_certs(path)? {
                pinned.push(cert.clone());
                roots.add(cert).map_err(|e| TlsError::Setup(format!("{}: {e}", path.display())))?;
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    let chains =
        rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots), Arc::clone(provider))
            .build()
            .map_err(|e| TlsError::Setup(e.to_string()))?;
    Ok(Arc::new(Pinned { chains, pinned }))
}

/// Policy `verify`'s certificate check made after the handshake: what it says of a session
/// whose own policy did not check (a receiver's MTA-STS policy in testing mode, whose failures
/// are reported, not enforced).
#[derive(Debug, Clone)]
pub struct CertificateCheck(Arc<Pinned>);

impl CertificateCheck {
    /// Against `ca_file`'s certificates, else Mozilla's roots.
    pub fn new(ca_file: Option<&Path>) -> Result<CertificateCheck, TlsError> {
        Ok(CertificateCheck(checking(ca_file, &client_provider())?))
    }

    /// The check as a verifier, for configurations that check during the handshake.
    pub fn verifier(&self) -> Arc<dyn ServerCertVerifier> {
        Arc::clone(&self.0) as Arc<dyn ServerCertVerifier>
    }

    /// Whether the certificate `layer`'s peer presented is valid for `name` now.
    pub fn check(&self, layer: &super::TlsLayer, name: &ServerName<'_>) -> Result<(), TlsError> {
        let Some((own, chain)) = layer.peer_certificates().and_then(<[_]>::split_first) else {
            return Err(TlsError::Certificate(
                super::CertificateProblem::Other,
                "no certificate presented".into(),
            ));
        };
        self.0.verify_server_cert(own, chain, name, &[], UnixTime::now()).map(|_| ()).map_err(TlsError::from)
    }
}

/// Accepts any certificate (policies `opportunistic` and `required`, and `--insecure`), but
/// still checks that the server holds its key: the handshake signatures are verified.
#[derive(Debug)]
pub(super) struct AnyCertificate(pub(super) Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

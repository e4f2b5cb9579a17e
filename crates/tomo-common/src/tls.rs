//! TLS client configuration for everything that dials the control plane (the agent, the CLI).
//!
//! Verification is always on: against the webpki roots, or against a pinned CA file. The only
//! exception is the agent's explicit development mode ([`Trust::InsecureDev`]), which the caller
//! must announce with a warning at every connect.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

/// Whom the client trusts.
#[derive(Debug, Clone)]
pub enum Trust {
    /// The public webpki roots.
    WebPki,
    /// Only the CAs in this PEM file (self-signed setups pin their CA this way).
    CaFile(PathBuf),
    /// No verification at all. Development only; callers warn at every connect.
    InsecureDev,
}

/// Errors building a TLS configuration.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read CA file {path}: {source}")]
    ReadCa {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("CA file {0} holds no usable certificate")]
    NoCa(PathBuf),
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
}

/// The one crypto provider of the tree.
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The RFC 9266 `tls-exporter` binding of an established connection, or `None` when it is not
/// TLS 1.3 (a TLS 1.2 exporter is only a safe binding with the extended master secret, which a
/// peer may not offer; agents speak TLS 1.3 only). Each end computes it from its own connection:
/// a relay that terminates TLS sits between two different bindings.
pub fn channel_binding<D>(
    conn: &rustls::ConnectionCommon<D>,
) -> Option<tomo_proto::handshake::ChannelBinding> {
    if conn.protocol_version() != Some(rustls::ProtocolVersion::TLSv1_3) {
        return None;
    }
    conn.export_keying_material([0u8; 32], tomo_proto::handshake::EXPORTER_LABEL, Some(&[]))
        .ok()
        .map(tomo_proto::handshake::ChannelBinding)
}

/// A client configuration with TLS 1.2+ and the given trust.
pub fn client_config(trust: &Trust) -> Result<rustls::ClientConfig, TlsError> {
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?;
    let config = match trust {
        Trust::WebPki => {
            let roots = rustls::RootCertStore {
                roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
            };
            builder.with_root_certificates(roots).with_no_client_auth()
        }
        Trust::CaFile(path) => builder
            .with_root_certificates(load_roots(path)?)
            .with_no_client_auth(),
        Trust::InsecureDev => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerify(provider())))
            .with_no_client_auth(),
    };
    Ok(config)
}

/// Loads every certificate of a PEM file as a trust anchor.
pub fn load_roots(path: &Path) -> Result<rustls::RootCertStore, TlsError> {
    let pem = std::fs::read(path).map_err(|source| TlsError::ReadCa {
        path: path.to_owned(),
        source,
    })?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&pem).flatten() {
        let _ = roots.add(cert);
    }
    if roots.is_empty() {
        return Err(TlsError::NoCa(path.to_owned()));
    }
    Ok(roots)
}

/// Accepts any certificate but still checks handshake signatures. Development only.
#[derive(Debug)]
struct NoVerify(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

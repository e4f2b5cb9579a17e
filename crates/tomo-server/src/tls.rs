//! The control plane's TLS: a certificate and key given by the operator, or, for development, a
//! private CA and a server certificate generated once into `<data-dir>/tls/`. Agents and the CLI
//! pin that CA (`ca.pem`) instead of turning verification off.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// Where the server's certificate comes from.
#[derive(Debug, Clone)]
pub enum TlsSource {
    Files {
        cert: PathBuf,
        key: PathBuf,
    },
    /// Generate (once) a development CA and server certificate in the data directory.
    SelfSigned,
}

/// TLS setup failures.
#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}: no certificate found")]
    NoCert(PathBuf),
    #[error("{0}: no private key found")]
    NoKey(PathBuf),
    /// The generated certificate does not name the public URL's host: agents dialing that
    /// name would fail TLS.
    #[error(
        "the generated certificate in {dir} does not cover {host} (the public URL's host): remove {dir} to generate a new CA and certificate that do (agents registered before must then be given the new ca.pem), or pass --tls-cert/--tls-key"
    )]
    NotCovered { dir: PathBuf, host: String },
    #[error("certificate generation: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
}

/// The server configuration, and the CA file clients should pin when self-signed.
#[derive(Debug)]
pub struct ServerTls {
    pub config: Arc<rustls::ServerConfig>,
    pub ca_file: Option<PathBuf>,
}

/// Builds the server's TLS configuration (TLS 1.2 and 1.3, HTTP/1.1). A generated certificate
/// covers `localhost`, `127.0.0.1`, `::1`, the machine's host name and `public_host` (the public
/// URL's host); one generated before without `public_host` is refused, since its CA key is gone
/// and no new certificate can be issued under the CA that agents pin.
pub fn load(
    source: &TlsSource,
    data_dir: &Path,
    public_host: Option<&str>,
) -> Result<ServerTls, TlsSetupError> {
    let (cert, key, ca_file) = match source {
        TlsSource::Files { cert, key } => (cert.clone(), key.clone(), None),
        TlsSource::SelfSigned => {
            let dir = data_dir.join("tls");
            let (cert, key, ca) = (
                dir.join("server.pem"),
                dir.join("server.key"),
                dir.join("ca.pem"),
            );
            if !(cert.exists() && key.exists() && ca.exists()) {
                generate(&dir, public_host)?;
            } else if let Some(host) = public_host
                && !covered(&dir).iter().any(|n| n.eq_ignore_ascii_case(host))
            {
                return Err(TlsSetupError::NotCovered {
                    dir,
                    host: host.to_owned(),
                });
            }
            (cert, key, Some(ca))
        }
    };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&cert)
        .map_err(|e| TlsSetupError::Io {
            path: cert.clone(),
            source: std::io::Error::other(e.to_string()),
        })?
        .filter_map(Result::ok)
        .collect();
    if certs.is_empty() {
        return Err(TlsSetupError::NoCert(cert));
    }
    let key = PrivateKeyDer::from_pem_file(&key).map_err(|_| TlsSetupError::NoKey(key.clone()))?;
    let mut config = rustls::ServerConfig::builder_with_provider(tomo_common::tls::provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    // No TLS 1.3 session tickets: agents keep one connection for days and reconnect after a
    // failure or a restart of this process, which forgets every session anyway; the two tickets
    // rustls sends by default were made, stored and sent for nothing at every connection.
    config.send_tls13_tickets = 0;
    Ok(ServerTls {
        config: Arc::new(config),
        ca_file,
    })
}

/// The names a generated certificate covers, one per line, next to it.
const NAMES_FILE: &str = "names";

/// The names the generated certificate in `dir` covers (from [`NAMES_FILE`]; a certificate
/// generated before that file existed covers the default names only).
fn covered(dir: &Path) -> Vec<String> {
    match std::fs::read_to_string(dir.join(NAMES_FILE)) {
        Ok(text) => text.lines().map(str::to_owned).collect(),
        Err(_) => {
            let mut names = vec!["localhost".to_owned(), "127.0.0.1".into(), "::1".into()];
            if let Ok(h) = std::fs::read_to_string("/proc/sys/kernel/hostname") {
                names.push(h.trim().to_owned());
            }
            names
        }
    }
}

/// Writes `ca.pem`, `server.pem` and `server.key` (0600) into `dir`. The CA key is never
/// written: nothing can issue another certificate under this CA.
fn generate(dir: &Path, public_host: Option<&str>) -> Result<(), TlsSetupError> {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    };
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| TlsSetupError::Io { path, source }
    };
    tomo_common::fs::create_private_dir(dir).map_err(io(dir))?;

    let ca_key = KeyPair::generate()?;
    let mut ca = CertificateParams::default();
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.distinguished_name
        .push(DnType::CommonName, "tomo development CA");
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_cert = ca.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca, ca_key);

    let mut names = vec![
        "localhost".to_owned(),
        "127.0.0.1".to_owned(),
        "::1".to_owned(),
    ];
    if let Ok(h) = std::fs::read_to_string("/proc/sys/kernel/hostname") {
        let h = h.trim();
        if !h.is_empty() && h != "localhost" {
            names.push(h.to_owned());
        }
    }
    if let Some(h) = public_host
        && !names.iter().any(|n| n.eq_ignore_ascii_case(h))
    {
        names.push(h.to_owned());
    }
    let names_path = dir.join(NAMES_FILE);
    tomo_common::fs::write_private(&names_path, names.join("\n").as_bytes())
        .map_err(io(&names_path))?;
    let mut leaf = CertificateParams::new(names)?;
    leaf.distinguished_name
        .push(DnType::CommonName, "tomo control plane");
    let leaf_key = KeyPair::generate()?;
    let leaf_cert = leaf.signed_by(&leaf_key, &issuer)?;

    let ca_path = dir.join("ca.pem");
    tomo_common::fs::write_private(&ca_path, ca_cert.pem().as_bytes()).map_err(io(&ca_path))?;
    let cert_path = dir.join("server.pem");
    tomo_common::fs::write_private(&cert_path, leaf_cert.pem().as_bytes())
        .map_err(io(&cert_path))?;
    let key_path = dir.join("server.key");
    tomo_common::fs::write_private(&key_path, leaf_key.serialize_pem().as_bytes())
        .map_err(io(&key_path))?;
    tracing::info!(dir = %dir.display(), "generated a development CA and server certificate");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::client::danger::ServerCertVerifier as _;
    use rustls::pki_types::{ServerName, UnixTime};

    /// Whether a client pinning the generated CA accepts the generated certificate for `name`.
    fn verifies(dir: &Path, name: &str) -> bool {
        let tls = dir.join("tls");
        let roots = tomo_common::tls::load_roots(&tls.join("ca.pem")).expect("roots");
        let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            tomo_common::tls::provider(),
        )
        .build()
        .expect("verifier");
        let chain: Vec<CertificateDer<'static>> =
            CertificateDer::pem_file_iter(tls.join("server.pem"))
                .expect("pem")
                .filter_map(Result::ok)
                .collect();
        let server = ServerName::try_from(name.to_owned()).expect("name");
        verifier
            .verify_server_cert(&chain[0], &chain[1..], &server, &[], UnixTime::now())
            .is_ok()
    }

    /// Issue 17.3: `tomo server --public-url https://NAME` made a certificate without NAME, so a
    /// remote agent using the printed join line failed TLS.
    #[test]
    fn the_generated_certificate_covers_the_public_urls_host() {
        let dir = tempfile::tempdir().expect("tempdir");
        load(
            &TlsSource::SelfSigned,
            dir.path(),
            Some("tomo.example.test"),
        )
        .expect("load");
        assert!(verifies(dir.path(), "tomo.example.test"));
        assert!(verifies(dir.path(), "localhost"));
        assert!(!verifies(dir.path(), "other.example.test"));
        // Loaded again with the same name: fine.
        load(
            &TlsSource::SelfSigned,
            dir.path(),
            Some("tomo.example.test"),
        )
        .expect("again");
        // An IP address as the public host.
        let ip = tempfile::tempdir().expect("tempdir");
        load(&TlsSource::SelfSigned, ip.path(), Some("192.0.2.7")).expect("load");
        assert!(verifies(ip.path(), "192.0.2.7"));
    }

    /// A certificate generated before without the public host cannot be re-issued under the same
    /// CA (its key is gone): the control plane refuses to start, saying what to do.
    #[test]
    fn a_certificate_that_does_not_cover_the_public_host_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        load(&TlsSource::SelfSigned, dir.path(), None).expect("load");
        match load(
            &TlsSource::SelfSigned,
            dir.path(),
            Some("tomo.example.test"),
        ) {
            Err(e @ TlsSetupError::NotCovered { .. }) => {
                let text = e.to_string();
                assert!(text.contains("tomo.example.test"), "{text}");
                assert!(text.contains("--tls-cert"), "{text}");
            }
            other => panic!("expected NotCovered, got {other:?}"),
        }
    }
}

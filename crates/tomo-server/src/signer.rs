//! The control plane's command-signing key (Ed25519). Every request to an agent is signed with it
//! (see `hub::request_text`); agents pin its public key at registration, checked against the
//! fingerprint carried in the registration code. The key lives in `<data>/command.key` (0600),
//! outside the database, so a stolen or rewritten database cannot sign commands.

use std::path::{Path, PathBuf};

use ring::signature::{Ed25519KeyPair, KeyPair as _};

/// Why the key could not be loaded or made.
#[derive(Debug, thiserror::Error)]
pub enum SignerError {
    #[error("cannot read or write the command key {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the command key {0} is not a valid Ed25519 PKCS#8 key")]
    Invalid(PathBuf),
    #[error("the command key {0} is readable or writable by others; chmod 600 it")]
    Exposed(PathBuf),
}

/// Signs commands.
pub struct CommandSigner {
    pair: Ed25519KeyPair,
    public_b64: String,
    fingerprint: String,
}

impl std::fmt::Debug for CommandSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CommandSigner")
            .field("fingerprint", &self.fingerprint)
            .finish_non_exhaustive()
    }
}

impl CommandSigner {
    /// Loads `<dir>/command.key`, creating it (0600, atomically) on first start.
    pub fn load_or_create(dir: &Path) -> Result<Self, SignerError> {
        let path = dir.join("command.key");
        let io = |source| SignerError::Io {
            path: path.clone(),
            source,
        };
        let pkcs8 = match std::fs::read(&path) {
            Ok(bytes) => {
                if tomo_common::fs::is_exposed(&path).map_err(io)? {
                    return Err(SignerError::Exposed(path));
                }
                bytes
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let rng = ring::rand::SystemRandom::new();
                let doc = Ed25519KeyPair::generate_pkcs8(&rng)
                    .map_err(|_| SignerError::Invalid(path.clone()))?;
                tomo_common::fs::write_private(&path, doc.as_ref()).map_err(io)?;
                tracing::info!(path = %path.display(), "created the command-signing key");
                doc.as_ref().to_vec()
            }
            Err(e) => return Err(io(e)),
        };
        Self::from_pkcs8(&pkcs8).ok_or(SignerError::Invalid(path))
    }

    /// A signer from PKCS#8 bytes (tests make throwaway ones).
    pub fn from_pkcs8(pkcs8: &[u8]) -> Option<Self> {
        let pair = Ed25519KeyPair::from_pkcs8(pkcs8).ok()?;
        let public = pair.public_key().as_ref();
        let public_b64 = tomo_common::b64(public);
        let fingerprint = tomo_proto::handshake::fingerprint_hex(&tomo_common::sha256(public));
        Some(Self {
            pair,
            public_b64,
            fingerprint,
        })
    }

    /// A fresh key that is never stored (tests).
    pub fn ephemeral() -> Self {
        let rng = ring::rand::SystemRandom::new();
        let doc = Ed25519KeyPair::generate_pkcs8(&rng).ok();
        doc.and_then(|d| Self::from_pkcs8(d.as_ref()))
            .unwrap_or_else(|| unreachable!("ring generates valid Ed25519 keys"))
    }

    /// Signature (base64) over `payload`.
    pub fn sign(&self, payload: &[u8]) -> String {
        tomo_common::b64(self.pair.sign(payload).as_ref())
    }

    /// The public key, base64 (sent in `welcome`).
    pub fn public_key_b64(&self) -> &str {
        &self.public_b64
    }

    /// The fingerprint carried in registration codes.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_is_made_once_private_and_reloaded() {
        let dir = tempfile::tempdir().expect("tempdir");
        let a = CommandSigner::load_or_create(dir.path()).expect("create");
        let b = CommandSigner::load_or_create(dir.path()).expect("load");
        assert_eq!(a.public_key_b64(), b.public_key_b64());
        assert_eq!(a.fingerprint().len(), 32);
        {
            use std::os::unix::fs::PermissionsExt as _;
            let path = dir.path().join("command.key");
            let mode = std::fs::metadata(&path).expect("meta").permissions().mode();
            assert_eq!(mode & 0o077, 0);
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
            assert!(matches!(
                CommandSigner::load_or_create(dir.path()),
                Err(SignerError::Exposed(_))
            ));
        }
    }
}

//! The key that seals the params of pending actions (issue 12.3): a pending call can carry
//! secrets (a registry password, an environment value), and it waits in the database until a
//! human decides. Its params are stored sealed (ChaCha20-Poly1305, the action's id as associated
//! data) under `<data>/seal.key` (32 random bytes, 0600), a file beside `command.key` and never
//! in the database, so a copy of `tomo.db` holds no secret of a pending action.

use std::path::{Path, PathBuf};

use ring::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use serde_json::Value;

/// The prefix of a sealed value; the format name stops another format from being opened as it.
const FORMAT: &str = "sealed-v1:";

/// Why the key could not be loaded or made.
#[derive(Debug, thiserror::Error)]
pub enum SealKeyError {
    #[error("cannot read or write the sealing key {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the sealing key {0} is not 32 bytes")]
    Invalid(PathBuf),
    #[error("the sealing key {0} is readable or writable by others; chmod 600 it")]
    Exposed(PathBuf),
}

/// A sealed value that does not open: another key, another action, or changed bytes.
#[derive(Debug, thiserror::Error)]
#[error("sealed params do not open (another key, another action, or changed bytes)")]
pub struct Unsealable;

/// Seals and opens pending params.
pub struct ParamSealer {
    key: LessSafeKey,
}

impl std::fmt::Debug for ParamSealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ParamSealer").finish_non_exhaustive()
    }
}

impl ParamSealer {
    /// Loads `<dir>/seal.key`, creating it (0600, atomically) on first start.
    pub fn load_or_create(dir: &Path) -> Result<Self, SealKeyError> {
        let path = dir.join("seal.key");
        let io = |source| SealKeyError::Io {
            path: path.clone(),
            source,
        };
        let bytes = match std::fs::read(&path) {
            Ok(bytes) => {
                if tomo_common::fs::is_exposed(&path).map_err(io)? {
                    return Err(SealKeyError::Exposed(path));
                }
                bytes
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let key = tomo_common::random_bytes::<32>();
                tomo_common::fs::write_private(&path, &key).map_err(io)?;
                tracing::info!(path = %path.display(), "created the key that seals pending params");
                key.to_vec()
            }
            Err(e) => return Err(io(e)),
        };
        Self::from_bytes(&bytes).ok_or(SealKeyError::Invalid(path))
    }

    /// A sealer from 32 key bytes.
    pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
        let key = UnboundKey::new(&CHACHA20_POLY1305, bytes).ok()?;
        Some(Self {
            key: LessSafeKey::new(key),
        })
    }

    /// `value` sealed for the action `id`: `sealed-v1:` and base64 of nonce and ciphertext.
    pub fn seal(&self, id: &str, value: &Value) -> String {
        let nonce = tomo_common::random_bytes::<NONCE_LEN>();
        let mut data = value.to_string().into_bytes();
        // Sealing in place fails only for inputs beyond ChaCha20's 256 GiB limit.
        if self
            .key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(id.as_bytes()),
                &mut data,
            )
            .is_err()
        {
            data.clear();
        }
        let mut out = nonce.to_vec();
        out.extend(data);
        format!("{FORMAT}{}", tomo_common::b64(&out))
    }

    /// Opens what [`ParamSealer::seal`] sealed for the action `id`.
    pub fn open(&self, id: &str, sealed: &str) -> Result<Value, Unsealable> {
        let raw = sealed
            .strip_prefix(FORMAT)
            .and_then(tomo_common::unb64)
            .ok_or(Unsealable)?;
        if raw.len() < NONCE_LEN {
            return Err(Unsealable);
        }
        let (nonce, rest) = raw.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| Unsealable)?;
        let mut data = rest.to_vec();
        let clear = self
            .key
            .open_in_place(nonce, Aad::from(id.as_bytes()), &mut data)
            .map_err(|_| Unsealable)?;
        serde_json::from_slice(clear).map_err(|_| Unsealable)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn sealed_params_open_only_for_their_action_and_key() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = ParamSealer::load_or_create(dir.path()).expect("key");
        let v = json!({"auth": {"password": "hunter2"}});
        let sealed = s.seal("act_1", &v);
        assert!(sealed.starts_with(FORMAT) && !sealed.contains("hunter2"));
        assert_eq!(s.open("act_1", &sealed).expect("opens"), v);
        assert!(s.open("act_2", &sealed).is_err(), "another action");
        let again = ParamSealer::load_or_create(dir.path()).expect("same key");
        assert_eq!(again.open("act_1", &sealed).expect("opens"), v);
        let other = ParamSealer::from_bytes(&[7; 32]).expect("key");
        assert!(other.open("act_1", &sealed).is_err(), "another key");
        let mut bytes = tomo_common::unb64(&sealed[FORMAT.len()..]).expect("b64");
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        let changed = format!("{FORMAT}{}", tomo_common::b64(&bytes));
        assert!(s.open("act_1", &changed).is_err(), "changed bytes");
        assert!(s.open("act_1", "{\"clear\": true}").is_err(), "not sealed");
    }
}

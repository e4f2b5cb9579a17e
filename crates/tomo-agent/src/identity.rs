//! The agent's identity: an Ed25519 key pair made at registration, and the state saved with it.
//!
//! Files in the data directory, all 0600 and written atomically:
//! - `agent.key`: the private key (PKCS#8), sealed by a [`KeyVault`], as JSON
//!   `{"format": "<vault format>", "data": "<base64 of the sealed bytes>"}`;
//! - `agent.json`: agent id, server URL, registration time, the pinned command key, and a MAC
//!   over them keyed by the (sealed) private key, so that the file cannot be changed outside the
//!   agent (a swapped command key or server URL is refused at load);
//! - the vault's own files ([`crate::vault`]: `key.salt`, and `machine.secret` on hosts without a
//!   machine id).
//!
//! The control plane keeps only the public key. [`KeyVault`] is the seam for encryption at rest:
//! the agent uses [`crate::vault::SealedVault`] (`sealed-v1`); [`PlainVault`] (`plain-v1`) stores
//! the key as is, and a `plain-v1` key found by a sealing store is re-sealed on load.

use std::path::{Path, PathBuf};

use ring::signature::{Ed25519KeyPair, KeyPair as _};
use serde::{Deserialize, Serialize};
use tomo_common::{b64, unb64};

const KEY_FILE: &str = "agent.key";
const STATE_FILE: &str = "agent.json";
/// A key rotation in flight: the next key, sealed like the current one.
const NEXT_KEY_FILE: &str = "agent.key.next";

/// Seals and opens the private key for storage.
pub trait KeyVault: Send + Sync {
    /// Name written next to the sealed key, so a file is always opened by the vault that sealed it.
    fn format(&self) -> &'static str;
    fn seal(&self, secret: &[u8]) -> Result<Vec<u8>, IdentityError>;
    fn open(&self, sealed: &[u8]) -> Result<Vec<u8>, IdentityError>;
}

/// Stores the key unencrypted (protected by file mode 0600 only).
#[derive(Debug, Clone, Copy, Default)]
pub struct PlainVault;

impl KeyVault for PlainVault {
    fn format(&self) -> &'static str {
        "plain-v1"
    }
    fn seal(&self, secret: &[u8]) -> Result<Vec<u8>, IdentityError> {
        Ok(secret.to_vec())
    }
    fn open(&self, sealed: &[u8]) -> Result<Vec<u8>, IdentityError> {
        Ok(sealed.to_vec())
    }
}

/// Errors loading or saving the identity.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0} is readable or writable by other users; run `chmod 600 {0}`")]
    Exposed(PathBuf),
    #[error("{path} is corrupt: {why}")]
    Corrupt { path: PathBuf, why: String },
    /// A sealed key that does not open here: the machine id changed, or the files are corrupt.
    #[error(
        "cannot unseal the agent key in {dir} ({why}): the machine id changed since it was sealed \
         (or the data directory comes from another host), or the key files are corrupt; remove \
         agent.key, agent.json and key.salt (and machine.secret, if present) from {dir}, then \
         register again with a new code"
    )]
    Unsealable { dir: PathBuf, why: String },
    /// An `agent.json` the agent cannot trust: no pinned command key, or changed from outside.
    #[error(
        "{path} cannot be trusted: {why}; to register again, remove agent.json, agent.key and \
         key.salt (and machine.secret, if present) from {dir}, delete the host in the control plane \
         (`tomo hosts rm`), and start the agent with a new code (`tomo codes create`)"
    )]
    Untrusted {
        path: PathBuf,
        dir: PathBuf,
        why: String,
    },
    #[error("{path} was sealed as {found:?}, this agent opens {expected:?}")]
    WrongFormat {
        path: PathBuf,
        found: String,
        expected: &'static str,
    },
}

/// An Ed25519 key pair.
pub struct Keys {
    pair: Ed25519KeyPair,
    pkcs8: Vec<u8>,
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keys")
            .field("public_key", &self.public_key_b64())
            .finish_non_exhaustive()
    }
}

impl Keys {
    /// A fresh key pair from the OS random source.
    pub fn generate() -> Self {
        let rng = ring::rand::SystemRandom::new();
        let doc =
            Ed25519KeyPair::generate_pkcs8(&rng).expect("Ed25519 key generation does not fail");
        Self::from_pkcs8(doc.as_ref().to_vec()).expect("a generated key parses")
    }

    fn from_pkcs8(pkcs8: Vec<u8>) -> Option<Self> {
        let pair = Ed25519KeyPair::from_pkcs8(&pkcs8).ok()?;
        Some(Self { pair, pkcs8 })
    }

    pub fn public_key(&self) -> &[u8] {
        self.pair.public_key().as_ref()
    }

    pub fn public_key_b64(&self) -> String {
        b64(self.public_key())
    }

    /// Signs `msg`; the signature as base64.
    pub fn sign_b64(&self, msg: &[u8]) -> String {
        b64(self.pair.sign(msg).as_ref())
    }

    /// The private key document, for tests that check it never lands anywhere in clear.
    #[cfg(test)]
    pub(crate) fn pkcs8_for_tests(&self) -> &[u8] {
        &self.pkcs8
    }
}

/// What is saved next to the key once the control plane accepted the agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registration {
    pub agent_id: String,
    pub server_url: String,
    pub registered_at_ms: i64,
    /// The control plane's command-signing public key (base64), pinned at registration.
    pub command_key: String,
}

/// `agent.json` on disk. The command key is optional here only so that a file written before
/// pinning is refused with a clear message instead of a parse error.
#[derive(Serialize, Deserialize)]
struct StateFile {
    agent_id: String,
    server_url: String,
    registered_at_ms: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    command_key: Option<String>,
    /// HMAC-SHA256 (base64) of the fields above under a key derived from the private key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    mac: Option<String>,
}

impl Registration {
    /// The MAC key of `agent.json`, derived from the private key: whoever cannot open the
    /// sealed key cannot write an `agent.json` the agent accepts.
    fn mac_key(keys: &Keys) -> ring::hmac::Key {
        let mut secret = b"tomo-agent-json-mac-v1\0".to_vec();
        secret.extend_from_slice(&keys.pkcs8);
        ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &tomo_common::sha256(&secret))
    }

    /// The bytes the MAC covers: every field, length-prefixed.
    fn mac_input(&self) -> Vec<u8> {
        let at = self.registered_at_ms.to_string();
        let mut out = Vec::new();
        for part in [&self.agent_id, &self.server_url, &at, &self.command_key] {
            out.extend_from_slice(&(part.len() as u64).to_be_bytes());
            out.extend_from_slice(part.as_bytes());
        }
        out
    }

    fn mac(&self, keys: &Keys) -> String {
        b64(ring::hmac::sign(&Self::mac_key(keys), &self.mac_input()).as_ref())
    }

    fn mac_verifies(&self, keys: &Keys, mac: &str) -> bool {
        unb64(mac).is_some_and(|tag| {
            ring::hmac::verify(&Self::mac_key(keys), &self.mac_input(), &tag).is_ok()
        })
    }
}

/// The agent's identity as found in the data directory.
#[derive(Debug)]
pub struct Identity {
    pub keys: Keys,
    /// `None` until a registration succeeded.
    pub registration: Option<Registration>,
}

#[derive(Serialize, Deserialize)]
struct SealedKey {
    format: String,
    data: String,
}

/// Reads and writes the identity files of one data directory.
pub struct IdentityStore {
    dir: PathBuf,
    vault: Box<dyn KeyVault>,
}

impl std::fmt::Debug for IdentityStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdentityStore")
            .field("dir", &self.dir)
            .field("vault", &self.vault.format())
            .finish()
    }
}

impl IdentityStore {
    pub fn new(dir: PathBuf, vault: Box<dyn KeyVault>) -> Self {
        Self { dir, vault }
    }

    /// Loads the identity; `None` when no key exists yet.
    pub fn load(&self) -> Result<Option<Identity>, IdentityError> {
        let key_path = self.dir.join(KEY_FILE);
        if !key_path.exists() {
            return Ok(None);
        }
        check_private(&key_path)?;
        let keys = self.load_keys(&key_path)?;
        let state_path = self.dir.join(STATE_FILE);
        let registration = if state_path.exists() {
            check_private(&state_path)?;
            let text = read(&state_path)?;
            let file: StateFile =
                serde_json::from_slice(&text).map_err(|e| corrupt(&state_path, e))?;
            Some(self.check_state(&state_path, file, &keys)?)
        } else {
            None
        };
        Ok(Some(Identity { keys, registration }))
    }

    /// No trust on first use, no edits from outside: a registration without a pinned command key
    /// or whose MAC does not verify is refused, saying how to register again.
    fn check_state(
        &self,
        path: &Path,
        file: StateFile,
        keys: &Keys,
    ) -> Result<Registration, IdentityError> {
        let untrusted = |why: &str| IdentityError::Untrusted {
            path: path.to_owned(),
            dir: self.dir.clone(),
            why: why.to_owned(),
        };
        let command_key = file.command_key.ok_or_else(|| {
            untrusted("it pins no command key (it predates protocol 2's pinning)")
        })?;
        let reg = Registration {
            agent_id: file.agent_id,
            server_url: file.server_url,
            registered_at_ms: file.registered_at_ms,
            command_key,
        };
        // The next key's MAC is good while a promotion is half done (see `promote_next`).
        let by_next = |mac: &str| {
            self.load_next()
                .ok()
                .flatten()
                .is_some_and(|next| reg.mac_verifies(&next, mac))
        };
        match file.mac {
            Some(mac) if reg.mac_verifies(keys, &mac) || by_next(&mac) => Ok(reg),
            Some(_) => Err(untrusted(
                "its MAC does not verify: it was changed outside the agent",
            )),
            None => Err(untrusted("it has no MAC (it predates protocol 2)")),
        }
    }

    fn load_keys(&self, path: &Path) -> Result<Keys, IdentityError> {
        let sealed: SealedKey =
            serde_json::from_slice(&read(path)?).map_err(|e| corrupt(path, e))?;
        // A key saved before encryption at rest is opened as plain, then sealed in place.
        let migrate = sealed.format == PlainVault.format() && self.vault.format() != sealed.format;
        if sealed.format != self.vault.format() && !migrate {
            return Err(IdentityError::WrongFormat {
                path: path.to_owned(),
                found: sealed.format,
                expected: self.vault.format(),
            });
        }
        let data = unb64(&sealed.data).ok_or_else(|| corrupt(path, "key is not base64"))?;
        let pkcs8 = if migrate {
            PlainVault.open(&data)?
        } else {
            self.vault.open(&data)?
        };
        let keys =
            Keys::from_pkcs8(pkcs8).ok_or_else(|| corrupt(path, "not an Ed25519 PKCS#8 key"))?;
        if migrate {
            // Atomic rename over the plain file: no copy of the plain key is left in the directory.
            self.save_keys(&keys)?;
            tracing::info!(
                path = %path.display(),
                from = %sealed.format,
                to = self.vault.format(),
                "sealed the agent key at rest"
            );
        }
        Ok(keys)
    }

    /// The next key of a rotation in flight, if any.
    pub fn load_next(&self) -> Result<Option<Keys>, IdentityError> {
        let path = self.dir.join(NEXT_KEY_FILE);
        if !path.exists() {
            return Ok(None);
        }
        check_private(&path)?;
        self.load_keys(&path).map(Some)
    }

    /// Starts a rotation: saves `keys` as the next key (sealed, 0600, atomically) before the
    /// control plane ever hears of it, so a crash cannot lose it.
    pub fn save_next(&self, keys: &Keys) -> Result<(), IdentityError> {
        self.save_keys_as(keys, NEXT_KEY_FILE)
    }

    /// Ends a rotation the control plane accepted: the next key becomes the key (an atomic
    /// rename; the old key is gone). `agent.json`'s MAC moves to the next key first; a crash
    /// between the two steps leaves a MAC that the next key verifies, which [`Self::load`]
    /// accepts while `agent.key.next` is there.
    pub fn promote_next(&self, current: &Keys, next: &Keys) -> Result<(), IdentityError> {
        let state_path = self.dir.join(STATE_FILE);
        if state_path.exists() {
            let file: StateFile =
                serde_json::from_slice(&read(&state_path)?).map_err(|e| corrupt(&state_path, e))?;
            let reg = self.check_state(&state_path, file, current)?;
            self.save_registration(&reg, next)?;
        }
        let from = self.dir.join(NEXT_KEY_FILE);
        let to = self.dir.join(KEY_FILE);
        std::fs::rename(&from, &to).map_err(|source| IdentityError::Io {
            path: to.clone(),
            source,
        })?;
        // The rename is durable once the directory is.
        if let Ok(d) = std::fs::File::open(&self.dir) {
            let _ = d.sync_all();
        }
        Ok(())
    }

    /// Saves a new key pair (before it is ever sent anywhere, so a crash cannot lose it).
    pub fn save_keys(&self, keys: &Keys) -> Result<(), IdentityError> {
        self.save_keys_as(keys, KEY_FILE)
    }

    fn save_keys_as(&self, keys: &Keys, file: &str) -> Result<(), IdentityError> {
        self.ensure_dir()?;
        let sealed = SealedKey {
            format: self.vault.format().into(),
            data: b64(&self.vault.seal(&keys.pkcs8)?),
        };
        let path = self.dir.join(file);
        let json = serde_json::to_vec(&sealed).expect("serializes");
        tomo_common::fs::write_private(&path, &json)
            .map_err(|source| IdentityError::Io { path, source })
    }

    /// Saves the registration once the control plane welcomed the agent, with its MAC under
    /// `keys` (the agent's key).
    pub fn save_registration(&self, reg: &Registration, keys: &Keys) -> Result<(), IdentityError> {
        self.ensure_dir()?;
        let path = self.dir.join(STATE_FILE);
        let file = StateFile {
            agent_id: reg.agent_id.clone(),
            server_url: reg.server_url.clone(),
            registered_at_ms: reg.registered_at_ms,
            command_key: Some(reg.command_key.clone()),
            mac: Some(reg.mac(keys)),
        };
        let json = serde_json::to_vec_pretty(&file).expect("serializes");
        tomo_common::fs::write_private(&path, &json)
            .map_err(|source| IdentityError::Io { path, source })
    }

    fn ensure_dir(&self) -> Result<(), IdentityError> {
        tomo_common::fs::create_private_dir(&self.dir).map_err(|source| IdentityError::Io {
            path: self.dir.clone(),
            source,
        })
    }
}

fn check_private(path: &Path) -> Result<(), IdentityError> {
    match tomo_common::fs::is_exposed(path) {
        Ok(false) => Ok(()),
        Ok(true) => Err(IdentityError::Exposed(path.to_owned())),
        Err(source) => Err(IdentityError::Io {
            path: path.to_owned(),
            source,
        }),
    }
}

fn read(path: &Path) -> Result<Vec<u8>, IdentityError> {
    std::fs::read(path).map_err(|source| IdentityError::Io {
        path: path.to_owned(),
        source,
    })
}

fn corrupt(path: &Path, why: impl std::fmt::Display) -> IdentityError {
    IdentityError::Corrupt {
        path: path.to_owned(),
        why: why.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    fn store(dir: &Path) -> IdentityStore {
        IdentityStore::new(dir.to_owned(), Box::new(PlainVault))
    }

    #[test]
    fn keys_and_registration_round_trip() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = store(dir.path());
        assert!(s.load().expect("load").is_none());
        let keys = Keys::generate();
        s.save_keys(&keys).expect("save");
        let loaded = s.load().expect("load").expect("some");
        assert_eq!(loaded.keys.public_key(), keys.public_key());
        assert!(loaded.registration.is_none());
        let reg = Registration {
            agent_id: "a".into(),
            server_url: "wss://x/agent/ws".into(),
            registered_at_ms: 1,
            command_key: b64(&[7; 32]),
        };
        s.save_registration(&reg, &keys).expect("save");
        assert_eq!(
            s.load().expect("load").expect("some").registration,
            Some(reg)
        );
    }

    /// Issue 12.4: no trust on first use, and `agent.json` cannot be edited from outside (a
    /// swapped command key or server URL would hand the host to whoever holds that key).
    #[test]
    fn refuses_an_agent_json_without_pinned_key_or_with_a_bad_mac() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = store(dir.path());
        let keys = Keys::generate();
        s.save_keys(&keys).expect("save");
        let reg = Registration {
            agent_id: "a".into(),
            server_url: "wss://x/agent/ws".into(),
            registered_at_ms: 1,
            command_key: b64(&[7; 32]),
        };
        s.save_registration(&reg, &keys).expect("save");
        let path = dir.path().join(STATE_FILE);
        let good: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&path).expect("read")).expect("json");
        type Edit<'a> = &'a dyn Fn(&mut serde_json::Value);
        let cases: [(&str, Edit, &str); 4] = [
            (
                "attacker's command key",
                &|v| v["command_key"] = b64(&[9; 32]).into(),
                "MAC does not verify",
            ),
            (
                "relay's URL",
                &|v| v["server_url"] = "wss://relay/agent/ws".into(),
                "MAC does not verify",
            ),
            (
                "no MAC",
                &|v| {
                    v.as_object_mut().expect("object").remove("mac");
                },
                "no MAC",
            ),
            (
                "no pinned key (TOFU)",
                &|v| {
                    v.as_object_mut().expect("object").remove("command_key");
                },
                "pins no command key",
            ),
        ];
        for (case, edit, want) in cases {
            let mut v = good.clone();
            edit(&mut v);
            tomo_common::fs::write_private(&path, &serde_json::to_vec(&v).expect("json"))
                .expect("write");
            match s.load() {
                Err(e @ IdentityError::Untrusted { .. }) => {
                    let text = e.to_string();
                    assert!(text.contains(want), "{case}: {text}");
                    assert!(
                        text.contains("tomo codes create"),
                        "{case}: says how to re-register: {text}"
                    );
                }
                other => panic!("{case}: expected a refusal, got {other:?}"),
            }
        }
        // Another key's MAC does not pass either.
        let other = Keys::generate();
        s.save_registration(&reg, &other).expect("save");
        assert!(matches!(s.load(), Err(IdentityError::Untrusted { .. })));
    }

    /// A key rotation keeps `agent.json` trusted, and so does a crash halfway through it.
    #[test]
    fn a_rotation_moves_the_mac_to_the_next_key() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = store(dir.path());
        let (old, next) = (Keys::generate(), Keys::generate());
        s.save_keys(&old).expect("save");
        let reg = Registration {
            agent_id: "a".into(),
            server_url: "wss://x/agent/ws".into(),
            registered_at_ms: 1,
            command_key: b64(&[7; 32]),
        };
        s.save_registration(&reg, &old).expect("save");
        s.save_next(&next).expect("save next");
        // Crash after the MAC moved, before the rename: still trusted.
        s.save_registration(&reg, &next).expect("save");
        assert_eq!(
            s.load().expect("half done").expect("some").registration,
            Some(reg.clone())
        );
        s.save_registration(&reg, &old).expect("save");
        s.promote_next(&old, &next).expect("promote");
        let loaded = s.load().expect("load").expect("some");
        assert_eq!(loaded.keys.public_key(), next.public_key());
        assert_eq!(loaded.registration, Some(reg));
    }

    #[test]
    fn refuses_a_key_readable_by_others() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = store(dir.path());
        s.save_keys(&Keys::generate()).expect("save");
        let key = dir.path().join(KEY_FILE);
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        assert!(matches!(s.load(), Err(IdentityError::Exposed(_))));
    }

    #[test]
    fn debug_never_shows_the_private_key() {
        let keys = Keys::generate();
        let text = format!("{keys:?}");
        assert!(!text.contains(&b64(&keys.pkcs8)));
    }
}

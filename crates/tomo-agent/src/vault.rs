//! [`SealedVault`] (format `sealed-v1`): the agent's private key encrypted at rest.
//!
//! The key is sealed with XChaCha20-Poly1305 under a key-encryption key derived by Argon2id from
//! this machine's id and a random salt, so a copy of the data directory (a backup, a leaked
//! volume, a snapshot) is useless on another host. Files, next to `agent.key`, all 0600:
//! - `key.salt`: 32 random bytes, the Argon2id salt, written before the first sealed key;
//! - `machine.secret`: 32 random bytes, only when the host has no machine id (then the key is only
//!   as safe as the data directory, and the agent says so at every start).
//!
//! The sealed bytes (base64 in `agent.key`'s `data`) are a fixed header, the nonce and the
//! ciphertext; the header is authenticated as associated data with the purpose [`PURPOSE`]:
//!
//! ```text
//! offset size  field
//!  0      9    "sealed-v1"            format tag (ASCII)
//!  9      1    0x01                   KDF: Argon2id, version 0x13
//! 10      1    0x01 | 0x02            secret: machine id | machine.secret
//! 11      4    m_cost, KiB            u32 big-endian
//! 15      4    t_cost                 u32 big-endian
//! 19      4    p_cost                 u32 big-endian
//! 23     24    nonce                  random per seal
//! 47    n+16   ciphertext ‖ tag       XChaCha20-Poly1305, AAD = "tomo-agent-key-v1" 0x00 header[0..23]
//! ```
//!
//! The KDF parameters travel with each key, so changing [`KdfParams::DEFAULT`] never strands a
//! key sealed with the old ones; opening derives with the recorded secret and parameters.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use argon2::{Algorithm, Argon2, Params, Version};
use chacha20poly1305::aead::{Aead as _, KeyInit as _, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use zeroize::Zeroizing;

use crate::config::AgentConfig;
use crate::identity::{IdentityError, KeyVault};

/// The format tag of this vault, in `agent.key` and at the start of the sealed bytes.
pub const FORMAT: &str = "sealed-v1";
/// What the sealed bytes are for; bound into the AEAD's associated data.
pub const PURPOSE: &str = "tomo-agent-key-v1";
/// The Argon2id salt, in the data directory.
pub const SALT_FILE: &str = "key.salt";
/// The fallback secret used when the host has no machine id, in the data directory.
pub const SECRET_FILE: &str = "machine.secret";
/// The machine id, relative to the host's root.
const MACHINE_ID: &str = "etc/machine-id";

/// Length of the salt and of the machine secret.
const RANDOM_LEN: usize = 32;
const NONCE_LEN: usize = 24;
const TAG_LEN: usize = 16;
/// Tag, KDF id, secret kind and three u32 parameters.
const HEADER_LEN: usize = FORMAT.len() + 2 + 12;
const KDF_ARGON2ID: u8 = 1;

/// Argon2id costs. Each sealed key records the ones it was sealed with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KdfParams {
    /// Memory, KiB.
    pub m_kib: u32,
    /// Passes.
    pub t: u32,
    /// Lanes.
    pub p: u32,
}

impl KdfParams {
    /// 19 MiB, 2 passes, 1 lane: OWASP's recommended Argon2id minimum, about 35 ms in a release
    /// build on a 2-core VM. The secret is the machine id (122 random bits) or a 256-bit random
    /// file, out of reach of guessing at any cost, so the cost only matters for a weak machine id;
    /// 64 MiB / 3 passes (the default until issue 6, still opened from keys that record it) took
    /// 160 ms of every agent start and 64 MiB of peak memory. See docs/security.md, "Keys at rest".
    pub const DEFAULT: Self = Self {
        m_kib: 19 * 1024,
        t: 2,
        p: 1,
    };
    /// Largest costs accepted from a file, so that a damaged header cannot ask for gigabytes.
    const MAX: Self = Self {
        m_kib: 1024 * 1024,
        t: 16,
        p: 16,
    };

    fn argon2(&self) -> Result<Argon2<'static>, String> {
        if self.m_kib > Self::MAX.m_kib || self.t > Self::MAX.t || self.p > Self::MAX.p {
            return Err(format!("KDF parameters out of range ({self:?})"));
        }
        let params = Params::new(self.m_kib, self.t, self.p, Some(32))
            .map_err(|e| format!("invalid KDF parameters ({self:?}): {e}"))?;
        Ok(Argon2::new(Algorithm::Argon2id, Version::V0x13, params))
    }
}

/// Which secret the sealing key was derived from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MachineSecret {
    /// The host's `/etc/machine-id` (under the host root).
    MachineId,
    /// `machine.secret` in the data directory (the host has no machine id).
    DataDirSecret,
}

impl MachineSecret {
    fn code(self) -> u8 {
        match self {
            Self::MachineId => 1,
            Self::DataDirSecret => 2,
        }
    }

    fn from_code(code: u8) -> Option<Self> {
        match code {
            1 => Some(Self::MachineId),
            2 => Some(Self::DataDirSecret),
            _ => None,
        }
    }
}

/// Seals the key with XChaCha20-Poly1305 under Argon2id(machine id, salt). See the module docs.
pub struct SealedVault {
    dir: PathBuf,
    machine_id: PathBuf,
    params: KdfParams,
    /// The last derived cipher (derivation is slow on purpose), and whether the fallback warning
    /// was logged.
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    cipher: Option<(MachineSecret, KdfParams, XChaCha20Poly1305)>,
    warned: bool,
}

impl std::fmt::Debug for SealedVault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SealedVault")
            .field("dir", &self.dir)
            .field("machine_id", &self.machine_id)
            .field("params", &self.params)
            .finish_non_exhaustive()
    }
}

impl SealedVault {
    /// The vault of `config`'s data directory, keyed from the machine id under its host root.
    pub fn from_config(config: &AgentConfig) -> Result<Self, IdentityError> {
        Self::new(config.data_dir.clone(), &config.host_root)
    }

    /// The vault of data directory `dir`, keyed from `<host_root>/etc/machine-id`. Refuses a salt
    /// or machine secret that others can read or write, or that cannot be read.
    pub fn new(dir: PathBuf, host_root: &Path) -> Result<Self, IdentityError> {
        let vault = Self {
            machine_id: host_root.join(MACHINE_ID),
            dir,
            params: KdfParams::DEFAULT,
            state: Mutex::new(State::default()),
        };
        vault.read_random(SALT_FILE)?;
        vault.read_random(SECRET_FILE)?;
        Ok(vault)
    }

    /// Seals new keys with `params` instead of [`KdfParams::DEFAULT`] (tests use cheap ones).
    pub fn with_params(mut self, params: KdfParams) -> Self {
        self.params = params;
        self
    }

    /// The secret a new seal would use: the machine id when the host has one.
    pub fn sealing_secret(&self) -> Result<MachineSecret, IdentityError> {
        Ok(match self.read_machine_id()? {
            Some(_) => MachineSecret::MachineId,
            None => MachineSecret::DataDirSecret,
        })
    }

    /// The cipher for `secret` and `params`, derived once. `create`: make the salt and the
    /// machine secret when missing (sealing); opening never creates them.
    fn cipher(
        &self,
        secret: MachineSecret,
        params: KdfParams,
        create: bool,
    ) -> Result<XChaCha20Poly1305, IdentityError> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((s, p, cipher)) = &state.cipher
            && (*s, *p) == (secret, params)
        {
            return Ok(cipher.clone());
        }
        let argon2 = params.argon2().map_err(|why| self.unsealable(why))?;
        let salt = self.random_file(SALT_FILE, create)?;
        let password = match secret {
            MachineSecret::MachineId => self.read_machine_id()?.ok_or_else(|| {
                self.unsealable(format!(
                    "it was sealed with the machine id, and {} is now missing or empty",
                    self.machine_id.display()
                ))
            })?,
            MachineSecret::DataDirSecret => {
                let secret = self.random_file(SECRET_FILE, create)?;
                if !state.warned {
                    state.warned = true;
                    tracing::warn!(
                        machine_id = %self.machine_id.display(),
                        secret = %self.dir.join(SECRET_FILE).display(),
                        "no machine id: the agent key is sealed with a secret kept in the data \
                         directory, so it is only as safe as that directory; give the agent the \
                         host's /etc/machine-id (read-only at /host/etc/machine-id in a container)"
                    );
                }
                secret
            }
        };
        let started = std::time::Instant::now();
        let mut key = Zeroizing::new([0u8; 32]);
        argon2
            .hash_password_into(&password, &salt, key.as_mut())
            .map_err(|e| self.unsealable(format!("key derivation failed: {e}")))?;
        tracing::debug!(
            secret = ?secret,
            m_kib = params.m_kib,
            t = params.t,
            p = params.p,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "derived the key-sealing key"
        );
        let cipher = XChaCha20Poly1305::new(key.as_ref().into());
        state.cipher = Some((secret, params, cipher.clone()));
        Ok(cipher)
    }

    /// The machine id, trimmed; `None` when the file is missing, empty or `uninitialized` (systemd's
    /// placeholder before first boot completes).
    fn read_machine_id(&self) -> Result<Option<Zeroizing<Vec<u8>>>, IdentityError> {
        let bytes = match std::fs::read(&self.machine_id) {
            Ok(b) => Zeroizing::new(b),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(IdentityError::Io {
                    path: self.machine_id.clone(),
                    source,
                });
            }
        };
        let id = bytes.trim_ascii();
        if id.is_empty() || id == b"uninitialized" {
            return Ok(None);
        }
        Ok(Some(Zeroizing::new(id.to_vec())))
    }

    /// A random file of the data directory, created (0600, atomically) when missing and `create`.
    fn random_file(&self, name: &str, create: bool) -> Result<Zeroizing<Vec<u8>>, IdentityError> {
        if let Some(bytes) = self.read_random(name)? {
            return Ok(bytes);
        }
        if !create {
            return Err(self.unsealable(format!("{name} is missing")));
        }
        let bytes = Zeroizing::new(tomo_common::random_bytes::<RANDOM_LEN>().to_vec());
        let path = self.dir.join(name);
        tomo_common::fs::create_private_dir(&self.dir)
            .and_then(|()| tomo_common::fs::write_private(&path, &bytes))
            .map_err(|source| IdentityError::Io { path, source })?;
        Ok(bytes)
    }

    /// Reads a random file of the data directory: `None` when missing; refused when others can
    /// read or write it, or when it does not hold exactly [`RANDOM_LEN`] bytes (damaged: the key
    /// it protects cannot be opened either).
    fn read_random(&self, name: &str) -> Result<Option<Zeroizing<Vec<u8>>>, IdentityError> {
        let path = self.dir.join(name);
        match tomo_common::fs::is_exposed(&path) {
            Ok(false) => {}
            Ok(true) => return Err(IdentityError::Exposed(path)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(IdentityError::Io { path, source }),
        }
        let bytes = Zeroizing::new(std::fs::read(&path).map_err(|source| IdentityError::Io {
            path: path.clone(),
            source,
        })?);
        if bytes.len() != RANDOM_LEN {
            return Err(self.unsealable(format!(
                "{name} holds {} bytes instead of {RANDOM_LEN}",
                bytes.len()
            )));
        }
        Ok(Some(bytes))
    }

    fn unsealable(&self, why: impl Into<String>) -> IdentityError {
        IdentityError::Unsealable {
            dir: self.dir.clone(),
            why: why.into(),
        }
    }
}

impl KeyVault for SealedVault {
    fn format(&self) -> &'static str {
        FORMAT
    }

    fn seal(&self, secret: &[u8]) -> Result<Vec<u8>, IdentityError> {
        let secret_kind = self.sealing_secret()?;
        let header = Header {
            secret: secret_kind,
            params: self.params,
        }
        .encode();
        let cipher = self.cipher(secret_kind, self.params, true)?;
        let nonce = tomo_common::random_bytes::<NONCE_LEN>();
        let aad = aad(&header);
        let ciphertext = cipher
            .encrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: secret,
                    aad: &aad,
                },
            )
            // Only fails past 256 GiB of plaintext.
            .map_err(|_| self.unsealable("encryption failed"))?;
        let mut out = Vec::with_capacity(HEADER_LEN + NONCE_LEN + ciphertext.len());
        out.extend_from_slice(&header);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&ciphertext);
        Ok(out)
    }

    fn open(&self, sealed: &[u8]) -> Result<Vec<u8>, IdentityError> {
        if sealed.len() < HEADER_LEN + NONCE_LEN + TAG_LEN {
            return Err(self.unsealable("too short to be a sealed-v1 key"));
        }
        let (header, rest) = sealed.split_at(HEADER_LEN);
        let (nonce, ciphertext) = rest.split_at(NONCE_LEN);
        let parsed = Header::decode(header).map_err(|why| self.unsealable(why))?;
        let cipher = self.cipher(parsed.secret, parsed.params, false)?;
        let plain = cipher
            .decrypt(
                XNonce::from_slice(nonce),
                Payload {
                    msg: ciphertext,
                    aad: &aad(header),
                },
            )
            .map_err(|_| {
                self.unsealable(match parsed.secret {
                    MachineSecret::MachineId => format!(
                        "it does not authenticate under the key derived from {}",
                        self.machine_id.display()
                    ),
                    MachineSecret::DataDirSecret => {
                        format!("it does not authenticate under the key derived from {SECRET_FILE}")
                    }
                })
            })?;
        Ok(plain)
    }
}

/// The authenticated header of a sealed key.
struct Header {
    secret: MachineSecret,
    params: KdfParams,
}

impl Header {
    fn encode(&self) -> [u8; HEADER_LEN] {
        let mut h = [0u8; HEADER_LEN];
        let n = FORMAT.len();
        h[..n].copy_from_slice(FORMAT.as_bytes());
        h[n] = KDF_ARGON2ID;
        h[n + 1] = self.secret.code();
        h[n + 2..n + 6].copy_from_slice(&self.params.m_kib.to_be_bytes());
        h[n + 6..n + 10].copy_from_slice(&self.params.t.to_be_bytes());
        h[n + 10..n + 14].copy_from_slice(&self.params.p.to_be_bytes());
        h
    }

    fn decode(h: &[u8]) -> Result<Self, String> {
        let n = FORMAT.len();
        if h.len() != HEADER_LEN || &h[..n] != FORMAT.as_bytes() {
            return Err("it does not start with the sealed-v1 tag".into());
        }
        if h[n] != KDF_ARGON2ID {
            return Err(format!("unknown KDF {}", h[n]));
        }
        let secret = MachineSecret::from_code(h[n + 1])
            .ok_or_else(|| format!("unknown secret kind {}", h[n + 1]))?;
        let u32_at = |i: usize| u32::from_be_bytes([h[i], h[i + 1], h[i + 2], h[i + 3]]);
        let params = KdfParams {
            m_kib: u32_at(n + 2),
            t: u32_at(n + 6),
            p: u32_at(n + 10),
        };
        Ok(Self { secret, params })
    }
}

/// Associated data: the purpose, a separator, and the header (format tag, KDF and parameters).
fn aad(header: &[u8]) -> Vec<u8> {
    let mut aad = Vec::with_capacity(PURPOSE.len() + 1 + header.len());
    aad.extend_from_slice(PURPOSE.as_bytes());
    aad.push(0);
    aad.extend_from_slice(header);
    aad
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;
    use std::sync::Arc;

    use super::*;
    use crate::identity::{IdentityStore, Keys, PlainVault};

    /// Cheap costs, so that the tests do not pay for the real derivation.
    const CHEAP: KdfParams = KdfParams {
        m_kib: 64,
        t: 1,
        p: 1,
    };

    /// A data directory and a host root with `machine_id` (`None`: no machine-id file).
    struct Host {
        _tmp: tempfile::TempDir,
        data: PathBuf,
        root: PathBuf,
    }

    impl Host {
        fn new(machine_id: Option<&str>) -> Self {
            let tmp = tempfile::tempdir().expect("tempdir");
            let (data, root) = (tmp.path().join("data"), tmp.path().join("host"));
            std::fs::create_dir_all(root.join("etc")).expect("mkdir");
            let host = Self {
                _tmp: tmp,
                data,
                root,
            };
            if let Some(id) = machine_id {
                host.set_machine_id(id);
            }
            host
        }

        fn set_machine_id(&self, id: &str) {
            std::fs::write(self.root.join(MACHINE_ID), id).expect("write machine-id");
        }

        fn vault(&self) -> SealedVault {
            SealedVault::new(self.data.clone(), &self.root)
                .expect("vault")
                .with_params(CHEAP)
        }

        fn store(&self) -> IdentityStore {
            IdentityStore::new(self.data.clone(), Box::new(self.vault()))
        }

        fn plain_store(&self) -> IdentityStore {
            IdentityStore::new(self.data.clone(), Box::new(PlainVault))
        }

        fn path(&self, name: &str) -> PathBuf {
            self.data.join(name)
        }

        fn chmod(&self, name: &str, mode: u32) {
            std::fs::set_permissions(self.path(name), std::fs::Permissions::from_mode(mode))
                .expect("chmod");
        }

        fn mode(&self, name: &str) -> u32 {
            std::fs::metadata(self.path(name))
                .expect("stat")
                .permissions()
                .mode()
                & 0o777
        }

        /// The sealed bytes inside `agent.key`.
        fn sealed_bytes(&self) -> Vec<u8> {
            let json: serde_json::Value =
                serde_json::from_slice(&std::fs::read(self.path("agent.key")).expect("read"))
                    .expect("json");
            assert_eq!(json["format"], FORMAT);
            tomo_common::unb64(json["data"].as_str().expect("data")).expect("base64")
        }
    }

    const ID_A: &str = "3d1219c7c4c5404aaa1f6d2a48adfda4\n";
    const ID_B: &str = "0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f\n";

    fn pkcs8(keys: &Keys) -> Vec<u8> {
        keys.pkcs8_for_tests().to_vec()
    }

    fn unsealable(r: Result<impl std::fmt::Debug, IdentityError>) -> String {
        match r {
            Err(e @ IdentityError::Unsealable { .. }) => e.to_string(),
            other => panic!("expected Unsealable, got {other:?}"),
        }
    }

    #[test]
    fn keys_round_trip_sealed_with_private_files() {
        let h = Host::new(Some(ID_A));
        let s = h.store();
        let keys = Keys::generate();
        s.save_keys(&keys).expect("save");
        let loaded = h.store().load().expect("load").expect("some");
        assert_eq!(loaded.keys.public_key(), keys.public_key());
        for f in ["agent.key", SALT_FILE] {
            assert_eq!(h.mode(f), 0o600, "{f}");
        }
        assert!(!h.path(SECRET_FILE).exists(), "the machine id is used");
        assert_eq!(std::fs::read(h.path(SALT_FILE)).expect("salt").len(), 32);
        let text = std::fs::read(h.path("agent.key")).expect("read");
        let raw = pkcs8(&keys);
        assert!(!contains(&text, tomo_common::b64(&raw).as_bytes()));
        assert!(!contains(&text, &raw));
        assert!(!contains(&h.sealed_bytes(), &raw));
    }

    #[test]
    fn a_changed_machine_id_is_a_clear_error_not_garbage() {
        let h = Host::new(Some(ID_A));
        h.store().save_keys(&Keys::generate()).expect("save");
        h.set_machine_id(ID_B);
        let msg = unsealable(h.store().load());
        assert!(msg.contains("machine id changed"), "{msg}");
        assert!(msg.contains("register again with a new code"), "{msg}");
        assert!(msg.contains(&h.data.display().to_string()), "{msg}");
        // The same id with other whitespace is the same id.
        h.set_machine_id(ID_A.trim());
        assert!(h.store().load().expect("load").is_some());
        // A machine id that disappeared says so.
        std::fs::remove_file(h.root.join(MACHINE_ID)).expect("rm");
        let msg = unsealable(h.store().load());
        assert!(msg.contains("now missing or empty"), "{msg}");
    }

    #[test]
    fn an_unsealable_key_exits_as_a_configuration_error() {
        let err = IdentityError::Unsealable {
            dir: "/data".into(),
            why: "x".into(),
        };
        assert!(crate::AgentError::from(err).is_config());
    }

    /// Regression of the wiring in `Agent::serve_until`: the agent opens its key with the sealed
    /// vault of its configuration, and stops (status 64) when that key does not open.
    #[tokio::test]
    async fn the_agent_refuses_a_key_sealed_under_another_machine_id() {
        let h = Host::new(Some(ID_A));
        h.store().save_keys(&Keys::generate()).expect("save");
        h.set_machine_id(ID_B);
        let mut config = AgentConfig::new(h.data.clone());
        config.host_root = h.root.clone();
        config.register_code = Some("code".into());
        config.server_url = Some("wss://127.0.0.1:1/agent/ws".into());
        let agent = crate::Agent::with_dialer(config, Arc::new(NoDialer));
        let err = agent
            .run_once(tokio_util::sync::CancellationToken::new())
            .await
            .expect_err("refused");
        assert!(
            matches!(
                err,
                crate::AgentError::Identity(IdentityError::Unsealable { .. })
            ),
            "{err:?}"
        );
        assert!(err.is_config());
    }

    #[test]
    fn tampering_anywhere_is_detected() {
        let h = Host::new(Some(ID_A));
        let v = h.vault();
        let sealed = v.seal(b"the private key").expect("seal");
        assert_eq!(v.open(&sealed).expect("open"), b"the private key");
        let last = sealed.len() - 1;
        // (what, byte offset): tag, KDF id, secret kind, each parameter, nonce, ciphertext, MAC.
        let cases = [
            ("format tag", 0),
            ("kdf", 9),
            ("secret kind", 10),
            ("m_cost", 14),
            ("t_cost", 18),
            ("p_cost", 22),
            ("nonce", HEADER_LEN),
            ("nonce end", HEADER_LEN + NONCE_LEN - 1),
            ("ciphertext", HEADER_LEN + NONCE_LEN),
            ("poly1305 tag", last),
        ];
        for (what, at) in cases {
            let mut bad = sealed.clone();
            bad[at] ^= 0x01;
            let result = v.open(&bad);
            assert!(
                matches!(result, Err(IdentityError::Unsealable { .. })),
                "{what}: {result:?}"
            );
        }
        unsealable(v.open(&sealed[..sealed.len() - 1]));
        unsealable(v.open(&sealed[..HEADER_LEN + NONCE_LEN + TAG_LEN - 1]));
        // Another salt is another key.
        std::fs::write(h.path(SALT_FILE), [7u8; 32]).expect("write salt");
        unsealable(h.vault().open(&sealed));
    }

    #[test]
    fn a_plain_v1_key_is_sealed_on_first_load() {
        let h = Host::new(Some(ID_A));
        let keys = Keys::generate();
        h.plain_store().save_keys(&keys).expect("save plain");
        let raw = pkcs8(&keys);
        let before = std::fs::read(h.path("agent.key")).expect("read");
        assert!(contains(&before, tomo_common::b64(&raw).as_bytes()));

        let loaded = h.store().load().expect("migrate").expect("some");
        assert_eq!(loaded.keys.public_key(), keys.public_key());
        let after = std::fs::read(h.path("agent.key")).expect("read");
        assert!(!contains(&after, tomo_common::b64(&raw).as_bytes()));
        assert!(!contains(&h.sealed_bytes(), &raw));
        assert_eq!(h.mode("agent.key"), 0o600);
        // Only the sealed key and the salt are left: no temp file, no plain copy.
        let mut files: Vec<String> = std::fs::read_dir(&h.data)
            .expect("ls")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        files.sort();
        assert_eq!(files, ["agent.key", SALT_FILE]);
        // Loading again opens the sealed key; the plain vault no longer can.
        let again = h.store().load().expect("load").expect("some");
        assert_eq!(again.keys.public_key(), keys.public_key());
        assert!(matches!(
            h.plain_store().load(),
            Err(IdentityError::WrongFormat { .. })
        ));
    }

    #[test]
    fn format_tags_keep_the_vaults_apart() {
        let h = Host::new(Some(ID_A));
        let keys = Keys::generate();
        h.store().save_keys(&keys).expect("save");
        // A plain store does not take sealed bytes for a key.
        match h.plain_store().load() {
            Err(IdentityError::WrongFormat {
                found, expected, ..
            }) => assert_eq!((found.as_str(), expected), (FORMAT, "plain-v1")),
            other => panic!("expected WrongFormat, got {other:?}"),
        }
        // The sealed vault does not take plain bytes (or anything without its tag) for sealed.
        let v = h.vault();
        let msg = unsealable(v.open(keys.pkcs8_for_tests()));
        assert!(msg.contains("sealed-v1 tag"), "{msg}");
        let mut retagged = v.seal(b"k").expect("seal");
        retagged[..9].copy_from_slice(b"sealed-v2");
        unsealable(v.open(&retagged));
    }

    #[test]
    fn two_seals_of_one_key_differ() {
        let h = Host::new(Some(ID_A));
        let v = h.vault();
        let (a, b) = (
            v.seal(b"same").expect("seal"),
            v.seal(b"same").expect("seal"),
        );
        assert_ne!(a, b);
        assert_ne!(
            a[HEADER_LEN..HEADER_LEN + NONCE_LEN],
            b[HEADER_LEN..HEADER_LEN + NONCE_LEN]
        );
        assert_eq!(a[..HEADER_LEN], b[..HEADER_LEN]);
        assert_eq!(v.open(&a).expect("a"), v.open(&b).expect("b"));
    }

    #[test]
    fn exposed_key_salt_or_secret_is_refused() {
        // (file, mode): each row must be refused with Exposed.
        let cases = [
            ("agent.key", 0o644),
            ("agent.key", 0o620),
            (SALT_FILE, 0o644),
            (SALT_FILE, 0o660),
            (SECRET_FILE, 0o604),
            (SECRET_FILE, 0o640),
        ];
        for (file, mode) in cases {
            let machine_id = if file == SECRET_FILE {
                None
            } else {
                Some(ID_A)
            };
            let h = Host::new(machine_id);
            h.store().save_keys(&Keys::generate()).expect("save");
            h.chmod(file, mode);
            let result = SealedVault::new(h.data.clone(), &h.root)
                .and_then(|v| IdentityStore::new(h.data.clone(), Box::new(v)).load());
            assert!(
                matches!(&result, Err(IdentityError::Exposed(p)) if p.ends_with(file)),
                "{file} {mode:o}: {result:?}"
            );
        }
    }

    #[test]
    fn a_salt_or_secret_of_the_wrong_size_is_refused() {
        for name in [SALT_FILE, SECRET_FILE] {
            let h = Host::new(Some(ID_A));
            std::fs::create_dir_all(&h.data).expect("mkdir");
            tomo_common::fs::write_private(&h.path(name), b"short").expect("write");
            let msg = unsealable(SealedVault::new(h.data.clone(), &h.root));
            assert!(msg.contains("holds 5 bytes instead of 32"), "{msg}");
        }
    }

    #[test]
    fn opening_never_creates_the_salt() {
        let h = Host::new(Some(ID_A));
        let v = h.vault();
        let sealed = v.seal(b"k").expect("seal");
        std::fs::remove_file(h.path(SALT_FILE)).expect("rm");
        let msg = unsealable(h.vault().open(&sealed));
        assert!(msg.contains("key.salt is missing"), "{msg}");
        assert!(!h.path(SALT_FILE).exists());
    }

    #[test]
    fn without_a_machine_id_a_data_dir_secret_is_used_and_logged() {
        // Rows: no file, empty file, systemd's first-boot placeholder.
        for machine_id in [None, Some(""), Some("uninitialized\n")] {
            let h = Host::new(machine_id);
            let logs = Logs::default();
            let keys = Keys::generate();
            tracing::subscriber::with_default(logs.subscriber(), || {
                let v = h.vault();
                assert_eq!(
                    v.sealing_secret().expect("kind"),
                    MachineSecret::DataDirSecret
                );
                let s = IdentityStore::new(h.data.clone(), Box::new(v));
                s.save_keys(&keys).expect("save");
                s.load().expect("load").expect("some");
            });
            assert_eq!(h.mode(SECRET_FILE), 0o600);
            assert_eq!(h.sealed_bytes()[10], MachineSecret::DataDirSecret.code());
            let text = logs.text();
            assert_eq!(
                text.matches("WARN").count(),
                1,
                "warned once per start: {text}"
            );
            assert!(text.contains("only as safe as"), "{text}");
            let secret = std::fs::read(h.path(SECRET_FILE)).expect("secret");
            let salt = std::fs::read(h.path(SALT_FILE)).expect("salt");
            for material in [&secret, &salt, &pkcs8(&keys)] {
                assert!(!text.contains(&tomo_common::b64(material)), "{text}");
                assert!(!text.contains(&tomo_common::hex(material)), "{text}");
            }
            // A machine id that appears later does not strand the key: the kind is recorded.
            h.set_machine_id(ID_A);
            let loaded = h.store().load().expect("load").expect("some");
            assert_eq!(loaded.keys.public_key(), keys.public_key());
            // Without the secret the key cannot be opened, and nothing is made up in its place.
            std::fs::remove_file(h.path(SECRET_FILE)).expect("rm");
            let msg = unsealable(h.store().load());
            assert!(msg.contains("machine.secret is missing"), "{msg}");
        }
    }

    #[test]
    fn debug_shows_no_key_material() {
        let h = Host::new(Some(ID_A));
        let v = h.vault();
        v.seal(b"k").expect("seal");
        let text = format!("{v:?}");
        assert!(
            !text.contains("cipher") && !text.contains(ID_A.trim()),
            "{text}"
        );
    }

    /// Prints how long the production derivation takes (no assertion on time: machines differ).
    #[test]
    fn derivation_time_with_the_default_costs() {
        let h = Host::new(Some(ID_A));
        let v = SealedVault::new(h.data.clone(), &h.root).expect("vault");
        let started = std::time::Instant::now();
        let sealed = v.seal(b"k").expect("seal");
        let first = started.elapsed();
        // A fresh vault derives again to open.
        let started = std::time::Instant::now();
        let opened = SealedVault::new(h.data.clone(), &h.root)
            .expect("vault")
            .open(&sealed)
            .expect("open");
        let second = started.elapsed();
        assert_eq!(opened, b"k");
        let p = KdfParams::DEFAULT;
        println!(
            "Argon2id m={} KiB t={} p={}: seal {first:?}, open {second:?} (this build's profile)",
            p.m_kib, p.t, p.p
        );
    }

    fn contains(haystack: &[u8], needle: &[u8]) -> bool {
        haystack.windows(needle.len()).any(|w| w == needle)
    }

    /// A dialer that never connects (the tests that use it stop before dialing).
    struct NoDialer;

    impl crate::session::Dialer for NoDialer {
        fn dial<'a>(
            &'a self,
            url: &'a str,
        ) -> std::pin::Pin<
            Box<
                dyn std::future::Future<
                        Output = Result<crate::session::Dialed, crate::session::SessionError>,
                    > + Send
                    + 'a,
            >,
        > {
            Box::pin(async move {
                Err(crate::session::SessionError::Connect {
                    url: url.into(),
                    source: std::io::ErrorKind::ConnectionRefused.into(),
                })
            })
        }
    }

    /// Log lines captured from a thread-local subscriber.
    #[derive(Clone, Default)]
    struct Logs(Arc<Mutex<Vec<u8>>>);

    impl Logs {
        fn subscriber(&self) -> impl tracing::Subscriber + Send + Sync + use<> {
            let logs = self.clone();
            tracing_subscriber::fmt()
                .with_max_level(tracing::Level::WARN)
                .with_ansi(false)
                .with_writer(move || logs.clone())
                .finish()
        }

        fn text(&self) -> String {
            String::from_utf8_lossy(&self.0.lock().expect("lock")).into_owned()
        }
    }

    impl std::io::Write for Logs {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().expect("lock").extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
}

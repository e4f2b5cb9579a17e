//! Runtime helpers shared by `tomo` and `tomo-agent`: logging setup, crash-safe file writes,
//! TLS client configuration, random tokens and time.

#![forbid(unsafe_code)]

pub mod fs;
pub mod hello;
pub mod logging;
pub mod redact;
pub mod signals;
pub mod tls;

use base64::Engine as _;

/// Standard base64 with padding, the encoding used for keys, nonces and signatures on the wire.
pub fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// Decodes [`b64`].
pub fn unb64(text: &str) -> Option<Vec<u8>> {
    base64::engine::general_purpose::STANDARD.decode(text).ok()
}

/// `n` bytes from the operating system's CSPRNG.
pub fn random_bytes<const N: usize>() -> [u8; N] {
    use ring::rand::SecureRandom as _;
    let mut out = [0u8; N];
    ring::rand::SystemRandom::new()
        .fill(&mut out)
        .expect("the OS random source never fails on Linux");
    out
}

/// A random secret token: `prefix` followed by 32 random bytes in URL-safe base64.
pub fn random_token(prefix: &str) -> String {
    let bytes = random_bytes::<32>();
    format!(
        "{prefix}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    )
}

/// SHA-256 of `data`; secrets (codes, tokens) are stored only as this.
pub fn sha256(data: &[u8]) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, data);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// Lower-case hex.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

/// Current Unix time in milliseconds.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Current Unix time in seconds.
pub fn now_secs() -> i64 {
    now_ms() / 1000
}

/// The agent id of an Ed25519 public key: the first 16 bytes of its SHA-256, uuid-shaped. Both
/// sides compute it: the control plane to name a new host, the agent to check that the control
/// plane welcomed it under its own id.
pub fn agent_id_for(public_key: &[u8]) -> String {
    let h = hex(&sha256(public_key)[..16]);
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// The registration code's Ed25519 key, derived from its secret part: the agent signs with it to
/// prove that it knows the code without sending it ([`tomo_proto::handshake::code_seed`]).
pub fn code_key_pair(code: &str) -> ring::signature::Ed25519KeyPair {
    let seed = sha256(&tomo_proto::handshake::code_seed(code));
    ring::signature::Ed25519KeyPair::from_seed_unchecked(&seed)
        .expect("any 32 bytes are an Ed25519 seed")
}

/// The public half of [`code_key_pair`]: what names a code on the wire; the control plane stores
/// its SHA-256 ([`code_id`]).
pub fn code_public_key(code: &str) -> [u8; 32] {
    use ring::signature::KeyPair as _;
    let mut out = [0u8; 32];
    out.copy_from_slice(code_key_pair(code).public_key().as_ref());
    out
}

/// What the control plane stores of a registration code: the SHA-256 of its public key. Neither
/// the code nor anything that signs for it can be recovered from a stolen database.
pub fn code_id(code_public_key: &[u8]) -> [u8; 32] {
    sha256(code_public_key)
}

#[cfg(test)]
mod code_key_tests {
    use super::*;

    #[test]
    fn the_code_key_is_stable_and_depends_on_the_secret_only() {
        let full = "rc_00112233445566778899aabbccddeeff_0123456789abcdef0123456789abcdef";
        assert_eq!(
            code_public_key(full),
            code_public_key("rc_00112233445566778899aabbccddeeff")
        );
        assert_ne!(
            code_public_key(full),
            code_public_key("rc_00112233445566778899aabbccddeef0")
        );
    }
}

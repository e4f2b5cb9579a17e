//! The session handshake that precedes JSON-RPC on every agent connection.
//!
//! ```text
//! control plane → agent   {"type":"challenge", ...}
//! agent → control plane   {"type":"register", ...} | {"type":"authenticate", ...}
//! control plane → agent   {"type":"welcome", ...}  | {"type":"refused", ...} (then close)
//! ```
//!
//! The agent proves possession of its Ed25519 key by signing [`signing_payload`], which binds the
//! server's fresh nonce, the TLS channel ([`ChannelBinding`]), the purpose and the subject, so a
//! signature is good for one handshake on one TLS connection only and can never be mistaken for a
//! signature over anything else. A relay that terminates TLS holds two connections with two
//! different bindings: what the agent signed on one fails on the other (protocol version 2).
//!
//! The registration code never crosses the wire: the agent derives an Ed25519 key from the
//! code's secret ([`code_seed`]) and signs the handshake with it; the control plane stores only
//! the SHA-256 of that key's public half. `welcome` is signed by the control plane's command key
//! over the agent's key, the nonce and the binding, so the agent knows it reached the real
//! control plane before it saves or trusts anything.

use serde::{Deserialize, Serialize};

/// Facts an agent reports about its host at every handshake.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
pub struct HostFacts {
    pub hostname: String,
    /// Docker's engine id (`docker info` → `ID`), when an engine answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub engine_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub docker_version: Option<String>,
    pub os: String,
    pub kernel: String,
    pub arch: String,
    pub cpus: u32,
    pub memory_bytes: u64,
    pub agent_version: String,
    /// The agent's clock (Unix ms) when it sent this message: the control plane measures the
    /// offset between the two clocks from it and stamps every command in the agent's time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clock_ms: Option<i64>,
}

/// Every handshake message, tagged by `type`. Each end accepts only the variants that are valid
/// in its current state; anything else is [`RefusalReason::OutOfOrder`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Handshake {
    /// First message of every connection, from the control plane.
    Challenge {
        proto_version: u32,
        /// 32 random bytes, base64 (standard alphabet, padded).
        nonce: String,
    },
    /// First connection of a new agent: proof of a one-time registration code and a fresh
    /// public key.
    Register {
        proto_version: u32,
        /// The public half of the key derived from the code's secret ([`code_seed`]), base64.
        /// It names the code; the secret itself is never sent.
        code_key: String,
        /// Signature by the code key over [`signing_payload`] with purpose `code` and the agent's
        /// public key as subject: proof of the code, bound to this connection.
        code_signature: String,
        /// Ed25519 public key, 32 bytes, base64.
        public_key: String,
        /// Signature over [`signing_payload`] with purpose `register` and the public key as subject.
        signature: String,
        facts: HostFacts,
    },
    /// Reconnection of a registered agent.
    Authenticate {
        proto_version: u32,
        agent_id: String,
        /// Signature over [`signing_payload`] with purpose `authenticate` and the agent id as subject.
        signature: String,
        facts: HostFacts,
        /// A key rotation in flight: the agent's next key, which replaces the current one once
        /// the control plane welcomes this session.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        rotate: Option<RotateKey>,
    },
    /// The session is open; JSON-RPC follows.
    Welcome {
        proto_version: u32,
        agent_id: String,
        heartbeat_secs: u64,
        /// The control plane's command-signing public key (Ed25519, base64). The agent pins it
        /// at registration, after checking it against the fingerprint in the registration code,
        /// and refuses a different one later.
        command_key: String,
        /// Signature by the command key over [`signing_payload`] with purpose `welcome` and
        /// [`welcome_subject`] as subject: the agent refuses a welcome that does not verify.
        signature: String,
        /// The engine time (Unix ns) of the newest Docker event the control plane holds for this
        /// host; the agent subscribes to the engine's events from it (inclusive), so what happened
        /// while no session was up is replayed. Left out when it holds none: events start now.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        events_since_nanos: Option<i64>,
        /// The agent's time (Unix ms) of the newest of its audit records the control plane
        /// holds; at the start of the session the agent sends its log's records from it
        /// (inclusive; copies are dropped), so records made while no session was up survive an
        /// agent restart. Left out when it holds none: the last records of the log are sent.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        audit_since_ms: Option<i64>,
    },
    /// The handshake failed; the control plane closes the connection after sending this.
    Refused {
        reason: RefusalReason,
        message: String,
    },
}

/// Why a handshake was refused. Agents treat [`RefusalReason::is_permanent`] reasons as final.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RefusalReason {
    /// No such registration code.
    CodeUnknown,
    /// The registration code was already used by another agent.
    CodeUsed,
    /// The registration code expired.
    CodeExpired,
    /// No host with this agent id.
    UnknownAgent,
    /// The host was removed by an operator; its key never authenticates again.
    HostRemoved,
    /// The signature does not verify.
    BadSignature,
    /// The host reports a different Docker engine than the one it registered with.
    EngineMismatch,
    /// The peer speaks another protocol version.
    UnsupportedVersion,
    /// The message is not a valid handshake message.
    Malformed,
    /// A valid message at the wrong time.
    OutOfOrder,
    /// Too many attempts; try again later.
    Throttled,
    /// The control plane failed; try again later.
    Internal,
}

impl RefusalReason {
    /// Whether retrying the same handshake can ever succeed.
    pub fn is_permanent(self) -> bool {
        !matches!(
            self,
            Self::Throttled | Self::Internal | Self::Malformed | Self::OutOfOrder
        )
    }

    /// The wire name, e.g. `code_used`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::CodeUnknown => "code_unknown",
            Self::CodeUsed => "code_used",
            Self::CodeExpired => "code_expired",
            Self::UnknownAgent => "unknown_agent",
            Self::HostRemoved => "host_removed",
            Self::BadSignature => "bad_signature",
            Self::EngineMismatch => "engine_mismatch",
            Self::UnsupportedVersion => "unsupported_version",
            Self::Malformed => "malformed",
            Self::OutOfOrder => "out_of_order",
            Self::Throttled => "throttled",
            Self::Internal => "internal",
        }
    }
}

impl std::fmt::Display for RefusalReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A key rotation: the next public key, vouched for by the current key and proven by itself.
/// Both signatures are over [`signing_payload`] with purpose `rotate` and the subject
/// `<agent id>\n<new public key>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RotateKey {
    /// Ed25519 public key, base64.
    pub new_public_key: String,
    /// By the current key: "replace me by this key".
    pub signature_old: String,
    /// By the new key: proof of possession.
    pub signature_new: String,
}

/// The subject of a `rotate` signature.
pub fn rotate_subject(agent_id: &str, new_public_key: &str) -> String {
    format!("{agent_id}\n{new_public_key}")
}

/// The subject of a `welcome` signature: the agent id and the agent's public key (base64).
pub fn welcome_subject(agent_id: &str, public_key: &str) -> String {
    format!("{agent_id}\n{public_key}")
}

/// The TLS channel a handshake runs on: 32 bytes of the RFC 9266 `tls-exporter` of the
/// connection (TLS 1.3 exporter, label [`EXPORTER_LABEL`], no context). Both ends compute it from
/// their own TLS connection; a relay in between has two connections and two bindings.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct ChannelBinding(pub [u8; 32]);

impl std::fmt::Debug for ChannelBinding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Not a secret, but not worth printing either.
        f.write_str("ChannelBinding(..)")
    }
}

/// The exporter label of RFC 9266.
pub const EXPORTER_LABEL: &[u8] = b"EXPORTER-Channel-Binding";

/// Domain separation of handshake signatures (protocol version 2).
pub const HANDSHAKE_DOMAIN: &str = "tomo-handshake-v2";

/// What a signature in the handshake is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// By the agent's new key: proof of possession at registration.
    Register,
    /// By the code key: proof of the registration code.
    Code,
    /// By the agent's key: reconnection.
    Authenticate,
    /// By the old and the new key: a key rotation.
    Rotate,
    /// By the control plane's command key: the session is open.
    Welcome,
}

/// The exact bytes signed in a handshake: a domain tag, the purpose, the server's nonce, the
/// channel binding and the subject (the public key for `register` and `code`, the agent id for
/// `authenticate`, [`rotate_subject`], [`welcome_subject`]). Every field is length-prefixed.
pub fn signing_payload(
    purpose: Purpose,
    nonce: &str,
    binding: &ChannelBinding,
    subject: &str,
) -> Vec<u8> {
    let purpose = match purpose {
        Purpose::Register => "register",
        Purpose::Code => "code",
        Purpose::Authenticate => "authenticate",
        Purpose::Rotate => "rotate",
        Purpose::Welcome => "welcome",
    };
    let parts: [&[u8]; 5] = [
        HANDSHAKE_DOMAIN.as_bytes(),
        purpose.as_bytes(),
        nonce.as_bytes(),
        &binding.0,
        subject.as_bytes(),
    ];
    let mut out = Vec::with_capacity(parts.iter().map(|p| p.len() + 8).sum());
    for part in parts {
        out.extend_from_slice(&(part.len() as u64).to_be_bytes());
        out.extend_from_slice(part);
    }
    out
}

/// The input from which both ends derive the registration code's Ed25519 key: the caller hashes
/// it (SHA-256) into the 32-byte seed. Only the code's secret part (`rc_<secret>`) enters.
pub fn code_seed(code: &str) -> Vec<u8> {
    let (secret, _) = split_code(code);
    let mut out = b"tomo-code-key-v2\0".to_vec();
    out.extend_from_slice(secret.as_bytes());
    out
}

impl Handshake {
    /// Parses a handshake message, refusing oversized input before looking at it.
    pub fn parse(text: &str) -> Result<Self, RefusalReason> {
        if text.len() > crate::MAX_HANDSHAKE_BYTES {
            return Err(RefusalReason::Malformed);
        }
        serde_json::from_str(text).map_err(|_| RefusalReason::Malformed)
    }

    /// Serializes to the JSON text sent on the wire.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("handshake messages always serialize")
    }
}

/// Fingerprint of a command-signing public key as carried in registration codes: the first 16
/// bytes of its SHA-256, lowercase hex. (The hash itself is computed by the caller, which has a
/// crypto library; this crate only formats.)
pub fn fingerprint_hex(sha256_of_key: &[u8; 32]) -> String {
    sha256_of_key[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Splits a registration code `rc_<secret>_<fingerprint>` into the part the control plane stores
/// a hash of and the fingerprint of the command key the agent must be offered.
pub fn split_code(code: &str) -> (&str, Option<&str>) {
    let code = code.trim();
    match code.rsplit_once('_') {
        Some((secret, fp)) if secret.starts_with("rc_") && fp.len() == 32 => (secret, Some(fp)),
        _ => (code, None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_is_domain_separated_channel_bound_and_unambiguous() {
        let cb = ChannelBinding([7; 32]);
        let a = signing_payload(Purpose::Register, "n", &cb, "k");
        let b = signing_payload(Purpose::Authenticate, "n", &cb, "k");
        assert_ne!(a, b);
        // Moving a boundary between fields changes the bytes.
        assert_ne!(
            signing_payload(Purpose::Register, "ab", &cb, "c"),
            signing_payload(Purpose::Register, "a", &cb, "bc")
        );
        // Another TLS connection, another payload.
        assert_ne!(
            a,
            signing_payload(Purpose::Register, "n", &ChannelBinding([8; 32]), "k")
        );
        assert!(a[8..].starts_with(b"tomo-handshake-v2"));
        // Never a command payload (those start with the length of `tomo-command-v1`, then it).
        assert!(!a[8..].starts_with(crate::rpc::COMMAND_DOMAIN.as_bytes()));
    }

    #[test]
    fn the_code_seed_uses_the_secret_only() {
        assert_eq!(
            code_seed("rc_abc_0123456789abcdef0123456789abcdef"),
            code_seed("rc_abc")
        );
        assert_ne!(code_seed("rc_abc"), code_seed("rc_abd"));
    }

    #[test]
    fn unknown_type_and_extra_fields_are_malformed() {
        assert_eq!(
            Handshake::parse(r#"{"type":"hello"}"#),
            Err(RefusalReason::Malformed)
        );
        assert_eq!(
            Handshake::parse(r#"{"type":"challenge","proto_version":1,"nonce":"x","extra":1}"#),
            Err(RefusalReason::Malformed)
        );
        assert_eq!(Handshake::parse("not json"), Err(RefusalReason::Malformed));
        let big = format!(
            r#"{{"type":"challenge","proto_version":1,"nonce":"{}"}}"#,
            "a".repeat(70_000)
        );
        assert_eq!(Handshake::parse(&big), Err(RefusalReason::Malformed));
    }

    #[test]
    fn round_trip() {
        let m = Handshake::Refused {
            reason: RefusalReason::CodeUsed,
            message: "used".into(),
        };
        let text = m.to_json();
        assert_eq!(
            text,
            r#"{"type":"refused","reason":"code_used","message":"used"}"#
        );
        assert_eq!(Handshake::parse(&text), Ok(m));
    }
}

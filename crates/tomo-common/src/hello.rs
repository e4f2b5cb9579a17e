//! The agent's side of the session handshake, shared by the agent, the fleet simulator and the
//! tests: the `register`/`authenticate` messages, bound to the TLS channel, and the check of the
//! control plane's signed `welcome` (protocol version 2, `tomo_proto::handshake`).

use ring::signature::{ED25519, UnparsedPublicKey};
use tomo_proto::handshake::{
    ChannelBinding, Handshake, HostFacts, Purpose, RotateKey, rotate_subject, signing_payload,
    welcome_subject,
};

use crate::{b64, unb64};

/// `register`: the agent's new key (`public_key`, base64) signed by itself (`sign`), and the
/// proof of `code` by the code's own key; the code itself is not in the message.
pub fn register(
    code: &str,
    public_key: &str,
    sign: impl Fn(&[u8]) -> String,
    nonce: &str,
    binding: &ChannelBinding,
    facts: HostFacts,
) -> Handshake {
    use ring::signature::KeyPair as _;
    let code_pair = crate::code_key_pair(code);
    let code_signature = b64(code_pair
        .sign(&signing_payload(Purpose::Code, nonce, binding, public_key))
        .as_ref());
    Handshake::Register {
        proto_version: tomo_proto::PROTO_VERSION,
        code_key: b64(code_pair.public_key().as_ref()),
        code_signature,
        public_key: public_key.to_owned(),
        signature: sign(&signing_payload(
            Purpose::Register,
            nonce,
            binding,
            public_key,
        )),
        facts,
    }
}

/// The next key of a rotation: its public half and its signing function.
pub struct NextKey<'a> {
    pub public_key: String,
    pub sign: &'a dyn Fn(&[u8]) -> String,
}

impl std::fmt::Debug for NextKey<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NextKey")
            .field("public_key", &self.public_key)
            .finish_non_exhaustive()
    }
}

/// `authenticate` as `agent_id`, signed by the current key (`sign`), offering `next` as the key
/// to rotate to.
pub fn authenticate(
    agent_id: &str,
    sign: impl Fn(&[u8]) -> String,
    nonce: &str,
    binding: &ChannelBinding,
    facts: HostFacts,
    next: Option<NextKey<'_>>,
) -> Handshake {
    let rotate = next.map(|n| {
        let payload = signing_payload(
            Purpose::Rotate,
            nonce,
            binding,
            &rotate_subject(agent_id, &n.public_key),
        );
        RotateKey {
            signature_old: sign(&payload),
            signature_new: (n.sign)(&payload),
            new_public_key: n.public_key,
        }
    });
    Handshake::Authenticate {
        proto_version: tomo_proto::PROTO_VERSION,
        agent_id: agent_id.to_owned(),
        signature: sign(&signing_payload(
            Purpose::Authenticate,
            nonce,
            binding,
            agent_id,
        )),
        facts,
        rotate,
    }
}

/// Whether `signature` is the command key's (`command_key`, base64) over a welcome of
/// `agent_id` with `public_key` (base64), for this challenge on this connection.
pub fn welcome_verifies(
    command_key: &str,
    agent_id: &str,
    public_key: &str,
    nonce: &str,
    binding: &ChannelBinding,
    signature: &str,
) -> bool {
    let (Some(key), Some(sig)) = (unb64(command_key), unb64(signature)) else {
        return false;
    };
    let payload = signing_payload(
        Purpose::Welcome,
        nonce,
        binding,
        &welcome_subject(agent_id, public_key),
    );
    UnparsedPublicKey::new(&ED25519, key)
        .verify(&payload, &sig)
        .is_ok()
}

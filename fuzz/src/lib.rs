//! What tomo's fuzz targets share: a fixed command-signing key that plays the control plane, the
//! agent's admission pipeline trusting it, and the requests signed with it that the
//! `signed_envelope` corpus starts from.
//!
//! The key is fixed so that its signatures are reproducible: a crash found in CI replays here.
//! Nothing outside the fuzz targets may ever trust it.

use ring::signature::{Ed25519KeyPair, KeyPair as _};
use tomo_agent::pipeline::{Admitted, Denied, Guard};
use tomo_agent::policy::HostPolicy;
use tomo_agent::replay::ReplayGuard;
use tomo_proto::rpc::{self, Request};

/// The id the guarded agent was given; requests for it carry it as `meta.aud`.
pub const AGENT_ID: &str = "a-fuzz";

/// The seed of the fuzzers' command key. Fuzz-only.
const KEY_SEED: [u8; 32] = *b"tomo-fuzz-command-key-not-secret";

/// Signed requests the `signed_envelope` corpus holds, as (id, method, meta, params). Signed at
/// [`SEED_TS`], long outside the replay window, so even these are refused (as `stale`). Their
/// signed texts are the files `fuzz/corpus/signed_envelope/signed-*.json`; the target checks
/// that they still verify, and `TOMO_FUZZ_WRITE_SEEDS=1` rewrites them.
pub const SIGNED_SEEDS: &[(&str, &str, &str, Option<&str>)] = &[
    (
        "1",
        "system.info",
        r#"{"principal":"admin","role":"admin","aud":"a-fuzz","nonce":"nonce-fuzz-0000000001","ts":1700000000000,"exp":1700000030000}"#,
        None,
    ),
    (
        "2",
        "system.exec",
        r#"{"principal":"ops","role":"admin","aud":"a-fuzz","nonce":"nonce-fuzz-0000000002","ts":1700000000000,"exp":1700000030000}"#,
        Some(r#"{"command":"df -h"}"#),
    ),
    (
        "3",
        "docker.containers.run",
        r#"{"principal":"admin","role":"admin","aud":"a-fuzz","nonce":"nonce-fuzz-0000000003","ts":1700000000000,"exp":1700000030000}"#,
        Some(r#"{"image":"busybox","volumes":[{"source":"/srv/app","target":"/app"}]}"#),
    ),
];

/// When the [`SIGNED_SEEDS`] were signed (Unix ms).
pub const SEED_TS: i64 = 1_700_000_000_000;

/// The control plane of the fuzz targets: signs requests with the fixed key.
#[derive(Debug)]
pub struct Signer {
    key: Ed25519KeyPair,
}

impl Default for Signer {
    fn default() -> Self {
        Self::new()
    }
}

impl Signer {
    pub fn new() -> Self {
        let key =
            Ed25519KeyPair::from_seed_unchecked(&KEY_SEED).expect("32 bytes are an Ed25519 seed");
        Self { key }
    }

    /// The public key, base64, as the agent pins it.
    pub fn public_b64(&self) -> String {
        tomo_common::b64(self.key.public_key().as_ref())
    }

    /// The signature (base64) over a request's exact parts, as the control plane makes it.
    pub fn sign(&self, id: &str, method: &str, meta: &str, params: Option<&str>) -> String {
        let payload = rpc::command_payload(id, method, meta, params.unwrap_or(""));
        tomo_common::b64(self.key.sign(&payload).as_ref())
    }

    /// The text of a signed request, as the control plane sends it.
    pub fn request_text(&self, id: &str, method: &str, meta: &str, params: Option<&str>) -> String {
        let sig = self.sign(id, method, meta, params);
        rpc::signed_request_text(id, method, meta, params, &sig)
    }

    /// An agent's admission pipeline that trusts this key for [`AGENT_ID`], with an in-memory
    /// nonce memory and generous rate limits.
    pub fn guard(&self) -> Guard {
        let guard = Guard::new(ReplayGuard::in_memory(64), 1_000_000, 1_000);
        assert!(guard.set_trust(AGENT_ID, &self.public_b64()));
        guard
    }
}

/// What a signature covers in a received request, computed as the agent computes it: the id as
/// JSON, the method, and the raw `meta` and `params` texts ("" when absent).
pub fn signed_parts(req: &Request) -> (String, String, String, String) {
    let id = req
        .id
        .as_ref()
        .map(|i| serde_json::to_string(i).unwrap_or_default())
        .unwrap_or_default();
    let meta = req.meta.as_deref().map(|m| m.get()).unwrap_or("");
    let params = req.params.as_deref().map(|p| p.get()).unwrap_or("");
    (id, req.method.clone(), meta.to_owned(), params.to_owned())
}

/// Runs the agent's stages 1–6 on `req` with the agent's real method table and default host
/// policy, as `session::answer` does.
pub fn admit(guard: &Guard, req: &Request) -> Result<Admitted, Denied> {
    thread_local! {
        static TABLE: tomo_agent::dispatch::Dispatcher = tomo_agent::handlers::table();
        static POLICY: HostPolicy = HostPolicy::default_for(std::path::Path::new("/srv/tomo"));
    }
    TABLE.with(|table| {
        POLICY.with(|policy| {
            guard.admit(
                req,
                |m| table.level(m),
                |method, level, role| policy.check_method(method, level, role),
            )
        })
    })
}

/// Whether a refusal came before the signature was verified (so the request proved nothing).
pub fn refused_before_verification(d: &Denied) -> bool {
    matches!(d.reason, "untrusted" | "unsigned" | "bad_signature")
}

//! Secrets the control plane hands out: operator API tokens and agent registration codes.
//! Both are random, shown once, and stored only as SHA-256.

use std::time::Duration;

use tomo_common::{now_ms, random_token, sha256};
use tomo_proto::methods::Level;

use crate::store::{NewCode, Store, StoreError, TokenRecord};

/// Creates an API token; returns the secret (shown once) and its record.
pub async fn mint_token(
    store: &dyn Store,
    name: &str,
    role: Level,
    ttl: Option<Duration>,
) -> Result<(String, TokenRecord), StoreError> {
    let secret = random_token("tomo_");
    let now = now_ms();
    let record = TokenRecord {
        id: tomo_common::hex(&tomo_common::random_bytes::<8>()),
        name: name.to_owned(),
        role,
        created_at: now,
        expires_at: ttl.map(|t| now + t.as_millis() as i64),
        revoked_at: None,
        scope: Vec::new(),
        requires_approval: false,
        tool_rate_per_min: None,
        last_used_at: None,
    };
    store
        .create_token(&record, &sha256(secret.as_bytes()))
        .await?;
    Ok((secret, record))
}

/// The live token for a secret, if any (unknown, revoked and expired tokens are `None`).
pub async fn check_token(
    store: &dyn Store,
    secret: &str,
) -> Result<Option<TokenRecord>, StoreError> {
    let Some(t) = store.token_by_hash(&sha256(secret.as_bytes())).await? else {
        return Ok(None);
    };
    let live = t.revoked_at.is_none() && t.expires_at.is_none_or(|e| e > now_ms());
    Ok(live.then_some(t))
}

/// Creates a single-use registration code valid for `ttl`; returns it and its expiry (Unix ms).
/// The code is `rc_<secret>_<fingerprint>`: only the secret part is stored (hashed); the
/// fingerprint of the command-signing key lets the agent check the key it is offered.
pub async fn mint_code(
    state: &crate::AppState,
    ttl: Duration,
    created_by: &str,
) -> Result<(String, i64), StoreError> {
    let store = &*state.store;
    let secret = format!(
        "rc_{}",
        tomo_common::hex(&tomo_common::random_bytes::<16>())
    );
    let code = format!("{secret}_{}", state.hub.command_fingerprint());
    let now = now_ms();
    let expires_at = now + ttl.as_millis() as i64;
    store
        .create_code(&NewCode {
            code_hash: sha256(secret.as_bytes()),
            created_at: now,
            expires_at,
            created_by: created_by.to_owned(),
        })
        .await?;
    Ok((code, expires_at))
}

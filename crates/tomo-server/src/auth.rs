//! Secrets the control plane hands out: operator API tokens and agent registration codes.
//! Both are random, shown once, and stored only as SHA-256.
//!
//! Also what a token may touch: its host scope (host ids and `key=value` labels the operators
//! set on hosts), and when it was last used ([`LastUse`], kept in memory and written once a
//! minute, so that the request path never writes to the store).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use tomo_common::{now_ms, random_token, sha256};
use tomo_proto::methods::Level;

use crate::store::{HostRecord, NewCode, Store, StoreError, TokenRecord};

/// Longest lifetime of a token (ten years).
pub const MAX_TOKEN_TTL: Duration = Duration::from_secs(3650 * 24 * 3600);
/// Longest lifetime of a registration code.
pub const MAX_CODE_TTL: Duration = Duration::from_secs(7 * 24 * 3600);
/// Most entries in a token's host scope.
pub const MAX_SCOPE_ENTRIES: usize = 64;
/// Most labels on one host.
pub const MAX_LABELS: usize = 32;
/// Bounds of a token's MCP tool-call rate, per minute.
pub const TOOL_RATE: std::ops::RangeInclusive<u32> = 1..=10_000;
/// How often [`LastUse`] is written to the store.
pub const LAST_USE_FLUSH: Duration = Duration::from_secs(60);

/// What a new token is: everything but its secret and id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenSpec {
    /// 1–64 letters, digits, `.`, `_`, `-`, `@` or `:`.
    pub name: String,
    pub role: Level,
    /// `None`: never expires.
    pub ttl: Option<Duration>,
    /// Host ids (of registered hosts) and `key=value` labels; empty: every host.
    pub scope: Vec<String>,
    pub requires_approval: bool,
    /// MCP tool calls per minute ([`TOOL_RATE`]); `None`: the control plane's default.
    pub tool_rate_per_min: Option<u32>,
}

impl TokenSpec {
    /// An unscoped token without expiry, approval or rate of its own.
    pub fn new(name: impl Into<String>, role: Level) -> Self {
        Self {
            name: name.into(),
            role,
            ttl: None,
            scope: Vec::new(),
            requires_approval: false,
            tool_rate_per_min: None,
        }
    }

    /// Checks everything that does not need the store (see [`mint`] for the rest).
    pub fn validate(&self) -> Result<(), MintError> {
        let bad = |m: String| Err(MintError::Invalid(m));
        let name_ok = (1..=64).contains(&self.name.len())
            && self
                .name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b".-_@:".contains(&b));
        if !name_ok {
            return bad(format!(
                "token name {:?}: 1–64 letters, digits, '.', '_', '-', '@' or ':'",
                self.name
            ));
        }
        if let Some(ttl) = self.ttl
            && (ttl.is_zero() || ttl > MAX_TOKEN_TTL)
        {
            return bad("the lifetime must be between 1 s and 3650 days".into());
        }
        if self.scope.len() > MAX_SCOPE_ENTRIES {
            return bad(format!("a scope has at most {MAX_SCOPE_ENTRIES} entries"));
        }
        for entry in &self.scope {
            ScopeEntry::parse(entry).map_err(MintError::Invalid)?;
        }
        if let Some(rate) = self.tool_rate_per_min
            && !TOOL_RATE.contains(&rate)
        {
            return bad("the tool rate must be 1–10000 calls a minute".into());
        }
        Ok(())
    }
}

/// Why a token was not created.
#[derive(Debug, thiserror::Error)]
pub enum MintError {
    /// The spec is wrong (the API answers 400 with this message).
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// One entry of a host scope.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScopeEntry<'a> {
    /// A host's id.
    Host(&'a str),
    /// Hosts carrying this label.
    Label(&'a str, &'a str),
}

impl<'a> ScopeEntry<'a> {
    /// `key=value` is a label, anything else a host id.
    pub fn parse(entry: &'a str) -> Result<Self, String> {
        match entry.split_once('=') {
            Some((k, v)) => {
                check_label(k, v)?;
                Ok(Self::Label(k, v))
            }
            None => {
                let ok = (1..=64).contains(&entry.len())
                    && entry
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-');
                if ok {
                    Ok(Self::Host(entry))
                } else {
                    Err(format!(
                        "scope entry {entry:?}: a host id or a key=value label"
                    ))
                }
            }
        }
    }

    fn matches(self, host: &HostRecord) -> bool {
        match self {
            Self::Host(id) => host.id == id,
            Self::Label(k, v) => host.labels.get(k).is_some_and(|have| have == v),
        }
    }
}

/// Whether a token with `scope` may see `host`: an empty scope is every host, else the host's id
/// or one of its labels must be listed.
pub fn scope_allows(scope: &[String], host: &HostRecord) -> bool {
    scope.is_empty()
        || scope
            .iter()
            .any(|e| ScopeEntry::parse(e).is_ok_and(|e| e.matches(host)))
}

/// Checks a label: key 1–63 letters, digits, `.`, `_`, `-`, `/`, starting with a letter or digit;
/// value 1–63 of the same or `:`.
pub fn check_label(key: &str, value: &str) -> Result<(), String> {
    let key_ok = (1..=63).contains(&key.len())
        && key
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphanumeric())
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-/".contains(&b));
    if !key_ok {
        return Err(format!(
            "label key {key:?}: 1–63 letters, digits, '.', '_', '-' or '/', starting with a letter or digit"
        ));
    }
    let value_ok = (1..=63).contains(&value.len())
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-/:".contains(&b));
    if !value_ok {
        return Err(format!(
            "label value {value:?} (key {key:?}): 1–63 letters, digits, '.', '_', '-', '/' or ':'"
        ));
    }
    Ok(())
}

/// Checks a host's whole label set.
pub fn check_labels(labels: &BTreeMap<String, String>) -> Result<(), String> {
    if labels.len() > MAX_LABELS {
        return Err(format!("a host has at most {MAX_LABELS} labels"));
    }
    labels.iter().try_for_each(|(k, v)| check_label(k, v))
}

/// Creates an API token from a spec; returns the secret (shown once) and its record. A host id in
/// the scope must name a registered host that was not removed.
pub async fn mint(store: &dyn Store, spec: &TokenSpec) -> Result<(String, TokenRecord), MintError> {
    spec.validate()?;
    for entry in &spec.scope {
        if let Ok(ScopeEntry::Host(id)) = ScopeEntry::parse(entry) {
            match store.host(id).await {
                Ok(h) if h.removed_at.is_none() => {}
                Ok(_) | Err(StoreError::NotFound) => {
                    return Err(MintError::Invalid(format!(
                        "scope entry {id:?} is not the id of a registered host (`tomo hosts ls` lists them)"
                    )));
                }
                Err(e) => return Err(e.into()),
            }
        }
    }
    let secret = random_token("tomo_");
    let now = now_ms();
    let record = TokenRecord {
        id: tomo_common::hex(&tomo_common::random_bytes::<8>()),
        name: spec.name.clone(),
        role: spec.role,
        created_at: now,
        expires_at: spec.ttl.map(|t| now + t.as_millis() as i64),
        revoked_at: None,
        scope: spec.scope.clone(),
        requires_approval: spec.requires_approval,
        tool_rate_per_min: spec.tool_rate_per_min,
        last_used_at: None,
    };
    store
        .create_token(&record, &sha256(secret.as_bytes()))
        .await?;
    Ok((secret, record))
}

/// [`mint`] for an unscoped token without approval or rate of its own (the first admin token,
/// `tomo dev`, tests).
pub async fn mint_token(
    store: &dyn Store,
    name: &str,
    role: Level,
    ttl: Option<Duration>,
) -> Result<(String, TokenRecord), MintError> {
    let mut spec = TokenSpec::new(name, role);
    spec.ttl = ttl;
    mint(store, &spec).await
}

/// When tokens were last used, kept in memory by the request path and written to the store by
/// [`flush_last_use`] at most once per [`LAST_USE_FLUSH`] (a request never waits for SQLite).
/// Holds at most one entry per token used since the last write.
#[derive(Debug, Default)]
pub struct LastUse {
    pending: Mutex<HashMap<String, i64>>,
}

impl LastUse {
    /// Notes a use of token `id` at `at` (Unix ms).
    pub fn note(&self, id: &str, at: i64) {
        let mut map = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
        match map.get_mut(id) {
            Some(t) => *t = (*t).max(at),
            None => {
                map.insert(id.to_owned(), at);
            }
        }
    }

    /// The newest use not yet written, if any.
    pub fn unwritten(&self, id: &str) -> Option<i64> {
        self.pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(id)
            .copied()
    }

    /// Writes what was noted since the last write.
    pub async fn flush(&self, store: &dyn Store) -> Result<(), StoreError> {
        let uses: Vec<(String, i64)> =
            std::mem::take(&mut *self.pending.lock().unwrap_or_else(PoisonError::into_inner))
                .into_iter()
                .collect();
        if let Err(e) = store.touch_tokens(&uses).await {
            // Kept for the next try (newer uses noted meanwhile win).
            for (id, at) in uses {
                self.note(&id, at);
            }
            return Err(e);
        }
        Ok(())
    }

    /// A token's record with its newest last use, written or not.
    pub fn fresh(&self, mut t: TokenRecord) -> TokenRecord {
        if let Some(at) = self.unwritten(&t.id) {
            t.last_used_at = Some(t.last_used_at.map_or(at, |w| w.max(at)));
        }
        t
    }
}

/// Writes the noted token uses every [`LAST_USE_FLUSH`], until the control plane stops (which
/// writes them once more).
pub async fn flush_last_use(state: std::sync::Arc<crate::AppState>) {
    let mut tick = tokio::time::interval(LAST_USE_FLUSH);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = state.shutdown.cancelled() => return,
        }
        if let Err(e) = state.last_use.flush(&*state.store).await {
            tracing::warn!(error = %e, "cannot record when tokens were last used");
        }
    }
}

/// The token of an `Authorization: Bearer <token>` header value. The scheme is matched without
/// regard to case (RFC 7235 §2.1) and followed by one or more spaces; `None` for another scheme or
/// no token (a request that presents no bearer token).
pub fn bearer_token(header: &str) -> Option<&str> {
    let (scheme, rest) = header.split_once(' ')?;
    let token = rest.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
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

/// The id under which a full code (`rc_…_<fingerprint>`, as [`mint_code`] makes it) is listed
/// ([`crate::store::CodeRecord::id`]).
pub fn code_id_of(code: &str) -> Option<String> {
    let (secret, _fingerprint) = code.rsplit_once('_')?;
    Some(crate::store::code_record_id(&tomo_common::code_id(
        &tomo_common::code_public_key(secret),
    )))
}

/// Creates a single-use registration code valid for `ttl`; returns it and its expiry (Unix ms).
/// The code is `rc_<secret>_<fingerprint>`: the store keeps only the hash of the public key
/// derived from the secret ([`tomo_common::code_id`]), so neither the code nor a proof of it can
/// be recovered from the database; the fingerprint of the command-signing key lets the agent
/// check the key it is offered.
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
            code_hash: tomo_common::code_id(&tomo_common::code_public_key(&secret)),
            created_at: now,
            expires_at,
            created_by: created_by.to_owned(),
        })
        .await?;
    Ok((code, expires_at))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(id: &str, labels: &[(&str, &str)]) -> HostRecord {
        HostRecord {
            id: id.into(),
            public_key: vec![],
            previous_public_key: None,
            hostname: format!("h-{id}"),
            engine_id: None,
            facts: Default::default(),
            registered_at: 0,
            last_seen: None,
            removed_at: None,
            labels: labels
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        }
    }

    #[test]
    fn scopes_match_ids_and_labels() {
        let web = host("a1", &[("env", "prod"), ("team", "web")]);
        let db = host("b2", &[("env", "staging")]);
        let s = |e: &[&str]| e.iter().map(|x| (*x).to_owned()).collect::<Vec<_>>();
        assert!(scope_allows(&[], &web), "empty scope: every host");
        assert!(scope_allows(&s(&["a1"]), &web));
        assert!(!scope_allows(&s(&["a1"]), &db));
        assert!(scope_allows(&s(&["env=prod"]), &web));
        assert!(!scope_allows(&s(&["env=prod"]), &db));
        assert!(scope_allows(&s(&["b2", "team=web"]), &web));
        // A label key alone, a prefix of an id or a value are not matches.
        assert!(!scope_allows(&s(&["a"]), &web));
        assert!(!scope_allows(&s(&["env=pro"]), &web));
        assert!(!scope_allows(&s(&["bad entry"]), &web));
    }

    #[test]
    fn specs_are_validated() {
        let ok = TokenSpec::new("ci-deploy@web", Level::Execute);
        assert!(ok.validate().is_ok());
        type Change = Box<dyn Fn(&mut TokenSpec)>;
        let cases: Vec<(&str, Change)> = vec![
            ("empty name", Box::new(|s| s.name.clear())),
            ("space", Box::new(|s| s.name = "a b".into())),
            ("long name", Box::new(|s| s.name = "x".repeat(65))),
            ("control", Box::new(|s| s.name = "a\nb".into())),
            ("zero ttl", Box::new(|s| s.ttl = Some(Duration::ZERO))),
            (
                "ttl too long",
                Box::new(|s| s.ttl = Some(MAX_TOKEN_TTL + Duration::from_secs(1))),
            ),
            ("rate 0", Box::new(|s| s.tool_rate_per_min = Some(0))),
            (
                "rate 10001",
                Box::new(|s| s.tool_rate_per_min = Some(10_001)),
            ),
            ("scope blank", Box::new(|s| s.scope = vec![String::new()])),
            ("scope empty key", Box::new(|s| s.scope = vec!["=x".into()])),
            (
                "scope empty value",
                Box::new(|s| s.scope = vec!["env=".into()]),
            ),
            ("scope two =", Box::new(|s| s.scope = vec!["a=b=c".into()])),
            ("scope space", Box::new(|s| s.scope = vec!["web 1".into()])),
            (
                "scope too long",
                Box::new(|s| s.scope = (0..65).map(|i| format!("k=v{i}")).collect()),
            ),
        ];
        for (what, change) in cases {
            let mut spec = ok.clone();
            change(&mut spec);
            assert!(
                matches!(spec.validate(), Err(MintError::Invalid(_))),
                "{what} was accepted"
            );
        }
        let mut fine = ok.clone();
        fine.ttl = Some(Duration::from_secs(1));
        fine.tool_rate_per_min = Some(10_000);
        fine.scope = vec![
            "0a1b-2c".into(),
            "env=prod".into(),
            "k8s.io/zone=eu-1:a".into(),
        ];
        assert!(fine.validate().is_ok(), "{:?}", fine.validate());
    }

    #[test]
    fn the_bearer_scheme_is_read_without_regard_to_case() {
        let cases = [
            ("Bearer tomo_x", Some("tomo_x")),
            ("bearer tomo_x", Some("tomo_x")),
            ("BEARER   tomo_x ", Some("tomo_x")),
            ("Bearer ", None),
            ("Bearer", None),
            ("Bearertomo_x", None),
            ("Basic dXNlcjpwdw==", None),
            ("Bearer-ish tomo_x", None),
            ("", None),
        ];
        for (header, want) in cases {
            assert_eq!(bearer_token(header), want, "{header:?}");
        }
    }

    #[test]
    fn labels_are_bounded() {
        let many: BTreeMap<String, String> = (0..=MAX_LABELS)
            .map(|i| (format!("k{i}"), "v".to_owned()))
            .collect();
        assert!(check_labels(&many).is_err());
        assert!(check_label("-k", "v").is_err());
        assert!(check_label("k", "a=b").is_err());
        assert!(check_label("k", "").is_err());
        assert!(check_label("team", "web").is_ok());
    }

    #[test]
    fn last_use_keeps_the_newest_unwritten_time() {
        let l = LastUse::default();
        l.note("t", 10);
        l.note("t", 5);
        assert_eq!(l.unwritten("t"), Some(10));
        let mut rec = TokenRecord {
            id: "t".into(),
            name: "n".into(),
            role: Level::Read,
            created_at: 0,
            expires_at: None,
            revoked_at: None,
            scope: vec![],
            requires_approval: false,
            tool_rate_per_min: None,
            last_used_at: Some(20),
        };
        assert_eq!(l.fresh(rec.clone()).last_used_at, Some(20));
        rec.last_used_at = None;
        assert_eq!(l.fresh(rec).last_used_at, Some(10));
    }
}

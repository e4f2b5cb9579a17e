//! The control plane's persistent state behind one trait, so that another engine (PostgreSQL) can
//! be added without touching callers. Only this module and its implementations speak SQL.
//!
//! Times are Unix milliseconds. Secrets (codes, tokens) arrive already hashed.

pub mod actions;
mod cache;
mod sqlite;

pub use actions::{ActionStatus, ActionStore, PendingAction};
pub use sqlite::SqliteStore;

use std::collections::BTreeMap;

use serde::Serialize;
use tomo_proto::handshake::HostFacts;
use tomo_proto::methods::Level;

/// A registered host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostRecord {
    pub id: String,
    pub public_key: Vec<u8>,
    /// The key before the last rotation, valid until the agent authenticates with the new one.
    pub previous_public_key: Option<Vec<u8>>,
    pub hostname: String,
    pub engine_id: Option<String>,
    pub facts: HostFacts,
    pub registered_at: i64,
    pub last_seen: Option<i64>,
    pub removed_at: Option<i64>,
    /// Labels the operators set (`PUT /api/v1/hosts/{host}/labels`), matched by token scopes.
    /// Never what the host reports about itself.
    pub labels: BTreeMap<String, String>,
}

/// A host about to be registered.
#[derive(Debug, Clone)]
pub struct NewHost {
    pub id: String,
    pub public_key: Vec<u8>,
    pub facts: HostFacts,
}

/// A registration code as stored (its secret never is: only the hash of its public key).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CodeRecord {
    /// The first 16 hex digits of the hash: enough to name it, nothing to register with.
    pub id: String,
    pub created_at: i64,
    pub expires_at: i64,
    pub created_by: String,
    pub used_at: Option<i64>,
    /// The host that registered with it.
    pub used_by: Option<String>,
    pub revoked_at: Option<i64>,
}

/// The id of a code: the first 16 hex digits of its hash.
pub fn code_record_id(code_hash: &[u8]) -> String {
    tomo_common::hex(&code_hash[..code_hash.len().min(8)])
}

/// A registration code about to be created.
#[derive(Debug, Clone)]
pub struct NewCode {
    pub code_hash: [u8; 32],
    pub created_at: i64,
    pub expires_at: i64,
    pub created_by: String,
}

/// An operator API token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRecord {
    pub id: String,
    pub name: String,
    pub role: Level,
    pub created_at: i64,
    pub expires_at: Option<i64>,
    pub revoked_at: Option<i64>,
    /// Host ids and `key=value` labels this token may touch; empty: every host.
    pub scope: Vec<String>,
    /// Execute/admin calls made with this token become pending actions for a human to approve.
    pub requires_approval: bool,
    /// MCP tool calls per minute; `None`: the control plane's default.
    pub tool_rate_per_min: Option<u32>,
    pub last_used_at: Option<i64>,
}

/// A security event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SecurityEvent {
    pub at: i64,
    pub host_id: Option<String>,
    pub kind: String,
    pub detail: String,
}

/// Kinds of sample history.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SampleKind {
    Health,
    Metrics,
}

impl SampleKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Health => "health",
            Self::Metrics => "metrics",
        }
    }
}

/// Storage failures.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("not found")]
    NotFound,
    #[error("already exists")]
    Conflict,
    /// The disk holding the database is full: nothing was written.
    #[error("the disk holding the database is full")]
    Full,
    /// The database file could not be read or written (an I/O error): nothing was written.
    #[error("the database could not be written: {0}")]
    Unavailable(String),
    /// Any other failure of the database, with what failed and why (the error it came from).
    #[error("database ({what}): {source}")]
    Database {
        what: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("corrupt row: {0}")]
    Corrupt(String),
}

/// Why a registration was refused.
#[derive(Debug, thiserror::Error)]
pub enum RegisterError {
    #[error("unknown registration code")]
    CodeUnknown,
    #[error("registration code already used")]
    CodeUsed,
    #[error("registration code expired")]
    CodeExpired,
    #[error("registration code revoked")]
    CodeRevoked,
    /// The key already belongs to a host (the code is left unused).
    #[error("this key is already registered")]
    KnownKey { removed: bool },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The control plane's storage.
#[async_trait::async_trait]
pub trait Store: ActionStore + Send + Sync + std::fmt::Debug + 'static {
    async fn create_code(&self, code: &NewCode) -> Result<(), StoreError>;

    /// Every code, newest first (at most `limit`).
    async fn codes(&self, limit: u32) -> Result<Vec<CodeRecord>, StoreError>;

    /// Revokes the unused code `id` ([`CodeRecord::id`]): from now on it is refused. Answers the
    /// code as it is now; `NotFound` for no such code; a code already used is left as it is (the
    /// caller sees `used_at`).
    async fn revoke_code(&self, id: &str, now: i64) -> Result<CodeRecord, StoreError>;

    /// Consumes the code and creates the host, atomically: of two registrations racing for one
    /// code exactly one succeeds. Registering again with a code this same host already used (a
    /// retry after a lost answer) returns the existing host.
    async fn register(
        &self,
        host: &NewHost,
        code_hash: &[u8; 32],
        now: i64,
    ) -> Result<HostRecord, RegisterError>;

    /// A host by id, removed or not.
    async fn host(&self, id: &str) -> Result<HostRecord, StoreError>;

    /// Hosts that were not removed, oldest first.
    async fn hosts(&self) -> Result<Vec<HostRecord>, StoreError>;

    /// Records a successful session: new facts, the engine id binding when first seen, last seen.
    async fn touch_host(
        &self,
        id: &str,
        facts: Option<&HostFacts>,
        now: i64,
    ) -> Result<(), StoreError>;

    /// Marks a host removed; its key never authenticates again.
    async fn remove_host(&self, id: &str, now: i64) -> Result<(), StoreError>;

    async fn record_event(&self, event: &SecurityEvent) -> Result<(), StoreError>;
    async fn events(&self, host_id: &str, limit: u32) -> Result<Vec<SecurityEvent>, StoreError>;

    async fn create_token(
        &self,
        token: &TokenRecord,
        token_hash: &[u8; 32],
    ) -> Result<(), StoreError>;
    async fn token_by_hash(&self, token_hash: &[u8; 32])
    -> Result<Option<TokenRecord>, StoreError>;
    async fn count_tokens(&self) -> Result<u64, StoreError>;
    /// Every token, revoked and expired ones included, oldest first.
    async fn list_tokens(&self) -> Result<Vec<TokenRecord>, StoreError>;
    /// A token by id (`NotFound` for an unknown one).
    async fn token(&self, id: &str) -> Result<TokenRecord, StoreError>;
    /// Revokes a token (`NotFound` for an unknown one). Revoking it again keeps the first time.
    async fn revoke_token(&self, id: &str, now: i64) -> Result<(), StoreError>;
    /// Records when tokens were last used, `(id, at)`, in one transaction; a time never moves
    /// back. Called in batches (see `auth::LastUse`), never per request.
    async fn touch_tokens(&self, uses: &[(String, i64)]) -> Result<(), StoreError>;

    /// Replaces the labels of a host that was not removed (`NotFound` otherwise).
    async fn set_host_labels(
        &self,
        host_id: &str,
        labels: &BTreeMap<String, String>,
    ) -> Result<(), StoreError>;

    async fn add_sample(
        &self,
        host_id: &str,
        kind: SampleKind,
        at: i64,
        data: &str,
    ) -> Result<(), StoreError>;
    /// Stores samples and last-seen times in one transaction (see `crate::samples`): each
    /// sample `(host id, kind, at, data)`, then each `(host id, at)` as the host's last seen.
    async fn add_samples(
        &self,
        samples: &[(String, SampleKind, i64, String)],
        seen: &[(String, i64)],
    ) -> Result<(), StoreError>;
    /// Newest first.
    async fn samples(
        &self,
        host_id: &str,
        kind: SampleKind,
        limit: u32,
    ) -> Result<Vec<(i64, String)>, StoreError>;
    /// Deletes samples older than `before`; returns how many.
    async fn prune_samples(&self, before: i64) -> Result<u64, StoreError>;

    /// Appends a Docker event; returns its id, increasing per store, or `None` when an event
    /// with the same [`NewEvent::key`] is already stored for the host (a replayed copy).
    async fn add_docker_event(
        &self,
        host_id: &str,
        event: &NewEvent<'_>,
    ) -> Result<Option<i64>, StoreError>;
    /// The engine time (Unix ns) of the newest stored event of a host: where a replay starts.
    async fn newest_docker_event(&self, host_id: &str) -> Result<Option<i64>, StoreError>;
    /// Events of a host with an id above `after`, oldest first, at most `limit`; with
    /// `after == None`, the newest `limit` events.
    async fn docker_events(
        &self,
        host_id: &str,
        after: Option<i64>,
        limit: u32,
    ) -> Result<Vec<StoredEvent>, StoreError>;
    /// Deletes events received before `before`, and all but the newest `keep` of each host.
    async fn prune_docker_events(&self, before: i64, keep: u32) -> Result<u64, StoreError>;

    /// Appends an audit record (JSON): an agent's (`host_id` set) or an operator action's
    /// (`None`). Returns its id, increasing per store.
    async fn add_audit(
        &self,
        host_id: Option<&str>,
        at_ms: i64,
        received_at: i64,
        record: &str,
    ) -> Result<i64, StoreError>;
    /// Appends several audit records `(host_id, at_ms, received_at, record)` in one transaction;
    /// returns their ids, in order, `None` for an agent's record already stored (a copy the
    /// agent sent again at a session start).
    async fn add_audits(
        &self,
        records: &[(Option<String>, i64, i64, String)],
    ) -> Result<Vec<Option<i64>>, StoreError>;
    /// The agent's time (`at_ms`) of the newest of its records stored for a host: where the
    /// agent's resending starts.
    async fn newest_agent_audit(&self, host_id: &str) -> Result<Option<i64>, StoreError>;
    /// Audit records with an id above `after`, oldest first, at most `limit`; with
    /// `after == None`, the newest `limit`. `host: Some(id)` keeps that host's records only,
    /// `decision: Some(d)` those whose decision is `d` (`allowed`, `denied`).
    async fn audit(
        &self,
        host: Option<&str>,
        decision: Option<&str>,
        after: Option<i64>,
        limit: u32,
    ) -> Result<Vec<StoredAudit>, StoreError>;
    /// Deletes audit records received before `before`; returns how many.
    async fn prune_audit(&self, before: i64) -> Result<u64, StoreError>;

    /// Rotates a host's key: `previous = current, current = new`, if the current key is still
    /// `current` (else `Conflict`).
    async fn rotate_key(&self, id: &str, current: &[u8], new: &[u8]) -> Result<(), StoreError>;
    /// Forgets the key before the last rotation, if the current key is still `current`.
    async fn retire_previous_key(&self, id: &str, current: &[u8]) -> Result<(), StoreError>;

    /// Flushes and closes.
    async fn close(&self);
}

/// A stored audit record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredAudit {
    pub id: i64,
    /// `None` for an operator action on the control plane.
    pub host_id: Option<String>,
    pub at_ms: i64,
    pub received_at: i64,
    /// The `AuditRecord` as JSON.
    pub record: String,
}

/// A stored Docker event.
/// A Docker event to store.
#[derive(Debug, Clone, Copy)]
pub struct NewEvent<'a> {
    pub received_at: i64,
    /// The engine's time of the event, Unix ns.
    pub time_nanos: i64,
    /// What makes the event itself; a second event with the same key is not stored.
    pub key: Option<&'a str>,
    /// The event as the agent sent it (JSON).
    pub event: &'a str,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredEvent {
    pub id: i64,
    pub received_at: i64,
    /// The event as the agent sent it (JSON).
    pub event: String,
}

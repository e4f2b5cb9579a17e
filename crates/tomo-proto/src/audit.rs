//! Audit records: one per request the agent decided on (allowed or denied), and one per operator
//! action on the control plane. The agent writes them as JSON lines in its data dir and sends
//! each to the control plane as an [`AUDIT_RECORD`] notification.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::methods::Level;

/// Notification agent → control plane: params are one [`AuditRecord`].
pub const AUDIT_RECORD: &str = "audit.record";

/// What was decided about a request, and how it ended.
///
/// A command (an execute- or admin-level method) allowed by the agent has two records sharing an
/// `admission_id`: its admission, `outcome: "admitted"`, written and flushed before the handler
/// runs, and its outcome once the handler ended. An admission whose outcome the agent never wrote
/// (it was killed) gets an outcome record `unknown` when the agent starts again. Other requests
/// have one record, written when they end.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
pub struct AuditRecord {
    /// When the decision was made, Unix milliseconds.
    pub at_ms: i64,
    /// Correlates the agent's record with the control plane's (from the request's `meta`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<String>,
    /// Who asked (an API token's name, `tomo` for the control plane's own flow control).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub principal: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<Level>,
    pub method: String,
    /// Params with secrets redacted (and long values cut).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub params: Option<Value>,
    /// `allowed` or `denied`.
    pub decision: String,
    /// Why it was denied (`bad_signature`, `replay`, `stale`, `audience`, `forbidden`, `policy`,
    /// `rate_limited`, `invalid_params`, …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// `ok`, the JSON-RPC error code of the answer, `admitted` (a command's admission: its
    /// handler is about to run) or `unknown` (the agent stopped before the handler ended: whether
    /// the command took effect is not known).
    pub outcome: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub duration_ms: u64,
    /// Shared by a command's admission record and its outcome record (see above).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admission_id: Option<String>,
}

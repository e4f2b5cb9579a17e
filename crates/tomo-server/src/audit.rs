//! The audit trail on the control plane (docs/security.md, "Audit"): the agents' records
//! (`audit.record` notifications) and the records of operator API requests (made by the HTTP
//! layer's `http::audit::record`), stored with a retention limit through one writer task and
//! fanned out live to followers. `GET /api/v1/audit` (`http::audit::list`) reads them.

use std::sync::Arc;

use serde_json::{Value, json};
use tomo_proto::audit::AuditRecord;

use crate::AppState;
use crate::store::StoredAudit;

/// Live records buffered per follower before it is told it lagged.
pub const FOLLOW_BUFFER: usize = 1024;
/// Unauthenticated requests recorded per source address and minute; the rest are counted.
pub const UNAUTHENTICATED_PER_MINUTE: u32 = 10;
/// Source addresses tracked at once; beyond, new sources share one allowance.
pub(crate) const MAX_SOURCES: usize = 4096;
/// Largest record stored; an agent's bigger record loses its params (marked).
pub const MAX_RECORD_BYTES: usize = 64 * 1024;
/// The response header carrying the request's trace id.
pub const TRACE_HEADER: &str = "x-tomo-trace-id";
/// Longest path or query value recorded.
const MAX_TEXT: usize = 512;

/// A stored record, for followers.
#[derive(Debug, Clone)]
pub struct Live {
    pub host_id: Option<String>,
    pub id: i64,
    pub view: Value,
}

/// The trace id of an API request, in its extensions for handlers that pass it on.
#[derive(Debug, Clone)]
pub struct TraceId(pub String);

/// The JSON shape of an audit record in the API (what [`view`] builds; the OpenAPI document's
/// schema, and a test reads a view back as one).
#[derive(Debug, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct AuditView {
    #[serde(flatten)]
    pub record: AuditRecord,
    /// Its place in the audit trail: the cursor of `after`.
    pub id: i64,
    /// The host whose agent wrote it; `null` for the control plane's own records.
    pub host_id: Option<String>,
    /// `at_ms` in RFC 3339.
    pub at: String,
    /// RFC 3339.
    pub received_at: String,
}

/// The JSON shape of a record in the API: the record's fields plus `id`, `host_id`, `at` and
/// `received_at` (RFC 3339).
pub fn view(r: &StoredAudit) -> Value {
    let mut v: Value = serde_json::from_str(&r.record).unwrap_or(Value::Null);
    if let Some(obj) = v.as_object_mut() {
        obj.insert("id".into(), json!(r.id));
        obj.insert("host_id".into(), json!(r.host_id));
        obj.insert("at".into(), json!(crate::core::rfc3339(r.at_ms)));
        obj.insert(
            "received_at".into(),
            json!(crate::core::rfc3339(r.received_at)),
        );
    }
    v
}

/// Stores a record (`host_id: None` for the control plane's own) and hands it to followers.
/// A record on its way to the store.
#[derive(Debug)]
pub struct Pending {
    host_id: Option<String>,
    at_ms: i64,
    received_at: i64,
    text: String,
}

/// Records queued for the writer before producers wait (a slow disk then slows requests down
/// instead of growing memory).
pub const WRITE_QUEUE: usize = 4096;
/// Records written per transaction at most.
const BATCH: usize = 512;

/// Queues a record for the store and its followers. Requests never wait for SQLite: the
/// [`writer`] stores records in batches, one transaction each.
pub async fn ingest(state: &AppState, host_id: Option<&str>, record: &AuditRecord) {
    let pending = Pending {
        host_id: host_id.map(str::to_owned),
        at_ms: record.at_ms,
        received_at: tomo_common::now_ms(),
        text: bounded(record),
    };
    if state.audit_queue.send(pending).await.is_err() {
        tracing::warn!("the audit writer is gone; a record was not stored");
    }
}

/// Stores queued records in batches and hands them to followers, until the control plane shuts
/// down (then what is queued is stored, and it returns).
pub async fn writer(state: Arc<AppState>, mut rx: tokio::sync::mpsc::Receiver<Pending>) {
    let mut batch = Vec::with_capacity(BATCH);
    loop {
        let n = tokio::select! {
            n = rx.recv_many(&mut batch, BATCH) => n,
            _ = state.shutdown.cancelled() => {
                rx.close();
                rx.recv_many(&mut batch, usize::MAX).await
            }
        };
        if n == 0 {
            return;
        }
        let rows: Vec<(Option<String>, i64, i64, String)> = batch
            .drain(..)
            .map(|p| (p.host_id, p.at_ms, p.received_at, p.text))
            .collect();
        match state.store.add_audits(&rows).await {
            Ok(ids) => {
                // A copy an agent sent again was not stored, and is not handed on.
                let stored = ids
                    .into_iter()
                    .zip(rows)
                    .filter_map(|(id, r)| Some((id?, r)));
                for (id, (host_id, at_ms, received_at, record)) in stored {
                    let stored = StoredAudit {
                        id,
                        host_id,
                        at_ms,
                        received_at,
                        record,
                    };
                    // No receivers is fine: nobody follows.
                    let _ = state.audit.send(Live {
                        host_id: stored.host_id.clone(),
                        id,
                        view: view(&stored),
                    });
                }
            }
            Err(e) => {
                tracing::error!(error = %e, records = rows.len(), "cannot store audit records")
            }
        }
        if state.shutdown.is_cancelled() && rx.is_empty() {
            return;
        }
    }
}

pub async fn on_agent_record(state: &AppState, host_id: &str, params: &str) {
    match serde_json::from_str::<AuditRecord>(params) {
        Ok(r) => {
            state.interrupted.observe(&*state.store, host_id, &r).await;
            ingest(state, Some(host_id), &r).await
        }
        Err(e) => tracing::warn!(host_id, error = %e, "malformed audit.record ignored"),
    }
}

/// The record as JSON, its params replaced by a marker when it is too big.
fn bounded(record: &AuditRecord) -> String {
    let text = serde_json::to_string(record).unwrap_or_default();
    if text.len() <= MAX_RECORD_BYTES {
        return text;
    }
    let mut r = record.clone();
    r.params = Some(Value::String(format!(
        "<params cut: record of {} bytes>",
        text.len()
    )));
    r.error = r.error.map(|e| cut(&e));
    serde_json::to_string(&r).unwrap_or_default()
}

pub(crate) fn cut(s: &str) -> String {
    if s.len() <= MAX_TEXT {
        return s.to_owned();
    }
    let mut end = MAX_TEXT;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…[cut: {} bytes]", &s[..end], s.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tomo_proto::methods::Level;

    #[test]
    fn a_view_is_the_documented_audit_view() {
        let record = AuditRecord {
            at_ms: 1_700_000_000_000,
            trace_id: Some("t1".into()),
            principal: Some("ci".into()),
            role: Some(Level::Execute),
            method: "docker.containers.stop".into(),
            params: Some(json!({"container": "web"})),
            decision: "allowed".into(),
            reason: None,
            outcome: "ok".into(),
            error: None,
            duration_ms: 12,
            admission_id: None,
        };
        let stored = StoredAudit {
            id: 7,
            host_id: Some("h1".into()),
            at_ms: record.at_ms,
            received_at: record.at_ms + 5,
            record: serde_json::to_string(&record).expect("json"),
        };
        let typed: AuditView = serde_json::from_value(view(&stored)).expect("an AuditView");
        assert_eq!(typed.record, record);
        assert_eq!((typed.id, typed.host_id.as_deref()), (7, Some("h1")));
    }

    #[test]
    fn oversized_agent_records_lose_their_params() {
        let r = AuditRecord {
            at_ms: 1,
            trace_id: None,
            principal: None,
            role: None,
            method: "x".into(),
            params: Some(json!({"big": "y".repeat(MAX_RECORD_BYTES)})),
            decision: "allowed".into(),
            reason: None,
            outcome: "ok".into(),
            error: Some("e".repeat(MAX_RECORD_BYTES)),
            duration_ms: 0,
            admission_id: None,
        };
        let text = bounded(&r);
        assert!(text.len() < 2 * MAX_TEXT + 500, "{}", text.len());
        let back: AuditRecord = serde_json::from_str(&text).expect("still a record");
        assert_eq!(back.method, "x");
    }
}

//! [`ActionStore`] on SQLite (table `pending_actions`, migrations 0005 and 0006).

use serde_json::Value;
use sqlx::Row as _;
use sqlx::sqlite::SqliteRow;

use super::{SqliteStore, db};
use crate::store::actions::{ActionStatus, ActionStore, PendingAction};
use crate::store::{StoreError, StoredAudit};

const COLUMNS: &str = "id, token_id, token_name, host_id, method, params, summary, status, created_at, expires_at, decided_at, decided_by, result, trace_id";

fn json_column(r: &SqliteRow, name: &str) -> Result<Option<Value>, StoreError> {
    let text: Option<String> = r.try_get(name).map_err(db)?;
    text.map(|t| serde_json::from_str(&t).map_err(|e| StoreError::Corrupt(format!("{name}: {e}"))))
        .transpose()
}

fn action_row(r: &SqliteRow) -> Result<PendingAction, StoreError> {
    let status: String = r.try_get("status").map_err(db)?;
    Ok(PendingAction {
        id: r.try_get("id").map_err(db)?,
        token_id: r.try_get("token_id").map_err(db)?,
        token_name: r.try_get("token_name").map_err(db)?,
        host_id: r.try_get("host_id").map_err(db)?,
        method: r.try_get("method").map_err(db)?,
        params: json_column(r, "params")?,
        summary: r.try_get("summary").map_err(db)?,
        status: ActionStatus::parse(&status)
            .ok_or_else(|| StoreError::Corrupt(format!("action status {status:?}")))?,
        created_at: r.try_get("created_at").map_err(db)?,
        expires_at: r.try_get("expires_at").map_err(db)?,
        decided_at: r.try_get("decided_at").map_err(db)?,
        decided_by: r.try_get("decided_by").map_err(db)?,
        result: json_column(r, "result")?,
        trace_id: r.try_get("trace_id").map_err(db)?,
    })
}

#[async_trait::async_trait]
impl ActionStore for SqliteStore {
    async fn create_action(&self, a: &PendingAction) -> Result<(), StoreError> {
        sqlx::query(&format!(
            "INSERT INTO pending_actions ({COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
        ))
        .bind(&a.id)
        .bind(&a.token_id)
        .bind(&a.token_name)
        .bind(&a.host_id)
        .bind(&a.method)
        .bind(a.params.as_ref().map(Value::to_string))
        .bind(&a.summary)
        .bind(a.status.as_str())
        .bind(a.created_at)
        .bind(a.expires_at)
        .bind(a.decided_at)
        .bind(&a.decided_by)
        .bind(a.result.as_ref().map(Value::to_string))
        .bind(&a.trace_id)
        .execute(&self.writer)
        .await
        .map_err(db)?;
        Ok(())
    }

    async fn action(&self, id: &str) -> Result<PendingAction, StoreError> {
        let row = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM pending_actions WHERE id = ?"
        ))
        .bind(id)
        .fetch_one(&self.pool)
        .await
        .map_err(db)?;
        action_row(&row)
    }

    async fn actions(
        &self,
        statuses: &[ActionStatus],
        token: Option<&str>,
        limit: u32,
    ) -> Result<Vec<PendingAction>, StoreError> {
        // The statuses as a JSON array, so that one statement takes any number of them.
        let statuses = (!statuses.is_empty()).then(|| {
            Value::from(statuses.iter().map(|s| s.as_str()).collect::<Vec<_>>()).to_string()
        });
        let rows = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM pending_actions \
             WHERE (?1 IS NULL OR status IN (SELECT value FROM json_each(?1))) \
               AND (?2 IS NULL OR token_id = ?2) \
             ORDER BY created_at DESC, id LIMIT ?3"
        ))
        .bind(statuses)
        .bind(token)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(db)?;
        rows.iter().map(action_row).collect()
    }

    async fn decide_action(
        &self,
        id: &str,
        to: ActionStatus,
        by: &str,
        now: i64,
        result: Option<&Value>,
        trace: Option<&str>,
    ) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE pending_actions SET status = ?, decided_by = ?, decided_at = ?, result = ?, \
             trace_id = ? WHERE id = ? AND status = 'pending' AND expires_at > ?",
        )
        .bind(to.as_str())
        .bind(by)
        .bind(now)
        .bind(result.map(Value::to_string))
        .bind(trace)
        .bind(id)
        .bind(now)
        .execute(&self.writer)
        .await
        .map_err(db)?;
        Ok(done.rows_affected() == 1)
    }

    async fn expire_actions(&self, now: i64) -> Result<u64, StoreError> {
        let done = sqlx::query(
            "UPDATE pending_actions SET status = 'expired' \
             WHERE status = 'pending' AND expires_at <= ?",
        )
        .bind(now)
        .execute(&self.writer)
        .await
        .map_err(db)?;
        Ok(done.rows_affected())
    }

    async fn finish_action(
        &self,
        id: &str,
        to: ActionStatus,
        result: &Value,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE pending_actions SET status = ?, result = ? WHERE id = ? AND status = 'approved'",
        )
        .bind(to.as_str())
        .bind(result.to_string())
        .bind(id)
        .execute(&self.writer)
        .await
        .map_err(db)?;
        Ok(())
    }

    async fn interrupt_actions(&self, result: &Value) -> Result<Vec<PendingAction>, StoreError> {
        let rows = sqlx::query(&format!(
            "UPDATE pending_actions SET status = 'interrupted', result = ? \
             WHERE status = 'approved' RETURNING {COLUMNS}"
        ))
        .bind(result.to_string())
        .fetch_all(&self.writer)
        .await
        .map_err(db)?;
        rows.iter().map(action_row).collect()
    }

    async fn settle_interrupted(
        &self,
        id: &str,
        to: ActionStatus,
        result: &Value,
    ) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE pending_actions SET status = ?, result = ? \
             WHERE id = ? AND status = 'interrupted'",
        )
        .bind(to.as_str())
        .bind(result.to_string())
        .bind(id)
        .execute(&self.writer)
        .await
        .map_err(db)?;
        Ok(done.rows_affected() == 1)
    }

    async fn audit_of_trace(
        &self,
        host_id: &str,
        trace_id: &str,
        since: i64,
    ) -> Result<Vec<StoredAudit>, StoreError> {
        // `audit_received` bounds the scan to what arrived since the action was approved.
        let rows = sqlx::query(
            "SELECT id, host_id, at_ms, received_at, record FROM audit \
             WHERE received_at >= ? AND host_id = ? \
               AND json_extract(record, '$.trace_id') = ? ORDER BY id ASC LIMIT 16",
        )
        .bind(since)
        .bind(host_id)
        .bind(trace_id)
        .fetch_all(&self.pool)
        .await
        .map_err(db)?;
        rows.iter()
            .map(|r| {
                Ok(StoredAudit {
                    id: r.try_get("id").map_err(db)?,
                    host_id: r.try_get("host_id").map_err(db)?,
                    at_ms: r.try_get("at_ms").map_err(db)?,
                    received_at: r.try_get("received_at").map_err(db)?,
                    record: r.try_get("record").map_err(db)?,
                })
            })
            .collect()
    }
}

//! Pending actions: calls made with a token that requires approval, waiting for a human
//! (issue 5). A separate trait so the approval flow's storage reads on its own; every [`Store`]
//! is one.
//!
//! [`Store`]: super::Store

use serde::Serialize;
use serde_json::Value;

use super::StoreError;

/// Where a pending action is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ActionStatus {
    /// Waiting for a decision.
    Pending,
    /// Approved and running on the host.
    Approved,
    Denied,
    /// Nobody decided in time.
    Expired,
    /// Approved and ran; `result` holds the method's result.
    Done,
    /// Approved but the call failed; `result` holds the error.
    Failed,
}

impl ActionStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Approved => "approved",
            Self::Denied => "denied",
            Self::Expired => "expired",
            Self::Done => "done",
            Self::Failed => "failed",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "pending" => Self::Pending,
            "approved" => Self::Approved,
            "denied" => Self::Denied,
            "expired" => Self::Expired,
            "done" => Self::Done,
            "failed" => Self::Failed,
            _ => return None,
        })
    }

    /// No decision or run will change it again.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            Self::Denied | Self::Expired | Self::Done | Self::Failed
        )
    }
}

/// A call waiting for (or past) a human's decision.
#[derive(Debug, Clone, PartialEq)]
pub struct PendingAction {
    pub id: String,
    /// The token that asked, and its name at the time.
    pub token_id: String,
    pub token_name: String,
    pub host_id: String,
    pub method: String,
    /// The params exactly as they will be sent when approved.
    pub params: Option<Value>,
    /// One line for the human who decides (secrets already hidden).
    pub summary: String,
    pub status: ActionStatus,
    pub created_at: i64,
    pub expires_at: i64,
    pub decided_at: Option<i64>,
    pub decided_by: Option<String>,
    /// The method's result (`Done`), the error (`Failed`) or the denial reason (`Denied`).
    pub result: Option<Value>,
}

/// Storage of pending actions.
#[async_trait::async_trait]
pub trait ActionStore: Send + Sync {
    async fn create_action(&self, action: &PendingAction) -> Result<(), StoreError>;
    async fn action(&self, id: &str) -> Result<PendingAction, StoreError>;
    /// Newest first, at most `limit`; `status: Some(s)` keeps those only, `token: Some(id)`
    /// those asked by that token only.
    async fn actions(
        &self,
        status: Option<ActionStatus>,
        token: Option<&str>,
        limit: u32,
    ) -> Result<Vec<PendingAction>, StoreError>;
    /// Moves a pending, unexpired action to `to` (approved or denied), atomically: of two
    /// decisions racing exactly one wins. `false` when it was not pending (or had expired).
    async fn decide_action(
        &self,
        id: &str,
        to: ActionStatus,
        by: &str,
        now: i64,
        result: Option<&Value>,
    ) -> Result<bool, StoreError>;
    /// Marks pending actions whose time ran out as expired; returns how many.
    async fn expire_actions(&self, now: i64) -> Result<u64, StoreError>;
    /// Records how an approved action ended (done or failed).
    async fn finish_action(
        &self,
        id: &str,
        to: ActionStatus,
        result: &Value,
    ) -> Result<(), StoreError>;
}

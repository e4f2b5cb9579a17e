//! Pending actions: calls made with a token that requires approval, waiting for a human
//! (issue 5). A separate trait so the approval flow's storage reads on its own; every [`Store`]
//! is one.
//!
//! [`Store`]: super::Store

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{StoreError, StoredAudit};

/// Where a pending action is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
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
    /// Approved and running when the control plane stopped (issue 13.2): whether it ran on the
    /// host is unknown until the host's audit record of it arrives, which moves it to `Done` or
    /// `Failed`. Never decided or run again.
    Interrupted,
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
            Self::Interrupted => "interrupted",
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
            "interrupted" => Self::Interrupted,
            _ => return None,
        })
    }

    /// No decision, run or audit record will change it again.
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
    /// The method's result (`Done`), the error (`Failed`), the denial reason (`Denied`), or
    /// what is known of an `Interrupted` action.
    pub result: Option<Value>,
    /// The trace id its call carried to the host once approved: the host's audit record of the
    /// call has it.
    pub trace_id: Option<String>,
}

/// Storage of pending actions.
#[async_trait::async_trait]
pub trait ActionStore: Send + Sync {
    async fn create_action(&self, action: &PendingAction) -> Result<(), StoreError>;
    async fn action(&self, id: &str) -> Result<PendingAction, StoreError>;
    /// Newest first, at most `limit`; a non-empty `statuses` keeps those only, `token: Some(id)`
    /// those asked by that token only.
    async fn actions(
        &self,
        statuses: &[ActionStatus],
        token: Option<&str>,
        limit: u32,
    ) -> Result<Vec<PendingAction>, StoreError>;
    /// Moves a pending, unexpired action to `to` (approved or denied), atomically: of two
    /// decisions racing exactly one wins. `false` when it was not pending (or had expired).
    /// `trace` is the trace id the approved call will carry.
    async fn decide_action(
        &self,
        id: &str,
        to: ActionStatus,
        by: &str,
        now: i64,
        result: Option<&Value>,
        trace: Option<&str>,
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
    /// Marks every action still `approved` as interrupted, with `result` (called at start,
    /// when no action can be running); returns them.
    async fn interrupt_actions(&self, result: &Value) -> Result<Vec<PendingAction>, StoreError>;
    /// Records what the host's audit says of an interrupted action: `to` is `Done` or
    /// `Failed`, or `Interrupted` to only replace `result`. `false` when it was not interrupted.
    async fn settle_interrupted(
        &self,
        id: &str,
        to: ActionStatus,
        result: &Value,
    ) -> Result<bool, StoreError>;
    /// The audit records of `host_id` carrying `trace_id`, received from `since` on, oldest
    /// first (at most 16).
    async fn audit_of_trace(
        &self,
        host_id: &str,
        trace_id: &str,
        since: i64,
    ) -> Result<Vec<StoredAudit>, StoreError>;
}

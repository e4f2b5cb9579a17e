//! The approval flow (issue 5, docs/mcp.md "Approval"): a token created with
//! `requires_approval` cannot change a host by itself. Every execute- or admin-level call it makes
//! (through the REST API or an MCP tool; [`gate`] sits on the one path both take) becomes a
//! pending action; a human with an admin token that does not itself require approval approves or
//! denies it (`tomo approve ID` / `tomo deny ID`, `POST /api/v1/approvals/{id}/approve|deny`);
//! the asker polls it (`GET /api/v1/approvals/{id}`, the MCP tool `get_action_status`).
//!
//! Rules, each with a test (crates/tomo/tests/fleet/mcp_approvals.rs):
//! - nobody approves their own action (the deciding token must be another token), and a token
//!   that requires approval decides nothing;
//! - the decider needs the admin role and the host in its scope;
//! - a decision happens once: of two racing decisions exactly one wins (store-level
//!   compare-and-set), and nothing is decided after `expires_at`;
//! - when approved, the call runs with the asking token's role and identity (the agent checks
//!   that role again), and the asking token must still be valid: revoked or expired in the
//!   meantime, the action fails instead of running;
//! - streaming forms (interactive exec, followed logs, pull progress) cannot wait for approval and
//!   are refused for such tokens;
//! - `stream.*` control is exempt: it only touches streams the token opened itself;
//! - an approved action whose answer is lost (the control plane stopped while it ran: seen at
//!   the next start; the host's connection dropped; the call timed out) is `interrupted`, listed
//!   again, never run again, and settled from its host's audit (`approvals/interrupted.rs`).

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use tomo_common::now_ms;
use tomo_common::redact::params::redact_string;
use tomo_common::redact::review::review;
use tomo_proto::methods::{DockerContainersRun, Level, Method as _, RunParams, level_of};
use tomo_proto::rpc::Outcome;

use crate::AppState;
use crate::agents::hub::CallError;
use crate::core::call::{Admission, CallRequest, Hosts, Mode};
use crate::core::rfc3339;
use crate::core::{Principal, Refusal};
use crate::store::{ActionStatus, HostRecord, PendingAction, StoreError};

mod interrupted;

pub use interrupted::Interrupted;

/// How long the agent gets for an approved call (pulls and updates take minutes).
const RUN_TIMEOUT: Duration = Duration::from_secs(600);
/// The params that turn a method's call into a stream, which cannot wait for a human. Per
/// method: `docker.containers.run` has a `tty` too, which opens no stream.
const STREAMING_PARAMS: &[(&str, &str)] = &[
    (
        tomo_proto::methods::DockerContainersExec::NAME,
        "interactive",
    ),
    (tomo_proto::methods::DockerContainersExec::NAME, "tty"),
    (tomo_proto::methods::DockerContainersLogs::NAME, "follow"),
    (tomo_proto::methods::DockerContainersStats::NAME, "stream"),
    (tomo_proto::methods::DockerImagesPull::NAME, "progress"),
];
/// Longest target (container, image or name) in a summary line.
const MAX_TARGET: usize = 200;

/// Whether a call by `who` must wait for approval.
pub fn needs_approval(who: &Principal, method: &str) -> bool {
    who.token.requires_approval
        && !method.starts_with("stream.")
        && level_of(method).is_none_or(|l| l >= Level::Execute)
}

/// What [`gate`] decided.
#[derive(Debug)]
pub enum Gate {
    /// No approval needed: the call goes on.
    Pass,
    /// The call is now this pending action (its view), waiting for a human.
    Pending(Value),
}

/// Lets the call through, or turns it into a pending action. The approval stage of the call
/// pipeline (`core::call`): after the role and scope checks, before anything reaches the host.
pub async fn gate(
    state: &AppState,
    who: &Principal,
    host: &HostRecord,
    method: &str,
    params: Option<&Value>,
) -> Result<Gate, Refusal> {
    if !needs_approval(who, method) {
        return Ok(Gate::Pass);
    }
    if let Some(flag) = params.and_then(Value::as_object).and_then(|p| {
        STREAMING_PARAMS
            .iter()
            .filter(|(m, _)| *m == method)
            .map(|(_, k)| *k)
            .find(|k| p.get(*k) == Some(&Value::Bool(true)))
    }) {
        return Err(Refusal::BadRequest(format!(
            "this token requires approval, and a call with {flag}=true streams: it cannot wait \
             for a human; call it without {flag}"
        )));
    }
    let now = now_ms();
    let id = format!(
        "act_{}",
        tomo_common::hex(&tomo_common::random_bytes::<6>())
    );
    // Sealed: they wait in the database and may carry secrets (issue 12.3).
    let sealed = params.map(|p| Value::String(state.sealer.seal(&id, p)));
    let action = PendingAction {
        id,
        token_id: who.token.id.clone(),
        token_name: who.token.name.clone(),
        host_id: host.id.clone(),
        method: method.to_owned(),
        params: sealed,
        summary: summary(host, method, params),
        status: ActionStatus::Pending,
        created_at: now,
        expires_at: now + state.config.approval_ttl.as_millis() as i64,
        decided_at: None,
        decided_by: None,
        result: None,
        trace_id: None,
    };
    state.store.create_action(&action).await?;
    tracing::info!(action = %action.id, token = %who.token.name, host_id = %host.id, %method,
        "call waits for approval");
    Ok(Gate::Pending(json!(view(state, &action))))
}

/// One line for lists, stored in clear: method, host and what it acts on (a container, image or
/// name, never other params: those are sealed). The whole request is in [`view`].
fn summary(host: &HostRecord, method: &str, params: Option<&Value>) -> String {
    let mut line = format!("{method} on {} ({})", host.hostname, host.id);
    let target = params.and_then(Value::as_object).and_then(|p| {
        ["container", "image", "name"]
            .iter()
            .find_map(|k| p.get(*k).and_then(Value::as_str).map(|v| (*k, v)))
    });
    if let Some((k, v)) = target {
        let v: String = v.chars().take(MAX_TARGET).collect();
        line.push_str(&format!(" {k} {}", redact_string(&v)));
    }
    line
}

/// The params of an action in clear (they are stored sealed).
fn clear_params(
    state: &AppState,
    a: &PendingAction,
) -> Result<Option<Value>, crate::sealer::Unsealable> {
    match &a.params {
        None => Ok(None),
        Some(Value::String(sealed)) => state.sealer.open(&a.id, sealed).map(Some),
        Some(_) => Err(crate::sealer::Unsealable),
    }
}

/// The params as the agent will read them: a run's through its typed params, so that defaults
/// an approver must see (`privileged: false`, `read_only: false`) are spelled out.
fn normalise(method: &str, params: Value) -> Value {
    if method == DockerContainersRun::NAME
        && let Ok(run) = serde_json::from_value::<RunParams>(params.clone())
        && let Ok(v) = serde_json::to_value(run)
    {
        return v;
    }
    params
}

/// The API's view of an action, times in RFC 3339. For whoever decides (issue 12.3): `request`
/// is the whole normalised request, uncut, risky fields first, each `{field, value, risky}`;
/// only values of secret-looking keys are hidden, each marked in place and listed in `hidden`;
/// `params` is the same as one object.
pub fn view(state: &AppState, a: &PendingAction) -> ActionView {
    let (params, request, hidden) = match clear_params(state, a) {
        Ok(Some(p)) => {
            let r = review(&normalise(&a.method, p));
            let params: serde_json::Map<String, Value> = r
                .fields
                .iter()
                .map(|f| (f.name.clone(), f.value.clone()))
                .collect();
            let request = r
                .fields
                .into_iter()
                .map(|f| RequestField {
                    field: f.name,
                    value: f.value,
                    risky: f.risky,
                })
                .collect();
            (Value::Object(params), request, json!(r.hidden))
        }
        Ok(None) => (Value::Null, Vec::new(), json!([])),
        Err(e) => (json!({"error": e.to_string()}), Vec::new(), json!([])),
    };
    ActionView {
        request,
        hidden,
        id: a.id.clone(),
        status: a.status,
        summary: a.summary.clone(),
        host_id: a.host_id.clone(),
        method: a.method.clone(),
        params,
        requested_by: RequestedBy {
            token_id: a.token_id.clone(),
            name: a.token_name.clone(),
        },
        created_at: rfc3339(a.created_at),
        expires_at: rfc3339(a.expires_at),
        decided_at: a.decided_at.map(rfc3339),
        decided_by: a.decided_by.clone(),
        result: a.result.clone(),
    }
}

/// A pending (or decided) action as the API shows it ([`view`]).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct ActionView {
    /// The whole normalised request, risky fields first.
    pub request: Vec<RequestField>,
    /// The fields whose values are hidden (secret-looking keys).
    #[schema(value_type = Vec<String>)]
    pub hidden: Value,
    pub id: String,
    pub status: ActionStatus,
    /// One line: method, host and what it acts on.
    pub summary: String,
    pub host_id: String,
    pub method: String,
    /// The request as one object (`null` without params).
    #[schema(value_type = Option<Object>)]
    pub params: Value,
    pub requested_by: RequestedBy,
    /// RFC 3339.
    pub created_at: String,
    pub expires_at: String,
    pub decided_at: Option<String>,
    pub decided_by: Option<String>,
    /// What the run answered (or its error), once it ran; a denial's reason.
    #[schema(value_type = Option<Object>)]
    pub result: Option<Value>,
}

/// One field of an action's request.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct RequestField {
    pub field: String,
    #[schema(value_type = Object)]
    pub value: Value,
    /// Part of what makes a call dangerous (image, command, mounts, privileges, namespaces).
    pub risky: bool,
}

/// Who asked for an action.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct RequestedBy {
    pub token_id: String,
    pub name: String,
}

/// Whether `who` may decide actions (and see everyone's).
fn is_decider(who: &Principal) -> bool {
    who.token.role >= Level::Admin && !who.token.requires_approval
}

/// Loads an action the caller may see: its own, or any in scope for a decider. Others are
/// "not found" (their ids say nothing).
pub async fn get(state: &AppState, who: &Principal, id: &str) -> Result<PendingAction, Refusal> {
    state.store.expire_actions(now_ms()).await?;
    let not_found = || Refusal::NotFound(format!("no action {id}"));
    let action = match state.store.action(id).await {
        Ok(a) => a,
        Err(StoreError::NotFound) => return Err(not_found()),
        Err(e) => return Err(e.into()),
    };
    if action.token_id == who.token.id {
        return Ok(action);
    }
    if is_decider(who) && host_in_scope(state, who, &action.host_id).await? {
        return Ok(action);
    }
    Err(not_found())
}

async fn host_in_scope(state: &AppState, who: &Principal, host_id: &str) -> Result<bool, Refusal> {
    if who.token.scope.is_empty() {
        return Ok(true);
    }
    match state.store.host(host_id).await {
        Ok(h) => Ok(who.may_see(&h)),
        Err(StoreError::NotFound) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// What needs a human: actions waiting for a decision, and interrupted ones (their outcome is
/// unknown). `tomo approvals` lists these by default.
pub const OPEN: &[ActionStatus] = &[ActionStatus::Pending, ActionStatus::Interrupted];

/// Actions the caller may see, newest first: a decider's whole queue (in scope), anyone
/// else's own. A non-empty `statuses` keeps those only.
pub async fn list(
    state: &AppState,
    who: &Principal,
    statuses: &[ActionStatus],
    limit: u32,
) -> Result<Vec<PendingAction>, Refusal> {
    state.store.expire_actions(now_ms()).await?;
    if !is_decider(who) {
        return Ok(state
            .store
            .actions(statuses, Some(&who.token.id), limit)
            .await?);
    }
    let mut out = Vec::new();
    for a in state.store.actions(statuses, None, limit).await? {
        if host_in_scope(state, who, &a.host_id).await? {
            out.push(a);
        }
    }
    Ok(out)
}

/// Refuses a caller that may decide nothing before the action is looked up: 403 whatever the
/// id (so it tells nothing about the action), not the 404 of a token that sees only its own.
fn check_may_decide(who: &Principal) -> Result<(), Refusal> {
    if who.token.requires_approval {
        return Err(Refusal::Denied(
            "a token that requires approval cannot decide approvals".into(),
        ));
    }
    who.require(Level::Admin)
}

fn check_decider(who: &Principal, action: &PendingAction) -> Result<(), Refusal> {
    check_may_decide(who)?;
    if action.token_id == who.token.id {
        return Err(Refusal::Denied(
            "a token cannot approve or deny its own actions; use another admin token".into(),
        ));
    }
    Ok(())
}

/// A decision that came too late or twice.
fn not_pending(a: &PendingAction) -> Refusal {
    let message = if a.status == ActionStatus::Interrupted {
        format!(
            "action {} was interrupted: the control plane lost the answer of its call to host {} \
             (it stopped, or the host's connection or the call's time ran out), so whether it ran \
             is unknown until the host's audit record settles it (tomo audit --host {}); it \
             cannot be decided or run again: ask for it again if it must run",
            a.id, a.host_id, a.host_id
        )
    } else {
        format!("action {} is {}, not pending", a.id, a.status.as_str())
    };
    Refusal::NotPending(message)
}

/// Approves and runs the action; answers when it has run (done or failed). The call runs in
/// its own task, so a client that stops waiting does not cancel it.
pub async fn approve(
    state: &Arc<AppState>,
    who: &Principal,
    id: &str,
) -> Result<PendingAction, Refusal> {
    check_may_decide(who)?;
    let action = get(state, who, id).await?;
    check_decider(who, &action)?;
    if action.status != ActionStatus::Pending {
        return Err(not_pending(&action));
    }
    let now = now_ms();
    // Stored with the decision: the host audits the call under it, which settles the action
    // if the control plane stops before the answer (see `interrupted`).
    let trace = who
        .trace_id
        .clone()
        .unwrap_or_else(|| tomo_common::hex(&tomo_common::random_bytes::<8>()));
    if !state
        .store
        .decide_action(
            id,
            ActionStatus::Approved,
            &who.token.name,
            now,
            None,
            Some(&trace),
        )
        .await?
    {
        return Err(not_pending(&get(state, who, id).await?));
    }
    tracing::info!(action = %id, by = %who.token.name, "action approved");
    let run = tokio::spawn(run_approved(
        Arc::clone(state),
        action,
        who.token.name.clone(),
        Some(trace),
    ));
    if let Err(e) = run.await {
        tracing::error!(action = %id, error = %e, "approved action task failed");
    }
    get(state, who, id).await
}

/// Runs an approved action as the token that asked for it and records how it ended.
async fn run_approved(
    state: Arc<AppState>,
    action: PendingAction,
    approver: String,
    trace: Option<String>,
) {
    let (status, result) = match execute(&state, &action, &approver, trace.clone()).await {
        Ok(v) => (ActionStatus::Done, v),
        Err(Failure::Failed(e)) => (ActionStatus::Failed, e),
        Err(Failure::Unknown(e)) => (ActionStatus::Interrupted, e),
    };
    tracing::info!(action = %action.id, status = status.as_str(), "approved action ended");
    if let Err(e) = state.store.finish_action(&action.id, status, &result).await {
        tracing::error!(action = %action.id, error = %e, "cannot record how the action ended");
        return;
    }
    if status == ActionStatus::Interrupted
        && let Some(trace) = trace
    {
        let action = PendingAction { status, ..action };
        state
            .interrupted
            .wait_for(&*state.store, &action, &trace)
            .await;
    }
}

/// How an approved call did not succeed.
enum Failure {
    /// It failed: the error.
    Failed(Value),
    /// The host may have run it but did not say how it ended (the connection was lost, the
    /// call timed out, the agent shut down before it ended): the action is interrupted.
    Unknown(Value),
}

async fn execute(
    state: &AppState,
    action: &PendingAction,
    approver: &str,
    trace: Option<String>,
) -> Result<Value, Failure> {
    let fail =
        |code: &str, message: String| Failure::Failed(json!({"code": code, "message": message}));
    // The asking token must still be valid, with its scope still covering the host.
    let token = match state.store.token(&action.token_id).await {
        Ok(t) => t,
        Err(e) => return Err(fail("token_gone", format!("the asking token: {e}"))),
    };
    let now = now_ms();
    if token.revoked_at.is_some() || token.expires_at.is_some_and(|e| e <= now) {
        return Err(fail(
            "token_invalid",
            "the asking token was revoked or expired before the action ran".into(),
        ));
    }
    let asker = Principal {
        token,
        trace_id: trace,
        idempotency_key: None,
    };
    let params = clear_params(state, action).map_err(|e| fail("unsealable", e.to_string()))?;
    let unknown = |message: String| {
        Failure::Unknown(json!({
            "code": "interrupted",
            "message": format!("{message}: whether it ran on the host is unknown until the \
                host's audit record of it arrives (tomo audit --host {}); it is not run again",
                action.host_id),
        }))
    };
    // The same pipeline as any call, as the asking token, but for the approval just given:
    // a host removed or out of the token's scope by now, or a role lowered, is refused here.
    let request = CallRequest {
        hosts: Hosts::Id(&action.host_id),
        method: &action.method,
        params,
        timeout: Some(RUN_TIMEOUT),
        mode: Mode::Approved,
    };
    let mut admitted = match crate::core::call::admit(state, &asker, request).await {
        Ok(Admission::Run(a)) => a,
        Ok(Admission::Pending(_)) => {
            return Err(fail(
                "internal",
                "an approved action asked for approval again".into(),
            ));
        }
        Err(r) => return Err(fail(r.code(), r.to_string())),
    };
    admitted.caller.principal = format!("{} (approved by {approver})", asker.token.name);
    match admitted.call(state).await {
        Ok(resp) => match resp.outcome {
            Outcome::Result(v) => Ok(v),
            Outcome::Error(e) if e.code == tomo_proto::rpc::code::SHUTTING_DOWN => {
                Err(unknown(redact_string(&e.message)))
            }
            Outcome::Error(e) => Err(Failure::Failed(
                json!({"code": e.code, "message": redact_string(&e.message), "data": e.data}),
            )),
        },
        Err(e @ (CallError::Timeout { .. } | CallError::ConnectionLost(_))) => {
            Err(unknown(e.to_string()))
        }
        Err(e) => {
            let e = e.to_rpc();
            Err(Failure::Failed(
                json!({"code": e.code, "message": e.message}),
            ))
        }
    }
}

/// Denies the action; `reason` is kept for the asker to read.
pub async fn deny(
    state: &AppState,
    who: &Principal,
    id: &str,
    reason: Option<&str>,
) -> Result<PendingAction, Refusal> {
    check_may_decide(who)?;
    let action = get(state, who, id).await?;
    check_decider(who, &action)?;
    if action.status != ActionStatus::Pending {
        return Err(not_pending(&action));
    }
    let result = reason.map(|r| json!({"reason": redact_string(r)}));
    if !state
        .store
        .decide_action(
            id,
            ActionStatus::Denied,
            &who.token.name,
            now_ms(),
            result.as_ref(),
            None,
        )
        .await?
    {
        return Err(not_pending(&get(state, who, id).await?));
    }
    tracing::info!(action = %id, by = %who.token.name, "action denied");
    get(state, who, id).await
}

//! Approved actions the control plane stopped in the middle of (issue 13.2, docs/reliability.md).
//!
//! An approved action runs in a task of the control plane; when the process dies before the
//! host answered, the action stays `approved` with no result. At start no action can be running,
//! so [`Interrupted::recover`] marks every `approved` one `interrupted` (outcome unknown), which
//! lists it again (`tomo approvals`) and refuses to decide or run it again. Its call carried a
//! trace id stored with the action; the host's agent audits the call under it and forwards the
//! records (delivering those made while no session was up once one is), so the first record with
//! an outcome — already stored, or arriving later ([`Interrupted::observe`]) — moves the action to
//! `done` or `failed`. An approved call whose answer the control plane lost while it runs (the
//! host's connection dropped, the call timed out, the agent shut down before it ended) is
//! interrupted the same way ([`Interrupted::wait_for`]).

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

use serde_json::{Value, json};
use tomo_proto::audit::AuditRecord;

use crate::store::{ActionStatus, PendingAction, Store, StoreError};

/// Interrupted actions read at start to wait for their host's audit record, at most (the newest).
const MAX_WAITING: u32 = 10_000;

/// Interrupted actions still waiting for their host's audit record, by (host id, trace id).
#[derive(Debug, Default)]
pub struct Interrupted {
    waiting: Mutex<HashMap<(String, String), String>>,
}

/// What an interrupted action's result says before anything is known.
fn unknown() -> Value {
    json!({
        "code": "interrupted",
        "message": "the control plane stopped while this action ran: whether it ran on the host \
            is unknown until the host's audit record of it arrives (tomo audit --host HOST); it \
            is not run again",
    })
}

/// The status and result an agent's audit record of the action's call gives it.
fn verdict(record: &AuditRecord) -> (ActionStatus, Value) {
    let audit = serde_json::to_value(record).unwrap_or(Value::Null);
    match record.outcome.as_str() {
        "ok" => (
            ActionStatus::Done,
            json!({
                "outcome": "ok",
                "message": "the host's audit record says the call succeeded; its result was lost \
                    with the control plane",
                "audit": audit,
            }),
        ),
        // The admission: the call reached the handler, its end is not known yet.
        "admitted" => (
            ActionStatus::Interrupted,
            json!({
                "code": "interrupted",
                "message": "the host admitted the call and started it; how it ended is unknown \
                    until the host's audit record of its outcome arrives",
                "audit": audit,
            }),
        ),
        "unknown" => (
            ActionStatus::Interrupted,
            json!({
                "code": "interrupted",
                "message": "the host's agent stopped too before the call ended: whether it took \
                    effect is unknown; check the host",
                "audit": audit,
            }),
        ),
        code => (
            ActionStatus::Failed,
            json!({
                "code": code.parse::<i64>().map_or_else(|_| json!(code), |c| json!(c)),
                "message": record.error.clone().unwrap_or_else(|| "the call failed on the host".into()),
                "audit": audit,
            }),
        ),
    }
}

impl Interrupted {
    /// Marks the actions left `approved` by an earlier process interrupted, and settles the
    /// interrupted ones (these and earlier ones) whose host's audit record of the call is already
    /// stored; the others wait for it. Called once, at start.
    pub async fn recover(store: &dyn Store) -> Result<Self, StoreError> {
        let this = Self::default();
        for a in store.interrupt_actions(&unknown()).await? {
            tracing::warn!(action = %a.id, host_id = %a.host_id, method = %a.method,
                "approved action interrupted by a stop of the control plane; its outcome is unknown");
        }
        let open = store
            .actions(&[ActionStatus::Interrupted], None, MAX_WAITING)
            .await?;
        for a in open {
            let Some(trace) = a.trace_id.clone() else {
                continue;
            };
            if !this.settle_from_store(store, &a, &trace).await? {
                this.lock().insert((a.host_id.clone(), trace), a.id.clone());
            }
        }
        Ok(this)
    }

    /// Waits for the host's audit record of `a`'s call, interrupted while the control plane
    /// runs (the connection to the host was lost, or the call timed out): settled from what is
    /// already stored, else from the record when it arrives.
    pub async fn wait_for(&self, store: &dyn Store, a: &PendingAction, trace: &str) {
        self.lock()
            .insert((a.host_id.clone(), trace.to_owned()), a.id.clone());
        match self.settle_from_store(store, a, trace).await {
            Ok(true) => {
                self.lock().remove(&(a.host_id.clone(), trace.to_owned()));
            }
            Ok(false) => {}
            Err(e) => {
                tracing::error!(action = %a.id, error = %e, "cannot read the host's audit of an interrupted action")
            }
        }
    }

    /// Settles `a` from the audit records already stored; whether it is settled for good.
    async fn settle_from_store(
        &self,
        store: &dyn Store,
        a: &PendingAction,
        trace: &str,
    ) -> Result<bool, StoreError> {
        let since = a.decided_at.unwrap_or(a.created_at);
        for stored in store.audit_of_trace(&a.host_id, trace, since).await? {
            let Ok(record) = serde_json::from_str::<AuditRecord>(&stored.record) else {
                continue;
            };
            let (status, result) = verdict(&record);
            store.settle_interrupted(&a.id, status, &result).await?;
            if status.is_final() {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// An agent's audit record as it arrives: when it is of an interrupted action's call, what
    /// it says is recorded in the action.
    pub async fn observe(&self, store: &dyn Store, host_id: &str, record: &AuditRecord) {
        let Some(trace) = record.trace_id.as_deref() else {
            return;
        };
        let key = (host_id.to_owned(), trace.to_owned());
        let Some(id) = self.lock().get(&key).cloned() else {
            return;
        };
        let (status, result) = verdict(record);
        match store.settle_interrupted(&id, status, &result).await {
            Ok(_) if status.is_final() => {
                self.lock().remove(&key);
                tracing::info!(action = %id, status = status.as_str(),
                    "interrupted action settled from the host's audit record");
            }
            Ok(_) => {}
            Err(e) => {
                tracing::error!(action = %id, error = %e, "cannot record an interrupted action's outcome")
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(String, String), String>> {
        self.waiting.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use tomo_proto::handshake::HostFacts;
    use tomo_proto::methods::Level;

    use super::*;
    use crate::auth::TokenSpec;
    use crate::config::ServerConfig;
    use crate::core::Principal;
    use crate::store::{NewCode, NewHost};
    use crate::{AppState, Server};

    const HOST: &str = "h_interrupted";

    fn record(trace: &str, outcome: &str) -> AuditRecord {
        AuditRecord {
            at_ms: tomo_common::now_ms(),
            trace_id: Some(trace.into()),
            principal: Some("asker (approved by boss)".into()),
            role: Some(Level::Execute),
            method: "docker.containers.stop".into(),
            params: Some(json!({"container": "web"})),
            decision: "allowed".into(),
            reason: None,
            outcome: outcome.into(),
            error: (outcome != "ok").then(|| "engine said no".into()),
            duration_ms: 5,
            admission_id: None,
        }
    }

    /// An action as `approve` leaves it while its call runs: approved, trace stored, no result.
    async fn approved_and_running(state: &AppState, asker: &str, id: &str, trace: &str) {
        let now = tomo_common::now_ms();
        let action = PendingAction {
            id: id.into(),
            token_id: asker.into(),
            token_name: "asker".into(),
            host_id: HOST.into(),
            method: "docker.containers.stop".into(),
            params: None,
            summary: format!("docker.containers.stop on h ({HOST}) container web"),
            status: ActionStatus::Pending,
            created_at: now,
            expires_at: now + 60_000,
            decided_at: None,
            decided_by: None,
            result: None,
            trace_id: None,
        };
        state.store.create_action(&action).await.expect("create");
        let decided = state
            .store
            .decide_action(id, ActionStatus::Approved, "boss", now, None, Some(trace))
            .await
            .expect("decide");
        assert!(decided);
    }

    async fn bind(config: &ServerConfig) -> (Server, Arc<AppState>) {
        let server = Server::bind(config.clone()).await.expect("bind");
        let state = server.state();
        (server, state)
    }

    /// Regression test for issue 13.2: an action approved while the control plane died stayed
    /// `approved` forever, unlisted, answering 409 without saying why.
    #[tokio::test]
    async fn actions_a_stop_cut_while_they_ran_are_interrupted_listed_and_settled_from_the_hosts_audit()
     {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = ServerConfig::new(
            dir.path().join("server"),
            "127.0.0.1:0".parse().expect("addr"),
        );
        let (server, state) = bind(&config).await;
        let store = &*state.store;
        store
            .create_code(&NewCode {
                code_hash: [7; 32],
                created_at: 0,
                expires_at: i64::MAX,
                created_by: "t".into(),
            })
            .await
            .expect("code");
        let host = NewHost {
            id: HOST.into(),
            public_key: vec![1; 32],
            facts: HostFacts {
                hostname: "h".into(),
                ..Default::default()
            },
        };
        store.register(&host, &[7; 32], 1).await.expect("host");
        let mut spec = TokenSpec::new("asker", Level::Admin);
        spec.requires_approval = true;
        let (_, asker) = crate::auth::mint(store, &spec).await.expect("asker");
        let (_, boss) = crate::auth::mint(store, &TokenSpec::new("boss", Level::Admin))
            .await
            .expect("boss");
        // Three calls running when the control plane dies: the host's record of the first
        // arrives after the restart, the second's was stored before the stop, the third's never.
        approved_and_running(&state, &asker.id, "act_later", "trace-later").await;
        approved_and_running(&state, &asker.id, "act_stored", "trace-stored").await;
        approved_and_running(&state, &asker.id, "act_never", "trace-never").await;
        store
            .add_audit(
                Some(HOST),
                1,
                tomo_common::now_ms(),
                &serde_json::to_string(&record("trace-stored", "ok")).expect("json"),
            )
            .await
            .expect("audit");
        // The process dies: nothing finishes the actions.
        state.shutdown.cancel();
        drop(server);
        state.store.close().await;
        drop(state);

        let (_server, state) = bind(&config).await;
        let who = Principal::of(state.store.token(&boss.id).await.expect("boss"));
        let action = |id: &'static str| {
            let state = Arc::clone(&state);
            async move { state.store.action(id).await.expect("action") }
        };
        let later = action("act_later").await;
        assert_eq!(later.status, ActionStatus::Interrupted);
        assert_eq!(
            later.result.as_ref().expect("result")["code"],
            "interrupted"
        );
        let stored = action("act_stored").await;
        assert_eq!(stored.status, ActionStatus::Done, "{:?}", stored.result);
        assert_eq!(
            stored.result.as_ref().expect("result")["audit"]["outcome"],
            "ok"
        );
        // Listed by default (`tomo approvals`), with what needs a human.
        let listed: Vec<(String, ActionStatus)> =
            crate::approvals::list(&state, &who, crate::approvals::OPEN, 100)
                .await
                .expect("list")
                .into_iter()
                .map(|a| (a.id, a.status))
                .collect();
        assert!(
            listed.contains(&("act_later".into(), ActionStatus::Interrupted)),
            "{listed:?}"
        );
        assert!(
            listed.contains(&("act_never".into(), ActionStatus::Interrupted)),
            "{listed:?}"
        );
        assert!(
            !listed.iter().any(|(id, _)| id == "act_stored"),
            "{listed:?}"
        );
        // Never decided or run again, and the refusal says why.
        for e in [
            crate::approvals::approve(&state, &who, "act_later")
                .await
                .expect_err("approve"),
            crate::approvals::deny(&state, &who, "act_later", None)
                .await
                .expect_err("deny"),
        ] {
            assert_eq!(e.code(), "not_pending");
            assert!(e.to_string().contains("interrupted"), "{e}");
        }
        // The host's records arrive (the agent delivers what it made while disconnected): the
        // admission says it started, the outcome settles it.
        let send = |r: AuditRecord| {
            let state = Arc::clone(&state);
            async move {
                let text = serde_json::to_string(&r).expect("json");
                crate::audit::on_agent_record(&state, HOST, &text).await;
            }
        };
        send(record("trace-later", "admitted")).await;
        let later = action("act_later").await;
        assert_eq!(later.status, ActionStatus::Interrupted);
        assert_eq!(
            later.result.as_ref().expect("result")["audit"]["outcome"],
            "admitted"
        );
        // Another host's record with the same trace id settles nothing.
        let text = serde_json::to_string(&record("trace-later", "ok")).expect("json");
        crate::audit::on_agent_record(&state, "h_other", &text).await;
        assert_eq!(action("act_later").await.status, ActionStatus::Interrupted);
        send(record("trace-later", "-32003")).await;
        let later = action("act_later").await;
        assert_eq!(later.status, ActionStatus::Failed);
        let result = later.result.expect("result");
        assert_eq!(result["code"], -32003);
        assert_eq!(result["message"], "engine said no");
        assert_eq!(action("act_never").await.status, ActionStatus::Interrupted);
    }
}

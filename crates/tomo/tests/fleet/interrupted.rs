//! Issues 13.2 and 13.3 end to end, with a real agent whose engine holds the command: an
//! approved command the control plane stops in the middle of is `interrupted` after it comes
//! back, listed, never decided again, and settled from the agent's audit record of the outcome;
//! a command cut by a kill of the agent is on record as admitted, then as `unknown`.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::Value;
use tokio::sync::oneshot;
use tomo_agent::docker::Endpoint;
use tomo_proto::methods::Level;
use tomo_server::auth::TokenSpec;

use crate::mcp_approvals::tomo_cli;
use crate::support::{Fleet, RunningAgent, WAIT};

/// A "Docker engine" that accepts connections and answers nothing until released; then it
/// hangs up on every connection and accepts no more.
pub(crate) fn held_engine(dir: &std::path::Path) -> (Endpoint, oneshot::Sender<()>) {
    let sock = dir.join("docker.sock");
    let listener = tokio::net::UnixListener::bind(&sock).expect("bind");
    let (release, released) = oneshot::channel::<()>();
    tokio::spawn(async move {
        let mut held = Vec::new();
        tokio::pin!(released);
        loop {
            tokio::select! {
                Ok((s, _)) = listener.accept() => held.push(s),
                _ = &mut released => return,
            }
        }
    });
    (Endpoint::Unix(sock.display().to_string()), release)
}

/// Polls `check` until it returns something, for at most [`WAIT`].
async fn eventually<T, F: Future<Output = Option<T>>>(what: &str, check: impl Fn() -> F) -> T {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(tokio::time::Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn an_approved_command_cut_by_a_control_plane_stop_is_interrupted_then_settled_from_the_agents_audit()
 {
    let mut f = Fleet::start().await;
    let engine_dir = tempfile::tempdir().expect("tempdir");
    let (endpoint, release) = held_engine(engine_dir.path());
    let mut config = f.agent("held", Some(f.code().await));
    config.docker = endpoint;
    let mut agent = RunningAgent::spawn(config);
    let host = agent.online().await;
    let mut spec = TokenSpec::new("assistant", Level::Execute);
    spec.requires_approval = true;
    let (asker, _) = tomo_server::auth::mint(&*f.state.store, &spec)
        .await
        .expect("token");
    let path = format!("/hosts/{host}/containers/tomo-test-held/start");
    let (s, v) = f.api_as(&asker, Method::POST, &path, None).await;
    assert_eq!(s, StatusCode::ACCEPTED, "{v}");
    let id = v["pending_action"]["id"]
        .as_str()
        .expect("action id")
        .to_owned();

    // Approved: the call reaches the agent, whose engine holds it.
    let approve = {
        let (http, url, token) = (f.http.clone(), f.info.api_url.clone(), f.token.clone());
        let id = id.clone();
        tokio::spawn(async move {
            http.post(format!("{url}/api/v1/approvals/{id}/approve"))
                .bearer_auth(token)
                .send()
                .await
        })
    };
    // Issue 13.3: the agent's admission is on record before the handler ended.
    let state = f.state.clone();
    let admitted = eventually("the agent's admission record", || {
        let state = state.clone();
        let host = host.clone();
        async move {
            let rows = state.store.audit(Some(&host), None, None, 100).await.ok()?;
            rows.into_iter()
                .filter_map(|r| serde_json::from_str::<Value>(&r.record).ok())
                .find(|r| r["outcome"] == "admitted")
        }
    })
    .await;
    assert_eq!(admitted["method"], "docker.containers.start", "{admitted}");
    let action = f.state.store.action(&id).await.expect("action");
    assert_eq!(
        action.trace_id.as_deref(),
        admitted["trace_id"].as_str(),
        "the admission carries the trace id stored with the approval"
    );

    // The control plane stops while the command runs.
    let addr = f.info.local_addr.to_string();
    let dir = f.dir.clone();
    f.stop().await;
    let _ = approve.await;
    agent
        .status
        .wait_for(|s| matches!(s, tomo_agent::Status::Offline { .. }))
        .await
        .expect("agent alive");
    let f2 = Fleet::start_in(&dir, &addr, |_| {}).await;

    // Issue 13.2: interrupted, listed by default, never decided again.
    let (s, listed) = f2.api(Method::GET, "/approvals", None).await;
    assert_eq!(s, StatusCode::OK, "{listed}");
    let mine = listed
        .as_array()
        .expect("array")
        .iter()
        .find(|a| a["id"] == id.as_str())
        .cloned()
        .unwrap_or_else(|| panic!("{id} not listed: {listed}"));
    assert_eq!(mine["status"], "interrupted", "{mine}");
    let (s, v) = f2
        .api(Method::POST, &format!("/approvals/{id}/approve"), None)
        .await;
    assert_eq!(s, StatusCode::CONFLICT, "{v}");
    let message = v["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("interrupted"), "{v}");
    // The same in the CLI: listed by default, with what it means; approving it again fails.
    let (ok, out, all) = tomo_cli(&f2, &f2.token, &["approvals"]).await;
    let row = out
        .lines()
        .find(|l| l.contains(id.as_str()))
        .unwrap_or_default();
    assert!(ok && row.contains("interrupted"), "{all}");
    assert!(all.contains("it is never run again"), "{all}");
    let (ok, _, all) = tomo_cli(&f2, &f2.token, &["approve", &id]).await;
    assert!(!ok && all.contains("was interrupted"), "{all}");

    // The engine lets go: the handler ends, and the agent's outcome record settles the action.
    let _ = release.send(());
    f2.wait_status(&host, "online").await;
    let settled = eventually("the action settled from the agent's audit", || {
        let f2 = &f2;
        let id = id.clone();
        async move {
            let (_, v) = f2.api(Method::GET, &format!("/approvals/{id}"), None).await;
            (v["status"] != "interrupted").then_some(v)
        }
    })
    .await;
    assert!(
        settled["status"] == "failed" || settled["status"] == "done",
        "{settled}"
    );
    let audit = &settled["result"]["audit"];
    assert_eq!(audit["admission_id"], admitted["admission_id"], "{settled}");
    assert_ne!(audit["outcome"], "admitted", "{settled}");
    agent.stop().await.expect("stop");
}

/// The records of `host` stored by the control plane, as JSON.
async fn records(f: &Fleet, host: &str) -> Vec<Value> {
    let rows = f
        .state
        .store
        .audit(Some(host), None, None, 1000)
        .await
        .expect("audit");
    rows.into_iter()
        .filter_map(|r| serde_json::from_str(&r.record).ok())
        .collect()
}

/// A stop sent to `host`, whose engine holds it: the call in the background, and the agent's
/// admission record of it once the control plane has it.
async fn held_stop(
    f: &Fleet,
    host: &str,
) -> (
    tokio::task::JoinHandle<reqwest::Result<reqwest::Response>>,
    Value,
) {
    let call = {
        let (http, url, token) = (f.http.clone(), f.info.api_url.clone(), f.token.clone());
        let host = host.to_owned();
        tokio::spawn(async move {
            http.post(format!(
                "{url}/api/v1/hosts/{host}/containers/tomo-test-held/stop"
            ))
            .bearer_auth(token)
            .send()
            .await
        })
    };
    let admitted = eventually("the admission on the control plane", || async {
        records(f, host)
            .await
            .into_iter()
            .find(|r| r["outcome"] == "admitted")
    })
    .await;
    (call, admitted)
}

/// Issue 13.3 with a real agent: a command in flight when the agent dies was recorded nowhere.
/// Its admission reaches the control plane before the handler ends; the agent started again on
/// its directory sends the outcome `unknown`.
#[tokio::test]
async fn a_command_cut_by_a_kill_of_the_agent_is_admitted_then_unknown_on_the_control_plane() {
    let f = Fleet::start().await;
    let engine_dir = tempfile::tempdir().expect("tempdir");
    let (endpoint, _release) = held_engine(engine_dir.path());
    let mut config = f.agent("killed", Some(f.code().await));
    config.docker = endpoint;
    let log = config.data_dir.join(tomo_agent::audit::FILE_NAME);
    let mut agent = RunningAgent::spawn(config.clone());
    let host = agent.online().await;
    let (call, admitted) = held_stop(&f, &host).await;
    assert_eq!(admitted["method"], "docker.containers.stop", "{admitted}");

    agent.kill();
    let _ = call.await;
    let mut again = RunningAgent::spawn(config);
    assert_eq!(again.online().await, host);
    let unknown = eventually("the outcome unknown on the control plane", || async {
        records(&f, &host)
            .await
            .into_iter()
            .find(|r| r["outcome"] == "unknown")
    })
    .await;
    assert_eq!(
        unknown["admission_id"], admitted["admission_id"],
        "{unknown}"
    );
    assert_eq!(unknown["trace_id"], admitted["trace_id"], "{unknown}");
    let text = std::fs::read_to_string(&log).expect("audit.log");
    let local: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).expect("a whole record"))
        .filter(|r: &Value| r["admission_id"] == admitted["admission_id"])
        .map(|r| r["outcome"].clone())
        .collect();
    assert_eq!(local, ["admitted", "unknown"], "{text}");
    again.stop().await.expect("stop");
}

/// Issue 13, the double fault: a command's outcome recorded while no session was up (the
/// control plane was down when the engine let go) waited in the agent's memory only, so an
/// agent restarted before it reconnected never sent it. At each session start the agent sends
/// its log again from the newest record the control plane holds; nothing is stored twice.
#[tokio::test]
async fn an_outcome_recorded_offline_reaches_the_control_plane_after_an_agent_restart() {
    let mut f = Fleet::start().await;
    let engine_dir = tempfile::tempdir().expect("tempdir");
    let (endpoint, release) = held_engine(engine_dir.path());
    let mut config = f.agent("double", Some(f.code().await));
    config.docker = endpoint;
    let log = config.data_dir.join(tomo_agent::audit::FILE_NAME);
    let mut agent = RunningAgent::spawn(config.clone());
    let host = agent.online().await;
    let (call, admitted) = held_stop(&f, &host).await;
    // The control plane goes; then the engine lets go: the outcome is recorded offline.
    let (addr, dir) = (f.info.local_addr.to_string(), f.dir.clone());
    f.stop().await;
    let _ = call.await;
    let _ = release.send(());
    let outcome_in_log = || {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .any(|l| {
                l.contains(admitted["admission_id"].as_str().unwrap_or("?"))
                    && !l.contains(r#""outcome":"admitted""#)
            })
    };
    let deadline = tokio::time::Instant::now() + WAIT;
    while !outcome_in_log() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no outcome in the agent's log"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The agent dies before it reconnects: its memory is gone, its log is not.
    agent.kill();
    let f2 = Fleet::start_in(&dir, &addr, |_| {}).await;
    config.register_code = None;
    config.docker = Endpoint::Refused("the engine is gone".into());
    let mut again = RunningAgent::spawn(config);
    assert_eq!(again.online().await, host);
    let outcome = eventually("the offline outcome on the control plane", || async {
        records(&f2, &host)
            .await
            .into_iter()
            .find(|r| r["admission_id"] == admitted["admission_id"] && r["outcome"] != "admitted")
    })
    .await;
    assert_ne!(outcome["outcome"], "unknown", "{outcome}");
    // Sent again from the log, the admission is not stored twice.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let admissions = records(&f2, &host)
        .await
        .into_iter()
        .filter(|r| r["outcome"] == "admitted")
        .count();
    assert_eq!(admissions, 1);
    again.stop().await.expect("stop");
}

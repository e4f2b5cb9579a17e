//! Issue 13.5: a hung Docker engine. Five hung commands held all five command slots for 120 s
//! (bollard's own timeout), so everything else got -32002. Every call now has a deadline on the
//! agent, and no call runs after the control plane stopped waiting for it: the agent cancels it
//! and frees its slot. Pings and reads are never queued behind the hung commands.

use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::interrupted::held_engine;
use crate::support::{Fleet, RunningAgent};

/// Calls `method` on `host` through the operator API with the given wait (`timeout_ms`).
async fn call(
    fleet: &Fleet,
    host: &str,
    method: &str,
    params: Value,
    wait_ms: u64,
) -> (StatusCode, Value) {
    let body = json!({"method": method, "params": params, "timeout_ms": wait_ms});
    fleet
        .api(Method::POST, &format!("/hosts/{host}/rpc"), Some(body))
        .await
}

#[tokio::test]
async fn commands_on_a_hung_engine_are_cancelled_when_the_operator_stops_waiting() {
    let fleet = Fleet::start().await;
    let engine_dir = tempfile::tempdir().expect("tempdir");
    let (endpoint, _release) = held_engine(engine_dir.path());
    let mut config = fleet.agent("hung", Some(fleet.code().await));
    config.docker = endpoint;
    let mut agent = RunningAgent::spawn(config);
    let host = agent.online().await;
    let stop = |n: usize| json!({"container": format!("tomo-test-hung-{n}")});

    // Five commands, each waited for 1 s: they fill the five command slots, hung.
    let t0 = Instant::now();
    let hung = futures_util::future::join_all(
        (0..5).map(|n| call(&fleet, &host, "docker.containers.stop", stop(n), 1000)),
    )
    .await;
    for (s, r) in &hung {
        assert_eq!(*s, StatusCode::GATEWAY_TIMEOUT, "{r}");
    }
    assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());

    // A ping answers at once, though the engine is hung.
    let t = Instant::now();
    let (s, r) = call(&fleet, &host, "agent.ping", json!({}), 5000).await;
    assert_eq!(s, StatusCode::OK, "{r}");
    assert!(
        t.elapsed() < Duration::from_secs(1),
        "ping took {:?}",
        t.elapsed()
    );

    // The control plane stopped waiting for the five, so the agent cancelled them: a sixth
    // command gets a slot (before: -32002 "5 commands are already running" for 120 s). It
    // hangs too, and is itself cancelled when its wait ends: the agent's answer says so.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (s, r) = call(&fleet, &host, "docker.containers.stop", stop(5), 1000).await;
    assert_eq!(
        s,
        StatusCode::GATEWAY_TIMEOUT,
        "not refused for lack of a slot: {r}"
    );
    assert_ne!(r["error"]["code"], "rate_limited", "{r}");

    // A read is never refused for want of a slot; it ends at its wait like a command.
    let t = Instant::now();
    let (s, r) = call(&fleet, &host, "docker.containers.list", json!({}), 1000).await;
    assert_eq!(s, StatusCode::GATEWAY_TIMEOUT, "{r}");
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());

    // The agent's audit records why each was cut: cancelled when the wait ended.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (s, audit) = fleet
            .api(Method::GET, &format!("/audit?host={host}&limit=100"), None)
            .await;
        assert_eq!(s, StatusCode::OK, "{audit}");
        let cancelled = audit
            .as_array()
            .expect("array")
            .iter()
            .filter(|r| r["method"] == "docker.containers.stop" && r["reason"] == "deadline")
            .count();
        if cancelled == 6 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "6 stops cancelled on the agent: {audit}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = agent.stop().await;
}

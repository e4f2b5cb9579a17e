//! The agent's connection manager against a scripted control plane over in-memory pipes, with
//! tokio's paused clock: backoff schedule, heartbeats, dead-connection detection, malformed
//! frames, graceful shutdown.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt as _, StreamExt as _};
use serde_json::{Value, json};
use tokio::io::DuplexStream;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;
use tomo_agent::config::AgentConfig;
use tomo_agent::docker::Endpoint;
use tomo_agent::session::{Dialer, Io, SessionError};
use tomo_agent::{Agent, AgentError, Status};
use tomo_proto::handshake::Handshake;

type ServerWs = WebSocketStream<DuplexStream>;

/// Hands each dialed pipe's far end to the test, or fails every dial; records dial times.
struct PipeDialer {
    fail: bool,
    ends: mpsc::UnboundedSender<DuplexStream>,
    dials: Arc<Mutex<Vec<Instant>>>,
}

impl Dialer for PipeDialer {
    fn dial<'a>(
        &'a self,
        url: &'a str,
    ) -> std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Box<dyn Io>, SessionError>> + Send + 'a>,
    > {
        Box::pin(async move {
            self.dials.lock().expect("lock").push(Instant::now());
            if self.fail {
                return Err(SessionError::Connect {
                    url: url.into(),
                    source: std::io::ErrorKind::ConnectionRefused.into(),
                });
            }
            let (a, b) = tokio::io::duplex(4 << 20);
            let _ = self.ends.send(b);
            Ok(Box::new(a) as Box<dyn Io>)
        })
    }
}

struct Harness {
    _dir: tempfile::TempDir,
    ends: mpsc::UnboundedReceiver<DuplexStream>,
    dials: Arc<Mutex<Vec<Instant>>>,
    status: tokio::sync::watch::Receiver<Status>,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<Result<(), AgentError>>,
}

fn start(fail: bool) -> Harness {
    start_with(fail, Endpoint::Refused("no Docker in this test".into()))
}

fn start_with(fail: bool, docker: Endpoint) -> Harness {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cfg = AgentConfig::new(dir.path().join("agent"));
    cfg.server_url = Some("wss://tomo.test/agent/ws".into());
    cfg.register_code = Some("rc_test".into());
    cfg.hostname = Some("pipe-host".into());
    cfg.docker = docker;
    let (tx, ends) = mpsc::unbounded_channel();
    let dials = Arc::new(Mutex::new(Vec::new()));
    let agent = Agent::with_dialer(
        cfg,
        Arc::new(PipeDialer {
            fail,
            ends: tx,
            dials: Arc::clone(&dials),
        }),
    );
    let status = agent.status();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(agent.run(shutdown.clone()));
    Harness {
        _dir: dir,
        ends,
        dials,
        status,
        shutdown,
        task,
    }
}

/// Accepts the next connection and runs the handshake as a control plane that welcomes the agent.
async fn welcome(h: &mut Harness) -> ServerWs {
    let io = h.ends.recv().await.expect("the agent dials");
    let mut ws = tokio_tungstenite::accept_async(io)
        .await
        .expect("ws accept");
    let challenge = Handshake::Challenge {
        proto_version: tomo_proto::PROTO_VERSION,
        nonce: "bm9uY2U=".into(),
    };
    ws.send(Message::text(challenge.to_json()))
        .await
        .expect("send challenge");
    let hello = next_text(&mut ws).await;
    // First a registration; once welcomed, the agent authenticates with its key.
    let first = h.dials.lock().expect("lock").len() == 1;
    match Handshake::parse(&hello) {
        Ok(Handshake::Register { .. }) => assert!(first, "registered twice: {hello}"),
        Ok(Handshake::Authenticate { agent_id, .. }) => assert_eq!(agent_id, "agent-1"),
        other => panic!("unexpected hello {other:?}"),
    }
    let w = Handshake::Welcome {
        proto_version: tomo_proto::PROTO_VERSION,
        agent_id: "agent-1".into(),
        heartbeat_secs: 30,
    };
    ws.send(Message::text(w.to_json()))
        .await
        .expect("send welcome");
    wait_status(h, |s| matches!(s, Status::Online { .. })).await;
    ws
}

async fn next_text(ws: &mut ServerWs) -> String {
    loop {
        match ws.next().await.expect("open").expect("frame") {
            Message::Text(t) => return t.to_string(),
            _ => continue,
        }
    }
}

/// The next text frame that is not one of the agent's notifications.
async fn next_reply(ws: &mut ServerWs) -> Value {
    loop {
        let v: Value = serde_json::from_str(&next_text(ws).await).expect("agent sends JSON");
        if v.get("method").is_none() {
            return v;
        }
    }
}

async fn wait_status(h: &mut Harness, pred: impl Fn(&Status) -> bool) -> Status {
    let s = h.status.wait_for(|s| pred(s)).await.expect("agent alive");
    s.clone()
}

#[tokio::test(start_paused = true)]
async fn reconnect_backoff_doubles_to_60s_with_jitter() {
    let h = start(true);
    tokio::time::sleep(Duration::from_secs(400)).await;
    let dials = h.dials.lock().expect("lock").clone();
    let gaps: Vec<f64> = dials
        .windows(2)
        .map(|w| (w[1] - w[0]).as_secs_f64())
        .collect();
    let bases = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 60.0, 60.0];
    assert!(
        gaps.len() >= bases.len(),
        "only {} attempts: {gaps:?}",
        dials.len()
    );
    for (gap, base) in gaps.iter().zip(bases) {
        assert!(
            *gap >= base * 0.8 - 0.01 && *gap <= base * 1.2 + 0.01,
            "gap {gap} for base {base}: {gaps:?}"
        );
    }
    h.shutdown.cancel();
    assert!(h.task.await.expect("join").is_ok());
}

#[tokio::test(start_paused = true)]
async fn silent_control_plane_is_dead_after_90s() {
    let mut h = start(false);
    let _ws = welcome(&mut h).await;
    let online_at = Instant::now();
    // The control plane never reads nor writes again.
    let s = wait_status(&mut h, |s| matches!(s, Status::Offline { .. })).await;
    let silent = online_at.elapsed().as_secs_f64();
    assert!(
        (89.9..=91.0).contains(&silent),
        "declared dead after {silent}s: {s:?}"
    );
    // And it reconnects by itself.
    let _ws2 = welcome(&mut h).await;
    assert!(h.dials.lock().expect("lock").len() >= 2);
    h.shutdown.cancel();
    assert!(h.task.await.expect("join").is_ok());
}

#[tokio::test(start_paused = true)]
async fn heartbeat_every_30s_keeps_the_session_alive() {
    let mut h = start(false);
    let mut ws = welcome(&mut h).await;
    let t0 = Instant::now();
    let mut pings = Vec::new();
    let mut metrics = 0;
    let mut health = 0;
    let deadline = t0 + Duration::from_secs(200);
    loop {
        tokio::select! {
            m = ws.next() => match m.expect("open").expect("frame") {
                Message::Ping(_) => pings.push(t0.elapsed().as_secs_f64()),
                Message::Text(t) => {
                    let v: Value = serde_json::from_str(&t).expect("json");
                    match v["method"].as_str() {
                        Some("metrics.update") => metrics += 1,
                        Some("health.status") => health += 1,
                        other => panic!("unexpected {other:?}"),
                    }
                }
                _ => {}
            },
            _ = tokio::time::sleep_until(deadline) => break,
        }
    }
    let expected: Vec<f64> = (1..=6).map(|i| 30.0 * i as f64).collect();
    assert_eq!(pings.len(), expected.len(), "{pings:?}");
    for (got, want) in pings.iter().zip(&expected) {
        assert!(
            (got - want).abs() < 0.5,
            "ping at {got}s, expected {want}s: {pings:?}"
        );
    }
    // Pushed at connect, then every 30 s (metrics) and 60 s (health).
    assert_eq!(metrics, 7, "metrics.update count");
    assert_eq!(health, 4, "health.status count");
    assert!(
        matches!(*h.status.borrow(), Status::Online { .. }),
        "still online after 200 s"
    );
    h.shutdown.cancel();
    assert!(h.task.await.expect("join").is_ok());
}

#[tokio::test(start_paused = true)]
async fn malformed_frames_get_json_rpc_errors_and_change_nothing() {
    let mut h = start(false);
    let mut ws = welcome(&mut h).await;
    let cases: Vec<(&str, Value)> = vec![
        (
            "not json",
            json!({"jsonrpc":"2.0","id":null,"error":{"code":-32700}}),
        ),
        (
            "[]",
            json!({"jsonrpc":"2.0","id":null,"error":{"code":-32600}}),
        ),
        (
            r#"{"jsonrpc":"1.0","id":5,"method":"agent.ping","meta":{"role":"read"}}"#,
            json!({"id":5,"error":{"code":-32600}}),
        ),
        (
            r#"{"jsonrpc":"2.0","id":6,"method":"agent.ping","params":"x"}"#,
            json!({"id":6,"error":{"code":-32600}}),
        ),
        (
            r#"{"jsonrpc":"2.0","id":7,"method":"no.such"}"#,
            json!({"id":7,"error":{"code":-32601}}),
        ),
        (
            r#"{"jsonrpc":"2.0","id":8,"method":"docker.containers.list","params":{"all":"yes"},"meta":{"role":"read"}}"#,
            json!({"id":8,"error":{"code":-32602,"data":{"param":"all"}}}),
        ),
        (
            r#"{"jsonrpc":"2.0","id":9,"method":"docker.containers.list","meta":{"role":"read"}}"#,
            json!({"id":9,"error":{"code":-32003}}),
        ),
        (
            r#"{"jsonrpc":"2.0","id":"s","method":"agent.ping","meta":{"role":"read"}}"#,
            json!({"id":"s","result":{"pong":true}}),
        ),
        // Deny by default: a request without a role runs nothing.
        (
            r#"{"jsonrpc":"2.0","id":14,"method":"agent.ping"}"#,
            json!({"id":14,"error":{"code":-32001,"data":{"reason":"no_role"}}}),
        ),
    ];
    for (frame, want) in cases {
        ws.send(Message::text(frame)).await.expect("send");
        let got = next_reply(&mut ws).await;
        assert_subset(&want, &got, frame);
    }
    // A notification gets no answer: the next reply is for the request after it.
    ws.send(Message::text(
        r#"{"jsonrpc":"2.0","method":"agent.ping","meta":{"role":"read"}}"#,
    ))
    .await
    .expect("send");
    ws.send(Message::text(
        r#"{"jsonrpc":"2.0","id":10,"method":"agent.ping","meta":{"role":"read"}}"#,
    ))
    .await
    .expect("send");
    assert_eq!(next_reply(&mut ws).await["id"], json!(10));
    // A batch is answered with an array of the answers to its requests, notifications excluded.
    ws.send(Message::text(r#"[{"jsonrpc":"2.0","id":11,"method":"agent.ping","meta":{"role":"read"}},{"jsonrpc":"2.0","method":"agent.ping","meta":{"role":"read"}},1]"#))
        .await
        .expect("send");
    let batch = next_reply(&mut ws).await;
    let items = batch.as_array().expect("array");
    assert_eq!(items.len(), 2, "{batch}");
    assert_eq!(items[0]["id"], json!(11));
    assert_eq!(items[1]["error"]["code"], json!(-32600));
    // A frame over the agent's limit ends the connection, not the agent; it reconnects.
    let big = format!(
        r#"{{"jsonrpc":"2.0","id":12,"method":"agent.ping","params":{{"x":"{}"}},"meta":{{"role":"read"}}}}"#,
        "a".repeat(2 << 20)
    );
    let _ = ws.send(Message::text(big)).await;
    wait_status(&mut h, |s| matches!(s, Status::Offline { .. })).await;
    let mut ws2 = welcome(&mut h).await;
    ws2.send(Message::text(
        r#"{"jsonrpc":"2.0","id":13,"method":"agent.ping","meta":{"role":"read"}}"#,
    ))
    .await
    .expect("send");
    assert_eq!(next_reply(&mut ws2).await["result"]["pong"], json!(true));
    h.shutdown.cancel();
    assert!(h.task.await.expect("join").is_ok());
}

#[tokio::test]
async fn shutdown_sends_a_close_frame_within_2s() {
    let mut h = start(false);
    let mut ws = welcome(&mut h).await;
    let t0 = std::time::Instant::now();
    h.shutdown.cancel();
    let close = loop {
        match ws.next().await {
            Some(Ok(Message::Close(f))) => break f,
            Some(Ok(_)) => continue,
            other => panic!("expected a close frame, got {other:?}"),
        }
    };
    assert_eq!(
        close.map(|f| f.reason.to_string()).as_deref(),
        Some("agent shutting down")
    );
    assert!(h.task.await.expect("join").is_ok());
    assert!(
        t0.elapsed() < Duration::from_secs(2),
        "took {:?}",
        t0.elapsed()
    );
}

#[tokio::test]
async fn shutdown_answers_in_flight_requests_then_closes() {
    // A "Docker engine" that accepts connections and never answers: requests to it hang.
    let sock_dir = tempfile::tempdir().expect("tempdir");
    let sock = sock_dir.path().join("docker.sock");
    let listener = tokio::net::UnixListener::bind(&sock).expect("bind");
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = listener.accept().await {
            held.push(s);
        }
    });
    let mut h = start_with(false, Endpoint::Unix(sock.display().to_string()));
    let mut ws = welcome(&mut h).await;
    ws.send(Message::text(
        r#"{"jsonrpc":"2.0","id":41,"method":"docker.containers.list","meta":{"role":"read"}}"#,
    ))
    .await
    .expect("send");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let t0 = std::time::Instant::now();
    h.shutdown.cancel();
    let reply = next_reply(&mut ws).await;
    assert_eq!(reply["id"], json!(41), "{reply}");
    assert_eq!(reply["error"]["code"], json!(-32013), "{reply}");
    let close = loop {
        match ws.next().await {
            Some(Ok(Message::Close(f))) => break f,
            Some(Ok(_)) => continue,
            other => panic!("expected a close frame, got {other:?}"),
        }
    };
    assert!(close.is_some());
    assert!(h.task.await.expect("join").is_ok());
    assert!(
        t0.elapsed() < Duration::from_secs(2),
        "took {:?}",
        t0.elapsed()
    );
}

#[tokio::test(start_paused = true)]
async fn permanent_refusal_stops_the_agent() {
    let mut h = start(false);
    let io = h.ends.recv().await.expect("dial");
    let mut ws = tokio_tungstenite::accept_async(io).await.expect("accept");
    let challenge = Handshake::Challenge {
        proto_version: tomo_proto::PROTO_VERSION,
        nonce: "bg==".into(),
    };
    ws.send(Message::text(challenge.to_json()))
        .await
        .expect("send");
    let _ = next_text(&mut ws).await;
    let refused = Handshake::Refused {
        reason: tomo_proto::handshake::RefusalReason::CodeUsed,
        message: "used".into(),
    };
    ws.send(Message::text(refused.to_json()))
        .await
        .expect("send");
    let r = h.task.await.expect("join");
    assert!(
        matches!(
            r,
            Err(AgentError::Refused {
                reason: tomo_proto::handshake::RefusalReason::CodeUsed,
                ..
            })
        ),
        "{r:?}"
    );
    assert_eq!(
        h.dials.lock().expect("lock").len(),
        1,
        "no retry after a permanent refusal"
    );
}

/// Every field of `want` is in `got` with the same value (recursively for objects).
fn assert_subset(want: &Value, got: &Value, ctx: &str) {
    match (want, got) {
        (Value::Object(w), Value::Object(g)) => {
            for (k, v) in w {
                assert_subset(
                    v,
                    g.get(k).unwrap_or(&Value::Null),
                    &format!("{ctx} → {k} in {got}"),
                );
            }
        }
        _ => assert_eq!(want, got, "{ctx}"),
    }
}

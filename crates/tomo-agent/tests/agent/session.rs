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
use tomo_agent::session::{Dialed, Dialer, SessionError};
use tomo_agent::{Agent, AgentError, Status};
use tomo_proto::handshake::{ChannelBinding, Handshake};

/// The channel binding of every pipe (a TLS connection would give each its own).
const PIPE_BINDING: ChannelBinding = ChannelBinding([4; 32]);

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
        Box<dyn std::future::Future<Output = Result<Dialed, SessionError>> + Send + 'a>,
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
            Ok(Dialed {
                io: Box::new(a),
                binding: PIPE_BINDING,
            })
        })
    }
}

struct Harness {
    /// The agent's id, known after the first welcome.
    agent_id: String,
    /// The agent's public key (base64), known after the first hello.
    agent_key: String,
    /// The scripted control plane's command key.
    key: ring::signature::Ed25519KeyPair,
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

fn command_key() -> ring::signature::Ed25519KeyPair {
    let rng = ring::rand::SystemRandom::new();
    let doc = ring::signature::Ed25519KeyPair::generate_pkcs8(&rng).expect("keygen");
    ring::signature::Ed25519KeyPair::from_pkcs8(doc.as_ref()).expect("key")
}

fn public_b64(key: &ring::signature::Ed25519KeyPair) -> String {
    use ring::signature::KeyPair as _;
    tomo_common::b64(key.public_key().as_ref())
}

fn code_for(key: &ring::signature::Ed25519KeyPair) -> String {
    use ring::signature::KeyPair as _;
    let fp =
        tomo_proto::handshake::fingerprint_hex(&tomo_common::sha256(key.public_key().as_ref()));
    format!("rc_0123456789abcdef0123456789abcdef_{fp}")
}

/// A request as the control plane sends it: meta for the agent, a fresh nonce, now, signed by
/// `key`. `id` is JSON (`5`, `"s"`).
fn signed_by(
    key: &ring::signature::Ed25519KeyPair,
    id: &str,
    method: &str,
    params: Option<&str>,
    meta: Value,
) -> String {
    let meta = meta.to_string();
    let payload = tomo_proto::rpc::command_payload(id, method, &meta, params.unwrap_or(""));
    let sig = tomo_common::b64(key.sign(&payload).as_ref());
    tomo_proto::rpc::signed_request_text(id, method, &meta, params, &sig)
}

fn meta_for(aud: &str, role: Option<&str>) -> Value {
    let mut m = json!({
        "aud": aud,
        "nonce": tomo_common::hex(&tomo_common::random_bytes::<16>()),
        "ts": tomo_common::now_ms(),
        "exp": tomo_common::now_ms() + 30_000,
        "principal": "test",
    });
    if let Some(r) = role {
        m["role"] = json!(r);
    }
    m
}

impl Harness {
    /// A signed request with `role` (the usual case).
    fn req(&self, id: &str, method: &str, params: Option<&str>, role: &str) -> String {
        signed_by(&self.key, id, method, params, self.meta(Some(role)))
    }

    /// Meta addressed to this harness's agent.
    fn meta(&self, role: Option<&str>) -> Value {
        meta_for(&self.agent_id, role)
    }
}

/// An agent started again in an existing data directory, trusting the same control plane.
fn restart_in(dir: tempfile::TempDir, key: ring::signature::Ed25519KeyPair) -> Harness {
    start_in(
        false,
        Endpoint::Refused("no Docker in this test".into()),
        dir,
        key,
    )
}

fn start_with(fail: bool, docker: Endpoint) -> Harness {
    start_in(
        fail,
        docker,
        tempfile::tempdir().expect("tempdir"),
        command_key(),
    )
}

fn start_in(
    fail: bool,
    docker: Endpoint,
    dir: tempfile::TempDir,
    key: ring::signature::Ed25519KeyPair,
) -> Harness {
    start_configured(fail, docker, dir, key, |_| {})
}

/// [`start_in`], with the agent's configuration changed by `tweak` before it starts.
fn start_configured(
    fail: bool,
    docker: Endpoint,
    dir: tempfile::TempDir,
    key: ring::signature::Ed25519KeyPair,
    tweak: impl FnOnce(&mut AgentConfig),
) -> Harness {
    let mut cfg = AgentConfig::new(dir.path().join("agent"));
    cfg.server_url = Some("wss://tomo.test/agent/ws".into());
    cfg.register_code = Some(code_for(&key));
    cfg.volume_base = dir.path().join("volumes");
    cfg.hostname = Some("pipe-host".into());
    cfg.docker = docker;
    tweak(&mut cfg);
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
        agent_id: String::new(),
        agent_key: String::new(),
        key,
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
    // The agent's id is the one its key names; the agent refuses any other in `welcome`.
    let agent_id = match Handshake::parse(&hello) {
        Ok(Handshake::Register { public_key, .. }) => {
            assert!(first, "registered twice: {hello}");
            h.agent_key = public_key.clone();
            tomo_common::agent_id_for(&tomo_common::unb64(&public_key).expect("key"))
        }
        Ok(Handshake::Authenticate { agent_id, .. }) => {
            if !h.agent_id.is_empty() {
                assert_eq!(agent_id, h.agent_id);
            }
            agent_id
        }
        other => panic!("unexpected hello {other:?}"),
    };
    h.agent_id = agent_id.clone();
    let w = signed_welcome(&h.key, &agent_id, &h.agent_key, "bm9uY2U=", &PIPE_BINDING);
    ws.send(Message::text(w.to_json()))
        .await
        .expect("send welcome");
    wait_status(h, |s| matches!(s, Status::Online { .. })).await;
    ws
}

/// A welcome as the control plane sends it: signed by `key` over the agent, the nonce and the
/// connection's binding.
fn signed_welcome(
    key: &ring::signature::Ed25519KeyPair,
    agent_id: &str,
    agent_key: &str,
    nonce: &str,
    binding: &ChannelBinding,
) -> Handshake {
    use tomo_proto::handshake::{Purpose, signing_payload, welcome_subject};
    let payload = signing_payload(
        Purpose::Welcome,
        nonce,
        binding,
        &welcome_subject(agent_id, agent_key),
    );
    Handshake::Welcome {
        proto_version: tomo_proto::PROTO_VERSION,
        agent_id: agent_id.into(),
        heartbeat_secs: 30,
        command_key: public_b64(key),
        signature: tomo_common::b64(key.sign(&payload).as_ref()),
        events_since_nanos: None,
        audit_since_ms: None,
    }
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
    let cases: Vec<(String, Value)> = vec![
        (
            "not json".into(),
            json!({"jsonrpc":"2.0","id":null,"error":{"code":-32700}}),
        ),
        (
            "[]".into(),
            json!({"jsonrpc":"2.0","id":null,"error":{"code":-32600}}),
        ),
        (
            r#"{"jsonrpc":"1.0","id":5,"method":"agent.ping","meta":{"role":"read"}}"#.into(),
            json!({"id":5,"error":{"code":-32600}}),
        ),
        (
            r#"{"jsonrpc":"2.0","id":6,"method":"agent.ping","params":"x"}"#.into(),
            json!({"id":6,"error":{"code":-32600}}),
        ),
        (
            h.req("7", "no.such", None, "admin"),
            json!({"id":7,"error":{"code":-32601}}),
        ),
        (
            h.req(
                "8",
                "docker.containers.list",
                Some(r#"{"all":"yes"}"#),
                "read",
            ),
            json!({"id":8,"error":{"code":-32602,"data":{"param":"all"}}}),
        ),
        (
            h.req("9", "docker.containers.list", None, "read"),
            json!({"id":9,"error":{"code":-32003}}),
        ),
        (
            h.req(r#""s""#, "agent.ping", None, "read"),
            json!({"id":"s","result":{"pong":true}}),
        ),
        // Deny by default: a request without a role runs nothing.
        (
            signed_by(&h.key, "14", "agent.ping", None, h.meta(None)),
            json!({"id":14,"error":{"code":-32001,"data":{"reason":"no_role"}}}),
        ),
    ];
    for (frame, want) in &cases {
        ws.send(Message::text(frame.as_str())).await.expect("send");
        let got = next_reply(&mut ws).await;
        assert_subset(want, &got, frame);
    }
    // A notification gets no answer: the next reply is for the request after it.
    ws.send(Message::text(
        r#"{"jsonrpc":"2.0","method":"agent.ping","meta":{"role":"read"}}"#,
    ))
    .await
    .expect("send");
    ws.send(Message::text(h.req("10", "agent.ping", None, "read")))
        .await
        .expect("send");
    assert_eq!(next_reply(&mut ws).await["id"], json!(10));
    // A batch is answered with an array of the answers to its requests, notifications excluded.
    let batch = format!(
        r#"[{},{{"jsonrpc":"2.0","method":"agent.ping","meta":{{"role":"read"}}}},1]"#,
        h.req("11", "agent.ping", None, "read")
    );
    ws.send(Message::text(batch)).await.expect("send");
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
    ws2.send(Message::text(h.req("13", "agent.ping", None, "read")))
        .await
        .expect("send");
    assert_eq!(next_reply(&mut ws2).await["result"]["pong"], json!(true));
    h.shutdown.cancel();
    assert!(h.task.await.expect("join").is_ok());
}

/// The signed-command stages: each forged, replayed, stale or misaddressed request is refused with
/// its reason, and nothing runs (checked: the volume directory a command would make is absent).
#[tokio::test]
async fn forged_replayed_stale_and_misaddressed_requests_are_refused() {
    let mut h = start(false);
    let mut ws = welcome(&mut h).await;
    let made = |name: &str| h._dir.path().join("volumes").join(name).exists();
    let params = |name: &str| format!(r#"{{"volumes":[{{"path":"{name}"}}]}}"#);
    let other = command_key();
    let good = h.req("1", "system.prepare_volumes", Some(&params("a")), "execute");
    let rewritten = good.replace(r#""path":"a""#, r#""path":"evil""#);
    assert_ne!(good, rewritten);
    let mut old = h.meta(Some("execute"));
    old["ts"] = json!(tomo_common::now_ms() - 5 * 60 * 1000 - 1000);
    let mut future = h.meta(Some("execute"));
    future["ts"] = json!(tomo_common::now_ms() + 31_000);
    let mut expired = h.meta(Some("execute"));
    expired["ts"] = json!(tomo_common::now_ms() - 40_000);
    expired["exp"] = json!(tomo_common::now_ms() - 10_000);
    let mut no_expiry = h.meta(Some("execute"));
    no_expiry.as_object_mut().expect("object").remove("exp");
    let mut too_long = h.meta(Some("execute"));
    too_long["exp"] = json!(tomo_common::now_ms() + 5 * 60 * 1000 + 1000);
    let mut elsewhere = h.meta(Some("execute"));
    elsewhere["aud"] = json!("agent-2");
    let unsigned = format!(
        r#"{{"jsonrpc":"2.0","id":2,"method":"system.prepare_volumes","params":{},"meta":{}}}"#,
        params("u"),
        h.meta(Some("execute"))
    );
    let rows: Vec<(&str, String, i64, &str, &str)> = vec![
        ("unsigned", unsigned, -32001, "unsigned", "u"),
        (
            "signed by another key",
            signed_by(
                &other,
                "3",
                "system.prepare_volumes",
                Some(&params("k")),
                h.meta(Some("execute")),
            ),
            -32001,
            "bad_signature",
            "k",
        ),
        (
            "params rewritten by a proxy",
            rewritten,
            -32001,
            "bad_signature",
            "evil",
        ),
        (
            "for another agent",
            signed_by(
                &h.key,
                "4",
                "system.prepare_volumes",
                Some(&params("o")),
                elsewhere,
            ),
            -32001,
            "audience",
            "o",
        ),
        (
            "stale",
            signed_by(
                &h.key,
                "5",
                "system.prepare_volumes",
                Some(&params("s")),
                old,
            ),
            -32001,
            "stale",
            "s",
        ),
        (
            "from the future",
            signed_by(
                &h.key,
                "6",
                "system.prepare_volumes",
                Some(&params("f")),
                future,
            ),
            -32001,
            "stale",
            "f",
        ),
        (
            "issue 12.4: held back past its signed expiry",
            signed_by(
                &h.key,
                "9",
                "system.prepare_volumes",
                Some(&params("x")),
                expired,
            ),
            -32001,
            "expired",
            "x",
        ),
        (
            "issue 12.4: no signed expiry",
            signed_by(
                &h.key,
                "10",
                "system.prepare_volumes",
                Some(&params("n")),
                no_expiry,
            ),
            -32001,
            "stale",
            "n",
        ),
        (
            "issue 12.4: an expiry past the replay window",
            signed_by(
                &h.key,
                "11",
                "system.prepare_volumes",
                Some(&params("w")),
                too_long,
            ),
            -32001,
            "stale",
            "w",
        ),
        (
            "above the caller's role",
            h.req("7", "system.prepare_volumes", Some(&params("r")), "read"),
            -32001,
            "forbidden",
            "r",
        ),
    ];
    for (what, frame, code, reason, dir) in &rows {
        ws.send(Message::text(frame.as_str())).await.expect("send");
        let got = next_reply(&mut ws).await;
        assert_eq!(got["error"]["code"], json!(code), "{what}: {got}");
        assert_eq!(
            got["error"]["data"]["reason"],
            json!(reason),
            "{what}: {got}"
        );
        assert!(!made(dir), "{what}: the command ran");
    }
    // The genuine request runs once; the same bytes again are a replay.
    ws.send(Message::text(good.as_str())).await.expect("send");
    let got = next_reply(&mut ws).await;
    assert!(got.get("result").is_some(), "{got}");
    assert!(made("a"));
    std::fs::remove_dir(h._dir.path().join("volumes/a")).expect("rmdir");
    ws.send(Message::text(good.as_str())).await.expect("send");
    let got = next_reply(&mut ws).await;
    assert_eq!(got["error"]["data"]["reason"], json!("replay"), "{got}");
    assert!(!made("a"), "the replay ran");
    // Across an agent restart, the replay still fails.
    h.shutdown.cancel();
    assert!(h.task.await.expect("join").is_ok());
    let (dir, key, agent_key) = (h._dir, h.key, h.agent_key);
    let mut h = restart_in(dir, key);
    h.agent_key = agent_key;
    let mut ws = welcome(&mut h).await;
    ws.send(Message::text(good.as_str())).await.expect("send");
    let got = next_reply(&mut ws).await;
    assert_eq!(got["error"]["data"]["reason"], json!("replay"), "{got}");
    assert!(
        !h._dir.path().join("volumes/a").exists(),
        "the replay ran after a restart"
    );
    h.shutdown.cancel();
    assert!(h.task.await.expect("join").is_ok());
}

/// Commands are limited to 30 a minute and 5 at once; the 31st and the 6th are errors.
#[tokio::test(start_paused = true)]
async fn commands_are_rate_limited() {
    let mut h = start(false);
    let mut ws = welcome(&mut h).await;
    let p = r#"{"volumes":[{"path":"x"}]}"#;
    for i in 0..30 {
        ws.send(Message::text(h.req(
            &i.to_string(),
            "system.prepare_volumes",
            Some(p),
            "execute",
        )))
        .await
        .expect("send");
        let got = next_reply(&mut ws).await;
        assert!(got.get("result").is_some(), "command {i}: {got}");
    }
    ws.send(Message::text(h.req(
        "30",
        "system.prepare_volumes",
        Some(p),
        "execute",
    )))
    .await
    .expect("send");
    let got = next_reply(&mut ws).await;
    assert_eq!(got["error"]["code"], json!(-32002), "{got}");
    assert_eq!(got["error"]["data"]["reason"], json!("rate"), "{got}");
    // Reads are not commands: they still run.
    ws.send(Message::text(h.req("31", "agent.ping", None, "read")))
        .await
        .expect("send");
    assert!(next_reply(&mut ws).await.get("result").is_some());
    // A minute later the window has room again.
    tokio::time::sleep(Duration::from_secs(61)).await;
    ws.send(Message::text(h.req(
        "32",
        "system.prepare_volumes",
        Some(p),
        "execute",
    )))
    .await
    .expect("send");
    let got = next_reply(&mut ws).await;
    assert!(got.get("result").is_some(), "{got}");
    h.shutdown.cancel();
    assert!(h.task.await.expect("join").is_ok());
}

/// An agent whose host policy (a file, as an operator writes it) sets `extra`.
fn start_with_policy(extra: &str) -> Harness {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("policy.toml");
    std::fs::write(&path, extra).expect("policy");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("mode");
    start_configured(
        false,
        Endpoint::Refused("no Docker in this test".into()),
        dir,
        command_key(),
        |cfg| cfg.policy_path = Some(path),
    )
}

/// Issue 12.2: reads are limited per token by the host policy's `reads_per_minute`; stream
/// continuations are not counted, and the window slides.
#[tokio::test(start_paused = true)]
async fn reads_past_the_policys_read_rate_are_refused() {
    let mut h = start_with_policy("reads_per_minute = 3\n");
    let mut ws = welcome(&mut h).await;
    let mut send = async |id: u32, method: &str, params: Option<&str>| {
        let req = h.req(&id.to_string(), method, params, "read");
        ws.send(Message::text(req)).await.expect("send");
        next_reply(&mut ws).await
    };
    for i in 0..3 {
        let got = send(i, "agent.ping", None).await;
        assert!(got.get("result").is_some(), "read {i}: {got}");
    }
    let got = send(3, "system.info", None).await;
    assert_eq!(got["error"]["code"], json!(-32002), "{got}");
    assert_eq!(got["error"]["data"]["reason"], json!("read_rate"), "{got}");
    let message = got["error"]["message"].as_str().expect("message");
    assert!(message.contains("read rate"), "{message}");
    // A continuation is not a read: answered for itself (no such stream), not refused.
    let got = send(4, "stream.ack", Some(r#"{"stream":"s1","seq":1}"#)).await;
    assert_ne!(got["error"]["data"]["reason"], json!("read_rate"), "{got}");
    tokio::time::sleep(Duration::from_secs(61)).await;
    let got = send(5, "agent.ping", None).await;
    assert!(got.get("result").is_some(), "a minute later: {got}");
    h.shutdown.cancel();
    assert!(h.task.await.expect("join").is_ok());
}

#[tokio::test]
async fn at_most_five_commands_run_at_once() {
    // Commands against an engine that never answers stay in flight.
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
    for i in 0..6 {
        let f = h.req(
            &i.to_string(),
            "docker.containers.start",
            Some(r#"{"container":"x1"}"#),
            "execute",
        );
        ws.send(Message::text(f)).await.expect("send");
    }
    let got = next_reply(&mut ws).await;
    assert_eq!(got["id"], json!(5), "{got}");
    assert_eq!(got["error"]["code"], json!(-32002), "{got}");
    assert_eq!(
        got["error"]["data"]["reason"],
        json!("concurrency"),
        "{got}"
    );
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
    ws.send(Message::text(h.req(
        "41",
        "docker.containers.list",
        None,
        "read",
    )))
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

/// A proxy that rewrites `welcome` to another agent's id (to make this agent accept requests
/// addressed to that one) is caught: the agent refuses the session and stops.
#[tokio::test]
async fn a_welcome_under_another_agents_id_is_refused() {
    let mut h = start(false);
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
        .expect("send");
    let hello = next_text(&mut ws).await;
    let Ok(Handshake::Register { public_key, .. }) = Handshake::parse(&hello) else {
        panic!("{hello}");
    };
    let forged = signed_welcome(
        &h.key,
        "00000000-0000-0000-0000-00000000000b",
        &public_key,
        "bm9uY2U=",
        &PIPE_BINDING,
    );
    ws.send(Message::text(forged.to_json()))
        .await
        .expect("send");
    let r = tokio::time::timeout(Duration::from_secs(10), h.task)
        .await
        .expect("the agent stops")
        .expect("join");
    match r {
        Err(AgentError::CommandKey(m)) => assert!(m.contains("welcomed this agent as"), "{m}"),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

/// A "Docker engine" that accepts connections and never answers: commands to it stay in flight.
fn hung_engine() -> (tempfile::TempDir, Endpoint) {
    let sock_dir = tempfile::tempdir().expect("tempdir");
    let sock = sock_dir.path().join("docker.sock");
    let listener = tokio::net::UnixListener::bind(&sock).expect("bind");
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = listener.accept().await {
            held.push(s);
        }
    });
    let endpoint = Endpoint::Unix(sock.display().to_string());
    (sock_dir, endpoint)
}

/// The params of the next `audit.record` notification whose outcome is `outcome`.
async fn audit_record(ws: &mut ServerWs, outcome: &str) -> Value {
    let wait = async {
        loop {
            let v: Value = serde_json::from_str(&next_text(ws).await).expect("JSON");
            if v["method"] == "audit.record" && v["params"]["outcome"] == outcome {
                return v["params"].clone();
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), wait)
        .await
        .unwrap_or_else(|_| panic!("no audit record with outcome {outcome}"))
}

/// The agent's audit log, one record per line.
fn audit_log(dir: &std::path::Path) -> Vec<Value> {
    std::fs::read_to_string(dir.join("agent").join("audit.log"))
        .expect("audit.log")
        .lines()
        .map(|l| serde_json::from_str(l).expect("a whole record"))
        .collect()
}

/// Regression test for issue 13.3: a stop and an exec cut by a kill of the agent left no record
/// anywhere. A command's admission is on disk and sent before its handler ends; the agent
/// started again in the same directory records its outcome `unknown` and sends it too.
#[tokio::test]
async fn a_command_cut_by_a_kill_is_audited_admitted_then_unknown() {
    let (_engine, endpoint) = hung_engine();
    let mut h = start_with(false, endpoint);
    let mut ws = welcome(&mut h).await;
    let params = r#"{"container":"x1"}"#;
    let req = h.req("7", "docker.containers.start", Some(params), "execute");
    ws.send(Message::text(req)).await.expect("send");
    let admitted = audit_record(&mut ws, "admitted").await;
    assert_eq!(admitted["method"], "docker.containers.start", "{admitted}");
    assert_eq!(admitted["decision"], "allowed", "{admitted}");
    let id = admitted["admission_id"].clone();
    assert!(id.is_string(), "{admitted}");
    // On disk while the handler still waits for the engine.
    let logged = audit_log(h._dir.path());
    let of_it: Vec<&Value> = logged.iter().filter(|r| r["admission_id"] == id).collect();
    assert_eq!(of_it.len(), 1, "{logged:?}");
    assert_eq!(of_it[0]["outcome"], "admitted");

    // Killed: the agent's task is gone without shutting anything down.
    h.task.abort();
    drop(ws);
    let Harness {
        _dir,
        key,
        agent_key,
        ..
    } = h;
    let mut h = restart_in(_dir, key);
    h.agent_key = agent_key;
    let mut ws = welcome(&mut h).await;
    let unknown = audit_record(&mut ws, "unknown").await;
    assert_eq!(unknown["admission_id"], id, "{unknown}");
    assert_eq!(unknown["method"], "docker.containers.start", "{unknown}");
    let logged = audit_log(h._dir.path());
    let outcomes: Vec<&Value> = logged
        .iter()
        .filter(|r| r["admission_id"] == id)
        .map(|r| &r["outcome"])
        .collect();
    assert_eq!(
        outcomes,
        [&json!("admitted"), &json!("unknown")],
        "{logged:?}"
    );
    h.shutdown.cancel();
    assert!(h.task.await.expect("join").is_ok());
}

/// Issue 13.3: a command whose admission cannot be written is not run, with an error that says
/// so; the refusal still reaches the control plane, and reads go on.
#[tokio::test]
async fn a_command_whose_admission_cannot_be_written_is_not_run() {
    let mut h = start(false);
    let mut ws = welcome(&mut h).await;
    // The log cannot be opened for writing (as on a full disk, where the write fails).
    std::fs::create_dir(h._dir.path().join("agent").join("audit.log")).expect("dir");
    let req = h.req(
        "8",
        "docker.containers.start",
        Some(r#"{"container":"x1"}"#),
        "execute",
    );
    ws.send(Message::text(req)).await.expect("send");
    let got = next_reply(&mut ws).await;
    assert_eq!(got["id"], json!(8), "{got}");
    // Not the engine's error (-32003): the handler never ran.
    assert_eq!(got["error"]["code"], json!(-32603), "{got}");
    assert_eq!(got["error"]["data"]["reason"], "audit_unwritable", "{got}");
    let message = got["error"]["message"].as_str().expect("message");
    assert!(message.contains("was not run"), "{message}");
    let denied = audit_record(&mut ws, "-32603").await;
    assert_eq!(
        (&denied["decision"], &denied["reason"]),
        (&json!("denied"), &json!("audit_unwritable")),
        "{denied}"
    );
    ws.send(Message::text(h.req("9", "agent.ping", None, "read")))
        .await
        .expect("send");
    let got = next_reply(&mut ws).await;
    assert!(got.get("result").is_some(), "{got}");
    h.shutdown.cancel();
    assert!(h.task.await.expect("join").is_ok());
}

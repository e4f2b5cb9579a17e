//! Malformed input from the network: answered or closed, never a panic, never an effect.

use std::time::Duration;

use futures_util::SinkExt as _;
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tomo_agent::identity::Keys;
use tomo_proto::handshake::{ChannelBinding, Handshake, RefusalReason};

use crate::support::{Fleet, Raw, RunningAgent, facts};

/// This protocol's version.
const V: u32 = tomo_proto::PROTO_VERSION;

#[tokio::test]
async fn bad_handshakes_are_refused_without_effect() {
    let f = Fleet::start().await;
    let code = f.code().await;
    let keys = Keys::generate();
    let pk = keys.public_key_b64();
    // A register message for this connection (`cb`), with the version, the key the agent's
    // signature is over, and the binding its code proof is over changed at will.
    let reg =
        |nonce: &str, cb: &ChannelBinding, proto: u32, sig_over: &str, code_cb: &ChannelBinding| {
            let mut msg = tomo_common::hello::register(
                &code,
                sig_over,
                |m| keys.sign_b64(m),
                nonce,
                cb,
                facts("evil", None),
            );
            let proof = tomo_common::hello::register(
                &code,
                &pk,
                |m| keys.sign_b64(m),
                nonce,
                code_cb,
                facts("evil", None),
            );
            if let (
                Handshake::Register {
                    proto_version,
                    public_key,
                    code_signature,
                    ..
                },
                Handshake::Register {
                    code_signature: proof,
                    ..
                },
            ) = (&mut msg, proof)
            {
                *proto_version = proto;
                *public_key = pk.clone();
                *code_signature = proof;
            }
            msg.to_json()
        };
    type Case<'a> = (
        &'static str,
        Box<dyn Fn(&str, &ChannelBinding) -> String + 'a>,
        RefusalReason,
    );
    let cases: Vec<Case> = vec![
        (
            "not JSON",
            Box::new(|_, _| "hello?".into()),
            RefusalReason::Malformed,
        ),
        (
            "wrong types",
            Box::new(|_, _| r#"{"type":"register","proto_version":"1","code":5}"#.into()),
            RefusalReason::Malformed,
        ),
        (
            "unknown type",
            Box::new(|_, _| r#"{"type":"hello","proto_version":1}"#.into()),
            RefusalReason::Malformed,
        ),
        (
            "JSON-RPC before the handshake",
            Box::new(|_, _| r#"{"jsonrpc":"2.0","id":1,"method":"agent.ping"}"#.into()),
            RefusalReason::Malformed,
        ),
        (
            "welcome from the agent",
            Box::new(|_, _| {
                Handshake::Welcome {
                    proto_version: tomo_proto::PROTO_VERSION,
                    agent_id: "x".into(),
                    heartbeat_secs: 1,
                    command_key: "x".into(),
                    signature: "x".into(),
                    events_since_nanos: None,
                    audit_since_ms: None,
                }
                .to_json()
            }),
            RefusalReason::OutOfOrder,
        ),
        (
            "oversized",
            Box::new(|_, _| format!(r#"{{"type":"hello","pad":"{}"}}"#, "x".repeat(100_000))),
            RefusalReason::Malformed,
        ),
        (
            "other protocol version",
            Box::new(|n, cb| reg(n, cb, 99, &pk, cb)),
            RefusalReason::UnsupportedVersion,
        ),
        (
            "the previous protocol (an agent not upgraded with its control plane)",
            Box::new(|n, cb| reg(n, cb, V - 1, &pk, cb)),
            RefusalReason::UnsupportedVersion,
        ),
        (
            "signature over another key",
            Box::new(|n, cb| reg(n, cb, V, "someone-else", cb)),
            RefusalReason::BadSignature,
        ),
        (
            "signature over another nonce",
            Box::new(|_, cb| reg("stale-nonce", cb, V, &pk, cb)),
            RefusalReason::BadSignature,
        ),
        (
            "protocol 1 (the registration code in clear)",
            Box::new(|_, _| {
                format!(
                    r#"{{"type":"register","proto_version":1,"code":"{code}","public_key":"{pk}","signature":"x","facts":{}}}"#,
                    serde_json::to_string(&facts("old", None)).expect("json")
                )
            }),
            RefusalReason::UnsupportedVersion,
        ),
        (
            "issue 12.4: code proof made on another TLS connection (a relay's)",
            Box::new(|n, cb| reg(n, cb, V, &pk, &ChannelBinding([9; 32]))),
            RefusalReason::BadSignature,
        ),
        (
            "issue 12.4: agent signature made on another TLS connection (a relay's)",
            Box::new(|n, cb| reg(n, &ChannelBinding([9; 32]), V, &pk, cb)),
            RefusalReason::BadSignature,
        ),
    ];
    for (name, frame, want) in &cases {
        let mut raw = Raw::connect(&f).await;
        let nonce = raw.challenge().await;
        raw.send(&frame(&nonce, &raw.binding.clone())).await;
        assert_eq!(raw.outcome().await.err(), Some(*want), "{name}");
        raw.closed().await;
    }
    // A binary frame instead of a handshake.
    let mut raw = Raw::connect(&f).await;
    raw.challenge().await;
    let _ = raw.ws.send(Message::binary(vec![1u8, 2, 3])).await;
    assert_eq!(raw.outcome().await.err(), Some(RefusalReason::Malformed));

    // None of that created a host or used the code: a real agent still registers with it.
    assert!(f.hosts().await.is_empty());
    drop(cases);
    let mut a = RunningAgent::spawn(f.agent("good", Some(code.clone())));
    a.online().await;
    assert_eq!(f.hosts().await.len(), 1);
    a.stop().await.expect("stop");
}

#[tokio::test]
async fn a_silent_connection_is_refused_after_the_first_message_timeout() {
    let f = Fleet::start_with(|c| c.first_message_timeout = Duration::from_millis(300)).await;
    let mut raw = Raw::connect(&f).await;
    raw.challenge().await;
    let t0 = std::time::Instant::now();
    assert_eq!(raw.outcome().await.err(), Some(RefusalReason::Malformed));
    assert!(t0.elapsed() < Duration::from_secs(3));
}

#[tokio::test]
async fn bad_frames_in_a_session_are_answered_and_harmless() {
    let f = Fleet::start().await;
    let keys = Keys::generate();
    let (mut raw, id) = Raw::register(&f, &keys, &f.code().await, facts("noisy", None))
        .await
        .expect("registered");
    let cases = [
        ("not json", json!({"id": null, "error": {"code": -32700}})),
        ("[]", json!({"id": null, "error": {"code": -32600}})),
        (
            r#"{"jsonrpc":"2.0","id":3,"method":"server.shell"}"#,
            json!({"id": 3, "error": {"code": -32601}}),
        ),
        (
            r#"{"jsonrpc":"2.0","id":4}"#,
            json!({"id": 4, "error": {"code": -32600}}),
        ),
        (
            r#"{"jsonrpc":"2.0","id":5,"error":"not an object"}"#,
            json!({"id": 5, "error": {"code": -32600}}),
        ),
    ];
    for (frame, want) in cases {
        raw.send(frame).await;
        let got: Value = serde_json::from_str(&raw.text().await.expect("answer")).expect("json");
        assert_eq!(got["id"], want["id"], "{frame}: {got}");
        assert_eq!(
            got["error"]["code"], want["error"]["code"],
            "{frame}: {got}"
        );
    }
    // A malformed notification and a response to no call: dropped, no answer, no effect.
    raw.send(r#"{"jsonrpc":"2.0","method":"metrics.update","params":{"cpu_percent":"lots"}}"#)
        .await;
    raw.send(r#"{"jsonrpc":"2.0","id":999,"result":{"pong":true}}"#)
        .await;
    let (_, host) = f
        .api(reqwest::Method::GET, &format!("/hosts/{id}"), None)
        .await;
    assert!(host.get("metrics").is_none(), "{host}");
    assert_eq!(host["status"], json!("online"));

    // A frame over the control plane's limit closes that connection, and only that one.
    let mut other = RunningAgent::spawn(f.agent("bystander", Some(f.code().await)));
    other.online().await;
    let huge = format!(
        r#"{{"jsonrpc":"2.0","method":"x","params":{{"p":"{}"}}}}"#,
        "a".repeat(tomo_proto::MAX_AGENT_MESSAGE_BYTES + 10)
    );
    raw.send(&huge).await;
    raw.closed().await;
    f.wait_status(&id, "offline").await;
    let (s, v) = f.rpc("bystander", "agent.ping", None).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["result"]["pong"], json!(true));
    other.stop().await.expect("stop");
}

/// Before it is authenticated, a peer may send a handshake's worth of bytes, not the megabytes an
/// agent's answers may take: a big first message ends the connection.
#[tokio::test]
async fn an_unauthenticated_peer_cannot_send_megabytes() {
    let f = Fleet::start().await;
    let mut raw = Raw::connect(&f).await;
    let _ = raw.challenge().await;
    raw.send(&format!(
        r#"{{"type":"register","pad":"{}"}}"#,
        "x".repeat(4 << 20)
    ))
    .await;
    let first = tokio::time::timeout(std::time::Duration::from_secs(5), raw.text())
        .await
        .expect("the connection ends");
    let refused = first.map(|t| Handshake::parse(&t));
    match refused {
        Some(Ok(Handshake::Refused { reason, message })) => {
            assert_eq!(reason, RefusalReason::Malformed);
            // Cut off by the read budget, not after reading and parsing 4 MiB.
            assert!(message.contains("before authenticating"), "{message}");
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    // The server is fine: a real agent still registers.
    let mut a = crate::support::RunningAgent::spawn(f.agent("after", Some(f.code().await)));
    a.online().await;
    a.stop().await.expect("stop");
}

/// Issue 14 (one door): only `/rpc` refused params past the agent's frame limit; a REST host
/// route forwarded a 1.1 MiB body, and the agent, whose limit it broke, dropped the session (the
/// host went offline for everyone). Every door refuses it with 413 and the host stays online.
#[tokio::test]
async fn an_oversized_body_on_a_host_route_is_refused_and_the_host_stays_online() {
    let f = Fleet::start().await;
    let mut agent = RunningAgent::spawn(f.agent("big-body", Some(f.code().await)));
    let host = agent.online().await;
    let pad = "x".repeat(1_100_000);
    for (method, path) in [
        (
            reqwest::Method::POST,
            format!("/hosts/{host}/containers/web/stop"),
        ),
        (reqwest::Method::POST, format!("/hosts/{host}/stream")),
        (reqwest::Method::POST, "/fleet/rpc".to_owned()),
    ] {
        let body = if path.ends_with("/stream") {
            json!({"method": "docker.containers.logs", "params": {"container": "web", "pad": pad}})
        } else if path == "/fleet/rpc" {
            json!({"method": "agent.ping", "params": {"pad": pad}})
        } else {
            json!({"pad": pad})
        };
        let (s, v) = f.api(method, &path, Some(body)).await;
        assert_eq!(s, StatusCode::PAYLOAD_TOO_LARGE, "{path}: {v}");
        assert_eq!(v["error"]["code"], "too_large", "{v}");
    }
    // The session was not dropped: a ping answers at once, on the same session.
    let (s, r) = f.rpc(&host, "agent.ping", None).await;
    assert_eq!(s, StatusCode::OK, "{r}");
    assert_eq!(r["result"]["pong"], true);
    let _ = agent.stop().await;
}

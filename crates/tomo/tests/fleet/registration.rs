//! Registration, reconnection, removal and call routing.

use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::json;
use tomo_agent::AgentError;
use tomo_agent::identity::Keys;
use tomo_proto::handshake::RefusalReason;

use crate::support::{Fleet, Raw, RunningAgent, facts};

fn refused(r: Result<(), AgentError>) -> RefusalReason {
    match r {
        Err(AgentError::Refused { reason, .. }) => reason,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[tokio::test]
async fn an_agent_registers_and_answers_calls() {
    let f = Fleet::start().await;
    let mut a = RunningAgent::spawn(f.agent("alpha", Some(f.code().await)));
    let id = a.online().await;
    f.wait_status(&id, "online").await;
    let hosts = f.hosts().await;
    assert_eq!(hosts.len(), 1);
    assert_eq!(hosts[0]["id"], json!(id));
    assert_eq!(hosts[0]["hostname"], json!("alpha"));
    assert_eq!(hosts[0]["status"], json!("online"));

    // By hostname, by id prefix and by id.
    for key in ["alpha", &id[..6], &id] {
        let (s, v) = f.rpc(key, "agent.ping", None).await;
        assert_eq!(s, StatusCode::OK, "{v}");
        assert_eq!(v["result"]["pong"], json!(true), "{v}");
    }
    let (_, info) = f.rpc("alpha", "system.info", None).await;
    assert_eq!(info["result"]["hostname"], json!("alpha"));
    assert!(
        info["result"]["cpus"].as_u64().is_some_and(|c| c >= 1),
        "{info}"
    );
    assert!(
        info["result"]["memory_bytes"]
            .as_u64()
            .is_some_and(|m| m > 0),
        "{info}"
    );
    assert_eq!(info["result"]["docker"]["available"], json!(false));
    // Docker methods without an engine: -32003 with a clear message; the agent keeps working.
    let (_, d) = f.rpc("alpha", "docker.containers.list", None).await;
    assert_eq!(d["error"]["code"], json!(-32003), "{d}");
    // The first metrics.update and health.status arrive at connect and are kept.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (_, h) = f.api(Method::GET, &format!("/hosts/{id}"), None).await;
        if h["metrics"]["sample"]["memory"]["total"]
            .as_u64()
            .is_some_and(|t| t > 0)
            && h["health"]["status"]["status"] == "degraded"
        {
            break;
        }
        assert!(Instant::now() < deadline, "no metrics/health kept: {h}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // History is written in batches, a moment after the latest sample is kept.
    loop {
        let (_, hist) = f
            .api(Method::GET, &format!("/hosts/{id}/metrics"), None)
            .await;
        if !hist["samples"].as_array().expect("samples").is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "no metrics history: {hist}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    a.stop().await.expect("clean stop");
}

/// Issue 17 (`tomo codes ls|revoke`): codes are listed with their status and never their
/// secrets; a revoked code is refused to an agent (as an expired one: the advice is the same, a
/// new code) while another code still registers; a used code cannot be revoked (409), an
/// unknown or malformed id is 404.
#[tokio::test]
async fn codes_are_listed_and_a_revoked_code_is_refused() {
    let f = Fleet::start().await;
    let create = async || {
        let (s, v) = f.api(Method::POST, "/codes", Some(json!({}))).await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
        let id = v["id"].as_str().expect("an id").to_owned();
        assert_eq!(id.len(), 16, "{v}");
        (v["code"].as_str().expect("a code").to_owned(), id)
    };
    let (kept, kept_id) = create().await;
    let (leaked, leaked_id) = create().await;
    let (s, list) = f.api(Method::GET, "/codes", None).await;
    assert_eq!(s, StatusCode::OK, "{list}");
    let text = list.to_string();
    assert!(!text.contains(&kept) && !text.contains(&leaked), "{list}");
    let status = |list: &serde_json::Value, id: &str| {
        list.as_array()
            .into_iter()
            .flatten()
            .find(|c| c["id"] == id)
            .map(|c| c["status"].clone())
    };
    assert_eq!(status(&list, &kept_id), Some(json!("active")), "{list}");
    assert_eq!(status(&list, &leaked_id), Some(json!("active")), "{list}");

    let (s, v) = f
        .api(Method::DELETE, &format!("/codes/{leaked_id}"), None)
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["status"], "revoked", "{v}");
    let refused_agent = RunningAgent::spawn(f.agent("thief", Some(leaked)));
    match refused_agent.finished().await {
        Err(AgentError::Refused { reason, message }) => {
            assert_eq!(reason, RefusalReason::CodeExpired);
            assert!(message.contains("revoked"), "{message}");
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    let mut joined = RunningAgent::spawn(f.agent("joined", Some(kept)));
    let host = joined.online().await;

    let (_, list) = f.api(Method::GET, "/codes", None).await;
    assert_eq!(status(&list, &leaked_id), Some(json!("revoked")), "{list}");
    assert_eq!(status(&list, &kept_id), Some(json!("used")), "{list}");
    let used = list
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["id"] == kept_id.as_str())
        .cloned()
        .unwrap_or_default();
    assert_eq!(used["used_by"], json!(host), "{used}");
    let (s, v) = f
        .api(Method::DELETE, &format!("/codes/{kept_id}"), None)
        .await;
    assert_eq!(s, StatusCode::CONFLICT, "{v}");
    assert_eq!(v["error"]["code"], "conflict", "{v}");
    for bad in ["0123456789abcdef", "nope", "0123"] {
        let (s, v) = f.api(Method::DELETE, &format!("/codes/{bad}"), None).await;
        assert_eq!(s, StatusCode::NOT_FOUND, "{bad}: {v}");
    }
    // Only the joined host exists.
    let hosts = f.hosts().await;
    assert_eq!(hosts.len(), 1, "{hosts:?}");
    joined.stop().await.expect("stop");
}

#[tokio::test]
async fn used_expired_and_unknown_codes_are_refused() {
    let f = Fleet::start().await;
    let code = f.code().await;
    let mut first = RunningAgent::spawn(f.agent("first", Some(code.clone())));
    first.online().await;

    let used = RunningAgent::spawn(f.agent("second", Some(code)));
    assert_eq!(refused(used.finished().await), RefusalReason::CodeUsed);

    let (expiring, _) = tomo_server::auth::mint_code(&f.state, Duration::from_millis(1), "test")
        .await
        .expect("code");
    tokio::time::sleep(Duration::from_millis(20)).await;
    let expired = RunningAgent::spawn(f.agent("third", Some(expiring)));
    assert_eq!(
        refused(expired.finished().await),
        RefusalReason::CodeExpired
    );

    let unknown = RunningAgent::spawn(f.agent(
        "fourth",
        Some(format!(
            "rc_00000000000000000000000000000000_{}",
            f.state.hub.command_fingerprint()
        )),
    ));
    assert_eq!(
        refused(unknown.finished().await),
        RefusalReason::CodeUnknown
    );

    // Nothing but the first host exists.
    let hosts = f.hosts().await;
    assert_eq!(hosts.len(), 1, "{hosts:?}");
    assert_eq!(hosts[0]["hostname"], json!("first"));
    first.stop().await.expect("stop");
}

#[tokio::test]
async fn agents_racing_for_one_code_exactly_one_wins() {
    let f = Fleet::start().await;
    let code = f.code().await;
    let agents: Vec<RunningAgent> = (0..6)
        .map(|i| RunningAgent::spawn(f.agent(&format!("racer{i}"), Some(code.clone()))))
        .collect();
    let mut winners = 0;
    let mut losers = 0;
    let mut survivors = Vec::new();
    for mut a in agents {
        let s = tokio::time::timeout(
            crate::support::WAIT,
            a.status.wait_for(|s| {
                !matches!(
                    s,
                    tomo_agent::Status::Starting | tomo_agent::Status::Connecting
                )
            }),
        )
        .await
        .expect("decided")
        .expect("alive")
        .clone();
        match s {
            tomo_agent::Status::Online { .. } => {
                winners += 1;
                survivors.push(a);
            }
            _ => {
                assert_eq!(refused(a.finished().await), RefusalReason::CodeUsed);
                losers += 1;
            }
        }
    }
    assert_eq!((winners, losers), (1, 5));
    assert_eq!(f.hosts().await.len(), 1);
    for a in survivors {
        a.stop().await.expect("stop");
    }
}

#[tokio::test]
async fn a_restarted_agent_reconnects_with_its_key_and_no_code() {
    let f = Fleet::start().await;
    let code = f.code().await;
    let mut a = RunningAgent::spawn(f.agent("phoenix", Some(code.clone())));
    let id = a.online().await;
    a.stop().await.expect("stop");
    f.wait_status(&id, "offline").await;

    let mut again = RunningAgent::spawn(f.agent("phoenix", None));
    assert_eq!(again.online().await, id, "same identity");
    f.wait_status(&id, "online").await;
    assert_eq!(f.hosts().await.len(), 1);
    // No code and no bearer secret is stored by the agent: its (sealed) key, its id and pinned
    // command key, and its replay, audit and idempotency logs.
    let dir = f.dir.join("agents/phoenix");
    let mut files: Vec<String> = std::fs::read_dir(&dir)
        .expect("ls")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    files.sort();
    let known = [
        "agent.json",
        "agent.key",
        "audit.log",
        "idempotency.log",
        "key.salt",
        "machine.secret",
        "nonces.log",
    ];
    assert!(
        files.iter().all(|f| known.contains(&f.as_str())),
        "{files:?}"
    );
    assert!(files.contains(&"agent.json".to_owned()) && files.contains(&"agent.key".to_owned()));
    let (secret, _) = code.rsplit_once('_').expect("code");
    for name in &files {
        let bytes = std::fs::read(dir.join(name)).expect("read");
        assert!(
            !String::from_utf8_lossy(&bytes).contains(secret),
            "{name} holds the registration code"
        );
    }
    again.stop().await.expect("stop");
}

#[tokio::test]
async fn agents_come_back_after_a_control_plane_restart() {
    let mut f = Fleet::start().await;
    let mut a = RunningAgent::spawn(f.agent("a", Some(f.code().await)));
    let mut b = RunningAgent::spawn(f.agent("b", Some(f.code().await)));
    let (ida, idb) = (a.online().await, b.online().await);
    let addr = f.info.local_addr.to_string();
    let dir = f.dir.clone();
    let took = f.stop().await;
    assert!(
        took < Duration::from_secs(2),
        "control plane stop took {took:?}"
    );
    a.status
        .wait_for(|s| matches!(s, tomo_agent::Status::Offline { .. }))
        .await
        .expect("alive");

    let f2 = Fleet::start_in(&dir, &addr, |_| {}).await;
    f2.wait_status(&ida, "online").await;
    f2.wait_status(&idb, "online").await;
    assert_eq!(f2.hosts().await.len(), 2);
    let (_, v) = f2.rpc(&ida, "agent.ping", None).await;
    assert_eq!(v["result"]["pong"], json!(true));
    a.stop().await.expect("stop");
    b.stop().await.expect("stop");
    drop(f);
}

#[tokio::test]
async fn another_engine_id_is_refused_and_recorded() {
    let f = Fleet::start().await;
    let keys = Keys::generate();
    let (raw, id) = Raw::register(
        &f,
        &keys,
        &f.code().await,
        facts("engine-host", Some("ENGINE-A")),
    )
    .await
    .expect("registered");
    drop(raw);
    let r = Raw::authenticate(&f, &keys, &id, facts("engine-host", Some("ENGINE-B"))).await;
    assert_eq!(r.err(), Some(RefusalReason::EngineMismatch));
    let (_, host) = f.api(Method::GET, &format!("/hosts/{id}"), None).await;
    assert_eq!(host["engine_id"], json!("ENGINE-A"), "{host}");
    let events = host["security_events"].as_array().expect("events");
    assert!(
        events.iter().any(|e| e["kind"] == "engine_mismatch"),
        "{host}"
    );
    // The right engine still gets in; a Docker engine that is down (no id) is not a mismatch.
    assert!(
        Raw::authenticate(&f, &keys, &id, facts("engine-host", Some("ENGINE-A")))
            .await
            .is_ok()
    );
    assert!(
        Raw::authenticate(&f, &keys, &id, facts("engine-host", None))
            .await
            .is_ok()
    );
}

#[tokio::test]
async fn a_wrong_key_is_refused() {
    let f = Fleet::start().await;
    let keys = Keys::generate();
    let (_raw, id) = Raw::register(&f, &keys, &f.code().await, facts("victim", None))
        .await
        .expect("registered");
    let thief = Keys::generate();
    assert_eq!(
        Raw::authenticate(&f, &thief, &id, facts("victim", None))
            .await
            .err(),
        Some(RefusalReason::BadSignature)
    );
    assert_eq!(
        Raw::authenticate(&f, &thief, "no-such-agent", facts("x", None))
            .await
            .err(),
        Some(RefusalReason::UnknownAgent)
    );
    // The database holds nothing that lets anyone authenticate: only the public key.
    let host = f.state.store.host(&id).await.expect("host");
    assert_eq!(host.public_key, keys.public_key());
}

#[tokio::test]
async fn removing_a_host_disconnects_it_and_its_key_never_works_again() {
    let f = Fleet::start().await;
    let mut a = RunningAgent::spawn(f.agent("doomed", Some(f.code().await)));
    let id = a.online().await;
    let (s, v) = f.api(Method::DELETE, "/hosts/doomed", None).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(refused(a.finished().await), RefusalReason::HostRemoved);
    let (s, _) = f.api(Method::GET, &format!("/hosts/{id}"), None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert!(f.hosts().await.is_empty());
    // Restarting the agent does not bring it back.
    let again = RunningAgent::spawn(f.agent("doomed", None));
    assert_eq!(refused(again.finished().await), RefusalReason::HostRemoved);
}

#[tokio::test]
async fn calls_time_out_and_offline_hosts_fail_at_once() {
    let f = Fleet::start().await;
    let keys = Keys::generate();
    // A "agent" that authenticates and then never answers.
    let (mut raw, id) = Raw::register(&f, &keys, &f.code().await, facts("mute", None))
        .await
        .expect("registered");
    let t0 = Instant::now();
    let (s, v) = f
        .api(
            Method::POST,
            "/hosts/mute/rpc",
            Some(json!({"method": "agent.ping", "timeout_ms": 300})),
        )
        .await;
    let took = t0.elapsed();
    assert_eq!(s, StatusCode::GATEWAY_TIMEOUT, "{v}");
    assert_eq!(v["error"]["code"], json!(-32011), "{v}");
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_secs(3),
        "{took:?}"
    );
    // The request really reached the agent, with its envelope.
    let req: serde_json::Value =
        serde_json::from_str(&raw.text().await.expect("request")).expect("json");
    assert_eq!(req["method"], json!("agent.ping"));
    assert_eq!(req["meta"]["aud"], json!(id));
    assert_eq!(req["meta"]["role"], json!("admin"));

    raw.ws.close(None).await.expect("close");
    f.wait_status(&id, "offline").await;
    let t0 = Instant::now();
    let (s, v) = f.rpc(&id, "agent.ping", None).await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "{v}");
    assert_eq!(v["error"]["code"], json!(-32010), "{v}");
    assert!(t0.elapsed() < Duration::from_secs(1));
}

#[tokio::test]
async fn the_api_requires_a_valid_token() {
    let f = Fleet::start().await;
    for token in ["", "tomo_wrong"] {
        let (s, v) = f.api_as(token, Method::GET, "/hosts", None).await;
        assert_eq!(s, StatusCode::UNAUTHORIZED, "{v}");
        assert_eq!(v["error"]["code"], json!("unauthorized"));
    }
    let (s, v) = f
        .api(Method::POST, "/codes", Some(json!({"ttl_secs": 0})))
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    let (s, v) = f.api(Method::POST, "/codes", Some(json!({}))).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    assert!(v["code"].as_str().is_some_and(|c| c.starts_with("rc_")));
    assert_eq!(v["server_url"], json!(f.info.agent_url));
    assert!(v["ca_file"].as_str().is_some());
    // Codes are stored hashed: the plain code is nowhere in the database file.
    let db = std::fs::read(f.dir.join("server/tomo.db")).expect("db");
    let wal = std::fs::read(f.dir.join("server/tomo.db-wal")).unwrap_or_default();
    let code = v["code"].as_str().expect("code").as_bytes();
    assert!(
        !db.windows(code.len()).any(|w| w == code) && !wal.windows(code.len()).any(|w| w == code)
    );
    let (s, _) = f.rpc("nobody", "agent.ping", None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, v) = f
        .rpc(
            "nobody",
            "agent.ping",
            Some(json!({"pad": "x".repeat(1 << 20)})),
        )
        .await;
    assert_eq!(s, StatusCode::PAYLOAD_TOO_LARGE, "{v}");
}

/// Regression: a key that already has a host (the agent lost `agent.json` but kept its key) used
/// to hit a UNIQUE constraint and be refused as `internal`, retried forever.
#[tokio::test]
async fn a_known_key_with_a_new_code_is_welcomed_and_the_code_stays_unused() {
    let f = Fleet::start().await;
    let keys = Keys::generate();
    let (_r1, id) = Raw::register(&f, &keys, &f.code().await, facts("amnesiac", None))
        .await
        .expect("registered");
    let code2 = f.code().await;
    let (_r2, id2) = Raw::register(&f, &keys, &code2, facts("amnesiac", None))
        .await
        .expect("welcomed again");
    assert_eq!(id, id2);
    assert_eq!(f.hosts().await.len(), 1);
    let other = Keys::generate();
    assert!(
        Raw::register(&f, &other, &code2, facts("newcomer", None))
            .await
            .is_ok(),
        "the second code was not consumed"
    );
    // A removed host's key stays out, whatever code it brings.
    let (s, _) = f.api(Method::DELETE, &format!("/hosts/{id}"), None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(
        Raw::register(&f, &keys, &f.code().await, facts("amnesiac", None))
            .await
            .err(),
        Some(RefusalReason::HostRemoved)
    );
}

/// The registration code names the control plane's command key: an agent offered another key (a
/// man in the middle, or the wrong control plane) refuses to register and never takes its
/// commands.
#[tokio::test]
async fn an_agent_refuses_a_command_key_the_code_does_not_name() {
    let f = Fleet::start().await;
    let code = f.code().await;
    let (secret, fingerprint) = code.rsplit_once('_').expect("rc_<secret>_<fingerprint>");
    assert_eq!(fingerprint, f.state.hub.command_fingerprint());
    let forged = format!("{secret}_{}", "0".repeat(32));
    let agent = RunningAgent::spawn(f.agent("mitm", Some(forged)));
    let r = tokio::time::timeout(Duration::from_secs(10), agent.finished())
        .await
        .expect("the agent stops");
    match r {
        Err(tomo_agent::AgentError::CommandKey(m)) => {
            assert!(m.contains("man in the middle"), "{m}")
        }
        other => panic!("expected a command-key refusal, got {other:?}"),
    }
    // A code without a fingerprint is refused before anything is sent.
    let agent = RunningAgent::spawn(f.agent("old-style", Some(secret.to_owned())));
    let r = agent.finished().await;
    assert!(
        matches!(r, Err(tomo_agent::AgentError::CodeWithoutFingerprint)),
        "{r:?}"
    );
}

/// Guessing tokens or codes is throttled per source: after 10 failures within a minute the
/// address's wrong credentials are refused as throttled and told when to come back, and it may
/// not register (valid tokens and agent keys from it: see `throttle.rs`).
#[tokio::test]
async fn guessing_tokens_and_codes_is_throttled() {
    let f = Fleet::start().await;
    for i in 0..10 {
        let (s, _) = f
            .api_as(&format!("tomo_guess{i}"), Method::GET, "/hosts", None)
            .await;
        assert_eq!(s, StatusCode::UNAUTHORIZED);
    }
    let (s, v) = f.api_as("tomo_guess", Method::GET, "/hosts", None).await;
    assert_eq!(s, StatusCode::TOO_MANY_REQUESTS, "{v}");
    assert_eq!(v["error"]["code"], json!("throttled"));

    let g = Fleet::start().await;
    let fp = g.state.hub.command_fingerprint().to_owned();
    for i in 0..10 {
        let keys = Keys::generate();
        let code = format!("rc_{i:032x}_{fp}");
        let r = Raw::register(&g, &keys, &code, facts(&format!("guess{i}"), None)).await;
        assert_eq!(r.err(), Some(RefusalReason::CodeUnknown));
    }
    let real = g.code().await;
    let r = Raw::register(&g, &Keys::generate(), &real, facts("honest", None)).await;
    assert_eq!(r.err(), Some(RefusalReason::Throttled));
    // The blocked attempt registered nothing (and the API refuses that source's guesses too).
    assert!(g.state.store.hosts().await.expect("hosts").is_empty());
    let (s, _) = g.api_as("tomo_guess", Method::GET, "/hosts", None).await;
    assert_eq!(s, StatusCode::TOO_MANY_REQUESTS);
}

/// Key rotation without a new code: each crash point leaves a key the control plane accepts, and
/// once the new key is in use the old one never authenticates again.
#[tokio::test]
async fn keys_rotate_without_a_new_code_and_survive_a_crash_at_every_step() {
    let f = Fleet::start().await;
    let old = Keys::generate();
    let (raw, id) = Raw::register(&f, &old, &f.code().await, facts("rotor", None))
        .await
        .expect("registered");
    drop(raw);
    let new = Keys::generate();
    async fn key_of(f: &Fleet, id: String) -> (Vec<u8>, Option<Vec<u8>>) {
        let h = f.state.store.host(&id).await.expect("host");
        (h.public_key, h.previous_public_key)
    }
    // Rotation committed by the control plane…
    Raw::authenticate_rotating(&f, &old, &id, facts("rotor", None), Some(&new))
        .await
        .expect("rotation accepted");
    assert_eq!(
        key_of(&f, id.clone()).await,
        (new.public_key().to_vec(), Some(old.public_key().to_vec()))
    );
    // …then the agent crashes before promoting: it comes back with the old key and offers the same
    // new one again. Accepted, nothing changes.
    Raw::authenticate_rotating(&f, &old, &id, facts("rotor", None), Some(&new))
        .await
        .expect("the same rotation again");
    // The first session with the new key retires the old one.
    Raw::authenticate(&f, &new, &id, facts("rotor", None))
        .await
        .expect("new key");
    assert_eq!(
        key_of(&f, id.clone()).await,
        (new.public_key().to_vec(), None)
    );
    assert_eq!(
        Raw::authenticate(&f, &old, &id, facts("rotor", None))
            .await
            .err(),
        Some(RefusalReason::BadSignature)
    );
    // A rotation proof not signed by the new key itself is refused and changes nothing.
    let third = Keys::generate();
    let impostor = Keys::generate();
    let mut raw = Raw::connect(&f).await;
    let nonce = raw.challenge().await;
    let subject = tomo_proto::handshake::rotate_subject(&id, &third.public_key_b64());
    let payload = tomo_proto::handshake::signing_payload(
        tomo_proto::handshake::Purpose::Rotate,
        &nonce,
        &raw.binding,
        &subject,
    );
    let msg = tomo_proto::handshake::Handshake::Authenticate {
        proto_version: tomo_proto::PROTO_VERSION,
        agent_id: id.clone(),
        signature: new.sign_b64(&tomo_proto::handshake::signing_payload(
            tomo_proto::handshake::Purpose::Authenticate,
            &nonce,
            &raw.binding,
            &id,
        )),
        facts: facts("rotor", None),
        rotate: Some(tomo_proto::handshake::RotateKey {
            new_public_key: third.public_key_b64(),
            signature_old: new.sign_b64(&payload),
            signature_new: impostor.sign_b64(&payload),
        }),
    };
    raw.send(&msg.to_json()).await;
    assert_eq!(raw.outcome().await.err(), Some(RefusalReason::BadSignature));
    assert_eq!(
        key_of(&f, id.clone()).await,
        (new.public_key().to_vec(), None)
    );
    // The replaced key alone is retired: whoever holds it cannot undo a rotation (and lock the
    // real agent out); it only serves to finish the rotation it started.
    Raw::authenticate_rotating(&f, &new, &id, facts("rotor", None), Some(&third))
        .await
        .expect("second rotation");
    assert_eq!(
        Raw::authenticate(&f, &new, &id, facts("rotor", None))
            .await
            .err(),
        Some(RefusalReason::BadSignature)
    );
    assert_eq!(
        key_of(&f, id.clone()).await,
        (third.public_key().to_vec(), Some(new.public_key().to_vec()))
    );
    Raw::authenticate_rotating(&f, &new, &id, facts("rotor", None), Some(&third))
        .await
        .expect("finishing the rotation with the previous key");
    Raw::authenticate(&f, &third, &id, facts("rotor", None))
        .await
        .expect("third key");
    assert_eq!(
        key_of(&f, id.clone()).await,
        (third.public_key().to_vec(), None)
    );
}

/// `agent.rotate_key` from the control plane: a real agent makes a new key, reconnects with it,
/// keeps its id, and its old key is retired.
#[tokio::test]
async fn the_control_plane_rotates_an_agents_key() {
    let f = Fleet::start().await;
    let mut a = RunningAgent::spawn(f.agent("turner", Some(f.code().await)));
    let id = a.online().await;
    let before = f.state.store.host(&id).await.expect("host").public_key;
    let (s, r) = f.rpc(&id, "agent.rotate_key", None).await;
    assert_eq!(s, StatusCode::OK, "{r}");
    let new_b64 = r["result"]["new_public_key"]
        .as_str()
        .expect("new key")
        .to_owned();
    let new = tomo_common::unb64(&new_b64).expect("base64");
    // The agent reconnects offering the new key; the control plane takes it.
    let mut stored = before.clone();
    for _ in 0..100 {
        stored = f.state.store.host(&id).await.expect("host").public_key;
        if stored == new {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(stored, new, "the control plane holds the new key");
    assert_ne!(stored, before);
    f.wait_status(&id, "online").await;
    let dir = f.dir.join("agents/turner");
    assert!(
        !dir.join("agent.key.next").exists(),
        "the next key was promoted"
    );
    // The agent reconnects with the new key alone right after promoting it: the old key is
    // retired without waiting for a restart, and calls work on the new session.
    for _ in 0..100 {
        if f.state
            .store
            .host(&id)
            .await
            .expect("host")
            .previous_public_key
            .is_none()
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        f.state
            .store
            .host(&id)
            .await
            .expect("host")
            .previous_public_key,
        None
    );
    f.wait_status(&id, "online").await;
    let (s, r) = f.rpc(&id, "agent.ping", None).await;
    assert_eq!(s, StatusCode::OK, "{r}");
    assert_eq!(r["result"]["pong"], json!(true), "{r}");
    // And after a restart it still authenticates (with the new key, the only one it has).
    a.stop().await.expect("stop");
    let mut again = RunningAgent::spawn(f.agent("turner", None));
    assert_eq!(again.online().await, id);
    again.stop().await.expect("stop");
}

/// The host policy has the last word: with `max_level = "read"` and a denied method, an admin
/// token still cannot change the host, and the agent says which rule refused it.
#[tokio::test]
async fn the_host_policy_caps_what_any_token_can_do() {
    let f = Fleet::start().await;
    let mut cfg = f.agent("guarded", Some(f.code().await));
    let policy = f.dir.join("guarded-policy.toml");
    std::fs::write(
        &policy,
        "max_level = \"read\"\ndeny_methods = [\"system.get_metrics\"]\n",
    )
    .expect("policy");
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&policy, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    }
    cfg.policy_path = Some(policy);
    let mut a = RunningAgent::spawn(cfg);
    let id = a.online().await;
    let (s, r) = f.rpc(&id, "agent.ping", None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(r["result"]["pong"], json!(true), "{r}");
    for (method, params, rule) in [
        ("agent.restart", None, "max_level"),
        (
            "system.prepare_volumes",
            Some(json!({"volumes": [{"path": "x"}]})),
            "max_level",
        ),
        ("system.get_metrics", None, "deny_methods"),
    ] {
        let (s, r) = f.rpc(&id, method, params).await;
        assert_eq!(s, StatusCode::OK, "{r}");
        assert_eq!(r["error"]["code"], json!(-32001), "{method}: {r}");
        assert_eq!(
            r["error"]["data"]["reason"],
            json!("policy"),
            "{method}: {r}"
        );
        assert_eq!(r["error"]["data"]["rule"], json!(rule), "{method}: {r}");
    }
    a.stop().await.expect("stop");
}

/// A host names itself: a hostname shaped like another host's id prefix does not capture calls
/// addressed by that prefix.
#[tokio::test]
async fn a_hostname_cannot_capture_another_hosts_id_prefix() {
    let f = Fleet::start().await;
    let (_a, id_a) = Raw::register(&f, &Keys::generate(), &f.code().await, facts("alpha", None))
        .await
        .expect("a");
    let prefix = &id_a[..8];
    let (_b, _id_b) = Raw::register(&f, &Keys::generate(), &f.code().await, facts(prefix, None))
        .await
        .expect("b");
    let (s, v) = f.api(Method::GET, &format!("/hosts/{prefix}"), None).await;
    assert_eq!(s, StatusCode::CONFLICT, "{v}");
    assert_eq!(v["error"]["code"], json!("ambiguous"));
    let (s, v) = f.api(Method::GET, &format!("/hosts/{id_a}"), None).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["hostname"], json!("alpha"));
}

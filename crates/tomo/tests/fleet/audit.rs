//! The audit trail: operator API requests recorded by the control plane (principal, route
//! template, status, trace id; 401s bounded per source), agents' `audit.record` notifications
//! stored under their host, and `GET /audit` (admin only) with `follow=true` streaming live.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use tomo_agent::audit::Auditor;
use tomo_agent::identity::Keys;
use tomo_proto::audit::AuditRecord;
use tomo_proto::methods::Level;
use tomo_server::audit::{TRACE_HEADER, UNAUTHENTICATED_PER_MINUTE};

use crate::support::{Fleet, Raw, WAIT, facts};

/// All stored records (the `GET /audit` that reads them is recorded too, after it answers).
async fn audit(f: &Fleet, query: &str) -> Vec<Value> {
    let (s, v) = f
        .api(Method::GET, &format!("/audit?limit=10000{query}"), None)
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    v.as_array().cloned().expect("array")
}

/// The operator record of the request answered with `trace_id` (records are stored off the
/// request path, in batches: wait for it).
async fn by_trace(f: &Fleet, trace_id: &str) -> Value {
    for _ in 0..100 {
        if let Some(r) = audit(f, "")
            .await
            .into_iter()
            .find(|r| r["trace_id"] == trace_id)
        {
            return r;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    panic!("no record with trace id {trace_id}")
}

/// A request with `token` (or none); returns the status and the trace id header.
async fn request(
    f: &Fleet,
    token: Option<&str>,
    method: Method,
    path: &str,
) -> (StatusCode, String) {
    let mut req = f
        .http
        .request(method, format!("{}/api/v1{path}", f.info.api_url));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let resp = req.send().await.expect("API reachable");
    let trace = resp
        .headers()
        .get(TRACE_HEADER)
        .and_then(|v| v.to_str().ok())
        .expect("every answer carries a trace id")
        .to_owned();
    (resp.status(), trace)
}

#[tokio::test]
async fn operator_requests_are_recorded_with_principal_route_and_status() {
    let f = Fleet::start().await;

    let (s, trace) = request(
        &f,
        Some(&f.token),
        Method::GET,
        "/hosts?access_token=abc&x=1",
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(trace.len(), 16, "{trace}");
    let r = by_trace(&f, &trace).await;
    assert_eq!(r["host_id"], Value::Null, "{r}");
    assert_eq!(r["principal"], "test", "{r}");
    assert_eq!(r["role"], "admin", "{r}");
    assert_eq!(r["method"], "GET /api/v1/hosts", "{r}");
    assert_eq!(r["decision"], "allowed", "{r}");
    assert_eq!(r["outcome"], "ok", "{r}");
    assert_eq!(r["params"]["status"], 200, "{r}");
    assert_eq!(r["params"]["source"], "127.0.0.1", "{r}");
    // Query values of secret-looking keys are never stored.
    assert_eq!(
        r["params"]["query"],
        json!({"access_token": "***", "x": "1"}),
        "{r}"
    );
    assert!(!r.to_string().contains("abc"), "{r}");
    assert!(r["at"].is_string() && r["received_at"].is_string(), "{r}");

    // The route template names the route; the path says which host.
    let (s, trace) = request(&f, Some(&f.token), Method::GET, "/hosts/nohost/containers").await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let r = by_trace(&f, &trace).await;
    assert_eq!(r["method"], "GET /api/v1/hosts/{host}/containers", "{r}");
    assert_eq!(
        r["params"]["path"], "/api/v1/hosts/nohost/containers",
        "{r}"
    );
    assert_eq!(
        (&r["decision"], &r["outcome"]),
        (&json!("allowed"), &json!("http_404")),
        "{r}"
    );

    // 401: denied, no principal, why.
    let (s, trace) = request(&f, Some("tomo_not-a-token"), Method::POST, "/codes").await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    let r = by_trace(&f, &trace).await;
    assert_eq!(r["method"], "POST /api/v1/codes", "{r}");
    assert_eq!(r["decision"], "denied", "{r}");
    assert_eq!(r["reason"], "invalid_token", "{r}");
    assert!(
        r.get("principal").is_none() && r.get("role").is_none(),
        "{r}"
    );
    assert_eq!(r["params"]["status"], 401, "{r}");
    let (_, trace) = request(&f, None, Method::GET, "/hosts").await;
    assert_eq!(by_trace(&f, &trace).await["reason"], "missing_token");

    // 403: a read token may not read the audit trail; that is recorded too.
    let (reader, _) = tomo_server::auth::mint_token(&*f.state.store, "reader", Level::Read, None)
        .await
        .expect("token");
    let (s, trace) = request(&f, Some(&reader), Method::GET, "/audit").await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let r = by_trace(&f, &trace).await;
    assert_eq!(
        (&r["principal"], &r["role"], &r["decision"], &r["reason"]),
        (
            &json!("reader"),
            &json!("read"),
            &json!("denied"),
            &json!("forbidden")
        ),
        "{r}"
    );
}

#[tokio::test]
async fn unauthenticated_attempts_are_recorded_at_most_n_a_minute_per_source() {
    let f = Fleet::start().await;
    for _ in 0..UNAUTHENTICATED_PER_MINUTE + 5 {
        let (s, _) = request(&f, Some("tomo_guess"), Method::GET, "/hosts").await;
        // Refused all the same (throttled once the token check has seen enough failures).
        assert!(
            s == StatusCode::UNAUTHORIZED || s == StatusCode::TOO_MANY_REQUESTS,
            "{s}"
        );
    }
    // Read from the store (the API now answers this address's wrong tokens 429).
    // Records are stored in batches, off the request path: wait for the writer, then check that
    // no more than the allowance arrives.
    let mut denied: Vec<Value> = Vec::new();
    for _ in 0..40 {
        denied = f
            .state
            .store
            .audit(None, None, None, 10_000)
            .await
            .expect("records")
            .iter()
            .map(tomo_server::audit::view)
            .filter(|r| r["decision"] == "denied" && r.get("principal").is_none())
            .collect();
        if denied.len() >= UNAUTHENTICATED_PER_MINUTE as usize {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    assert_eq!(denied.len(), UNAUTHENTICATED_PER_MINUTE as usize);
    assert!(
        denied
            .iter()
            .all(|r| r["reason"] == "invalid_token" || r["reason"] == "throttled"),
        "{denied:?}"
    );
}

fn record(n: i64, method: &str) -> AuditRecord {
    AuditRecord {
        at_ms: n,
        trace_id: Some(format!("agent-trace-{n}")),
        principal: Some("test".into()),
        role: Some(Level::Admin),
        method: method.into(),
        params: Some(json!({"command": "uptime"})),
        decision: "denied".into(),
        reason: Some("rate_limited".into()),
        outcome: "-32002".into(),
        error: Some("too many commands".into()),
        duration_ms: 0,
        admission_id: None,
    }
}

/// Frames exactly as the agent's auditor sends them (record → session queue → `forward`).
struct AgentAuditor {
    auditor: Auditor,
    frames: tokio::sync::mpsc::Receiver<tomo_agent::stream::Outgoing>,
    _stop: tokio_util::sync::DropGuard,
    _dir: tempfile::TempDir,
}

impl AgentAuditor {
    fn start() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let auditor = Auditor::new(dir.path());
        let (tx, rx) = Auditor::channel();
        auditor.attach(tx, Some(i64::MAX));
        let (out, frames) = tokio::sync::mpsc::channel(8);
        let stop = CancellationToken::new();
        tokio::spawn(tomo_agent::audit::forward(rx, out, stop.clone()));
        Self {
            auditor,
            frames,
            _stop: stop.drop_guard(),
            _dir: dir,
        }
    }

    async fn frame(&mut self, r: AuditRecord) -> String {
        self.auditor.record(r);
        tokio::time::timeout(WAIT, self.frames.recv())
            .await
            .expect("frame in time")
            .expect("frame")
            .text
    }
}

/// Reads NDJSON lines from a followed response.
struct Lines {
    resp: reqwest::Response,
    buf: Vec<u8>,
}

impl Lines {
    async fn next(&mut self) -> Value {
        loop {
            if let Some(nl) = self.buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=nl).collect();
                return serde_json::from_slice(&line).expect("a JSON line");
            }
            let chunk = tokio::time::timeout(WAIT, self.resp.chunk())
                .await
                .expect("a line in time")
                .expect("stream")
                .expect("not ended");
            self.buf.extend_from_slice(&chunk);
        }
    }
}

#[tokio::test]
async fn agent_records_are_stored_under_their_host_and_followed_live() {
    let f = Fleet::start().await;
    let keys = Keys::generate();
    let (mut raw, id) = Raw::register(&f, &keys, &f.code().await, facts("audited", None))
        .await
        .expect("registered");
    let mut agent = AgentAuditor::start();

    raw.send(&agent.frame(record(1, "system.exec")).await).await;
    let deadline = tokio::time::Instant::now() + WAIT;
    let stored = loop {
        let rows = audit(&f, &format!("&host={id}")).await;
        if let Some(r) = rows.first() {
            break r.clone();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the record never arrived"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(stored["host_id"], id.as_str(), "{stored}");
    assert_eq!(stored["method"], "system.exec", "{stored}");
    assert_eq!(stored["trace_id"], "agent-trace-1", "{stored}");
    assert_eq!(
        (&stored["decision"], &stored["reason"], &stored["outcome"]),
        (&json!("denied"), &json!("rate_limited"), &json!("-32002")),
        "{stored}"
    );
    assert_eq!(stored["params"], json!({"command": "uptime"}), "{stored}");
    // The unfiltered list holds it too, next to the operator's own records; by hostname too.
    assert!(
        audit(&f, "")
            .await
            .iter()
            .any(|r| r["host_id"] == id.as_str())
    );
    assert_eq!(audit(&f, "&host=audited").await.len(), 1);

    // Following: the backlog first, then live records of this host only.
    let resp = f
        .http
        .get(format!(
            "{}/api/v1/audit?host={id}&follow=true",
            f.info.api_url
        ))
        .bearer_auth(&f.token)
        .send()
        .await
        .expect("follow");
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(
        resp.headers()[reqwest::header::CONTENT_TYPE],
        "application/x-ndjson"
    );
    let mut lines = Lines {
        resp,
        buf: Vec::new(),
    };
    assert_eq!(lines.next().await["trace_id"], "agent-trace-1");
    // An operator request (recorded with no host) does not show in this host's stream.
    let (s, _) = f.api(Method::GET, "/hosts", None).await;
    assert_eq!(s, StatusCode::OK);
    raw.send(&agent.frame(record(2, "docker.containers.run")).await)
        .await;
    let live = lines.next().await;
    assert_eq!(live["trace_id"], "agent-trace-2", "{live}");
    assert_eq!(live["host_id"], id.as_str(), "{live}");
    assert!(live["id"].as_i64() > stored["id"].as_i64(), "{live}");

    // A malformed record is dropped and the session goes on.
    raw.send(r#"{"jsonrpc":"2.0","method":"audit.record","params":{"at_ms":"soon"}}"#)
        .await;
    raw.send(&agent.frame(record(3, "agent.ping")).await).await;
    assert_eq!(lines.next().await["trace_id"], "agent-trace-3");
    assert_eq!(agent.auditor.dropped(), 0);
}

#[tokio::test]
async fn a_real_agent_audits_its_requests_locally_and_to_the_control_plane() {
    let f = Fleet::start().await;
    let config = f.agent("auditing", Some(f.code().await));
    let log = config.data_dir.join(tomo_agent::audit::FILE_NAME);
    let mut agent = crate::support::RunningAgent::spawn(config);
    let id = agent.online().await;

    let (s, v) = f.rpc(&id, "agent.ping", None).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    // Refused or not, a secret in a command line is never recorded.
    f.rpc(
        &id,
        "system.exec",
        Some(json!({"command": "mysql --password=hunter2 -e status"})),
    )
    .await;
    // Issue 12.8: a secret under an innocent name is known by its shape.
    f.rpc(
        &id,
        "system.exec",
        Some(json!({"command": "deploy GITHUB=ghp_abcdefghijklmnopqrstuvwxyz0123 STRIPE=sk_live_abcdefghijklmnop1234"})),
    )
    .await;

    let deadline = tokio::time::Instant::now() + WAIT;
    let (rows, admissions) = loop {
        // Issue 13.3: each command (the execs) is recorded admitted, then with its outcome.
        let (admissions, rows): (Vec<Value>, Vec<Value>) = audit(&f, &format!("&host={id}"))
            .await
            .into_iter()
            .partition(|r| r["outcome"] == "admitted");
        if rows.len() >= 3 {
            break (rows, admissions);
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the agent's records never arrived: {rows:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let ping = &rows[0];
    assert_eq!(ping["method"], "agent.ping", "{ping}");
    assert_eq!(ping["host_id"], id.as_str(), "{ping}");
    assert_eq!(ping["principal"], "test", "{ping}");
    assert_eq!(ping["role"], "admin", "{ping}");
    assert_eq!(
        (&ping["decision"], &ping["outcome"]),
        (&json!("allowed"), &json!("ok")),
        "{ping}"
    );
    assert!(ping["trace_id"].is_string(), "{ping}");
    let exec = &rows[1];
    assert_eq!(exec["method"], "system.exec", "{exec}");
    assert!(
        exec["params"]["command"]
            .as_str()
            .is_some_and(|c| c.contains("--password=***")),
        "{exec}"
    );
    // Issue 12.8: a refusal by validation (-32005, not on the allowlist) is a denial, and
    // `tomo audit --decision denied` finds it.
    assert_eq!(
        (&exec["decision"], &exec["outcome"]),
        (&json!("denied"), &json!("-32005")),
        "{exec}"
    );
    let admitted: Vec<&Value> = admissions.iter().map(|r| &r["admission_id"]).collect();
    for r in &rows[1..] {
        assert!(
            admitted.contains(&&r["admission_id"]),
            "{r} follows its admission: {admissions:?}"
        );
    }
    let shaped = &rows[2];
    assert_eq!(
        shaped["params"]["command"], "deploy GITHUB=ghp_*** STRIPE=sk_live_***",
        "{shaped}"
    );
    let denied = audit(&f, &format!("&host={id}&decision=denied")).await;
    assert_eq!(denied.len(), 2, "{denied:?}");
    // The same records, as JSON lines, in the agent's data directory; no secret there either.
    let text = std::fs::read_to_string(&log).expect("the agent's audit log");
    for secret in [
        "hunter2",
        "abcdefghijklmnopqrstuvwxyz0123",
        "abcdefghijklmnop1234",
    ] {
        assert!(!text.contains(secret), "{text}");
    }
    assert!(
        !serde_json::to_string(&rows)
            .expect("json")
            .contains("hunter2")
    );
    let local: Vec<AuditRecord> = text
        .lines()
        .map(|l| serde_json::from_str(l).expect("a whole record per line"))
        .collect();
    assert!(
        local
            .iter()
            .any(|r| r.method == "agent.ping" && r.trace_id.as_deref() == ping["trace_id"].as_str()),
        "{text}"
    );
    agent.stop().await.expect("stop");
}

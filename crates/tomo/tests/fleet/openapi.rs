//! The OpenAPI document at `/api/v1/openapi.json` against the running API: served without a
//! token, well formed, and matching the routes (every documented operation exists and needs a
//! token; the operations the API must offer are documented; statuses the API really answers
//! are documented ones).

use std::collections::BTreeSet;

use reqwest::{Method, StatusCode};
use serde_json::Value;

use tomo_proto::methods::Level;

use crate::support::{Fleet, RunningAgent};

/// Operations the API must offer (issue 5): the document has to list each.
const REQUIRED: &[(&str, &str)] = &[
    ("get", "/api/v1/openapi.json"),
    ("post", "/api/v1/codes"),
    ("get", "/api/v1/hosts"),
    ("get", "/api/v1/hosts/{host}"),
    ("delete", "/api/v1/hosts/{host}"),
    ("post", "/api/v1/hosts/{host}/rpc"),
    ("post", "/api/v1/hosts/{host}/stream"),
    ("get", "/api/v1/hosts/{host}/metrics"),
    ("get", "/api/v1/hosts/{host}/info"),
    ("get", "/api/v1/hosts/{host}/containers"),
    ("post", "/api/v1/hosts/{host}/containers"),
    ("get", "/api/v1/hosts/{host}/containers/{container}"),
    ("delete", "/api/v1/hosts/{host}/containers/{container}"),
    ("post", "/api/v1/hosts/{host}/containers/{container}/start"),
    ("post", "/api/v1/hosts/{host}/containers/{container}/stop"),
    (
        "post",
        "/api/v1/hosts/{host}/containers/{container}/restart",
    ),
    ("post", "/api/v1/hosts/{host}/containers/{container}/update"),
    ("post", "/api/v1/hosts/{host}/containers/{container}/exec"),
    ("get", "/api/v1/hosts/{host}/containers/{container}/logs"),
    ("get", "/api/v1/hosts/{host}/containers/{container}/stats"),
    ("get", "/api/v1/hosts/{host}/images"),
    ("delete", "/api/v1/hosts/{host}/images"),
    ("post", "/api/v1/hosts/{host}/images/pull"),
    ("get", "/api/v1/hosts/{host}/networks"),
    ("post", "/api/v1/hosts/{host}/networks"),
    ("delete", "/api/v1/hosts/{host}/networks/{name}"),
    ("get", "/api/v1/hosts/{host}/volumes"),
    ("post", "/api/v1/hosts/{host}/volumes"),
    ("delete", "/api/v1/hosts/{host}/volumes/{name}"),
    ("post", "/api/v1/hosts/{host}/system/{op}"),
    ("post", "/api/v1/hosts/{host}/agent/{op}"),
    ("get", "/api/v1/hosts/{host}/events"),
    ("get", "/api/v1/audit"),
    ("post", "/api/v1/fleet/rpc"),
    ("get", "/api/v1/whoami"),
    ("post", "/api/v1/tokens"),
    ("get", "/api/v1/tokens"),
    ("delete", "/api/v1/tokens/{id}"),
    ("put", "/api/v1/hosts/{host}/labels"),
    ("get", "/api/v1/approvals"),
    ("get", "/api/v1/approvals/{id}"),
    ("post", "/api/v1/approvals/{id}/approve"),
    ("post", "/api/v1/approvals/{id}/deny"),
];

/// Operations that may answer a stream: each documents `application/x-ndjson`.
const STREAMING: &[(&str, &str)] = &[
    ("post", "/api/v1/hosts/{host}/stream"),
    ("get", "/api/v1/hosts/{host}/containers/{container}/logs"),
    ("get", "/api/v1/hosts/{host}/containers/{container}/stats"),
    ("post", "/api/v1/hosts/{host}/containers/{container}/exec"),
    ("post", "/api/v1/hosts/{host}/images/pull"),
    ("get", "/api/v1/hosts/{host}/events"),
    ("get", "/api/v1/audit"),
];

const METHODS: &[&str] = &["get", "put", "post", "delete", "patch", "head", "options"];

/// The document, fetched without a token.
async fn document(f: &Fleet) -> Value {
    let resp = f
        .http
        .get(format!("{}/api/v1/openapi.json", f.info.api_url))
        .send()
        .await
        .expect("API reachable");
    assert_eq!(resp.status(), StatusCode::OK, "served without a token");
    let ct = resp
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert!(ct.starts_with("application/json"), "{ct}");
    resp.json().await.expect("the document is JSON")
}

/// Every `(method, path, operation)` of the document.
fn operations(doc: &Value) -> Vec<(String, String, Value)> {
    let paths = doc["paths"].as_object().expect("paths");
    let mut ops = Vec::new();
    for (path, item) in paths {
        for m in METHODS {
            if let Some(op) = item.get(*m) {
                ops.push(((*m).to_owned(), path.clone(), op.clone()));
            }
        }
    }
    ops
}

/// The `{names}` of a path template.
fn template_params(path: &str) -> BTreeSet<String> {
    path.split('/')
        .filter_map(|seg| seg.strip_prefix('{')?.strip_suffix('}'))
        .map(str::to_owned)
        .collect()
}

/// `path` with each `{param}` replaced by `value`.
fn fill(path: &str, value: &str) -> String {
    path.split('/')
        .map(|seg| {
            if seg.starts_with('{') && seg.ends_with('}') {
                value
            } else {
                seg
            }
        })
        .collect::<Vec<_>>()
        .join("/")
}

/// Whether an operation is open to anyone (`security` with an empty requirement).
fn is_open(op: &Value) -> bool {
    op.get("security")
        .and_then(Value::as_array)
        .is_some_and(|reqs| {
            reqs.iter()
                .any(|r| r.as_object().is_some_and(|o| o.is_empty()))
        })
}

fn refers_to_error_body(response: &Value) -> bool {
    response["content"]["application/json"]["schema"]["$ref"] == "#/components/schemas/ErrorBody"
}

/// A request without a token; returns the status and the JSON body (or null). All from one
/// address: requests without a credential are not counted as guesses (issue 12.6), so however
/// many there are, they are answered 401, never 429.
async fn anonymous(f: &Fleet, method: &str, path: &str) -> (StatusCode, Value) {
    let method = Method::from_bytes(method.to_uppercase().as_bytes()).expect("method");
    let resp = f
        .http
        .request(method, format!("{}{path}", f.info.api_url))
        .send()
        .await
        .expect("API reachable");
    let status = resp.status();
    (status, resp.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn the_document_is_served_without_a_token_and_describes_every_operation() {
    let f = Fleet::start().await;
    let doc = document(&f).await;

    let version = doc["openapi"].as_str().expect("openapi version");
    assert!(version.starts_with("3."), "{version}");
    assert_eq!(doc["info"]["title"], "tomo API");
    let bearer = &doc["components"]["securitySchemes"]["bearer"];
    assert_eq!(bearer["type"], "http", "{bearer}");
    assert_eq!(bearer["scheme"], "bearer", "{bearer}");
    assert!(
        doc["security"]
            .as_array()
            .is_some_and(|s| s.iter().any(|r| r.get("bearer").is_some())),
        "bearer is the default requirement: {}",
        doc["security"]
    );
    let error = &doc["components"]["schemas"]["ErrorBody"];
    assert_eq!(error["required"], serde_json::json!(["error"]), "{error}");

    let ops = operations(&doc);
    let have: BTreeSet<(String, String)> =
        ops.iter().map(|(m, p, _)| (m.clone(), p.clone())).collect();
    for (m, p) in REQUIRED {
        assert!(
            have.contains(&((*m).to_owned(), (*p).to_owned())),
            "{m} {p} is not documented"
        );
    }

    let mut ids = BTreeSet::new();
    for (m, p, op) in &ops {
        let what = format!("{m} {p}");
        assert!(p.starts_with("/api/v1/"), "{what}: outside /api/v1");
        assert!(
            op["summary"].as_str().is_some_and(|s| !s.is_empty()),
            "{what}: no summary"
        );
        assert!(
            op["tags"].as_array().is_some_and(|t| !t.is_empty()),
            "{what}: no tag"
        );
        let id = op["operationId"].as_str().expect("operationId");
        assert!(ids.insert(id.to_owned()), "{what}: operationId {id} twice");

        // The path's parameters are exactly the template's.
        let declared: BTreeSet<String> = op["parameters"]
            .as_array()
            .map(|ps| {
                ps.iter()
                    .filter(|p| p["in"] == "path")
                    .map(|p| p["name"].as_str().expect("name").to_owned())
                    .collect()
            })
            .unwrap_or_default();
        assert_eq!(declared, template_params(p), "{what}: path parameters");

        let responses = op["responses"].as_object().expect("responses");
        assert!(
            responses.keys().any(|s| s.starts_with('2')),
            "{what}: no success response"
        );
        if is_open(op) {
            continue;
        }
        // Protected: the token check's answers, in the one error shape.
        for status in ["401", "429", "500"] {
            let r = responses
                .get(status)
                .unwrap_or_else(|| panic!("{what}: no {status}"));
            assert!(refers_to_error_body(r), "{what}: {status} is not ErrorBody");
        }
    }
    assert_eq!(
        ops.iter().filter(|(_, _, op)| is_open(op)).count(),
        1,
        "only the document itself is open"
    );

    for (m, p) in STREAMING {
        let op = &doc["paths"][*p][*m];
        assert!(
            op["responses"]["200"]["content"]
                .get("application/x-ndjson")
                .is_some(),
            "{m} {p}: NDJSON not documented"
        );
    }
}

/// A request with a token; returns the status and the JSON body (or null).
async fn with_token(f: &Fleet, token: &str, method: &str, path: &str) -> (StatusCode, Value) {
    let method = Method::from_bytes(method.to_uppercase().as_bytes()).expect("method");
    let resp = f
        .http
        .request(method, format!("{}{path}", f.info.api_url))
        .bearer_auth(token)
        .send()
        .await
        .expect("API reachable");
    let status = resp.status();
    (status, resp.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn every_documented_operation_exists_and_needs_a_token() {
    let f = Fleet::start().await;
    let doc = document(&f).await;
    // A read token: whatever it reaches answers, and it can change nothing.
    let (reader, _) = tomo_server::auth::mint_token(&*f.state.store, "reader", Level::Read, None)
        .await
        .expect("token");

    // Controls: what the router itself answers past the token check, a path that does not
    // exist (404 "no such route") and a method a path does not have (405). So below, another
    // answer proves a handler was reached. (Without a token, a method a path does not have is
    // 401 too: the token check wraps each path's whole method router.)
    let router_said = |body: &Value| {
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("no such route"))
            || body["error"]["code"] == "method_not_allowed"
    };
    let (s, body) = with_token(&f, &reader, "get", "/api/v1/no-such-route").await;
    assert!(
        s == StatusCode::NOT_FOUND && router_said(&body),
        "{s} {body}"
    );
    let (s, body) = with_token(&f, &reader, "patch", "/api/v1/hosts").await;
    assert!(
        s == StatusCode::METHOD_NOT_ALLOWED && router_said(&body),
        "{s} {body}"
    );

    let ops = operations(&doc);
    assert!(ops.len() >= REQUIRED.len(), "{} operations", ops.len());
    for (m, p, op) in &ops {
        let path = fill(p, "x");
        let (status, body) = anonymous(&f, m, &path).await;
        if is_open(op) {
            assert_eq!(status, StatusCode::OK, "{m} {p}");
            continue;
        }
        // The path exists and is protected.
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{m} {p}: {body}");
        assert_eq!(body["error"]["code"], "unauthorized", "{m} {p}: {body}");
        // The method reaches a handler: a success, or an error in the API's shape that is not
        // the router's own 404 or 405.
        let (status, body) = with_token(&f, &reader, m, &path).await;
        assert_ne!(status, StatusCode::METHOD_NOT_ALLOWED, "{m} {p}");
        assert!(!router_said(&body), "{m} {p}: {status} {body}");
        assert!(
            status.is_success() || body["error"]["code"].is_string(),
            "{m} {p}: {status} {body}"
        );
    }
}

/// With a token and a real host, what every operation answers is a status its documentation
/// lists, and its errors have the one shape. Reads use an admin token (they succeed, or the agent
/// refuses: it has no Docker); the other operations use an admin token that requires approval,
/// so that what would change a host waits as a pending action (202) instead of running.
#[tokio::test]
async fn operations_answer_documented_statuses() {
    let f = Fleet::start().await;
    let mut agent = RunningAgent::spawn(f.agent("web-1", Some(f.code().await)));
    let host = agent.online().await;
    let doc = document(&f).await;
    let mut spec = tomo_server::auth::TokenSpec::new("asker", Level::Admin);
    spec.requires_approval = true;
    let (asker, _) = tomo_server::auth::mint(&*f.state.store, &spec)
        .await
        .expect("token");

    let ops = operations(&doc);
    assert!(ops.len() >= REQUIRED.len(), "{} operations", ops.len());
    let (mut checked, mut pending) = (0, 0);
    for (m, p, op) in &ops {
        // Not gated by approval: it would remove the host for the operations after it.
        if (m.as_str(), p.as_str()) == ("delete", "/api/v1/hosts/{host}") {
            continue;
        }
        let path = fill(
            &p.replacen("{host}", &host, 1)
                .replacen("{action}", "stop", 1)
                .replacen("{op}", "update", 1),
            // A valid reference (a name of two characters or more), so that the params reach
            // the approval stage.
            "tomo-x",
        );
        let token = if m == "get" { &f.token } else { &asker };
        let (status, body) = with_token(&f, token, m, &path).await;
        let documented = &op["responses"][status.as_str()];
        assert!(
            documented.is_object(),
            "{m} {p} answered {status}, not documented: {body}"
        );
        if status == StatusCode::ACCEPTED {
            assert_eq!(
                body["pending_action"]["status"], "pending",
                "{m} {p}: {body}"
            );
            pending += 1;
        } else if !status.is_success() {
            assert!(refers_to_error_body(documented), "{m} {p}: {status}");
            assert!(body["error"]["code"].is_string(), "{m} {p}: {body}");
        }
        checked += 1;
    }
    assert_eq!(checked, ops.len() - 1, "every operation but one was called");
    assert!(pending >= 8, "{pending} calls became pending actions");

    // A malformed body is a 400 in the error shape, as documented.
    let resp = f
        .http
        .post(format!("{}/api/v1/hosts/{host}/containers", f.info.api_url))
        .bearer_auth(&f.token)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body("{")
        .send()
        .await
        .expect("API reachable");
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    let body: Value = resp.json().await.expect("JSON error");
    assert_eq!(body["error"]["code"], "bad_request", "{body}");

    agent.stop().await.expect("agent stops");
}

/// Whether a success schema says nothing of its fields: an object without properties (or an
/// array of such), so a generated client gets `Record<string, never>`.
fn bare(schema: &Value) -> bool {
    if schema.get("$ref").is_some() {
        return false;
    }
    if schema["type"] == "array" {
        return bare(&schema["items"]);
    }
    schema["type"] == "object" && schema.get("properties").is_none()
}

/// Issue 14: every JSON success body of a host operation is described by its real schema (the
/// agent method's result type from `tomo-proto`), not a bare `object`. The operations still
/// answering a bare object are listed here, each with why; a new bare one fails.
#[tokio::test]
async fn success_bodies_are_described_by_their_types() {
    // Not typed: a JSON-RPC envelope of any method (`/rpc`, `/stream`); the document itself.
    const BARE: &[&str] = &[
        "POST /hosts/{host}/rpc",
        "POST /hosts/{host}/stream",
        "GET /openapi.json",
    ];
    let f = Fleet::start().await;
    let doc = document(&f).await;
    let mut bare_ops = Vec::new();
    let mut typed = 0;
    for (path, item) in doc["paths"].as_object().expect("paths") {
        let path = path.strip_prefix("/api/v1").unwrap_or(path);
        for (method, op) in item.as_object().expect("path item") {
            for (status, resp) in op["responses"].as_object().into_iter().flatten() {
                if !status.starts_with('2') {
                    continue;
                }
                let Some(schema) = resp.pointer("/content/application~1json/schema") else {
                    continue;
                };
                let op_name = format!("{} {path}", method.to_uppercase());
                if bare(schema) {
                    bare_ops.push(op_name);
                } else if path.starts_with("/hosts/{host}/") {
                    typed += 1;
                }
            }
        }
    }
    bare_ops.sort();
    bare_ops.dedup();
    let unexpected: Vec<_> = bare_ops
        .iter()
        .filter(|o| !BARE.contains(&o.as_str()))
        .collect();
    assert!(
        unexpected.is_empty(),
        "success bodies without a schema: {unexpected:?}"
    );
    assert!(
        typed >= 18,
        "host operations with a typed success body: {typed}"
    );
}

/// Issue 14: a real validator (`openapi-spec-validator`, PyPI, in the tests' virtualenv) accepts
/// the document (it failed on a duplicate tag).
#[tokio::test]
async fn the_document_passes_a_real_openapi_validator() {
    let f = Fleet::start().await;
    let doc = document(&f).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("openapi.json");
    std::fs::write(&path, serde_json::to_vec(&doc).expect("json")).expect("write");
    let python = std::env::var_os("TOMO_TEST_PYTHON").map_or_else(
        || {
            std::path::PathBuf::from(std::env::var_os("HOME").unwrap_or_default())
                .join(".cache/tomo-venv/bin/python")
        },
        std::path::PathBuf::from,
    );
    let out = tokio::process::Command::new(&python)
        .args(["-m", "openapi_spec_validator"])
        .arg(&path)
        .output()
        .await
        .unwrap_or_else(|e| panic!("{} (run scripts/python-env): {e}", python.display()));
    assert!(
        out.status.success(),
        "openapi-spec-validator: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // Lists are arrays in the document as in the answers (a generated client crashed on both).
    for path in ["/api/v1/hosts/{host}/events", "/api/v1/audit"] {
        let schema =
            &doc["paths"][path]["get"]["responses"]["200"]["content"]["application/json"]["schema"];
        assert_eq!(schema["type"], "array", "{path}: {schema}");
    }
    let (s, audit) = f.api(Method::GET, "/audit?limit=5", None).await;
    assert_eq!(s, StatusCode::OK);
    assert!(audit.is_array(), "{audit}");
}

/// Issue 14: an unknown route and a route's unknown method answered with an empty body; they
/// answer in the API's one error shape.
#[tokio::test]
async fn unknown_routes_and_methods_answer_in_the_error_shape() {
    let f = Fleet::start().await;
    for (method, path, status, code) in [
        (
            Method::GET,
            "/api/v1/nope",
            StatusCode::NOT_FOUND,
            "not_found",
        ),
        (Method::GET, "/nope", StatusCode::NOT_FOUND, "not_found"),
        (
            Method::DELETE,
            "/api/v1/whoami",
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
        ),
        (
            Method::PUT,
            "/api/v1/hosts",
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
        ),
    ] {
        let r = f
            .http
            .request(method.clone(), format!("{}{path}", f.info.api_url))
            .bearer_auth(&f.token)
            .send()
            .await
            .expect("request");
        assert_eq!(r.status(), status, "{method} {path}");
        let body: Value = r.json().await.unwrap_or(Value::Null);
        assert_eq!(body["error"]["code"], code, "{method} {path}: {body}");
        assert!(
            body["error"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("openapi.json")),
            "{body}"
        );
    }
}

/// Issue 14, found by schemathesis (a read token, GET operations): `GET /approvals?status=` is
/// schema-valid (an optional string) and was refused 400; an empty status is the default.
#[tokio::test]
async fn an_empty_optional_query_value_is_its_default() {
    let f = Fleet::start().await;
    let (s, v) = f.api(Method::GET, "/approvals?status=", None).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert!(v.is_array(), "{v}");
    // A limit outside the documented 1–500 is refused, not cut to fit (schemathesis).
    for bad in ["0", "501", "2147483648"] {
        let (s, v) = f
            .api(Method::GET, &format!("/approvals?limit={bad}"), None)
            .await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "limit={bad}: {v}");
    }
}

/// Issue 14: booleans in queries parsed differently per route (`follow=False` read as false on
/// the events, refused on the logs; `follow=1` taken on one, refused on the other). Every route
/// takes `true` or `false` and refuses anything else with 400.
#[tokio::test]
async fn boolean_queries_parse_alike_on_every_route() {
    let f = Fleet::start().await;
    let mut agent = RunningAgent::spawn(f.agent("bools", Some(f.code().await)));
    let host = agent.online().await;
    for path in [format!("/hosts/{host}/events"), "/audit".to_owned()] {
        for bad in ["False", "1", "yes"] {
            let (s, v) = f
                .api(Method::GET, &format!("{path}?follow={bad}"), None)
                .await;
            assert_eq!(s, StatusCode::BAD_REQUEST, "{path}?follow={bad}: {v}");
            assert!(
                v["error"]["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("true or false")),
                "{v}"
            );
        }
        let (s, v) = f
            .api(Method::GET, &format!("{path}?follow=false"), None)
            .await;
        assert_eq!(s, StatusCode::OK, "{v}");
        assert!(v.is_array(), "{v}");
    }
    let _ = agent.stop().await;
}

/// `schemathesis` (PyPI, in the tests' virtualenv beside `TOMO_TEST_PYTHON`) on `args` against
/// the fleet's API with `token`; the path parameters `{host}` and `{container}` are pinned to
/// real objects, the follows to `false` (a follow is endless by design). Answers its report.
async fn schemathesis(
    f: &Fleet,
    dir: &std::path::Path,
    token: &str,
    params: &str,
    args: &[&str],
) -> (bool, String) {
    let python = std::env::var_os("TOMO_TEST_PYTHON").map_or_else(
        || {
            std::path::PathBuf::from(std::env::var_os("HOME").unwrap_or_default())
                .join(".cache/tomo-venv/bin/python")
        },
        std::path::PathBuf::from,
    );
    let bin = python.with_file_name("schemathesis");
    let doc = dir.join("openapi.json");
    std::fs::write(&doc, serde_json::to_vec(&document(f).await).expect("json")).expect("write");
    std::fs::write(dir.join("schemathesis.toml"), params).expect("config");
    let ca = f.info.ca_file.as_ref().expect("a dev CA");
    let out = tokio::process::Command::new(&bin)
        .current_dir(dir)
        .arg("run")
        .arg(&doc)
        .args(["--url", &f.info.api_url])
        .args(["-H", &format!("Authorization: Bearer {token}")])
        .arg("--tls-verify")
        .arg(ca)
        // The pre-auth throttle answers 429 after ten bad tokens from one address, by design
        // (docs/security.md); the routes' 401s are tested one by one in this file.
        .args(["--exclude-checks", "ignored_auth"])
        .args(["--max-examples", "30", "--generation-deterministic"])
        // A network-level failure of one request is retried once: in a full-suite run on two
        // loaded cores, one TLS handshake ended in an EOF once (2026-12-04, not reproduced in
        // isolation). A server that drops connections for real still fails the run.
        .args(["--request-retries", "1"])
        .args(["--no-color"])
        .args(args)
        .env("SCHEMATHESIS_TELEMETRY", "false")
        .output()
        .await
        .unwrap_or_else(|e| panic!("{} (run scripts/python-env): {e}", bin.display()));
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // A filter that matched nothing would pass vacuously.
    let tested = report
        .lines()
        .find_map(|l| l.trim().strip_prefix("Tested: "))
        .and_then(|n| n.trim().parse::<u32>().ok())
        .unwrap_or(0);
    assert!(tested > 0, "schemathesis tested no operation:\n{report}");
    eprintln!("schemathesis {args:?}: {tested} operations");
    (out.status.success(), report)
}

/// Issue 14: schemathesis, a real property-based client of OpenAPI documents, finds no failure:
/// with a read token in any read operation, with an execute token in the container actions on
/// a throwaway container (its image from the local registry, so that an update pulls). (It found refused schema-valid values, `limit=0` and
/// `status=<anything>` accepted or refused against the document, `since` < 0, container names
/// outside Docker's rule; each is now in the document or refused.)
#[tokio::test]
async fn schemathesis_finds_no_failure() {
    let Some(docker) = crate::docker_env::DockerEnv::with_registry().await else {
        return;
    };
    let f = Fleet::start().await;
    let mut cfg = f.agent("schemathesis", Some(f.code().await));
    cfg.docker = tomo_agent::docker::Endpoint::from_env();
    let mut agent = RunningAgent::spawn(cfg);
    let host = agent.online().await;
    let name = crate::docker_env::DockerEnv::unique("st");
    // From the local registry, so that an update can pull its image again.
    let registry = docker.registry.clone().expect("a registry");
    docker
        .create(&name, &format!("{registry}/tomo-test/busybox:latest"))
        .await;
    let token = |role: &'static str| {
        let f = &f;
        async move {
            let (s, t) = f
                .api(
                    Method::POST,
                    "/tokens",
                    Some(serde_json::json!({"name": format!("st-{role}"), "role": role})),
                )
                .await;
            assert_eq!(s, StatusCode::CREATED, "{t}");
            t["secret"].as_str().expect("secret").to_owned()
        }
    };
    let (read, execute) = (token("read").await, token("execute").await);
    let params = format!(
        "parameters = {{ \"path.host\" = \"{host}\", \"path.container\" = \"{name}\", \
         \"query.follow\" = \"false\", \"query.stream\" = \"false\" }}\n"
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let (ok, report) = schemathesis(
        &f,
        dir.path(),
        &read,
        &params,
        &[
            "--include-method",
            "GET",
            "--phases",
            "examples,coverage,fuzzing",
        ],
    )
    .await;
    assert!(ok, "schemathesis, read token, GET:\n{report}");
    let (ok, report) = schemathesis(
        &f,
        dir.path(),
        &execute,
        &params,
        &[
            "--include-path-regex",
            "/containers/\\{container\\}/(start|stop|restart|update|exec)$",
            "--phases",
            "examples,coverage,fuzzing",
        ],
    )
    .await;
    docker.cleanup(&name).await;
    let _ = agent.stop().await;
    assert!(
        ok,
        "schemathesis, execute token, container actions:\n{report}"
    );
}

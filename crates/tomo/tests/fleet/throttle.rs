//! The per-source throttle of guessed credentials (issue 12.6): only a credential that was
//! presented and is wrong counts (a request without one is not a guess), and a request carrying
//! a valid token or a valid agent key is served even while its address is blocked (one bad
//! client behind a NAT must not lock out the operators and agents sharing its address).

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tomo_agent::identity::Keys;
use tomo_proto::handshake::RefusalReason;
use tomo_server::throttle::LIMIT;

use crate::support::{Fleet, Raw, facts};

/// A request to `path` (under the API's base URL) with this `Authorization` header, or none.
async fn with_header(f: &Fleet, path: &str, authorization: Option<&str>) -> (StatusCode, Value) {
    let mut req = f.http.get(format!("{}{path}", f.info.api_url));
    if let Some(a) = authorization {
        req = req.header(reqwest::header::AUTHORIZATION, a);
    }
    let resp = req.send().await.expect("API reachable");
    let status = resp.status();
    (status, resp.json().await.unwrap_or(Value::Null))
}

/// Issue 12.6: a schemathesis run (or a dashboard tab, a health checker) sends many requests
/// without an `Authorization` header; they used to count as failed guesses, and ten of them
/// blocked the address for everyone — valid tokens, `/mcp`, agents — for a minute and more.
#[tokio::test]
async fn requests_without_a_credential_are_not_guesses() {
    let f = Fleet::start().await;
    let keys = Keys::generate();
    let (raw, id) = Raw::register(&f, &keys, &f.code().await, facts("behind-nat", None))
        .await
        .expect("registered");
    drop(raw);
    for _ in 0..3 * LIMIT {
        let (s, v) = with_header(&f, "/api/v1/hosts", None).await;
        assert_eq!(s, StatusCode::UNAUTHORIZED, "{v}");
        assert_eq!(v["error"]["code"], json!("unauthorized"), "{v}");
        let mcp = f
            .http
            .post(format!("{}/mcp", f.info.api_url))
            .header("accept", "application/json, text/event-stream")
            .json(&json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list"}))
            .send()
            .await
            .expect("MCP reachable");
        assert_eq!(mcp.status(), StatusCode::UNAUTHORIZED);
    }
    let (s, v) = f.api(Method::GET, "/hosts", None).await;
    assert_eq!(s, StatusCode::OK, "a valid token is served: {v}");
    let mcp = f
        .http
        .post(format!("{}/mcp", f.info.api_url))
        .bearer_auth(&f.token)
        .header("accept", "application/json, text/event-stream")
        .json(&json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list"}))
        .send()
        .await
        .expect("MCP reachable");
    assert_eq!(mcp.status(), StatusCode::OK, "/mcp with a valid token");
    Raw::authenticate(&f, &keys, &id, facts("behind-nat", None))
        .await
        .expect("the agent's handshake is not throttled");
}

/// Issue 12.6: once wrong tokens have blocked an address, wrong credentials from it are answered
/// 429 `throttled` (and registration codes are refused), but a valid token and a valid agent key
/// are still served: the block costs the guesser, not its neighbours.
#[tokio::test]
async fn a_blocked_source_still_serves_valid_tokens_and_agent_keys() {
    let f = Fleet::start().await;
    let keys = Keys::generate();
    let (raw, id) = Raw::register(&f, &keys, &f.code().await, facts("neighbour", None))
        .await
        .expect("registered");
    drop(raw);
    for i in 0..LIMIT {
        let (s, _) = f
            .api_as(&format!("tomo_guess{i}"), Method::GET, "/hosts", None)
            .await;
        assert_eq!(s, StatusCode::UNAUTHORIZED);
    }
    let (s, v) = f.api_as("tomo_guess", Method::GET, "/hosts", None).await;
    assert_eq!(s, StatusCode::TOO_MANY_REQUESTS, "{v}");
    assert_eq!(v["error"]["code"], json!("throttled"));

    let (s, v) = f.api(Method::GET, "/hosts", None).await;
    assert_eq!(
        s,
        StatusCode::OK,
        "a valid token is served while blocked: {v}"
    );
    Raw::authenticate(&f, &keys, &id, facts("neighbour", None))
        .await
        .expect("a valid agent key is served while blocked");
    // A wrong key, and a registration (a code is a guessable secret), are throttled.
    assert_eq!(
        Raw::authenticate(&f, &Keys::generate(), &id, facts("neighbour", None))
            .await
            .err(),
        Some(RefusalReason::Throttled)
    );
    let r = Raw::register(&f, &Keys::generate(), &f.code().await, facts("new", None)).await;
    assert_eq!(r.err(), Some(RefusalReason::Throttled));
    assert_eq!(f.state.store.hosts().await.expect("hosts").len(), 1);
}

/// Issue 12.6: the auth scheme is case-insensitive (RFC 7235 §2.1); `bearer` used to be read as
/// no token at all.
#[tokio::test]
async fn the_bearer_scheme_is_case_insensitive() {
    let f = Fleet::start().await;
    for scheme in ["Bearer", "bearer", "BEARER", "bEaReR"] {
        let header = format!("{scheme} {}", f.token);
        let (s, v) = with_header(&f, "/api/v1/whoami", Some(&header)).await;
        assert_eq!(s, StatusCode::OK, "{scheme}: {v}");
    }
    // Another scheme, or the scheme glued to the token, is no bearer token.
    for header in [format!("Basic {}", f.token), format!("Bearer{}", f.token)] {
        let (s, v) = with_header(&f, "/api/v1/whoami", Some(&header)).await;
        assert_eq!(s, StatusCode::UNAUTHORIZED, "{header:.8}: {v}");
    }
}

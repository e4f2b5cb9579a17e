//! API tokens and who may use which route: the table [`ROUTES`] lists every route of `/api/v1`
//! with the least role it needs and how it relates to hosts, and each row is tried with no
//! token, an unknown, a revoked and an expired one (401), every role below its minimum (403),
//! and a token scoped to another host (refused; `GET /hosts` hides the host). The document at
//! `/api/v1/openapi.json` must list no route the table does not.
//!
//! Failed attempts are throttled per source address, so each row speaks from an address of its
//! own in 127.0.0.0/8.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tomo_proto::methods::Level;
use tomo_proto::rpc::code;
use tomo_server::auth::TokenSpec;

use crate::support::{Fleet, WAIT, offline_host};

/// How a route relates to hosts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Bound {
    /// Names one host (`{host}`): a token scoped elsewhere gets 404 `not_found`, by exact id as
    /// by hostname, the same answer as for a host that does not exist.
    Host,
    /// Lists hosts: a scoped token sees its own only.
    Fleet,
    /// Fleet-wide administration: needs a token without a host scope.
    Unscoped,
    /// About the caller itself (whoami, its own pending actions): any scope.
    Own,
    /// About a pending action on `{host}`: a token that may not decide it, or whose scope does
    /// not reach the host, is refused (403) or does not see it (404), and it stays pending.
    Action,
}

/// What a route does for a token created with `requires_approval` (issue 12.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Gate {
    /// Changes nothing: answers as for any other token.
    Free,
    /// Changes a host: becomes a pending action (202) and nothing runs.
    Pending,
    /// Changes the control plane (codes, tokens, labels, hosts, decisions), which cannot wait
    /// for a human: refused (403), nothing changes.
    Refused,
}

/// One route: method, template as routed (under `/api/v1`), the path tried (placeholders
/// `{host}`, `{container}`, `{name}`, `{token}` (a token's id), `{action}` (a pending action's id)
/// filled in), the least role, how it relates to hosts, a body that passes validation, and what
/// it does for a token that requires approval.
struct Route {
    method: Method,
    template: &'static str,
    path: &'static str,
    min: Level,
    bound: Bound,
    body: Option<&'static str>,
    gate: Gate,
}

const fn r(
    method: Method,
    template: &'static str,
    path: &'static str,
    min: Level,
    bound: Bound,
    body: Option<&'static str>,
    gate: Gate,
) -> Route {
    Route {
        method,
        template,
        path,
        min,
        bound,
        body,
        gate,
    }
}

use Bound::{Action as P, Fleet as F, Host as H, Own as O, Unscoped as U};
use Gate::{Free as FREE, Pending as PEND, Refused as REFUSE};
use Level::{Admin as A, Execute as E, Read as R};

const SYSTEM_OP: &str = "/hosts/{host}/system/{op}";
const AGENT_OP: &str = "/hosts/{host}/agent/{op}";

/// Every route of `/api/v1` but the OpenAPI document (public by design).
const ROUTES: &[Route] = &[
    r(Method::POST, "/codes", "/codes", A, U, Some("{}"), REFUSE),
    r(Method::GET, "/codes", "/codes", A, U, None, FREE),
    r(
        Method::DELETE,
        "/codes/{id}",
        "/codes/0123456789abcdef",
        A,
        U,
        None,
        REFUSE,
    ),
    r(Method::GET, "/hosts", "/hosts", R, F, None, FREE),
    r(
        Method::GET,
        "/hosts/{host}",
        "/hosts/{host}",
        R,
        H,
        None,
        FREE,
    ),
    r(
        Method::DELETE,
        "/hosts/{host}",
        "/hosts/{host}",
        A,
        H,
        None,
        REFUSE,
    ),
    r(
        Method::POST,
        "/hosts/{host}/rpc",
        "/hosts/{host}/rpc",
        E,
        H,
        Some(
            r#"{"method": "docker.containers.remove", "params": {"container": "tomo-test-auth"}}"#,
        ),
        PEND,
    ),
    r(
        Method::POST,
        "/hosts/{host}/stream",
        "/hosts/{host}/stream",
        E,
        H,
        Some(
            r#"{"method": "docker.images.pull", "params": {"image": "tomo-test/busybox:latest"}}"#,
        ),
        PEND,
    ),
    // Read methods only, by construction: the fan-out refuses anything else.
    r(
        Method::POST,
        "/fleet/rpc",
        "/fleet/rpc",
        R,
        H,
        Some(r#"{"method": "agent.ping", "hosts": ["{host}"]}"#),
        FREE,
    ),
    r(
        Method::GET,
        "/hosts/{host}/metrics",
        "/hosts/{host}/metrics",
        R,
        H,
        None,
        FREE,
    ),
    r(
        Method::GET,
        "/hosts/{host}/info",
        "/hosts/{host}/info",
        R,
        H,
        None,
        FREE,
    ),
    r(
        Method::GET,
        "/hosts/{host}/containers",
        "/hosts/{host}/containers",
        R,
        H,
        None,
        FREE,
    ),
    r(
        Method::POST,
        "/hosts/{host}/containers",
        "/hosts/{host}/containers",
        A,
        H,
        Some(r#"{"image": "tomo-test/busybox:latest", "name": "tomo-test-auth"}"#),
        PEND,
    ),
    r(
        Method::GET,
        "/hosts/{host}/containers/{container}",
        "/hosts/{host}/containers/{container}",
        R,
        H,
        None,
        FREE,
    ),
    r(
        Method::DELETE,
        "/hosts/{host}/containers/{container}",
        "/hosts/{host}/containers/{container}",
        E,
        H,
        None,
        PEND,
    ),
    r(
        Method::POST,
        "/hosts/{host}/containers/{container}/start",
        "/hosts/{host}/containers/{container}/start",
        E,
        H,
        Some("{}"),
        PEND,
    ),
    r(
        Method::POST,
        "/hosts/{host}/containers/{container}/stop",
        "/hosts/{host}/containers/{container}/stop",
        E,
        H,
        Some("{}"),
        PEND,
    ),
    r(
        Method::POST,
        "/hosts/{host}/containers/{container}/restart",
        "/hosts/{host}/containers/{container}/restart",
        E,
        H,
        Some("{}"),
        PEND,
    ),
    r(
        Method::POST,
        "/hosts/{host}/containers/{container}/update",
        "/hosts/{host}/containers/{container}/update",
        E,
        H,
        Some("{}"),
        PEND,
    ),
    r(
        Method::POST,
        "/hosts/{host}/containers/{container}/exec",
        "/hosts/{host}/containers/{container}/exec",
        A,
        H,
        Some(r#"{"cmd": ["true"]}"#),
        PEND,
    ),
    r(
        Method::GET,
        "/hosts/{host}/containers/{container}/logs",
        "/hosts/{host}/containers/{container}/logs",
        R,
        H,
        None,
        FREE,
    ),
    r(
        Method::GET,
        "/hosts/{host}/containers/{container}/stats",
        "/hosts/{host}/containers/{container}/stats",
        R,
        H,
        None,
        FREE,
    ),
    r(
        Method::GET,
        "/hosts/{host}/images",
        "/hosts/{host}/images",
        R,
        H,
        None,
        FREE,
    ),
    r(
        Method::DELETE,
        "/hosts/{host}/images",
        "/hosts/{host}/images?image=tomo-test/busybox:latest",
        E,
        H,
        None,
        PEND,
    ),
    r(
        Method::POST,
        "/hosts/{host}/images/pull",
        "/hosts/{host}/images/pull",
        E,
        H,
        Some(r#"{"image": "tomo-test/busybox:latest"}"#),
        PEND,
    ),
    r(
        Method::GET,
        "/hosts/{host}/networks",
        "/hosts/{host}/networks",
        R,
        H,
        None,
        FREE,
    ),
    r(
        Method::POST,
        "/hosts/{host}/networks",
        "/hosts/{host}/networks",
        E,
        H,
        Some(r#"{"name": "tomo-test-auth"}"#),
        PEND,
    ),
    r(
        Method::DELETE,
        "/hosts/{host}/networks/{name}",
        "/hosts/{host}/networks/{name}",
        E,
        H,
        None,
        PEND,
    ),
    r(
        Method::GET,
        "/hosts/{host}/volumes",
        "/hosts/{host}/volumes",
        R,
        H,
        None,
        FREE,
    ),
    r(
        Method::POST,
        "/hosts/{host}/volumes",
        "/hosts/{host}/volumes",
        E,
        H,
        Some(r#"{"name": "tomo-test-auth"}"#),
        PEND,
    ),
    r(
        Method::DELETE,
        "/hosts/{host}/volumes/{name}",
        "/hosts/{host}/volumes/{name}",
        E,
        H,
        None,
        PEND,
    ),
    r(
        Method::POST,
        SYSTEM_OP,
        "/hosts/{host}/system/exec",
        A,
        H,
        Some(r#"{"command": "uptime"}"#),
        PEND,
    ),
    // A check that changes nothing: the one POST a read token may use (see READ_ONLY_POSTS).
    r(
        Method::POST,
        SYSTEM_OP,
        "/hosts/{host}/system/preflight_check",
        R,
        H,
        Some("{}"),
        FREE,
    ),
    r(
        Method::POST,
        SYSTEM_OP,
        "/hosts/{host}/system/prepare_volumes",
        E,
        H,
        Some(r#"{"volumes": [{"path": "tomo-test-auth"}]}"#),
        PEND,
    ),
    r(
        Method::POST,
        AGENT_OP,
        "/hosts/{host}/agent/update",
        A,
        H,
        Some(r#"{"log_level": "info"}"#),
        PEND,
    ),
    r(
        Method::POST,
        AGENT_OP,
        "/hosts/{host}/agent/restart",
        A,
        H,
        Some("{}"),
        PEND,
    ),
    r(
        Method::GET,
        "/hosts/{host}/events",
        "/hosts/{host}/events",
        R,
        H,
        None,
        FREE,
    ),
    r(
        Method::PUT,
        "/hosts/{host}/labels",
        "/hosts/{host}/labels",
        A,
        U,
        Some(r#"{"env": "x"}"#),
        REFUSE,
    ),
    r(Method::GET, "/audit", "/audit", A, U, None, FREE),
    r(
        Method::POST,
        "/tokens",
        "/tokens",
        A,
        U,
        Some(r#"{"name": "x", "role": "read"}"#),
        REFUSE,
    ),
    r(Method::GET, "/tokens", "/tokens", A, U, None, FREE),
    r(
        Method::DELETE,
        "/tokens/{id}",
        "/tokens/{token}",
        A,
        U,
        None,
        REFUSE,
    ),
    r(Method::GET, "/whoami", "/whoami", R, O, None, FREE),
    r(Method::GET, "/approvals", "/approvals", R, O, None, FREE),
    r(
        Method::GET,
        "/approvals/{id}",
        "/approvals/{action}",
        R,
        O,
        None,
        FREE,
    ),
    r(
        Method::POST,
        "/approvals/{id}/approve",
        "/approvals/{action}/approve",
        A,
        P,
        None,
        REFUSE,
    ),
    r(
        Method::POST,
        "/approvals/{id}/deny",
        "/approvals/{action}/deny",
        A,
        P,
        Some("{}"),
        REFUSE,
    ),
];

/// POST routes a read token may use: they change nothing.
const READ_ONLY_POSTS: &[&str] = &["/hosts/{host}/system/preflight_check", "/fleet/rpc"];

/// A client whose requests come from `ip` (a loopback address of its own).
fn client_from(f: &Fleet, ip: Ipv4Addr) -> reqwest::Client {
    let ca = f.info.ca_file.clone().expect("self-signed");
    let tls = tomo_common::tls::client_config(&tomo_common::tls::Trust::CaFile(ca)).expect("tls");
    reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .local_address(IpAddr::V4(ip))
        .build()
        .expect("http")
}

async fn send(
    f: &Fleet,
    http: &reqwest::Client,
    token: Option<&str>,
    method: &Method,
    path: &str,
    body: Option<&str>,
) -> (StatusCode, Value) {
    let mut req = http.request(method.clone(), format!("{}/api/v1{path}", f.info.api_url));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    if let Some(b) = body {
        req = req
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(b.to_owned());
    }
    let resp = req.send().await.expect("API reachable");
    let status = resp.status();
    (status, resp.json().await.unwrap_or(Value::Null))
}

async fn mint(f: &Fleet, spec: TokenSpec) -> (String, String) {
    let (secret, record) = tomo_server::auth::mint(&*f.state.store, &spec)
        .await
        .expect("token");
    (secret, record.id)
}

fn role_name(l: Level) -> &'static str {
    match l {
        Level::Read => "read",
        Level::Execute => "execute",
        Level::Admin => "admin",
    }
}

#[tokio::test]
async fn every_route_refuses_bad_tokens_low_roles_and_other_scopes() {
    let f = Fleet::start().await;
    let target = offline_host(&f, "auth-target").await;
    let other = offline_host(&f, "auth-other").await;

    let (read, _) = mint(&f, TokenSpec::new("reader", Level::Read)).await;
    let (execute, _) = mint(&f, TokenSpec::new("operator", Level::Execute)).await;
    let (revoked, revoked_id) = mint(&f, TokenSpec::new("gone", Level::Admin)).await;
    let (s, v) = f
        .api(Method::DELETE, &format!("/tokens/{revoked_id}"), None)
        .await;
    assert_eq!(
        (s, &v["status"]),
        (StatusCode::OK, &json!("revoked")),
        "{v}"
    );
    let mut short = TokenSpec::new("short-lived", Level::Admin);
    short.ttl = Some(Duration::from_millis(1));
    let (expired, _) = mint(&f, short).await;
    let mut elsewhere = TokenSpec::new("elsewhere", Level::Admin);
    elsewhere.scope = vec![other.clone()];
    let (scoped, _) = mint(&f, elsewhere).await;
    let (_, victim) = mint(&f, TokenSpec::new("victim", Level::Read)).await;
    // A pending action on the target host, for the approval routes.
    let mut asker = TokenSpec::new("asker", Level::Execute);
    asker.requires_approval = true;
    let (asker, _) = mint(&f, asker).await;
    let (s, v) = f
        .api_as(
            &asker,
            Method::POST,
            &format!("/hosts/{target}/containers/tomo-test-auth/stop"),
            Some(json!({})),
        )
        .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{v}");
    let action = v["pending_action"]["id"]
        .as_str()
        .expect("action id")
        .to_owned();
    tokio::time::sleep(Duration::from_millis(20)).await;

    let fill = |p: &str, host: &str| {
        p.replace("{host}", host)
            .replace("{container}", "tomo-test-auth")
            .replace("{name}", "tomo-test-auth")
            .replace("{token}", &victim)
            .replace("{action}", &action)
    };
    let below = |min: Level| {
        [
            (Level::Read, read.as_str()),
            (Level::Execute, execute.as_str()),
        ]
        .into_iter()
        .filter(move |(l, _)| *l < min)
    };

    for (i, row) in ROUTES.iter().enumerate() {
        let http = client_from(
            &f,
            Ipv4Addr::new(127, 3, (i / 200) as u8, (i % 200) as u8 + 1),
        );
        let m = &row.method;
        let path = fill(row.path, &target);
        let body = row.body.map(|b| fill(b, &target));
        let body = body.as_deref();
        let what = format!("{m} {path}");

        for (label, token) in [
            ("no token", None),
            (
                "an unknown token",
                Some("tomo_0000000000000000000000000000000000000000"),
            ),
            ("a revoked token", Some(revoked.as_str())),
            ("an expired token", Some(expired.as_str())),
        ] {
            let (s, v) = send(&f, &http, token, m, &path, body).await;
            assert_eq!(s, StatusCode::UNAUTHORIZED, "{what} with {label}: {v}");
            assert_eq!(
                v["error"]["code"], "unauthorized",
                "{what} with {label}: {v}"
            );
        }

        for (level, token) in below(row.min) {
            let (s, v) = send(&f, &http, Some(token), m, &path, body).await;
            if row.bound == Bound::Action {
                // Only deciders see others' actions at all.
                assert!(
                    s == StatusCode::FORBIDDEN || s == StatusCode::NOT_FOUND,
                    "{what} as {level:?}: {s} {v}"
                );
                continue;
            }
            assert_eq!(s, StatusCode::FORBIDDEN, "{what} as {level:?}: {v}");
            assert_eq!(v["error"]["code"], "forbidden", "{what} as {level:?}: {v}");
            let msg = v["error"]["message"].as_str().unwrap_or_default();
            assert!(
                msg.contains(role_name(row.min)),
                "{what}: the refusal names the role needed: {msg}"
            );
        }

        match row.bound {
            Bound::Host => {
                // Issue 12.8: by exact id, the same 404 as a host that does not exist, so a
                // scoped token cannot tell which ids exist.
                let (s, v) = send(&f, &http, Some(&scoped), m, &path, body).await;
                // `POST /fleet/rpc` names hosts in its body, and answers the same (issue 14:
                // one pipeline, one answer).
                let (want, code) = (StatusCode::NOT_FOUND, "not_found");
                assert_eq!(s, want, "{what} scoped elsewhere: {v}");
                assert_eq!(v["error"]["code"], code, "{what}: {v}");
                let nobody = "0123456789abcdef0123456789abcdef";
                let unknown = fill(row.path, nobody);
                let unknown_body = row.body.map(|b| fill(b, nobody));
                let (s2, v2) = send(
                    &f,
                    &http,
                    Some(&scoped),
                    m,
                    &unknown,
                    unknown_body.as_deref(),
                )
                .await;
                assert_eq!(s2, s, "{m} {unknown}: {v2}");
                assert_eq!(
                    v["error"]["message"]
                        .as_str()
                        .map(|m| m.replace(&target, "")),
                    v2["error"]["message"]
                        .as_str()
                        .map(|m| m.replace(nobody, "")),
                    "{what}: the same words as for an unknown id"
                );
                // By hostname, the host is not even there for this token.
                if row.path.contains("{host}") {
                    let by_name = fill(row.path, "auth-target");
                    let (s, v) = send(&f, &http, Some(&scoped), m, &by_name, body).await;
                    assert_eq!(
                        s,
                        StatusCode::NOT_FOUND,
                        "{m} {by_name} scoped elsewhere: {v}"
                    );
                }
            }
            Bound::Unscoped => {
                let (s, v) = send(&f, &http, Some(&scoped), m, &path, body).await;
                assert_eq!(s, StatusCode::FORBIDDEN, "{what} with a scoped token: {v}");
                assert_eq!(v["error"]["code"], "out_of_scope", "{what}: {v}");
            }
            Bound::Fleet => {
                let (s, v) = send(&f, &http, Some(&scoped), m, &path, None).await;
                assert_eq!(s, StatusCode::OK, "{v}");
                let ids: Vec<&str> = v
                    .as_array()
                    .expect("array")
                    .iter()
                    .filter_map(|h| h["id"].as_str())
                    .collect();
                assert_eq!(ids, vec![other.as_str()], "only the host in scope");
            }
            Bound::Action => {
                let (s, v) = send(&f, &http, Some(&scoped), m, &path, body).await;
                assert!(
                    s == StatusCode::FORBIDDEN || s == StatusCode::NOT_FOUND,
                    "{what} scoped elsewhere: {s} {v}"
                );
            }
            Bound::Own => {
                let (s, v) = send(&f, &http, Some(&scoped), m, &path, body).await;
                assert!(
                    s != StatusCode::UNAUTHORIZED && v["error"]["code"] != "out_of_scope",
                    "{what} is about the caller, whatever its scope: {s} {v}"
                );
            }
        }
    }

    // The same token on its own host gets past every check: a call reaches the hub (503, the
    // host is offline) or the store (200). Host removal last, as it ends the host.
    for (i, row) in ROUTES.iter().enumerate() {
        if row.bound != Bound::Host || row.method == Method::DELETE && row.path == "/hosts/{host}" {
            continue;
        }
        let http = client_from(&f, Ipv4Addr::new(127, 4, 0, i as u8 + 1));
        let path = fill(row.path, &other);
        let body = row.body.map(|b| fill(b, &other));
        let (s, v) = send(
            &f,
            &http,
            Some(&scoped),
            &row.method,
            &path,
            body.as_deref(),
        )
        .await;
        assert!(
            s == StatusCode::OK || s == StatusCode::SERVICE_UNAVAILABLE,
            "{} {path} in scope: {s} {v}",
            row.method
        );
    }

    // Nothing the refused requests asked for happened.
    let hosts = f.state.store.hosts().await.expect("hosts");
    assert_eq!(hosts.len(), 2, "no host was removed");
    assert!(
        hosts.iter().all(|h| h.labels.is_empty()),
        "no label was set"
    );
    let tokens = f.state.store.list_tokens().await.expect("tokens");
    let victim_now = tokens.iter().find(|t| t.id == victim).expect("victim");
    assert_eq!(
        victim_now.revoked_at, None,
        "the victim token was not revoked"
    );
    assert!(
        tokens.iter().all(|t| t.name != "x"),
        "no token was created by a refused request"
    );
    let (_, v) = f
        .api(Method::GET, &format!("/approvals/{action}"), None)
        .await;
    assert_eq!(v["status"], "pending", "nobody decided the action: {v}");

    let (s, v) = f
        .api_as(&scoped, Method::DELETE, &format!("/hosts/{other}"), None)
        .await;
    assert_eq!(
        s,
        StatusCode::OK,
        "a scoped admin removes a host in its scope: {v}"
    );
}

/// Issue 12.3: a token created `--require-approval` changes nothing by itself. Each row of the
/// table says what its route does for such a token, here the widest one (admin, no host scope):
/// a change to a host becomes a pending action and nothing runs, a change to the control plane
/// (codes, tokens, labels, host removal, decisions) is refused, and the other routes change
/// nothing. (It used to mint an admin token without approval, create registration codes and
/// relabel hosts at once.)
#[tokio::test]
async fn a_token_that_requires_approval_changes_nothing_by_itself() {
    let f = Fleet::start().await;
    let target = offline_host(&f, "appr-target").await;
    let mut lax = TokenSpec::new("lax-admin", Level::Admin);
    lax.requires_approval = true;
    let (lax, _) = mint(&f, lax).await;
    let (_, victim) = mint(&f, TokenSpec::new("victim", Level::Read)).await;
    // Another token's pending action, for the decision routes.
    let mut asker = TokenSpec::new("asker", Level::Execute);
    asker.requires_approval = true;
    let (asker, _) = mint(&f, asker).await;
    let stop = format!("/hosts/{target}/containers/tomo-test-auth/stop");
    let (s, v) = f.api_as(&asker, Method::POST, &stop, Some(json!({}))).await;
    assert_eq!(s, StatusCode::ACCEPTED, "{v}");
    let action = v["pending_action"]["id"].as_str().expect("id").to_owned();
    let fill = |p: &str| {
        p.replace("{host}", &target)
            .replace("{container}", "tomo-test-auth")
            .replace("{name}", "tomo-test-auth")
            .replace("{token}", &victim)
            .replace("{action}", &action)
    };
    let own_actions = async || {
        let (_, v) = f
            .api_as(&lax, Method::GET, "/approvals?status=all", None)
            .await;
        v.as_array().map(Vec::len).expect("a list")
    };

    for (i, row) in ROUTES.iter().enumerate() {
        let http = client_from(&f, Ipv4Addr::new(127, 5, 0, i as u8 + 1));
        let path = fill(row.path);
        let body = row.body.map(fill);
        let what = format!("{} {path} ({:?})", row.method, row.gate);
        let before = own_actions().await;
        let (s, v) = send(&f, &http, Some(&lax), &row.method, &path, body.as_deref()).await;
        let refusal = s == StatusCode::FORBIDDEN
            && v["error"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("requires approval"));
        match row.gate {
            Gate::Pending => {
                assert_eq!(s, StatusCode::ACCEPTED, "{what}: {v}");
                assert_eq!(v["pending_action"]["status"], "pending", "{what}: {v}");
                assert_eq!(own_actions().await, before + 1, "{what}: one action");
            }
            Gate::Refused => {
                assert!(refusal, "{what}: {s} {v}");
                assert_eq!(v["error"]["code"], "forbidden", "{what}: {v}");
                assert_eq!(own_actions().await, before, "{what}: no action");
            }
            Gate::Free => {
                assert!(s != StatusCode::ACCEPTED && !refusal, "{what}: {s} {v}");
                assert_eq!(own_actions().await, before, "{what}: no action");
            }
        }
    }

    // Nothing the token asked for happened.
    let hosts = f.state.store.hosts().await.expect("hosts");
    assert!(
        hosts
            .iter()
            .all(|h| h.removed_at.is_none() && h.labels.is_empty()),
        "no host removed or relabelled: {hosts:?}"
    );
    let tokens = f.state.store.list_tokens().await.expect("tokens");
    assert!(tokens.iter().all(|t| t.name != "x"), "no token minted");
    assert!(
        tokens.iter().all(|t| t.revoked_at.is_none()),
        "no token revoked"
    );
    let (_, v) = f
        .api(Method::GET, &format!("/approvals/{action}"), None)
        .await;
    assert_eq!(
        v["status"], "pending",
        "nobody decided the other action: {v}"
    );
    let (_, v) = f.api(Method::GET, "/approvals?status=all", None).await;
    assert!(
        v.as_array()
            .expect("list")
            .iter()
            .all(|a| a["status"] == "pending"),
        "nothing ran: {v}"
    );
}

/// A route that a token requiring approval may use freely changes nothing: a GET, or a POST
/// that only reads.
#[test]
fn only_reads_are_free_of_approval() {
    for row in ROUTES {
        if row.gate == Gate::Free && row.method != Method::GET {
            assert!(
                READ_ONLY_POSTS.contains(&row.path),
                "{} {} changes something without approval",
                row.method,
                row.path
            );
        }
        if row.gate == Gate::Pending {
            assert_eq!(
                row.bound,
                Bound::Host,
                "{}: only host calls can wait",
                row.path
            );
        }
    }
}

/// Only a check that changes nothing is a POST a read token may use.
#[test]
fn every_write_route_needs_more_than_read() {
    for row in ROUTES {
        if row.method != Method::GET && row.min == Level::Read {
            assert!(
                READ_ONLY_POSTS.contains(&row.path),
                "{} {} is open to read tokens",
                row.method,
                row.path
            );
        }
    }
}

/// The table covers every documented route, so a new route cannot skip these checks.
#[tokio::test]
async fn the_table_lists_every_documented_route() {
    let f = Fleet::start().await;
    let doc: Value = f
        .http
        .get(format!("{}/api/v1/openapi.json", f.info.api_url))
        .send()
        .await
        .expect("reachable")
        .json()
        .await
        .expect("JSON");
    let table: BTreeSet<(String, String)> = ROUTES
        .iter()
        .map(|r| (r.method.as_str().to_lowercase(), r.template.to_owned()))
        .collect();
    let paths = doc["paths"].as_object().expect("paths");
    assert!(paths.len() > 10, "{doc}");
    for (path, ops) in paths {
        let route = path.strip_prefix("/api/v1").expect("under /api/v1");
        if route == "/openapi.json" {
            continue;
        }
        for method in ops.as_object().expect("operations").keys() {
            if method == "parameters" {
                continue;
            }
            assert!(
                table.contains(&(method.clone(), route.to_owned())),
                "{method} {path} is not in the auth table of tests/fleet/tokens.rs"
            );
        }
    }
}

/// Through `/rpc` and `/stream`, every method above a token's role is refused before any agent
/// sees it: a read token changes nothing there either.
#[tokio::test]
async fn methods_above_the_tokens_role_are_refused_by_rpc_and_stream() {
    let f = Fleet::start().await;
    let host = offline_host(&f, "rpc-target").await;
    let (read, _) = mint(&f, TokenSpec::new("reader", Level::Read)).await;
    let (execute, _) = mint(&f, TokenSpec::new("operator", Level::Execute)).await;
    let mut refused = 0;
    let mut offline = 0;
    for tomo_proto::methods::Spec {
        name: method,
        level,
        ..
    } in tomo_proto::methods::ALL
    {
        for (role, token) in [(Level::Read, &read), (Level::Execute, &execute)] {
            let body = json!({"method": method, "params": {"stream": "s1"}});
            for route in ["rpc", "stream"] {
                let (s, v) = f
                    .api_as(
                        token,
                        Method::POST,
                        &format!("/hosts/{host}/{route}"),
                        Some(body.clone()),
                    )
                    .await;
                if role < *level {
                    assert_eq!(
                        s,
                        StatusCode::FORBIDDEN,
                        "{method} via {route} as {role:?}: {v}"
                    );
                    assert_eq!(v["error"]["code"], "forbidden");
                    refused += 1;
                } else if !method.starts_with("stream.") {
                    // Allowed: on to the hub, which finds the host offline; or, for a method
                    // whose params type does not read `{"stream": "s1"}`, refused at the door
                    // as malformed (the agent's -32602). (`stream.*` is then refused for a
                    // stream this caller did not open.)
                    let malformed = if route == "rpc" {
                        s == StatusCode::OK && v["error"]["code"] == code::INVALID_PARAMS
                    } else {
                        s == StatusCode::BAD_REQUEST && v["error"]["code"] == "bad_request"
                    };
                    if s == StatusCode::SERVICE_UNAVAILABLE {
                        offline += 1;
                    } else {
                        assert!(malformed, "{method} via {route} as {role:?}: {s} {v}");
                    }
                }
            }
        }
    }
    assert!(refused > 40, "{refused}");
    // The methods without params (ping, info, metrics, lists …) read `{"stream": …}` as an
    // unknown field; those with only optional ones too: none reached the hub with them.
    assert_eq!(offline, 0, "a method took params it does not have");
}

/// Issue 14 (one door): `/rpc` forwarded a method the control plane does not know to the host,
/// with no role check, and for a token that requires approval made it a pending action, where
/// `/stream` answered it unknown. Deny by default: the control plane answers it itself,
/// JSON-RPC's "method not found", whatever the token or the host's state, and nothing reaches
/// the host or waits for a human.
#[tokio::test]
async fn an_unknown_method_is_refused_by_the_control_plane_on_rpc() {
    let f = Fleet::start().await;
    let host = offline_host(&f, "rpc-unknown").await;
    let (read, _) = mint(&f, TokenSpec::new("reader", Level::Read)).await;
    let mut asker = TokenSpec::new("asker", Level::Execute);
    asker.requires_approval = true;
    let (asker, _) = mint(&f, asker).await;
    for token in [&read, &asker] {
        let (s, v) = f
            .api_as(
                token,
                Method::POST,
                &format!("/hosts/{host}/rpc"),
                Some(json!({"method": "docker.containers.frobnicate", "params": {}})),
            )
            .await;
        // Not 503 (forwarded to the offline host), not 202 (pending).
        assert_eq!(s, StatusCode::OK, "{v}");
        assert_eq!(v["error"]["code"], -32601, "{v}");
    }
    // Issue 17: a mistyped method is answered with the nearest one, on `/rpc` as on `/stream`.
    for route in ["rpc", "stream"] {
        let (_, v) = f
            .api_as(
                &read,
                Method::POST,
                &format!("/hosts/{host}/{route}"),
                Some(json!({"method": "agent.pong", "params": {}})),
            )
            .await;
        let msg = v["error"]["message"].as_str().unwrap_or_default();
        assert!(msg.contains("did you mean agent.ping?"), "{route}: {v}");
    }
    let (s, pending) = f.api(Method::GET, "/approvals?status=all", None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(
        pending,
        json!([]),
        "an unknown method became a pending action"
    );
}

/// Review of issue 14's params stage: params are measured again once written back from their
/// type. `{"path": "a"}` given positionally as `["a"]` grows 2.4 times when written back; 100 000
/// of them fit the API (600 kB) but not the agent's 1 MiB frame, which would drop the session
/// and every call on it. Refused 413 before the host (an offline one here: not 503).
#[tokio::test]
async fn params_that_grow_past_the_agents_frame_when_written_back_are_refused() {
    let f = Fleet::start().await;
    let host = offline_host(&f, "grows").await;
    let volumes: Vec<Value> = (0..100_000).map(|_| json!(["a"])).collect();
    let body = json!({
        "method": "system.prepare_volumes",
        "params": {"volumes": volumes},
    });
    assert!(body.to_string().len() < 1 << 20);
    let (s, v) = f
        .api(Method::POST, &format!("/hosts/{host}/rpc"), Some(body))
        .await;
    assert_eq!(s, StatusCode::PAYLOAD_TOO_LARGE, "{v}");
    assert_eq!(v["error"]["code"], "too_large", "{v}");
}

/// Create, list, use, revoke through the API; the secret is shown once and stored nowhere.
#[tokio::test]
async fn tokens_are_created_listed_used_and_revoked() {
    let f = Fleet::start().await;
    let host = offline_host(&f, "tok-host").await;
    let (s, v) = f
        .api(
            Method::POST,
            "/tokens",
            Some(json!({"name": "ci", "role": "execute", "ttl_secs": 3600,
                        "scope": [host, "env=prod"], "requires_approval": true,
                        "tool_rate_per_min": 30})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let secret = v["secret"].as_str().expect("secret").to_owned();
    let id = v["id"].as_str().expect("id").to_owned();
    assert!(secret.starts_with("tomo_"));
    assert_eq!(v["role"], "execute");
    assert_eq!(v["status"], "active");
    assert_eq!(v["scope"], json!([host, "env=prod"]));
    assert_eq!(v["requires_approval"], true);
    assert_eq!(v["tool_rate_per_min"], 30);
    assert!(
        v["expires_at"].is_string() && v["last_used_at"].is_null(),
        "{v}"
    );

    // whoami: the caller's own record, never the secret or its hash.
    let (s, me) = f.api_as(&secret, Method::GET, "/whoami", None).await;
    assert_eq!(s, StatusCode::OK, "{me}");
    assert_eq!(me["id"], json!(id));
    assert!(
        me.get("secret").is_none() && me.get("token_hash").is_none(),
        "{me}"
    );
    assert!(
        me["last_used_at"].is_string(),
        "its use shows at once: {me}"
    );

    // Listed without the secret; the last use reaches the store when written.
    let (s, list) = f.api(Method::GET, "/tokens", None).await;
    assert_eq!(s, StatusCode::OK);
    let listed = list
        .as_array()
        .expect("array")
        .iter()
        .find(|t| t["id"] == json!(id))
        .expect("listed")
        .clone();
    assert!(listed.get("secret").is_none());
    assert!(listed["last_used_at"].is_string());
    f.state
        .last_use
        .flush(&*f.state.store)
        .await
        .expect("flush");
    assert!(
        f.state
            .store
            .token(&id)
            .await
            .expect("token")
            .last_used_at
            .is_some()
    );

    // Invalid specs are refused with what is wrong.
    for (body, says) in [
        (json!({"name": "bad name", "role": "read"}), "token name"),
        (json!({"name": "n", "role": "root"}), "role"),
        (
            json!({"name": "n", "role": "read", "scope": ["no-such-host"]}),
            "registered host",
        ),
        (
            json!({"name": "n", "role": "read", "scope": ["env="]}),
            "label value",
        ),
        (
            json!({"name": "n", "role": "read", "tool_rate_per_min": 0}),
            "tool rate",
        ),
        (
            json!({"name": "n", "role": "read", "ttl_secs": 0}),
            "lifetime",
        ),
        (json!({"name": "n", "role": "read", "owner": "me"}), "owner"),
    ] {
        let (s, v) = f.api(Method::POST, "/tokens", Some(body.clone())).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{body}: {v}");
        assert_eq!(v["error"]["code"], "bad_request");
        let msg = v["error"]["message"].as_str().unwrap_or_default();
        assert!(msg.contains(says), "{body}: {msg}");
    }

    // Revoked: refused from the next request on; revoking again keeps the first time.
    let (s, v) = f.api(Method::DELETE, &format!("/tokens/{id}"), None).await;
    assert_eq!(
        (s, &v["status"]),
        (StatusCode::OK, &json!("revoked")),
        "{v}"
    );
    let (s, _) = f.api_as(&secret, Method::GET, "/whoami", None).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    let (_, again) = f.api(Method::DELETE, &format!("/tokens/{id}"), None).await;
    assert_eq!(again["revoked_at"], v["revoked_at"]);
    let (s, v) = f.api(Method::DELETE, "/tokens/nope", None).await;
    assert_eq!(
        (s, &v["error"]["code"]),
        (StatusCode::NOT_FOUND, &json!("not_found"))
    );

    // Audited (creation and revocation, by id and name), and the secret is in no audit record
    // and not in the database.
    let deadline = tokio::time::Instant::now() + WAIT;
    let records = loop {
        let (_, v) = f.api(Method::GET, "/audit?limit=1000", None).await;
        let text = v.to_string();
        if text.contains("token.revoke") || tokio::time::Instant::now() > deadline {
            break v;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let records = records.as_array().expect("records").clone();
    let has = |method: &str| {
        records.iter().any(|r| {
            r["method"] == method && r["params"]["id"] == json!(id) && r["principal"] == "test"
        })
    };
    assert!(has("token.create") && has("token.revoke"), "{records:?}");
    assert!(!Value::Array(records).to_string().contains(&secret));
    let db = std::fs::read(f.dir.join("server/tomo.db")).expect("db");
    let wal = std::fs::read(f.dir.join("server/tomo.db-wal")).unwrap_or_default();
    let s = secret.as_bytes();
    assert!(!db.windows(s.len()).any(|w| w == s) && !wal.windows(s.len()).any(|w| w == s));
}

/// A label scope follows the labels the operators set.
#[tokio::test]
async fn label_scopes_follow_host_labels() {
    let f = Fleet::start().await;
    let host = offline_host(&f, "labelled").await;
    let mut spec = TokenSpec::new("prod-reader", Level::Read);
    spec.scope = vec!["env=prod".into()];
    let (token, _) = mint(&f, spec).await;
    let visible = |v: &Value| v.as_array().map(Vec::len).unwrap_or(usize::MAX);

    let (_, v) = f.api_as(&token, Method::GET, "/hosts", None).await;
    assert_eq!(visible(&v), 0, "{v}");
    let (s, v) = f.api_as(&token, Method::GET, "/hosts/labelled", None).await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{v}");

    let (s, v) = f
        .api(
            Method::PUT,
            "/hosts/labelled/labels",
            Some(json!({"env": "prod", "team": "web"})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["labels"], json!({"env": "prod", "team": "web"}));
    let (_, v) = f.api_as(&token, Method::GET, "/hosts", None).await;
    assert_eq!(visible(&v), 1, "{v}");
    assert_eq!(v[0]["labels"]["env"], "prod");
    let (s, v) = f.api_as(&token, Method::GET, "/hosts/labelled", None).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    // The token cannot relabel anything, even its own host.
    let (s, _) = f
        .api_as(
            &token,
            Method::PUT,
            "/hosts/labelled/labels",
            Some(json!({})),
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);

    for bad in [
        json!({"env": 1}),
        json!(["env=prod"]),
        json!({"bad key": "x"}),
    ] {
        let (s, v) = f
            .api(Method::PUT, "/hosts/labelled/labels", Some(bad.clone()))
            .await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{bad}: {v}");
    }
    let (s, _) = f
        .api(
            Method::PUT,
            &format!("/hosts/{host}/labels"),
            Some(json!({})),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    let (s, _) = f
        .api_as(&token, Method::GET, &format!("/hosts/{host}"), None)
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND, "unlabelled: out of scope again");
}

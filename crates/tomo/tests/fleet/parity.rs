//! One door (issue 14): every surface that calls a host admits the call through the same
//! pipeline (`tomo_server::core::call`), so the same case gets the same answer everywhere. The
//! table below has one row per case and one column per surface — a REST host route,
//! `POST /hosts/{host}/rpc`, `POST /hosts/{host}/stream`, `POST /fleet/rpc` and an MCP tool —
//! and each cell is the HTTP status that surface answers with; the error code must be the row's
//! on every surface ([`Cell`] says where a surface cannot make the call at all).
//!
//! Every case refuses (or parks) the call before any host: the target host is offline, so a
//! call that got through would answer `host_offline` instead, and the last row checks that.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tomo_proto::methods::Level;
use tomo_proto::rpc::code;
use tomo_server::auth::TokenSpec;

use crate::support::{Fleet, offline_host};

/// The surfaces, in the table's column order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Surface {
    Rest,
    Rpc,
    Stream,
    Fleet,
    Mcp,
}

const SURFACES: [Surface; 5] = [
    Surface::Rest,
    Surface::Rpc,
    Surface::Stream,
    Surface::Fleet,
    Surface::Mcp,
];

/// Which token a case calls with.
#[derive(Debug, Clone, Copy)]
enum Who {
    Reader,
    /// Execute role, limited to the other host.
    Scoped,
    /// Execute role, requires approval.
    Asker,
    Admin,
}

/// What a case calls: one agent method (with its REST route and MCP tool, where there are).
struct Call {
    method: &'static str,
    params: Value,
    /// REST route on the target host (`{host}` and `{c}` filled in): HTTP method and path.
    rest: Option<(Method, &'static str)>,
    tool: Option<&'static str>,
}

struct Case {
    name: &'static str,
    who: Who,
    call: Call,
    /// The error code on every surface (`pending` for a pending action).
    code: &'static str,
    /// Per surface, in [`SURFACES`] order.
    status: [Cell; 5],
}

/// What one surface answers to one case.
#[derive(Debug, Clone, Copy)]
enum Cell {
    /// This HTTP status, with the row's code.
    Same(u16),
    /// The surface cannot make this call: it answers this status and code, before the row's
    /// stage (a fan-out of a command is refused before it could wait for approval).
    Before(u16, &'static str),
    /// Not expressible on this surface (no REST route or MCP tool sends an unknown method).
    No,
}
use Cell::{Before, No, Same};

const CONTAINER: &str = "parity-web";

fn restart() -> Call {
    Call {
        method: "docker.containers.restart",
        params: json!({"container": CONTAINER}),
        rest: Some((Method::POST, "/hosts/{host}/containers/{c}/restart")),
        tool: Some("restart_container"),
    }
}

fn list() -> Call {
    Call {
        method: "docker.containers.list",
        params: json!({}),
        rest: Some((Method::GET, "/hosts/{host}/containers")),
        tool: Some("list_containers"),
    }
}

fn cases() -> Vec<Case> {
    vec![
        Case {
            name: "unknown method",
            who: Who::Admin,
            call: Call {
                method: "docker.containers.frobnicate",
                params: json!({}),
                rest: None,
                tool: None,
            },
            code: "unknown_method",
            // `/rpc` answers a JSON-RPC error, as an agent answers a method it does not have.
            status: [No, Same(200), Same(404), Same(404), No],
        },
        Case {
            name: "role too low",
            who: Who::Reader,
            call: restart(),
            code: "forbidden",
            status: [Same(403), Same(403), Same(403), Same(403), Same(200)],
        },
        Case {
            name: "out of scope",
            who: Who::Scoped,
            call: list(),
            code: "not_found",
            status: [Same(404), Same(404), Same(404), Same(404), Same(200)],
        },
        Case {
            name: "approval required",
            who: Who::Asker,
            call: restart(),
            code: "pending",
            // A fan-out only reads: refused before it could become a pending action.
            status: [
                Same(202),
                Same(202),
                Same(202),
                Before(400, "bad_request"),
                Same(200),
            ],
        },
        Case {
            // Params the method's type does not read are refused at the door, with the
            // agent's own -32602: before, they became a pending action that a human could
            // approve only for the host to refuse it, and reached the host otherwise.
            name: "malformed params",
            who: Who::Asker,
            call: Call {
                params: json!({"container": CONTAINER, "timeout": "soon"}),
                ..restart()
            },
            code: "bad_request",
            // `/rpc` answers a JSON-RPC error (-32602), as the agent answers such params. MCP
            // checks a tool's arguments against the tool's own input schema first (its own
            // envelope), which refuses them before the pipeline does.
            status: [
                Same(400),
                Same(200),
                Same(400),
                Same(400),
                Before(200, "bad_arguments"),
            ],
        },
        Case {
            name: "host offline",
            who: Who::Admin,
            call: list(),
            code: "host_offline",
            // A fan-out answers every host, this one as failed.
            status: [Same(503), Same(503), Same(503), Same(200), Same(200)],
        },
    ]
}

/// The error code of a JSON-RPC error, as the API names it.
fn rpc_code(e: &Value) -> String {
    if let Some(c) = e["data"]["code"].as_str() {
        return c.to_owned();
    }
    match e["code"].as_i64() {
        Some(code::HOST_OFFLINE) => "host_offline".into(),
        Some(code::METHOD_NOT_FOUND) => "unknown_method".into(),
        Some(code::INVALID_PARAMS) => "bad_request".into(),
        other => format!("rpc {other:?}"),
    }
}

/// The code of an HTTP answer: `pending` for a pending action, else the error's code.
fn http_code(v: &Value) -> String {
    if v["pending_action"]["status"] == "pending" {
        return "pending".into();
    }
    if let Some(c) = v["error"]["code"].as_str() {
        return c.to_owned();
    }
    rpc_code(&v["error"])
}

async fn send(
    f: &Fleet,
    token: &str,
    surface: Surface,
    host: &str,
    call: &Call,
) -> Option<(u16, String)> {
    let body = |extra: Value| {
        let mut b = json!({"method": call.method, "params": call.params});
        if let (Some(b), Some(e)) = (b.as_object_mut(), extra.as_object()) {
            b.extend(e.clone());
        }
        b
    };
    let (s, v) = match surface {
        Surface::Rest => {
            let (m, path) = call.rest.clone()?;
            let path = path.replace("{host}", host).replace("{c}", CONTAINER);
            // The body: the params but the container, which is in the path.
            let body = (m == Method::POST).then(|| {
                let mut b = call.params.clone();
                b.as_object_mut().map(|o| o.remove("container"));
                b
            });
            f.api_as(token, m, &path, body).await
        }
        Surface::Rpc => {
            f.api_as(
                token,
                Method::POST,
                &format!("/hosts/{host}/rpc"),
                Some(body(json!({}))),
            )
            .await
        }
        Surface::Stream => {
            let path = format!("/hosts/{host}/stream");
            f.api_as(token, Method::POST, &path, Some(body(json!({}))))
                .await
        }
        Surface::Fleet => {
            let b = body(json!({"hosts": [host]}));
            let (s, v) = f.api_as(token, Method::POST, "/fleet/rpc", Some(b)).await;
            if s == StatusCode::OK {
                assert_eq!(v["hosts"], 1, "{v}");
                let code = rpc_code(&v["results"][0]["response"]["error"]);
                return Some((200, code));
            }
            (s, v)
        }
        Surface::Mcp => {
            let tool = call.tool?;
            let mut args = call.params.clone();
            args["host"] = json!(host);
            let r = crate::mcp_approvals::tool_call(f, token, tool, args).await;
            let code = if r["pending_action"]["status"] == "pending" {
                "pending".to_owned()
            } else {
                r["error"]["code"].as_str().unwrap_or("").to_owned()
            };
            return Some((200, code));
        }
    };
    let code = if s == StatusCode::OK && surface == Surface::Rpc {
        rpc_code(&v["error"])
    } else {
        http_code(&v)
    };
    Some((s.as_u16(), code))
}

async fn mint(f: &Fleet, spec: TokenSpec) -> String {
    let (secret, _) = tomo_server::auth::mint(&*f.state.store, &spec)
        .await
        .expect("token");
    secret
}

#[tokio::test]
async fn every_surface_answers_the_same_case_the_same_way() {
    let f = Fleet::start().await;
    let target = offline_host(&f, "parity-target").await;
    let other = offline_host(&f, "parity-other").await;
    let roomy = |mut s: TokenSpec| {
        s.tool_rate_per_min = Some(10_000);
        s
    };
    let reader = mint(&f, roomy(TokenSpec::new("parity-reader", Level::Read))).await;
    let mut scoped = roomy(TokenSpec::new("parity-scoped", Level::Execute));
    scoped.scope = vec![other.clone()];
    let scoped = mint(&f, scoped).await;
    let mut asker = roomy(TokenSpec::new("parity-asker", Level::Execute));
    asker.requires_approval = true;
    let asker = mint(&f, asker).await;
    let admin = mint(&f, roomy(TokenSpec::new("parity-admin", Level::Admin))).await;

    let mut table = String::new();
    let mut wrong = Vec::new();
    let mut pending_expected = 0;
    for case in cases() {
        let token = match case.who {
            Who::Reader => &reader,
            Who::Scoped => &scoped,
            Who::Asker => &asker,
            Who::Admin => &admin,
        };
        table.push_str(&format!("{:<18}", case.name));
        for (surface, want) in SURFACES.iter().zip(case.status) {
            let got = send(&f, token, *surface, &target, &case.call).await;
            table.push_str(&format!(" | {surface:?} {got:?}"));
            match (want, &got) {
                (No, None) => {}
                (Same(status), Some((s, c))) if *s == status && c == case.code => {
                    if case.code == "pending" {
                        pending_expected += 1;
                    }
                }
                (Before(status, code), Some((s, c))) if *s == status && c == code => {}
                _ => wrong.push(format!(
                    "{} on {surface:?}: want {want:?} {:?}, got {got:?}",
                    case.name, case.code
                )),
            }
        }
        table.push('\n');
    }
    assert!(wrong.is_empty(), "{}\n{table}", wrong.join("\n"));
    // Each pending answer is one action, and nothing else became one (a refused call never
    // waits for a human).
    let (s, actions) = f.api(Method::GET, "/approvals?status=all", None).await;
    assert_eq!(s, StatusCode::OK, "{actions}");
    let actions = actions.as_array().cloned().unwrap_or_default();
    assert_eq!(actions.len(), pending_expected, "{actions:?}\n{table}");
    assert_eq!(pending_expected, 4, "{table}");
    for a in &actions {
        assert_eq!(a["method"], "docker.containers.restart", "{a}");
        assert_eq!(a["host_id"], json!(target), "{a}");
    }
}

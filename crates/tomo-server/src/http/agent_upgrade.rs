//! `GET /agent/ws`: the HTTP side of an agent's connection. It checks the WebSocket upgrade,
//! moves the connection from its source's share to the agent handshake budget, answers 101, and
//! hands the upgraded connection to the session (`agents::agent_ws::run_session`).

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::{IntoResponse as _, Response as HttpResponse};
use http::{HeaderValue, StatusCode, header};
use hyper_util::rt::TokioIo;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tomo_proto::handshake::ChannelBinding;

use crate::AppState;
use crate::agents::agent_ws::run_session;

/// WebSocket limits on the control plane's side: agent responses may be large (capped by the
/// agent at 10 MiB), everything else is refused. The read buffer is 1 KiB per session instead of
/// tungstenite's 128 KiB (zero-filled, so resident: 1.3 GB for 10 000 agents); most frames are a
/// few hundred bytes, and a larger one is still read whole, 1 KiB at a time (it grows the buffer
/// to its size).
fn ws_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(1024)
        .max_message_size(Some(tomo_proto::MAX_AGENT_MESSAGE_BYTES))
        .max_frame_size(Some(tomo_proto::MAX_AGENT_MESSAGE_BYTES))
}

/// `GET /agent/ws`: checks the upgrade request, answers 101, and runs the session on the
/// upgraded connection.
pub async fn upgrade(State(state): State<Arc<AppState>>, mut req: Request) -> HttpResponse {
    let h = req.headers();
    let has = |name: header::HeaderName, want: &str| {
        h.get_all(name).iter().any(|v| {
            v.to_str()
                .is_ok_and(|v| v.split(',').any(|p| p.trim().eq_ignore_ascii_case(want)))
        })
    };
    let key = h.get(header::SEC_WEBSOCKET_KEY).cloned();
    let ok = has(header::UPGRADE, "websocket")
        && has(header::CONNECTION, "upgrade")
        && has(header::SEC_WEBSOCKET_VERSION, "13");
    let (Some(key), true) = (key, ok) else {
        return (
            StatusCode::BAD_REQUEST,
            "expected a WebSocket upgrade (version 13)",
        )
            .into_response();
    };
    let peer = req
        .extensions()
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map(|c| c.0.ip());
    // The connection leaves its source's connection share for its agent handshake share (a
    // budget of its own, issue 12.5); it counts until the welcome (`ReadBudget::lift`).
    let slot = req
        .extensions()
        .get::<crate::admission::Unauthenticated>()
        .cloned();
    if slot.as_ref().is_some_and(|s| !s.to_agent_handshake()) {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "too many agent handshakes from this address; try again later",
        )
            .into_response();
    }
    // Every handshake signature names the TLS connection it travels on (issue 12.4): without a
    // binding (not TLS 1.3) there is nothing an agent could sign.
    let Some(binding) = req.extensions().get::<ChannelBinding>().copied() else {
        return (
            StatusCode::BAD_REQUEST,
            "agents must connect over TLS 1.3 straight to the control plane (a TLS-terminating proxy cannot carry the session; pass TLS through instead)",
        )
            .into_response();
    };
    let on_upgrade = hyper::upgrade::on(&mut req);
    let accept = tungstenite::handshake::derive_accept_key(key.as_bytes());
    let task_state = Arc::clone(&state);
    state.tracker.spawn(async move {
        match on_upgrade.await {
            Ok(upgraded) => {
                let budget =
                    crate::budget::ReadBudget::new(crate::budget::HANDSHAKE_BUDGET).releasing(slot);
                let io = crate::budget::Budgeted::new(TokioIo::new(upgraded), budget.clone());
                let ws =
                    WebSocketStream::from_raw_socket(io, Role::Server, Some(ws_config())).await;
                run_session(ws, task_state, peer, Some(budget), binding).await;
            }
            Err(e) => tracing::debug!(error = %e, "WebSocket upgrade failed"),
        }
    });
    let mut resp = HttpResponse::new(Body::empty());
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let hs = resp.headers_mut();
    hs.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    hs.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    if let Ok(v) = HeaderValue::from_str(&accept) {
        hs.insert(header::SEC_WEBSOCKET_ACCEPT, v);
    }
    resp
}

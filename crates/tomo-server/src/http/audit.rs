//! The operator API's side of the audit trail (the trail itself is `crate::audit`): a record of
//! every operator API request, and `GET /api/v1/audit` (admin only; `tomo audit [--host H] [-f]`).
//!
//! Operator requests are recorded by [`record`], the outermost layer of `/api/v1`, so that it
//! sees every answer, refusals of the token check included: principal (token name and role, from
//! [`capture_principal`] just inside the token check), HTTP method and route template, path and
//! query (values of secret-looking keys hidden; bodies never), status, the client's address,
//! duration (until the answer's headers), and a trace id also returned in the `x-tomo-trace-id`
//! header. 401, 403 and 429 are `denied`. Unauthenticated attempts (no valid token: 401, or 429
//! once the token check throttles the source) are recorded at most [`UNAUTHENTICATED_PER_MINUTE`]
//! a minute per source address, the next recorded one saying how many were left out, so that a
//! flood cannot fill the store.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{ConnectInfo, MatchedPath, OriginalUri, Query, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response as HttpResponse};
use axum::{Extension, Json};
use http::{HeaderValue, StatusCode};
use serde_json::{Map, Value, json};
use tokio::time::Instant;
use tomo_proto::audit::AuditRecord;
use tomo_proto::methods::Level;

use crate::AppState;
use crate::audit::{
    AuditView, MAX_SOURCES, TRACE_HEADER, TraceId, UNAUTHENTICATED_PER_MINUTE, cut, ingest, view,
};
use crate::http::api::{ApiError, Principal};
use crate::store::StoreError;

/// The middleware state of [`record`].
#[derive(Debug, Clone)]
pub struct Recorder {
    state: Arc<AppState>,
    unauthenticated: Arc<Mutex<Allowance>>,
}

impl Recorder {
    pub fn new(state: Arc<AppState>) -> Self {
        Self {
            state,
            unauthenticated: Arc::new(Mutex::new(Allowance::new(
                UNAUTHENTICATED_PER_MINUTE,
                Duration::from_secs(60),
            ))),
        }
    }
}

/// Records every API request and its answer (see the module doc). Outermost layer of `/api/v1`.
pub async fn record(State(rec): State<Recorder>, mut req: Request, next: Next) -> HttpResponse {
    let started = Instant::now();
    let at_ms = tomo_common::now_ms();
    let trace_id = tomo_common::hex(&tomo_common::random_bytes::<8>());
    req.extensions_mut().insert(TraceId(trace_id.clone()));
    let template = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned());
    let http_method = req.method().clone();
    // The URI as the client sent it (a nested router sees it without its prefix).
    let uri = req
        .extensions()
        .get::<OriginalUri>()
        .map_or_else(|| req.uri().clone(), |u| u.0.clone());
    let path = cut(uri.path());
    let query = uri.query().map(query_view);
    let had_token = req.headers().contains_key(http::header::AUTHORIZATION);
    let source = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip());

    let mut resp = next.run(req).await;

    if let Ok(v) = HeaderValue::from_str(&trace_id) {
        resp.headers_mut().insert(TRACE_HEADER, v);
    }
    let status = resp.status();
    let principal = resp.extensions_mut().remove::<Principal>();
    let mut params = Map::new();
    params.insert("path".into(), json!(path));
    if let Some(q) = query {
        params.insert("query".into(), Value::Object(q));
    }
    params.insert("status".into(), json!(status.as_u16()));
    if let Some(ip) = source {
        params.insert("source".into(), json!(ip.to_string()));
    }
    if principal.is_none() {
        let allowed = rec
            .unauthenticated
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take(source, Instant::now());
        match allowed {
            Some(0) => {}
            Some(left_out) => {
                params.insert("suppressed".into(), json!(left_out));
            }
            None => return resp,
        }
    }
    let (decision, reason) = match status {
        StatusCode::UNAUTHORIZED if had_token => ("denied", Some("invalid_token")),
        StatusCode::UNAUTHORIZED => ("denied", Some("missing_token")),
        StatusCode::FORBIDDEN => ("denied", Some("forbidden")),
        StatusCode::TOO_MANY_REQUESTS if principal.is_none() => ("denied", Some("throttled")),
        StatusCode::TOO_MANY_REQUESTS => ("denied", Some("rate_limited")),
        _ => ("allowed", None),
    };
    let record = AuditRecord {
        at_ms,
        trace_id: Some(trace_id),
        principal: principal.as_ref().map(|p| p.token.name.clone()),
        role: principal.as_ref().map(|p| p.token.role),
        method: format!(
            "{http_method} {}",
            template.as_deref().unwrap_or("(no route)")
        ),
        params: Some(Value::Object(params)),
        decision: decision.into(),
        reason: reason.map(str::to_owned),
        outcome: if status.is_client_error() || status.is_server_error() {
            format!("http_{}", status.as_u16())
        } else {
            "ok".into()
        },
        error: None,
        duration_ms: started.elapsed().as_millis() as u64,
        admission_id: None,
    };
    ingest(&rec.state, None, &record).await;
    resp
}

/// Hands the principal the token check found to [`record`], through the response (the request
/// it was put in does not come back out). Layered just inside the token check.
pub async fn capture_principal(req: Request, next: Next) -> HttpResponse {
    let principal = req.extensions().get::<Principal>().cloned();
    let mut resp = next.run(req).await;
    if let Some(p) = principal {
        resp.extensions_mut().insert(p);
    }
    resp
}

/// A query string as recorded: values of secret-looking keys hidden, long values cut.
fn query_view(q: &str) -> Map<String, Value> {
    q.split('&')
        .filter(|p| !p.is_empty())
        .take(32)
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let v = if looks_secret(k) {
                "***".into()
            } else {
                cut(v)
            };
            (cut(k), Value::String(v))
        })
        .collect()
}

/// Whether a query key may carry a secret. Broader than the agent's rule (`tomo_agent::redact`),
/// which this crate does not depend on: any of these substrings, in any case.
fn looks_secret(key: &str) -> bool {
    let k = key.to_ascii_uppercase();
    [
        "PASS",
        "SECRET",
        "TOKEN",
        "PRIVATE",
        "CREDENTIAL",
        "AUTH",
        "CERT",
        "KEY",
        "SALT",
        "DSN",
        "SIG",
        "CODE",
    ]
    .iter()
    .any(|m| k.contains(m))
}

/// Fixed-window allowance per source: at most `per_window` events in each window.
#[derive(Debug)]
struct Allowance {
    per_window: u32,
    window: Duration,
    /// `None`: the shared allowance of sources beyond [`MAX_SOURCES`] (and of unknown ones).
    sources: HashMap<Option<IpAddr>, Window>,
}

#[derive(Debug, Clone, Copy)]
struct Window {
    start: Instant,
    used: u32,
    /// Events left out since the last one let through.
    left_out: u64,
}

impl Allowance {
    fn new(per_window: u32, window: Duration) -> Self {
        Self {
            per_window,
            window,
            sources: HashMap::new(),
        }
    }

    /// `Some(n)`: record this event, `n` having been left out before it; `None`: leave it out.
    fn take(&mut self, source: Option<IpAddr>, now: Instant) -> Option<u64> {
        let window = self.window;
        if !self.sources.contains_key(&source) && self.sources.len() >= MAX_SOURCES {
            self.sources
                .retain(|_, w| now.duration_since(w.start) < window || w.left_out > 0);
        }
        let key = if self.sources.contains_key(&source) || self.sources.len() < MAX_SOURCES {
            source
        } else {
            None
        };
        let w = self.sources.entry(key).or_insert(Window {
            start: now,
            used: 0,
            left_out: 0,
        });
        if now.duration_since(w.start) >= window {
            w.start = now;
            w.used = 0;
        }
        if w.used >= self.per_window {
            w.left_out += 1;
            return None;
        }
        w.used += 1;
        Some(std::mem::take(&mut w.left_out))
    }
}

/// The audit trail.
///
/// Stored records, oldest first (all hosts and the control plane's own, or one host's); with
/// `follow`, newline-delimited JSON that goes on with live records. Admin, without a host scope.
#[utoipa::path(
    get,
    path = "/audit",
    tag = "audit",
    operation_id = "audit",
    params(
        ("host" = Option<String>, Query, description = "Only this host's records (id, hostname or id prefix; removed hosts too)."),
        ("limit" = Option<u32>, Query, minimum = 1, maximum = 10000, description = "1–10000; 100 by default."),
        ("after" = Option<i64>, Query, description = "Only records after this record id."),
        ("follow" = Option<bool>, Query, description = "Go on with live records, as NDJSON."),
        ("decision" = Option<String>, Query, description = "Only records with this decision: `allowed` or `denied`."),
    ),
    responses(
        (status = 200, description = "The records; with `follow`, NDJSON (a slow reader is told `{\"lagged\": n}`).", content(([AuditView] = "application/json"), (Object = "application/x-ndjson"))),
        (status = 400, description = "`bad_request`: `limit`, `after`, `decision` or `follow` (`true` or `false`) is not valid.", body = crate::http::api::ErrorBody),
        crate::http::openapi::HostErrors,
    )
)]
pub async fn list(
    State(state): State<Arc<AppState>>,
    Extension(who): Extension<Principal>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<HttpResponse, ApiError> {
    who.require(Level::Admin)?;
    who.require_unscoped()?;
    let host = match q.get("host") {
        Some(key) => Some(host_id(&state, &who, key).await?),
        None => None,
    };
    let (limit, after) = crate::http::api::query_page(&q, "a record id")?;
    let decision = match q.get("decision").map(String::as_str) {
        None => None,
        Some(d @ ("allowed" | "denied")) => Some(d.to_owned()),
        Some(_) => return Err(ApiError::bad_request("decision must be allowed or denied")),
    };
    let follow = crate::http::api::query_bool(&q, "follow")?;
    // Subscribe before reading the backlog, so nothing falls between the two.
    let mut live = state.audit.subscribe();
    let backlog = state
        .store
        .audit(host.as_deref(), decision.as_deref(), after, limit)
        .await?;
    let views: Vec<Value> = backlog.iter().map(view).collect();
    if !follow {
        return Ok(Json(Value::Array(views)).into_response());
    }
    let mut last = backlog.last().map(|r| r.id).or(after).unwrap_or(0);
    let shutdown = state.shutdown.clone();
    let lines = crate::http::api_host::async_stream(move |tx| async move {
        for v in views {
            if tx.send(crate::http::api_host::line(&v)).await.is_err() {
                return;
            }
        }
        loop {
            let next = tokio::select! {
                r = live.recv() => r,
                _ = shutdown.cancelled() => {
                    let _ = tx.send(crate::http::api_host::line(&crate::http::api_host::shutdown_end())).await;
                    return;
                }
            };
            match next {
                Ok(r)
                    if r.id > last
                        && (host.is_none() || r.host_id == host)
                        && (decision.is_none()
                            || r.view["decision"].as_str() == decision.as_deref()) =>
                {
                    last = r.id;
                    if tx.send(crate::http::api_host::line(&r.view)).await.is_err() {
                        return;
                    }
                }
                Ok(_) => {}
                Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                    // A slow reader skips records instead of holding memory; it is told so.
                    if tx
                        .send(crate::http::api_host::line(&json!({"lagged": n})))
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
            }
        }
    });
    Ok((
        [(http::header::CONTENT_TYPE, "application/x-ndjson")],
        Body::from_stream(lines),
    )
        .into_response())
}

/// A host's id from its id (removed hosts too: their records stay readable), hostname or
/// unique id prefix.
async fn host_id(state: &AppState, who: &Principal, key: &str) -> Result<String, ApiError> {
    match state.store.host(key).await {
        Ok(h) => Ok(h.id),
        Err(StoreError::NotFound) => Ok(crate::http::api::resolve(state, who, key).await?.id),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unauthenticated_allowance_per_source_and_minute() {
        let t0 = Instant::now();
        let mut a = Allowance::new(3, Duration::from_secs(60));
        let one = Some(IpAddr::from([10, 0, 0, 1]));
        let two = Some(IpAddr::from([10, 0, 0, 2]));
        let got: Vec<_> = (0..5).map(|_| a.take(one, t0)).collect();
        assert_eq!(got, vec![Some(0), Some(0), Some(0), None, None]);
        // Another source has its own allowance.
        assert_eq!(a.take(two, t0), Some(0));
        // Next minute: allowed again, and told how many were left out.
        let t1 = t0 + Duration::from_secs(60);
        assert_eq!(a.take(one, t1), Some(2));
        assert_eq!(a.take(one, t1), Some(0));
    }

    #[test]
    fn sources_beyond_the_table_share_one_allowance() {
        let t0 = Instant::now();
        let mut a = Allowance::new(1, Duration::from_secs(60));
        for i in 0..MAX_SOURCES as u32 {
            assert_eq!(a.take(Some(IpAddr::from(i.to_be_bytes())), t0), Some(0));
        }
        let late = |n: u8| Some(IpAddr::from([255, 255, 255, n]));
        assert_eq!(a.take(late(1), t0), Some(0));
        assert_eq!(a.take(late(2), t0), None, "shares the overflow allowance");
        assert!(a.sources.len() <= MAX_SOURCES + 1);
        // Once their windows are over, old sources make room.
        let t1 = t0 + Duration::from_secs(61);
        assert_eq!(a.take(late(3), t1), Some(0));
    }

    #[test]
    fn query_values_of_secret_keys_are_hidden() {
        let q = query_view("host=web&access_token=abc&limit=5&apiKey=k&flag");
        assert_eq!(q["host"], "web");
        assert_eq!(q["limit"], "5");
        assert_eq!(q["access_token"], "***");
        assert_eq!(q["apiKey"], "***");
        assert_eq!(q["flag"], "");
    }
}

//! One connection to the control plane: dial, handshake, then serve JSON-RPC until the connection
//! dies, the control plane closes it, or the agent shuts down.
//!
//! The transport comes from a [`Dialer`] so that the same session code runs over TLS in production
//! and over in-memory pipes in the paused-clock tests of heartbeats and backoff.

use std::collections::HashMap;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{FutureExt as _, SinkExt as _, StreamExt as _};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;
use tokio::task::AbortHandle;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::{
    CloseFrame, WebSocketConfig, frame::coding::CloseCode,
};
use tokio_tungstenite::tungstenite::{self, Message as WsMessage};
use tokio_util::sync::CancellationToken;
use tomo_proto::audit::AuditRecord;
use tomo_proto::handshake::{ChannelBinding, Handshake, RefusalReason};
use tomo_proto::methods::{HEALTH_STATUS, HealthStatus, METRICS_UPDATE};
use tomo_proto::rpc::{self, Frame, Id, Message, Response, RpcError};

use crate::Shared;
use crate::config::Intervals;
use crate::dispatch::{Ctx, Dispatcher};
use crate::idempotency::Claim;
use crate::stream::{Outgoing, Streams};

/// A byte stream the session can run over.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// A WebSocket over any [`Io`].
pub type Ws = WebSocketStream<Box<dyn Io>>;

type DialFuture<'a> = Pin<Box<dyn Future<Output = Result<Dialed, SessionError>> + Send + 'a>>;

/// An open byte stream and the TLS channel binding of the connection it runs on (RFC 9266
/// `tls-exporter`), which every handshake signature names.
pub struct Dialed {
    pub io: Box<dyn Io>,
    pub binding: ChannelBinding,
}

impl std::fmt::Debug for Dialed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dialed").finish_non_exhaustive()
    }
}

/// Opens the byte stream to the control plane.
pub trait Dialer: Send + Sync {
    fn dial<'a>(&'a self, url: &'a str) -> DialFuture<'a>;
}

/// Why a connection attempt or a session failed.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("cannot reach {url}: {source}")]
    Connect { url: String, source: std::io::Error },
    #[error("TLS handshake with {url} failed: {source}")]
    Tls { url: String, source: std::io::Error },
    #[error("WebSocket: {0}")]
    WebSocket(#[from] tungstenite::Error),
    #[error("protocol violation by the control plane: {0}")]
    Protocol(String),
    #[error("the control plane refused the agent ({reason}): {message}")]
    Refused {
        reason: RefusalReason,
        message: String,
    },
    #[error("no answer from the control plane within {0:?}")]
    Timeout(Duration),
}

impl SessionError {
    /// Whether the TLS handshake failed on the control plane's certificate (unknown issuer,
    /// wrong name, expired): found by the `rustls::Error` in the chain, not by text.
    pub fn is_certificate_error(&self) -> bool {
        let Self::Tls { source, .. } = self else {
            return false;
        };
        source
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
            .is_some_and(|e| matches!(e, rustls::Error::InvalidCertificate(_)))
    }
}

/// Dials `wss://` URLs over TCP and rustls.
pub struct TlsDialer {
    connector: tokio_rustls::TlsConnector,
    insecure_dev: bool,
}

impl std::fmt::Debug for TlsDialer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsDialer")
            .field("insecure_dev", &self.insecure_dev)
            .finish_non_exhaustive()
    }
}

impl TlsDialer {
    pub fn new(config: rustls::ClientConfig, insecure_dev: bool) -> Self {
        Self {
            connector: tokio_rustls::TlsConnector::from(Arc::new(config)),
            insecure_dev,
        }
    }
}

impl Dialer for TlsDialer {
    fn dial<'a>(&'a self, url: &'a str) -> DialFuture<'a> {
        Box::pin(async move {
            let uri: tungstenite::http::Uri = url
                .parse()
                .map_err(|_| SessionError::Protocol(format!("bad URL {url}")))?;
            let host = uri
                .host()
                .unwrap_or_default()
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_owned();
            let port = uri.port_u16().unwrap_or(443);
            if self.insecure_dev {
                tracing::warn!(%url, "TOMO_DEV=1: TLS certificate verification is OFF for this connection; pin the control plane's CA with --ca-file instead");
            }
            let tcp = tokio::net::TcpStream::connect((host.as_str(), port))
                .await
                .map_err(|source| SessionError::Connect {
                    url: url.into(),
                    source,
                })?;
            let _ = tcp.set_nodelay(true);
            let name = rustls::pki_types::ServerName::try_from(host)
                .map_err(|_| SessionError::Protocol(format!("bad host in {url}")))?;
            let tls =
                self.connector
                    .connect(name, tcp)
                    .await
                    .map_err(|source| SessionError::Tls {
                        url: url.into(),
                        source,
                    })?;
            // TLS 1.3 only: its exporter is a sound channel binding (TLS 1.2's is not, without
            // the extended master secret).
            let binding = tomo_common::tls::channel_binding(tls.get_ref().1).ok_or_else(|| {
                SessionError::Protocol(format!(
                    "{url} did not negotiate TLS 1.3; agents need TLS 1.3 to bind their session to the connection"
                ))
            })?;
            Ok(Dialed {
                io: Box::new(tls),
                binding,
            })
        })
    }
}

/// The WebSocket limits of the agent's side. Requests are small: a 4 KiB read buffer (instead of
/// tungstenite's 128 KiB, which it zero-fills, so all of it is resident) is enough; a larger
/// message is still read whole, 4 KiB at a time.
pub fn ws_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(4 * 1024)
        .max_message_size(Some(tomo_proto::MAX_SERVER_MESSAGE_BYTES))
        .max_frame_size(Some(tomo_proto::MAX_SERVER_MESSAGE_BYTES))
}

/// What the control plane answered a successful handshake with. The welcome's signature is
/// checked by the caller, which knows which command key to expect.
#[derive(Debug)]
pub struct Welcomed {
    pub agent_id: String,
    pub command_key: String,
    pub signature: String,
    /// The challenge's nonce and the connection's binding, which the signature covers.
    pub nonce: String,
    pub binding: ChannelBinding,
    /// Where the engine event subscription starts (the newest event the control plane holds).
    pub events_since_nanos: Option<i64>,
    /// Where the resending of the audit log starts (the newest record the control plane holds).
    pub audit_since_ms: Option<i64>,
}

/// Dials, upgrades to WebSocket and runs the handshake; `hello` builds the agent's message from
/// the server's nonce and the connection's channel binding. Returns the open socket and the
/// welcome.
pub async fn open(
    dialer: &dyn Dialer,
    url: &str,
    hello: impl FnOnce(&str, &ChannelBinding) -> Handshake,
    timeout: Duration,
) -> Result<(Ws, Welcomed), SessionError> {
    // Everything, from TCP connect to welcome, within one deadline: a black-holed peer cannot hang us.
    let work = async {
        let Dialed { io, binding } = dialer.dial(url).await?;
        let (mut ws, _) =
            tokio_tungstenite::client_async_with_config(url, io, Some(ws_config())).await?;
        let nonce = match next_handshake(&mut ws).await? {
            Handshake::Challenge {
                proto_version,
                nonce,
            } if proto_version == tomo_proto::PROTO_VERSION => nonce,
            Handshake::Challenge { proto_version, .. } => {
                let message = format!(
                    "control plane speaks protocol {proto_version}, this agent {}",
                    tomo_proto::PROTO_VERSION
                );
                return Err(SessionError::Refused {
                    reason: RefusalReason::UnsupportedVersion,
                    message,
                });
            }
            other => {
                return Err(SessionError::Protocol(format!(
                    "expected a challenge, got {other:?}"
                )));
            }
        };
        ws.send(WsMessage::text(hello(&nonce, &binding).to_json()))
            .await?;
        match next_handshake(&mut ws).await? {
            Handshake::Welcome {
                agent_id,
                command_key,
                signature,
                events_since_nanos,
                audit_since_ms,
                ..
            } => Ok((
                ws,
                Welcomed {
                    agent_id,
                    command_key,
                    signature,
                    nonce,
                    binding,
                    events_since_nanos,
                    audit_since_ms,
                },
            )),
            Handshake::Refused { reason, message } => {
                Err(SessionError::Refused { reason, message })
            }
            other => Err(SessionError::Protocol(format!(
                "expected welcome, got {other:?}"
            ))),
        }
    };
    tokio::time::timeout(timeout, work)
        .await
        .map_err(|_| SessionError::Timeout(timeout))?
}

async fn next_handshake(ws: &mut Ws) -> Result<Handshake, SessionError> {
    loop {
        match ws.next().await {
            Some(Ok(WsMessage::Text(t))) => {
                return Handshake::parse(&t)
                    .map_err(|_| SessionError::Protocol("malformed handshake message".into()));
            }
            Some(Ok(WsMessage::Ping(_) | WsMessage::Pong(_))) => continue,
            Some(Ok(WsMessage::Close(frame))) => {
                let why = frame.map(|f| f.reason.to_string()).unwrap_or_default();
                return Err(SessionError::Protocol(format!(
                    "closed during handshake: {why}"
                )));
            }
            Some(Ok(_)) => return Err(SessionError::Protocol("unexpected binary frame".into())),
            Some(Err(e)) => return Err(e.into()),
            None => {
                return Err(SessionError::Protocol(
                    "connection closed during handshake".into(),
                ));
            }
        }
    }
}

/// How a session ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionEnd {
    /// The agent is shutting down; the close frame was sent.
    Shutdown,
    /// The connection is gone; reconnect.
    Lost(String),
}

/// A request being served.
struct InFlight {
    abort: AbortHandle,
    ids: Vec<Id>,
    batch: bool,
}

/// Serves one authenticated session until it ends.
pub async fn serve(
    ws: Ws,
    shared: Arc<Shared>,
    dispatcher: Arc<Dispatcher>,
    intervals: Intervals,
    events_since_nanos: Option<i64>,
    audit_since_ms: Option<i64>,
    shutdown: CancellationToken,
) -> SessionEnd {
    let (mut sink, mut stream) = ws.split();
    // Answers and stream frames share one bounded queue: a stream's announcement is queued before
    // its first data, and a full queue makes producers wait instead of growing memory.
    let (answers_tx, mut answers) = mpsc::channel::<Outgoing>(64);
    let session_token = CancellationToken::new();
    let _end_streams = session_token.clone().drop_guard();
    let streams = Streams::new(answers_tx.clone(), session_token.clone());
    tokio::spawn(crate::docker::events::forward(
        Arc::clone(&shared.docker),
        answers_tx.clone(),
        events_since_nanos,
        session_token.clone(),
    ));
    // Audit records go to the control plane too, through the same bounded queue.
    let (audit_tx, audit_rx) = crate::audit::Auditor::channel();
    shared.auditor.attach(audit_tx, audit_since_ms);
    tokio::spawn(crate::audit::forward(
        audit_rx,
        answers_tx.clone(),
        session_token.clone(),
    ));
    let mut inflight: HashMap<u64, InFlight> = HashMap::new();
    let mut next_task = 0u64;
    let start = tokio::time::Instant::now();
    let mut heartbeat = tokio::time::interval_at(start + intervals.heartbeat, intervals.heartbeat);
    let mut settings = shared.settings.subscribe();
    let current = *settings.borrow_and_update();
    let mut metrics = tokio::time::interval(current.metrics_push);
    let mut health = tokio::time::interval(current.health_push);
    // A change of the engine's status is pushed at once, not at the next health tick.
    let mut engine = shared.samples.docker.clone();
    engine.mark_unchanged();
    for t in [&mut heartbeat, &mut metrics, &mut health] {
        t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    }
    let dead = tokio::time::sleep(intervals.dead_after);
    tokio::pin!(dead);

    let end = loop {
        let outgoing = tokio::select! {
            biased;
            _ = shutdown.cancelled() => break SessionEnd::Shutdown,
            Some(a) = answers.recv() => {
                if let Some(task) = a.task {
                    inflight.remove(&task);
                }
                (!a.text.is_empty()).then_some(a.text)
            }
            msg = stream.next() => {
                dead.as_mut().reset(tokio::time::Instant::now() + intervals.dead_after);
                match msg {
                    Some(Ok(WsMessage::Text(text))) => {
                        let ctx = RequestCtx { shared: &shared, dispatcher: &dispatcher, answers: &answers_tx, streams: &streams };
                        match ctx.handle(&text, next_task) {
                            Handled::Reply(t) => Some(t),
                            Handled::Spawned(f) => {
                                inflight.insert(next_task, f);
                                next_task += 1;
                                None
                            }
                            Handled::Nothing => None,
                        }
                    }
                    Some(Ok(WsMessage::Close(_))) => break SessionEnd::Lost("closed by the control plane".into()),
                    Some(Ok(WsMessage::Binary(_))) => {
                        Some(Response::err(Id::Null, RpcError::invalid_request("binary frames are not part of the protocol")).to_json())
                    }
                    Some(Ok(_)) => None,
                    Some(Err(e)) => break SessionEnd::Lost(format!("connection error: {e}")),
                    None => break SessionEnd::Lost("connection closed".into()),
                }
            }
            _ = &mut dead => break SessionEnd::Lost(format!("no traffic from the control plane for {:?}", intervals.dead_after)),
            _ = heartbeat.tick() => {
                if let Err(e) = sink.send(WsMessage::Ping(Default::default())).await {
                    break SessionEnd::Lost(format!("heartbeat failed: {e}"));
                }
                None
            }
            Ok(()) = settings.changed() => {
                let now = *settings.borrow_and_update();
                let at = tokio::time::Instant::now();
                metrics = tokio::time::interval_at(at + now.metrics_push, now.metrics_push);
                health = tokio::time::interval_at(at + now.health_push, now.health_push);
                for t in [&mut metrics, &mut health] {
                    t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                }
                None
            }
            _ = metrics.tick() => Some(rpc::notification_text(METRICS_UPDATE, &*shared.samples.metrics.borrow())),
            _ = health.tick() => Some(rpc::notification_text(HEALTH_STATUS, &health_status(&shared))),
            Ok(()) = engine.changed() => {
                engine.mark_unchanged();
                Some(rpc::notification_text(HEALTH_STATUS, &health_status(&shared)))
            }
        };
        if let Some(text) = outgoing
            && let Err(e) = sink.send(WsMessage::text(text)).await
        {
            break SessionEnd::Lost(format!("send failed: {e}"));
        }
    };

    if end == SessionEnd::Shutdown {
        // Streams end now (their producers stop); requests get a grace period.
        session_token.cancel();
        // In-flight requests get a grace period to finish; the rest are answered with an error.
        let grace = tokio::time::sleep(intervals.shutdown_grace);
        tokio::pin!(grace);
        while !inflight.is_empty() {
            tokio::select! {
                Some(a) = answers.recv() => {
                    if let Some(task) = a.task {
                        inflight.remove(&task);
                    }
                    if !a.text.is_empty() {
                        let _ = sink.send(WsMessage::text(a.text)).await;
                    }
                }
                _ = &mut grace => break,
            }
        }
        for (_, f) in inflight.drain() {
            f.abort.abort();
            if f.ids.is_empty() {
                continue;
            }
            let errs: Vec<Response> = f
                .ids
                .into_iter()
                .map(|id| {
                    Response::err(
                        id,
                        RpcError::new(rpc::code::SHUTTING_DOWN, "agent shutting down"),
                    )
                })
                .collect();
            let text = if f.batch {
                serde_json::to_string(&errs).unwrap_or_default()
            } else {
                errs[0].to_json()
            };
            let _ = sink.send(WsMessage::text(text)).await;
        }
        let close = CloseFrame {
            code: CloseCode::Away,
            reason: "agent shutting down".into(),
        };
        let _ = sink.send(WsMessage::Close(Some(close))).await;
        let _ = sink.close().await;
    }
    shared.auditor.detach();
    end
}

fn health_status(shared: &Shared) -> HealthStatus {
    let docker = shared.samples.docker.borrow().clone();
    HealthStatus {
        status: if docker.available {
            "healthy"
        } else {
            "degraded"
        }
        .into(),
        uptime_secs: shared.started.elapsed().as_secs(),
        agent_version: crate::VERSION.into(),
        docker,
    }
}

enum Handled {
    Reply(String),
    Spawned(InFlight),
    Nothing,
}

struct RequestCtx<'a> {
    shared: &'a Arc<Shared>,
    dispatcher: &'a Arc<Dispatcher>,
    answers: &'a mpsc::Sender<Outgoing>,
    streams: &'a Arc<Streams>,
}

impl RequestCtx<'_> {
    /// Classifies a frame: errors are answered at once, requests run in their own task.
    fn handle(&self, text: &str, task: u64) -> Handled {
        match rpc::parse_frame(text) {
            Frame::Error(e) => Handled::Reply(Response::err(Id::Null, e).to_json()),
            Frame::Single(Message::Invalid(id, e)) => {
                Handled::Reply(Response::err(id, e).to_json())
            }
            Frame::Single(Message::Response(_)) => {
                tracing::debug!("ignoring a response: the agent sends no requests");
                Handled::Nothing
            }
            Frame::Single(Message::Request(req)) => match req.id.clone() {
                None => {
                    tracing::warn!(method = %req.method, "ignoring a notification: the agent acts only on requests it can answer");
                    Handled::Nothing
                }
                Some(id) => {
                    let ctx = self.ctx();
                    let replied = ctx.replied.clone();
                    let fut = answer(ctx, Arc::clone(self.dispatcher), req);
                    let ids = vec![id];
                    self.spawn(task, ids, false, replied, async move {
                        fut.await.map(|r| r.to_json())
                    })
                }
            },
            Frame::Batch(items) => {
                let mut ids = Vec::new();
                let mut futs = Vec::new();
                let ctx = self.ctx();
                let replied = ctx.replied.clone();
                for item in items {
                    match item {
                        Message::Request(req) => {
                            if let Some(id) = req.id.clone() {
                                ids.push(id);
                            }
                            futs.push(
                                answer(ctx.clone(), Arc::clone(self.dispatcher), req).boxed(),
                            );
                        }
                        Message::Invalid(id, e) => {
                            futs.push(std::future::ready(Some(Response::err(id, e))).boxed())
                        }
                        Message::Response(_) => {}
                    }
                }
                self.spawn(task, ids, true, replied, async move {
                    let responses: Vec<Response> = futures_util::future::join_all(futs)
                        .await
                        .into_iter()
                        .flatten()
                        .collect();
                    // A batch of notifications only gets no answer at all.
                    (!responses.is_empty())
                        .then(|| serde_json::to_string(&responses).unwrap_or_default())
                })
            }
        }
    }

    fn ctx(&self) -> Ctx {
        Ctx {
            shared: Arc::clone(self.shared),
            streams: Arc::clone(self.streams),
            replied: CancellationToken::new(),
        }
    }

    fn spawn(
        &self,
        task: u64,
        ids: Vec<Id>,
        batch: bool,
        replied: CancellationToken,
        work: impl Future<Output = Option<String>> + Send + 'static,
    ) -> Handled {
        let tx = self.answers.clone();
        let handle = tokio::spawn(async move {
            // An empty answer still tells the loop that the task is done.
            let text = work.await.unwrap_or_default();
            let _ = tx
                .send(Outgoing {
                    task: Some(task),
                    text,
                })
                .await;
            replied.cancel();
        });
        Handled::Spawned(InFlight {
            abort: handle.abort_handle(),
            ids,
            batch,
        })
    }
}

/// Runs one request; `None` for a notification. The request passes the pipeline
/// ([`crate::pipeline`]) first; a panicking handler becomes -32603 for this request only. Every
/// decision (refused, or run and how it ended) is audited; a command's admission is on disk
/// before its handler runs, or the handler does not run (issue 13.3, [`crate::audit`]).
async fn answer(ctx: Ctx, dispatcher: Arc<Dispatcher>, req: rpc::Request) -> Option<Response> {
    let id = req.id.clone()?;
    let started = std::time::Instant::now();
    let shared = Arc::clone(&ctx.shared);
    let admitted = shared.guard.admit(
        &req,
        |m| dispatcher.level(m),
        |method, level, role| shared.policy.check_method(method, level, role),
    );
    let params = || crate::audit::redact_raw_params(&req.method, req.params.as_deref());
    let admitted = match admitted {
        Ok(a) => a,
        Err(denied) => {
            tracing::warn!(method = %req.method, reason = denied.reason, "request refused");
            let meta = denied.meta.as_deref();
            shared.auditor.record(AuditRecord {
                at_ms: tomo_common::now_ms(),
                trace_id: meta.and_then(|m| m.trace_id.clone()),
                principal: meta.and_then(|m| m.principal.clone()),
                role: meta.and_then(|m| m.role),
                method: req.method.clone(),
                // Params of a request that is not authentic are not worth keeping.
                params: meta.and(params()),
                decision: "denied".into(),
                reason: Some(denied.reason.into()),
                outcome: denied.error.code.to_string(),
                error: Some(denied.error.message.clone()),
                duration_ms: started.elapsed().as_millis() as u64,
                admission_id: None,
            });
            return Some(Response::err(id, denied.error));
        }
    };
    let meta = &admitted.meta;
    let admission = if admitted.is_command() {
        let admission = crate::audit::request_record(Some(meta), &req.method, params());
        match shared.auditor.admit(admission).await {
            Ok(a) => Some(a),
            Err(e) => {
                let error = crate::audit::unwritable(shared.auditor.path(), &e);
                tracing::error!(method = %req.method, error = %e, "command refused: its admission cannot be audited");
                let mut denied = crate::audit::request_record(Some(meta), &req.method, params());
                denied.decision = "denied".into();
                denied.reason = Some("audit_unwritable".into());
                denied.outcome = error.code.to_string();
                denied.error = Some(error.message.clone());
                denied.duration_ms = started.elapsed().as_millis() as u64;
                shared.auditor.record(denied);
                return Some(Response::err(id, error));
            }
        }
    } else {
        None
    };
    let cap = ctx.shared.max_response_bytes;
    // Past its deadline a call is cancelled (dropped: its Docker request is abandoned) and its
    // slot freed (issue 13.5).
    let deadline = dispatcher.deadline(&req.method);
    let limit = deadline.map(|d| d.limit(meta.wait_ms));
    let left = || limit.unwrap_or_default().saturating_sub(started.elapsed());
    let cancelled = || {
        let limit = limit.unwrap_or_default();
        let by_wait = deadline.is_some_and(|d| d.limit(None) > limit);
        tracing::warn!(method = %req.method, after_ms = limit.as_millis() as u64, by_wait, "call cancelled at its deadline");
        deadline_passed(&req.method, limit, by_wait)
    };
    // A command with an idempotency key runs once (issue 13.6): a retry gets the first answer.
    let raw_params = req.params.as_deref().map_or("", |p| p.get());
    let (early, ticket) = match meta.idempotency_key.as_deref() {
        Some(key) if admitted.is_command() => {
            // Off the runtime's threads: a new key's admission is synced to the disk.
            let keys = Arc::clone(&shared.idempotency);
            let (principal, key) = (meta.principal.clone().unwrap_or_default(), key.to_owned());
            let (method, params) = (req.method.clone(), raw_params.to_owned());
            let claim = tokio::task::spawn_blocking(move || {
                keys.claim(&principal, &key, &method, &params, tomo_common::now_ms())
            })
            .await
            .unwrap_or_else(|_| Claim::Refused(RpcError::internal("the idempotency claim failed")));
            match claim {
                Claim::Run(t) => (None, Some(t)),
                Claim::Answered(a) => (Some((a, true)), None),
                Claim::Refused(e) => (Some((Err(e), false)), None),
                Claim::Running(mut rx) => {
                    let left_at_start = left();
                    let first = tokio::time::timeout(left(), rx.wait_for(Option::is_some)).await;
                    let a = match first {
                        Ok(Ok(a)) => a.clone().unwrap_or_else(|| Err(first_ended())),
                        Ok(Err(_)) => Err(first_ended()),
                        Err(_) => Err(still_running(left_at_start)),
                    };
                    (Some((a, true)), None)
                }
            }
        }
        _ => (None, None),
    };
    let retried = early.as_ref().is_some_and(|(_, retried)| *retried);
    let outcome = match early {
        Some((answer, _)) => answer,
        None => {
            let fut = dispatcher.call(ctx, &req.method, Some(raw_params).filter(|p| !p.is_empty()));
            let run = AssertUnwindSafe(fut).catch_unwind();
            let ran = match limit {
                Some(_) => tokio::time::timeout(left(), run).await,
                None => Ok(run.await),
            };
            match ran {
                Ok(Ok(r)) => r,
                Ok(Err(_)) => Err(RpcError::internal("the handler panicked")),
                Err(_) => Err(cancelled()),
            }
        }
    };
    let outcome = match outcome {
        // Handlers with big outputs cut them themselves (and say so); this guards the rest.
        Ok(v) if serde_json::to_string(&v).map_or(0, |t| t.len()) > cap => Err(RpcError::internal(
            format!(
                "the result is larger than the agent's response cap ({cap} bytes); narrow the request"
            ),
        )
        .with_data(serde_json::json!({"reason": "response_too_large"}))),
        other => other,
    };
    if let Some(t) = ticket {
        let method = req.method.clone();
        let answer = outcome.clone();
        // The answer is synced to the disk before retries learn it: off the runtime's threads.
        let _ = tokio::task::spawn_blocking(move || t.finish(&method, &answer)).await;
    }
    let record = AuditRecord {
        at_ms: tomo_common::now_ms(),
        trace_id: meta.trace_id.clone(),
        principal: meta.principal.clone(),
        role: meta.role,
        method: req.method.clone(),
        params: params(),
        decision: match &outcome {
            Err(e) if is_refusal(e) => "denied".into(),
            _ => "allowed".into(),
        },
        reason: outcome.as_ref().err().map(|e| {
            // A handler's refusal (validation, policy) is the request's reason too.
            e.data
                .as_ref()
                .and_then(|d| d.get("reason").or_else(|| d.get("rule")))
                .and_then(serde_json::Value::as_str)
                .unwrap_or("error")
                .to_owned()
        }),
        outcome: match &outcome {
            Ok(_) => "ok".into(),
            Err(e) => e.code.to_string(),
        },
        error: outcome.as_ref().err().map(|e| e.message.clone()),
        duration_ms: started.elapsed().as_millis() as u64,
        admission_id: None,
    };
    // A retry did not run anything: its record says whose answer it got.
    let record = if retried {
        AuditRecord {
            reason: Some("idempotent_retry".into()),
            ..record
        }
    } else {
        record
    };
    match admission {
        Some(a) => a.finish(record),
        // Input to an open stream is not a command: its keystrokes (a typed password among
        // them) are not audited one by one; the exec that opened the stream was, and so is
        // every refusal (issue 17.1).
        None if crate::pipeline::is_continuation(&req.method) && record.outcome == "ok" => {}
        None => shared.auditor.record(record),
    }
    drop(admitted);
    Some(match outcome {
        Ok(v) => Response::ok(id, v),
        Err(e) => Response::err(id, e),
    })
}

/// The answer of a retry whose first call ended without an answer (its task was stopped).
fn first_ended() -> RpcError {
    RpcError::new(
        tomo_proto::rpc::code::TIMEOUT,
        "the first call with this idempotency key ended without an answer (the agent stopped it): whether it took effect is unknown; check the host",
    )
    .with_data(serde_json::json!({"reason": "outcome_unknown"}))
}

/// The answer of a retry that waited for the first call with its key as long as it may, while
/// that call still runs: retry again later with the same key.
fn still_running(waited: Duration) -> RpcError {
    RpcError::new(
        tomo_proto::rpc::code::TIMEOUT,
        format!(
            "the first call with this idempotency key still runs (waited {:.0} s for it); retry later with the same key to get its answer",
            waited.as_secs_f64()
        ),
    )
    .with_data(serde_json::json!({"reason": "still_running"}))
}

/// The answer of a call cancelled at its deadline: what happened, where, and what to do.
fn deadline_passed(method: &str, limit: Duration, by_wait: bool) -> RpcError {
    let secs = limit.as_secs_f64();
    let why = if by_wait {
        format!(
            "{method} was cancelled on the agent after {secs:.1} s, when the control plane stopped waiting for it"
        )
    } else {
        format!(
            "{method} did not finish within its deadline of {secs:.0} s on the agent and was cancelled"
        )
    };
    let hint = if method.starts_with("docker.") {
        "; whether the engine carried it out is unknown (check the container's state); the engine may be hung: check it on the host (`systemctl status docker`, `docker info`)"
    } else {
        "; whether it took effect is unknown"
    };
    RpcError::new(tomo_proto::rpc::code::TIMEOUT, format!("{why}{hint}"))
        .with_data(serde_json::json!({"reason": "deadline", "after_ms": limit.as_millis() as u64}))
}

/// Whether a handler's error is a refusal of the request (validation or policy: -32001,
/// -32004, -32005) rather than a failure of a call that was let through: audited as `denied`,
/// so `tomo audit --decision denied` shows every refusal.
fn is_refusal(e: &RpcError) -> bool {
    use tomo_proto::rpc::code;
    matches!(
        e.code,
        code::SECURITY | code::CONTAINER_BLOCKED | code::COMMAND_BLOCKED
    )
}

//! Connected agents and the routing of JSON-RPC calls to them.
//!
//! Each live session owns an [`AgentConn`]: a bounded queue of outgoing frames, the table of
//! calls awaiting an answer (correlated by JSON-RPC id), and a token that ends the session.
//! Online/offline is what this hub says, never a stored flag, so a crash cannot leave a host
//! "online" in the database.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use serde_json::Value;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tomo_proto::methods::Method as _;
use tomo_proto::methods::{Level, STREAM_WINDOW, StreamData, StreamEnd};
use tomo_proto::rpc::{Id, RequestMeta, Response, RpcError, code};

use crate::signer::CommandSigner;

/// Frames queued for one agent before senders wait.
const OUTBOX: usize = 256;

/// How long a stream-control request (ack, write, resize, close) stays valid: it answers
/// something happening now, and a late one is better refused than run.
const CONTROL_TTL: Duration = Duration::from_secs(60);

/// Who a request is made for: the control plane puts it, with a fresh audience, nonce and
/// timestamp, in the `meta` of every request it sends (the one place requests are built).
#[derive(Debug, Clone)]
pub struct Caller {
    pub principal: String,
    pub role: Level,
    pub trace_id: String,
    /// What owns the streams this caller opens: the API token's id (names are not unique).
    pub owner: String,
    /// The API request's `Idempotency-Key` (issue 13.6): sent with its commands, so that a
    /// retry with the same key gets the first answer instead of running again.
    pub idempotency_key: Option<String>,
}

impl Caller {
    /// A caller with a new trace id.
    pub fn new(principal: impl Into<String>, role: Level) -> Self {
        let principal = principal.into();
        Self {
            owner: principal.clone(),
            principal,
            role,
            trace_id: tomo_common::hex(&tomo_common::random_bytes::<8>()),
            idempotency_key: None,
        }
    }
}

/// A piece of a stream, as the consumer sees it.
#[derive(Debug, Clone, PartialEq)]
pub enum StreamEvent {
    Data { seq: u64, data: Value },
    End(StreamEnd),
}

struct Pending {
    answer: oneshot::Sender<Response>,
    /// Where the stream goes, when the call may open one.
    stream: Option<Route>,
}

/// Where a stream's data goes, and who opened it (only they may write to it).
#[derive(Clone)]
struct Route {
    tx: mpsc::Sender<StreamEvent>,
    owner: String,
}

/// One live agent session.
pub struct AgentConn {
    pub host_id: String,
    session: u64,
    outbox: mpsc::Sender<String>,
    pending: Mutex<HashMap<i64, Pending>>,
    streams: Mutex<HashMap<String, Route>>,
    next_call: AtomicU64,
    /// Cancelled to end the session (host removed, replaced by a newer session).
    pub kick: CancellationToken,
    pub connected_at: i64,
    /// The agent's clock minus this one's, measured at the handshake (ms): commands are stamped
    /// in the agent's time, so a host with a wrong clock still judges them fresh.
    pub clock_offset_ms: i64,
    signer: Arc<CommandSigner>,
}

impl std::fmt::Debug for AgentConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentConn")
            .field("host_id", &self.host_id)
            .field("session", &self.session)
            .finish_non_exhaustive()
    }
}

impl AgentConn {
    /// Delivers a response to the call waiting for it; unknown ids are dropped. When the call
    /// expected a stream and the answer opens one, the stream is routed from now on, before any
    /// later frame of the session is read.
    pub fn resolve(&self, mut resp: Response) -> bool {
        let Id::Num(id) = resp.id else { return false };
        let Some(waiter) = self.pending.lock().ok().and_then(|mut p| p.remove(&id)) else {
            return false;
        };
        if let (Some(route), rpc_outcome) = (waiter.stream, &resp.outcome)
            && let tomo_proto::rpc::Outcome::Result(result) = rpc_outcome
            && let Some(stream) = result.get("stream").and_then(Value::as_str)
            && let Ok(mut streams) = self.streams.lock()
        {
            // A stream id another call already holds (a stale answer, a confused agent) never
            // takes that call's stream over: this call fails instead.
            if streams.contains_key(stream) {
                let message = format!(
                    "the host answered with stream {stream}, which another call holds; this call's stream is not connected"
                );
                resp.outcome = tomo_proto::rpc::Outcome::Error(RpcError::internal(message));
            } else {
                streams.insert(stream.to_owned(), route);
            }
        }
        waiter.answer.send(resp).is_ok()
    }

    /// Routes a `stream.data`; closes the stream on the agent when nobody takes it (unknown,
    /// consumer gone, or an agent that ignored its window).
    pub fn stream_data(&self, d: StreamData) {
        let tx = self
            .streams
            .lock()
            .ok()
            .and_then(|s| s.get(&d.stream).cloned());
        let delivered = tx.is_some_and(|r| {
            r.tx.try_send(StreamEvent::Data {
                seq: d.seq,
                data: d.data,
            })
            .is_ok()
        });
        if delivered {
            return;
        }
        let known = self
            .streams
            .lock()
            .ok()
            .and_then(|mut s| s.remove(&d.stream))
            .is_some();
        // Data for an unknown stream is closed once per burst, not once per message.
        if known || d.seq == 0 {
            let close = self.control_request(
                tomo_proto::methods::StreamClose::NAME,
                json_stream(&d.stream, None),
            );
            let _ = self.outbox.try_send(close);
        }
    }

    /// Routes a `stream.end`.
    pub fn stream_end(&self, e: StreamEnd) {
        let tx = self
            .streams
            .lock()
            .ok()
            .and_then(|mut s| s.remove(&e.stream));
        if let Some(r) = tx {
            let _ = r.tx.try_send(StreamEvent::End(e));
        }
    }

    /// Fails every waiting call with "connection lost" and ends every stream (by dropping
    /// their senders).
    pub fn fail_pending(&self) {
        if let Ok(mut p) = self.pending.lock() {
            p.clear();
        }
        if let Ok(mut s) = self.streams.lock() {
            s.clear();
        }
    }

    /// Who opened a stream that is routed now.
    pub fn stream_owner(&self, stream: &str) -> Option<String> {
        self.streams
            .lock()
            .ok()
            .and_then(|s| s.get(stream).map(|r| r.owner.clone()))
    }

    /// Number of streams routed now.
    pub fn open_streams(&self) -> usize {
        self.streams.lock().map(|s| s.len()).unwrap_or(0)
    }

    fn next_id(&self) -> i64 {
        self.next_call.fetch_add(1, Ordering::Relaxed) as i64
    }

    /// A request whose answer nobody waits for (stream flow control), for the control plane.
    fn control_request(&self, method: &str, params: Value) -> String {
        let caller = Caller::new("tomo", Level::Read);
        request_text(
            self,
            self.next_id(),
            method,
            Some(&params),
            &caller,
            CONTROL_TTL,
        )
    }
}

fn json_stream(stream: &str, seq: Option<u64>) -> Value {
    match seq {
        Some(seq) => serde_json::json!({ "stream": stream, "seq": seq }),
        None => serde_json::json!({ "stream": stream }),
    }
}

/// Builds the text of a request to an agent: the one place requests are made. The meta carries
/// the caller, the audience (the agent's id), a fresh nonce, the time and the expiry (`ttl`
/// after now: the caller's timeout, capped by [`tomo_proto::rpc::MAX_COMMAND_TTL_MS`]); the
/// signature covers the id, the method and the exact meta and params texts
/// (`tomo_proto::rpc::command_payload`).
fn request_text(
    conn: &AgentConn,
    id: i64,
    method: &str,
    params: Option<&Value>,
    caller: &Caller,
    ttl: Duration,
) -> String {
    // In the agent's time (the offset measured at its handshake): its freshness window and the
    // expiry are judged by its own clock.
    let ts = tomo_common::now_ms() + conn.clock_offset_ms;
    let ttl_ms = i64::try_from(ttl.as_millis())
        .unwrap_or(i64::MAX)
        .min(tomo_proto::rpc::MAX_COMMAND_TTL_MS);
    let meta = RequestMeta {
        trace_id: Some(caller.trace_id.clone()),
        principal: Some(caller.principal.clone()),
        role: Some(caller.role),
        aud: Some(conn.host_id.clone()),
        nonce: Some(tomo_common::hex(&tomo_common::random_bytes::<16>())),
        ts: Some(ts),
        exp: Some(ts + ttl_ms),
        wait_ms: Some(u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX)),
        idempotency_key: caller.idempotency_key.clone(),
    };
    let meta_text = serde_json::to_string(&meta).unwrap_or_default();
    let params_text = params.map(Value::to_string);
    let id_text = id.to_string();
    let payload = tomo_proto::rpc::command_payload(
        &id_text,
        method,
        &meta_text,
        params_text.as_deref().unwrap_or(""),
    );
    let sig = conn.signer.sign(&payload);
    tomo_proto::rpc::signed_request_text(&id_text, method, &meta_text, params_text.as_deref(), &sig)
}

/// The consuming end of a stream. Dropping it before the end closes the stream on the agent.
pub struct StreamHandle {
    conn: Arc<AgentConn>,
    id: String,
    rx: mpsc::Receiver<StreamEvent>,
    caller: Caller,
    taken: u64,
    acked: u64,
    ended: bool,
}

impl std::fmt::Debug for StreamHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamHandle")
            .field("id", &self.id)
            .field("taken", &self.taken)
            .finish_non_exhaustive()
    }
}

impl StreamHandle {
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The next piece; `None` when the connection to the agent was lost. Taking data gives the
    /// agent credit to send more.
    pub async fn next(&mut self) -> Option<StreamEvent> {
        if self.ended {
            return None;
        }
        let ev = self.rx.recv().await?;
        match &ev {
            StreamEvent::Data { seq, .. } => {
                self.taken = self.taken.max(seq + 1);
                if self.taken - self.acked >= STREAM_WINDOW / 2 {
                    self.acked = self.taken;
                    let params = json_stream(&self.id, Some(self.taken - 1));
                    let text = request_text(
                        &self.conn,
                        self.conn.next_id(),
                        tomo_proto::methods::StreamAcknowledge::NAME,
                        Some(&params),
                        &self.caller,
                        CONTROL_TTL,
                    );
                    let _ = self.conn.outbox.send(text).await;
                }
            }
            StreamEvent::End(_) => self.ended = true,
        }
        Some(ev)
    }

    /// Sends a request about this stream (`stream.write`, `stream.resize`) as the caller that
    /// opened it, without waiting for the answer.
    pub async fn control(&self, method: &str, mut params: Value) -> bool {
        if let Some(obj) = params.as_object_mut() {
            obj.insert("stream".into(), Value::String(self.id.clone()));
        }
        let text = request_text(
            &self.conn,
            self.conn.next_id(),
            method,
            Some(&params),
            &self.caller,
            CONTROL_TTL,
        );
        self.conn.outbox.send(text).await.is_ok()
    }
}

impl Drop for StreamHandle {
    fn drop(&mut self) {
        if self.ended {
            return;
        }
        if let Ok(mut s) = self.conn.streams.lock() {
            s.remove(&self.id);
        }
        let params = json_stream(&self.id, None);
        let text = request_text(
            &self.conn,
            self.conn.next_id(),
            tomo_proto::methods::StreamClose::NAME,
            Some(&params),
            &self.caller,
            CONTROL_TTL,
        );
        let _ = self.conn.outbox.try_send(text);
    }
}

/// The latest health and metrics of a host, kept in memory.
#[derive(Debug, Clone, Default)]
pub struct Latest {
    pub health: Option<(i64, Value)>,
    pub metrics: Option<(i64, Value)>,
}

/// What the hub keeps of [`Latest`]: the samples' JSON text. A parsed metrics sample is a tree
/// of maps of about 5 KB; its text is about 600 bytes, for each of ten thousand hosts.
#[derive(Debug, Default)]
struct Kept {
    health: Option<(i64, Box<str>)>,
    metrics: Option<(i64, Box<str>)>,
}

/// Why a call did not produce an agent's answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallError {
    #[error("host {0} is offline")]
    Offline(String),
    #[error(
        "host {host} did not answer within {timeout:?}; the call may still run or have run there: check before retrying"
    )]
    Timeout { host: String, timeout: Duration },
    #[error("the connection to host {0} was lost before it answered")]
    ConnectionLost(String),
}

impl CallError {
    /// The JSON-RPC error this failure is reported as.
    pub fn to_rpc(&self) -> RpcError {
        let c = match self {
            Self::Offline(_) => code::HOST_OFFLINE,
            Self::Timeout { .. } => code::TIMEOUT,
            Self::ConnectionLost(_) => code::CONNECTION_LOST,
        };
        RpcError::new(c, self.to_string())
    }
}

/// Session handshakes run at once (see [`Hub::handshake_turn`]).
const HANDSHAKES: usize = 64;

/// All live sessions.
#[derive(Debug)]
pub struct Hub {
    signer: Arc<CommandSigner>,
    handshakes: tokio::sync::Semaphore,
    conns: RwLock<HashMap<String, Arc<AgentConn>>>,
    latest: RwLock<HashMap<String, Kept>>,
    next_session: AtomicU64,
}

impl Hub {
    /// A hub whose requests are signed by `signer`.
    pub fn new(signer: Arc<CommandSigner>) -> Self {
        Self {
            signer,
            handshakes: tokio::sync::Semaphore::new(HANDSHAKES),
            conns: RwLock::default(),
            latest: RwLock::default(),
            next_session: AtomicU64::default(),
        }
    }

    /// Waits for a turn to run a session handshake: at most `HANDSHAKES` (64) at once, in arrival
    /// order. A crowd (a fleet reconnecting after a restart) is then served in turn, each
    /// handshake finishing quickly, instead of thousands sharing the CPU and the store and all
    /// missing the agents' deadline together, retrying, and missing it again.
    pub async fn handshake_turn(&self) -> Option<tokio::sync::SemaphorePermit<'_>> {
        self.handshakes.acquire().await.ok()
    }

    /// The command-signing key's public half, base64 (sent in `welcome`).
    pub fn command_key(&self) -> &str {
        self.signer.public_key_b64()
    }

    /// Signs a `welcome` ([`tomo_proto::handshake::Purpose::Welcome`] payload) with the command
    /// key; the payload's domain keeps it apart from every command signature.
    pub fn sign_welcome(&self, payload: &[u8]) -> String {
        self.signer.sign(payload)
    }

    /// The fingerprint registration codes carry.
    pub fn command_fingerprint(&self) -> &str {
        self.signer.fingerprint()
    }

    /// Registers a new session for `host_id`, ending any older one (an agent that reconnects
    /// before its old connection timed out replaces it). Returns the receiving end of its outbox.
    pub fn attach(
        &self,
        host_id: &str,
        clock_offset_ms: i64,
    ) -> (Arc<AgentConn>, mpsc::Receiver<String>) {
        let (tx, rx) = mpsc::channel(OUTBOX);
        let conn = Arc::new(AgentConn {
            host_id: host_id.to_owned(),
            session: self.next_session.fetch_add(1, Ordering::Relaxed),
            outbox: tx,
            pending: Mutex::new(HashMap::new()),
            streams: Mutex::new(HashMap::new()),
            next_call: AtomicU64::new(1),
            kick: CancellationToken::new(),
            connected_at: tomo_common::now_ms(),
            clock_offset_ms,
            signer: Arc::clone(&self.signer),
        });
        let old = self
            .conns
            .write()
            .ok()
            .and_then(|mut m| m.insert(host_id.to_owned(), Arc::clone(&conn)));
        if let Some(old) = old {
            tracing::warn!(host_id, "a new session replaces the host's previous one");
            old.kick.cancel();
        }
        (conn, rx)
    }

    /// Forgets a session, unless a newer one replaced it already.
    pub fn detach(&self, conn: &AgentConn) {
        if let Ok(mut m) = self.conns.write()
            && m.get(&conn.host_id)
                .is_some_and(|c| c.session == conn.session)
        {
            m.remove(&conn.host_id);
        }
        conn.fail_pending();
    }

    /// The clock offset of the host's live session (its clock minus this one's, ms).
    pub fn clock_offset(&self, host_id: &str) -> Option<i64> {
        self.conns
            .read()
            .ok()
            .and_then(|m| m.get(host_id).map(|c| c.clock_offset_ms))
    }

    pub fn is_online(&self, host_id: &str) -> bool {
        self.conns.read().is_ok_and(|m| m.contains_key(host_id))
    }

    /// The hosts with a live session now.
    pub fn online_hosts(&self) -> Vec<String> {
        self.conns
            .read()
            .map(|m| m.keys().cloned().collect())
            .unwrap_or_default()
    }

    /// Number of live sessions.
    pub fn online_count(&self) -> usize {
        self.conns.read().map(|m| m.len()).unwrap_or(0)
    }

    /// Ends the host's session at once, if it has one.
    pub fn kick(&self, host_id: &str) {
        let conn = self.conns.read().ok().and_then(|m| m.get(host_id).cloned());
        if let Some(c) = conn {
            c.kick.cancel();
        }
    }

    /// Ends every session (control-plane shutdown).
    pub fn kick_all(&self) {
        if let Ok(m) = self.conns.read() {
            m.values().for_each(|c| c.kick.cancel());
        }
    }

    pub fn latest(&self, host_id: &str) -> Latest {
        let parse = |s: &Option<(i64, Box<str>)>| {
            s.as_ref()
                .map(|(at, text)| (*at, serde_json::from_str(text).unwrap_or(Value::Null)))
        };
        self.latest
            .read()
            .ok()
            .and_then(|m| {
                m.get(host_id).map(|k| Latest {
                    health: parse(&k.health),
                    metrics: parse(&k.metrics),
                })
            })
            .unwrap_or_default()
    }

    /// Keeps `json`, received at `at`, as the host's latest sample of `kind`.
    pub fn set_latest(&self, host_id: &str, kind: crate::store::SampleKind, at: i64, json: &str) {
        if let Ok(mut m) = self.latest.write() {
            let kept = m.entry(host_id.to_owned()).or_default();
            let slot = match kind {
                crate::store::SampleKind::Metrics => &mut kept.metrics,
                crate::store::SampleKind::Health => &mut kept.health,
            };
            *slot = Some((at, json.into()));
        }
    }

    fn conn(&self, host_id: &str) -> Result<Arc<AgentConn>, CallError> {
        self.conns
            .read()
            .ok()
            .and_then(|m| m.get(host_id).cloned())
            .ok_or_else(|| CallError::Offline(host_id.into()))
    }

    /// Who opened `stream` on the host's current session.
    pub fn stream_owner(&self, host_id: &str, stream: &str) -> Option<String> {
        self.conn(host_id).ok()?.stream_owner(stream)
    }

    /// Sends a request to a connected agent and waits for its answer, at most `timeout`.
    pub async fn call(
        &self,
        host_id: &str,
        method: &str,
        params: Option<&Value>,
        caller: &Caller,
        timeout: Duration,
    ) -> Result<Response, CallError> {
        let conn = self.conn(host_id)?;
        call_on(&conn, method, params, caller, timeout, None).await
    }

    /// Like [`Hub::call`], for a call that may open a stream: when the answer announces one,
    /// its handle comes with it.
    pub async fn call_stream(
        &self,
        host_id: &str,
        method: &str,
        params: Option<&Value>,
        caller: &Caller,
        timeout: Duration,
    ) -> Result<(Response, Option<StreamHandle>), CallError> {
        let conn = self.conn(host_id)?;
        // Room for a full window and the end.
        let (tx, rx) = mpsc::channel(STREAM_WINDOW as usize + 1);
        let route = Route {
            tx,
            owner: caller.owner.clone(),
        };
        let resp = call_on(&conn, method, params, caller, timeout, Some(route)).await?;
        let stream = match &resp.outcome {
            tomo_proto::rpc::Outcome::Result(r) => r.get("stream").and_then(Value::as_str),
            _ => None,
        };
        let handle = stream.map(|id| StreamHandle {
            conn: Arc::clone(&conn),
            id: id.to_owned(),
            rx,
            caller: caller.clone(),
            taken: 0,
            acked: 0,
            ended: false,
        });
        Ok((resp, handle))
    }
}

async fn call_on(
    conn: &AgentConn,
    method: &str,
    params: Option<&Value>,
    caller: &Caller,
    timeout: Duration,
    stream: Option<Route>,
) -> Result<Response, CallError> {
    let host_id = conn.host_id.as_str();
    let id = conn.next_id();
    let (tx, rx) = oneshot::channel();
    if let Ok(mut p) = conn.pending.lock() {
        p.insert(id, Pending { answer: tx, stream });
    }
    let text = request_text(conn, id, method, params, caller, timeout);
    let work = async {
        conn.outbox
            .send(text)
            .await
            .map_err(|_| CallError::ConnectionLost(host_id.into()))?;
        rx.await
            .map_err(|_| CallError::ConnectionLost(host_id.into()))
    };
    let result = tokio::time::timeout(timeout, work).await;
    if let Ok(mut p) = conn.pending.lock() {
        p.remove(&id);
    }
    result.unwrap_or_else(|_| {
        Err(CallError::Timeout {
            host: host_id.into(),
            timeout,
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Red team, 2026-12-03: an answer naming a stream id another call holds (an idempotent
    /// retry's stale answer) took that call's stream over and cut it. It fails instead, and the
    /// holder keeps its stream.
    #[tokio::test]
    async fn an_answer_cannot_take_over_another_calls_stream() {
        let hub = Hub::new(Arc::new(crate::signer::CommandSigner::ephemeral()));
        let (conn, mut outbox) = hub.attach("h", 0);
        let caller = Caller::new("alice", Level::Admin);
        let answer = |text: String| {
            let v: Value = serde_json::from_str(&text).expect("request");
            let stream = serde_json::json!({"stream": "s1", "window": 64});
            Response::ok(Id::Num(v["id"].as_i64().expect("id")), stream)
        };
        let mut first = None;
        let mut second = None;
        for slot in [&mut first, &mut second] {
            let call = hub.call_stream(
                "h",
                "docker.images.pull",
                None,
                &caller,
                Duration::from_secs(5),
            );
            let (r, ()) = tokio::join!(call, async {
                let text = outbox.recv().await.expect("request");
                assert!(conn.resolve(answer(text)));
            });
            *slot = Some(r);
        }
        let (first, second) = (first.expect("first"), second.expect("second"));
        let (resp, handle) = first.expect("first call");
        assert!(
            !resp.is_error() && handle.is_some(),
            "the holder keeps its stream"
        );
        let (resp, handle) = second.expect("second call");
        assert!(resp.is_error() && handle.is_none(), "{resp:?}");
        assert!(conn.streams.lock().expect("lock").contains_key("s1"));
    }
}

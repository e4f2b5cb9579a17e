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
use tomo_proto::rpc::{Id, OutgoingRequest, RequestMeta, Response, RpcError, V2, code};

/// Frames queued for one agent before senders wait.
const OUTBOX: usize = 256;

/// One live agent session.
#[derive(Debug)]
pub struct AgentConn {
    pub host_id: String,
    session: u64,
    outbox: mpsc::Sender<String>,
    pending: Mutex<HashMap<i64, oneshot::Sender<Response>>>,
    /// Cancelled to end the session (host removed, replaced by a newer session).
    pub kick: CancellationToken,
    pub connected_at: i64,
}

impl AgentConn {
    /// Delivers a response to the call waiting for it; unknown ids are dropped.
    pub fn resolve(&self, resp: Response) -> bool {
        let Id::Num(id) = resp.id else { return false };
        let waiter = self.pending.lock().ok().and_then(|mut p| p.remove(&id));
        waiter.is_some_and(|w| w.send(resp).is_ok())
    }

    /// Fails every waiting call with "connection lost" (by dropping their senders).
    pub fn fail_pending(&self) {
        if let Ok(mut p) = self.pending.lock() {
            p.clear();
        }
    }
}

/// The latest health and metrics of a host, kept in memory.
#[derive(Debug, Clone, Default)]
pub struct Latest {
    pub health: Option<(i64, Value)>,
    pub metrics: Option<(i64, Value)>,
}

/// Why a call did not produce an agent's answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallError {
    #[error("host {0} is offline")]
    Offline(String),
    #[error("host {host} did not answer within {timeout:?}")]
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

/// All live sessions.
#[derive(Debug, Default)]
pub struct Hub {
    conns: RwLock<HashMap<String, Arc<AgentConn>>>,
    latest: RwLock<HashMap<String, Latest>>,
    next_session: AtomicU64,
    next_call: AtomicU64,
}

impl Hub {
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers a new session for `host_id`, ending any older one (an agent that reconnects
    /// before its old connection timed out replaces it). Returns the receiving end of its outbox.
    pub fn attach(&self, host_id: &str) -> (Arc<AgentConn>, mpsc::Receiver<String>) {
        let (tx, rx) = mpsc::channel(OUTBOX);
        let conn = Arc::new(AgentConn {
            host_id: host_id.to_owned(),
            session: self.next_session.fetch_add(1, Ordering::Relaxed),
            outbox: tx,
            pending: Mutex::new(HashMap::new()),
            kick: CancellationToken::new(),
            connected_at: tomo_common::now_ms(),
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

    pub fn is_online(&self, host_id: &str) -> bool {
        self.conns.read().is_ok_and(|m| m.contains_key(host_id))
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
        self.latest
            .read()
            .ok()
            .and_then(|m| m.get(host_id).cloned())
            .unwrap_or_default()
    }

    pub fn set_latest(&self, host_id: &str, f: impl FnOnce(&mut Latest)) {
        if let Ok(mut m) = self.latest.write() {
            f(m.entry(host_id.to_owned()).or_default());
        }
    }

    /// Sends a request to a connected agent and waits for its answer, at most `timeout`.
    pub async fn call(
        &self,
        host_id: &str,
        method: &str,
        params: Option<&Value>,
        meta: &RequestMeta,
        timeout: Duration,
    ) -> Result<Response, CallError> {
        let conn = self
            .conns
            .read()
            .ok()
            .and_then(|m| m.get(host_id).cloned())
            .ok_or_else(|| CallError::Offline(host_id.into()))?;
        let id = self.next_call.fetch_add(1, Ordering::Relaxed) as i64;
        let (tx, rx) = oneshot::channel();
        if let Ok(mut p) = conn.pending.lock() {
            p.insert(id, tx);
        }
        let req = OutgoingRequest {
            jsonrpc: V2,
            id: Some(Id::Num(id)),
            method,
            params,
            meta: Some(meta),
        };
        let text = serde_json::to_string(&req).unwrap_or_default();
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
}

//! The one way into a handler. Every request from the control plane passes these stages, in this
//! order, and a handler cannot be reached around them (`session::answer` calls [`Guard::admit`]
//! before the dispatcher, and nothing else calls the dispatcher):
//!
//! 1. **Authenticity** — the request carries `sig`, an Ed25519 signature by the control plane's
//!    command key (pinned at registration) over its exact id, method, `meta` and `params` texts.
//!    Nothing of the request is parsed before this passes (`-32001`, `unsigned`/`bad_signature`).
//! 2. **Audience** — `meta.aud` is this agent's id (`audience`).
//! 3. **Freshness and replay** — `meta.exp` not passed (`expired`: the operator's call timed
//!    out), `meta.nonce` unused and `meta.ts` within the window ([`crate::replay`];
//!    `stale`/`replay`).
//! 4. **Method** — served by this agent (`-32601`).
//! 5. **Authorization** — the effective level, the lower of the signed role and the host policy's
//!    ceiling, reaches the method's level, and the host policy allows the method (`-32001`,
//!    `no_role`/`forbidden`/`policy`).
//! 6. **Rate limits** (`-32002`) — commands (execute and admin methods): at most N a minute and M
//!    at once for the host; reads: at most R a minute for each principal (the token the control
//!    plane signs into `meta.principal`), so that a read token cannot keep the agent busy. Frames
//!    that continue a stream an admitted call opened (`stream.ack`, `stream.close`,
//!    `stream.write`, `stream.resize`) are neither commands nor reads: the opening call was
//!    counted, and input is bounded per stream instead ([`crate::stream::InputBudget`]), so an
//!    interactive shell does not lose keystrokes to the command rate (issue 17.1).
//! 7. Params are then parsed by the method's own type and validated by its handler (`-32602`,
//!    `-32004`, `-32005`), and every decision is audited.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use ring::signature::{ED25519, UnparsedPublicKey};
use serde_json::json;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tomo_proto::methods::Level;
use tomo_proto::rpc::{self, RequestMeta, RpcError, code};

use crate::replay::{self, ReplayGuard};

/// Default command rate: this many a minute.
pub const DEFAULT_PER_MINUTE: usize = 30;
/// Default concurrent commands.
pub const DEFAULT_CONCURRENT: usize = 5;
/// Default read rate: this many reads a minute for each principal.
pub const DEFAULT_READS_PER_MINUTE: usize = 600;

/// Frames that continue a stream an admitted call opened: not reads of their own.
const CONTINUATIONS: &[&str] = &[
    "stream.ack",
    "stream.close",
    "stream.write",
    "stream.resize",
];
/// Whether `method` continues a stream that an admitted call opened (input, acks, close): such
/// a frame still passes stages 1–5 but is not a command of its own.
pub fn is_continuation(method: &str) -> bool {
    CONTINUATIONS.contains(&method)
}

/// Principals whose read windows are kept at once; past it, idle windows are dropped first and
/// then the call is refused (the principals come from signed metas, so this is only a bound).
const MAX_READ_PRINCIPALS: usize = 4096;

/// Who the agent trusts: set once the handshake told it its id and the command key.
#[derive(Debug, Clone)]
struct Trust {
    agent_id: String,
    key: Vec<u8>,
}

/// A request that passed every stage; holds the command's concurrency slot while it runs.
#[derive(Debug)]
pub struct Admitted {
    pub meta: RequestMeta,
    pub level: Level,
    _slot: Option<OwnedSemaphorePermit>,
    continuation: bool,
}

impl Admitted {
    /// Whether this is a command (an execute or admin call of its own, counted and audited
    /// before it runs), not a read nor a frame continuing a stream.
    pub fn is_command(&self) -> bool {
        self.level >= Level::Execute && !self.continuation
    }
}

/// A refused request: the error to answer and the reason to audit.
#[derive(Debug, Clone)]
pub struct Denied {
    pub error: RpcError,
    pub reason: &'static str,
    /// The meta, when it was authentic enough to be read.
    pub meta: Option<Box<RequestMeta>>,
}

fn deny(code: i64, reason: &'static str, message: impl Into<String>) -> Denied {
    Denied {
        error: RpcError::new(code, message).with_data(json!({ "reason": reason })),
        reason,
        meta: None,
    }
}

/// The checks before a handler. One per agent process.
#[derive(Debug)]
pub struct Guard {
    trust: RwLock<Option<Trust>>,
    replay: Mutex<ReplayGuard>,
    rate: Mutex<VecDeque<Instant>>,
    per_minute: usize,
    reads: Mutex<HashMap<String, VecDeque<Instant>>>,
    reads_per_minute: usize,
    concurrent: Arc<Semaphore>,
    max_concurrent: usize,
}

impl Guard {
    pub fn new(replay: ReplayGuard, per_minute: usize, concurrent: usize) -> Self {
        Self {
            trust: RwLock::new(None),
            replay: Mutex::new(replay),
            rate: Mutex::new(VecDeque::new()),
            per_minute,
            reads: Mutex::new(HashMap::new()),
            reads_per_minute: DEFAULT_READS_PER_MINUTE,
            concurrent: Arc::new(Semaphore::new(concurrent)),
            max_concurrent: concurrent,
        }
    }

    /// Sets the read rate (reads a minute for each principal; the host policy's
    /// `reads_per_minute`).
    pub fn with_reads_per_minute(mut self, reads_per_minute: usize) -> Self {
        self.reads_per_minute = reads_per_minute;
        self
    }

    /// Trusts `key_b64` (the pinned command key) for requests addressed to `agent_id`.
    pub fn set_trust(&self, agent_id: &str, key_b64: &str) -> bool {
        let Some(key) = tomo_common::unb64(key_b64).filter(|k| k.len() == 32) else {
            return false;
        };
        if let Ok(mut t) = self.trust.write() {
            *t = Some(Trust {
                agent_id: agent_id.to_owned(),
                key,
            });
        }
        true
    }

    /// Runs stages 1–6 on `req`. `level_of` says which methods exist and their level;
    /// `policy` is the host policy's verdict for (method, method level, signed role).
    pub fn admit(
        &self,
        req: &rpc::Request,
        level_of: impl Fn(&str) -> Option<Level>,
        policy: impl Fn(&str, Level, Level) -> Result<(), RpcError>,
    ) -> Result<Admitted, Denied> {
        // 1. Authenticity, over the exact texts, before anything is parsed.
        let trust = self
            .trust
            .read()
            .ok()
            .and_then(|t| t.clone())
            .ok_or_else(|| deny(code::SECURITY, "untrusted", "no command key is pinned"))?;
        let sig = req
            .sig
            .as_deref()
            .and_then(tomo_common::unb64)
            .ok_or_else(|| deny(code::SECURITY, "unsigned", "the request is not signed"))?;
        let id = req
            .id
            .as_ref()
            .map(|i| serde_json::to_string(i).unwrap_or_default())
            .unwrap_or_default();
        let meta_text = req.meta.as_deref().map(|m| m.get()).unwrap_or("");
        let params_text = req.params.as_deref().map(|p| p.get()).unwrap_or("");
        let payload = rpc::command_payload(&id, &req.method, meta_text, params_text);
        UnparsedPublicKey::new(&ED25519, &trust.key)
            .verify(&payload, &sig)
            .map_err(|_| {
                deny(
                    code::SECURITY,
                    "bad_signature",
                    "the signature does not match the control plane's command key",
                )
            })?;
        let meta: RequestMeta = serde_json::from_str(meta_text)
            .map_err(|e| deny(code::SECURITY, "meta", format!("meta: {e}")))?;
        let with_meta = |mut d: Denied| {
            d.meta = Some(Box::new(meta.clone()));
            d
        };
        // 2. Audience.
        if meta.aud.as_deref() != Some(trust.agent_id.as_str()) {
            return Err(with_meta(deny(
                code::SECURITY,
                "audience",
                "the request is addressed to another agent",
            )));
        }
        // 3. Freshness and replay.
        let (Some(nonce), Some(ts)) = (meta.nonce.as_deref(), meta.ts) else {
            return Err(with_meta(deny(
                code::SECURITY,
                "stale",
                "the request has no nonce or timestamp",
            )));
        };
        if !(16..=64).contains(&nonce.len())
            || !nonce
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(with_meta(deny(
                code::SECURITY,
                "stale",
                "the nonce is malformed",
            )));
        }
        // A command carries its signed expiry, the moment the operator's call times out (issue
        // 12.4): mandatory, and never further than the replay window from its signing time.
        let now = tomo_common::now_ms();
        let Some(exp) = meta
            .exp
            .filter(|&e| e >= ts && e - ts <= rpc::MAX_COMMAND_TTL_MS)
        else {
            return Err(with_meta(deny(
                code::SECURITY,
                "stale",
                "the request has no valid expiry (protocol 2 signs one, at most 5 min after its time)",
            )));
        };
        let checked = self
            .replay
            .lock()
            .map_err(|_| deny(code::INTERNAL_ERROR, "internal", "replay guard poisoned"))?
            .check(nonce, ts, now);
        match checked {
            Ok(()) => {}
            Err(replay::Refusal::Replay) => {
                return Err(with_meta(deny(
                    code::SECURITY,
                    "replay",
                    "this request was already received",
                )));
            }
            Err(replay::Refusal::Unrecorded) => {
                return Err(with_meta(deny(
                    code::SECURITY,
                    "replay_log",
                    "the agent cannot record this request's nonce (is its data directory full?); refusing it",
                )));
            }
            Err(replay::Refusal::Stale) => {
                return Err(with_meta(deny(
                    code::SECURITY,
                    "stale",
                    "the request's timestamp is outside the accepted window (5 min past, 30 s ahead)",
                )));
            }
        }
        // Held back in the network past its expiry, it is refused, not run late.
        if now > exp {
            return Err(with_meta(deny(
                code::SECURITY,
                "expired",
                format!(
                    "the request expired {} ms before it arrived (the operator's call had already timed out); not run",
                    now - exp
                ),
            )));
        }
        // 4. Method.
        let Some(level) = level_of(&req.method) else {
            let mut d = deny(
                code::METHOD_NOT_FOUND,
                "unknown_method",
                format!("method not found: {}", req.method),
            );
            d.error.data = None;
            return Err(with_meta(d));
        };
        // 5. Authorization.
        let Some(role) = meta.role else {
            return Err(with_meta(deny(
                code::SECURITY,
                "no_role",
                "the request carries no role",
            )));
        };
        if role < level {
            return Err(with_meta(deny(
                code::SECURITY,
                "forbidden",
                format!(
                    "{} needs the {level:?} role, the caller has {role:?}",
                    req.method
                ),
            )));
        }
        policy(&req.method, level, role).map_err(|error| {
            with_meta(Denied {
                error,
                reason: "policy",
                meta: None,
            })
        })?;
        // 6. Rate limits for commands, then for reads; stream continuations are neither.
        let continuation = is_continuation(&req.method);
        let slot = if continuation {
            None
        } else if level >= Level::Execute {
            let slot = Arc::clone(&self.concurrent).try_acquire_owned().map_err(|_| {
                with_meta(deny(
                    code::RATE_LIMITED,
                    "concurrency",
                    format!(
                        "{} commands are already running on this host; try again when one is done",
                        self.max_concurrent
                    ),
                ))
            })?;
            let now = Instant::now();
            let mut rate = self
                .rate
                .lock()
                .map_err(|_| deny(code::INTERNAL_ERROR, "internal", "rate window poisoned"))?;
            while rate
                .front()
                .is_some_and(|t| now.duration_since(*t) >= Duration::from_secs(60))
            {
                rate.pop_front();
            }
            if rate.len() >= self.per_minute {
                return Err(with_meta(deny(
                    code::RATE_LIMITED,
                    "rate",
                    format!(
                        "more than {} commands in the last minute on this host",
                        self.per_minute
                    ),
                )));
            }
            rate.push_back(now);
            Some(slot)
        } else {
            self.count_read(meta.principal.as_deref().unwrap_or(""))
                .map_err(with_meta)?;
            None
        };
        Ok(Admitted {
            meta,
            level,
            _slot: slot,
            continuation,
        })
    }

    /// Counts a read for `principal` in its sliding minute, or refuses it.
    fn count_read(&self, principal: &str) -> Result<(), Denied> {
        let now = Instant::now();
        let minute = Duration::from_secs(60);
        let mut reads = self
            .reads
            .lock()
            .map_err(|_| deny(code::INTERNAL_ERROR, "internal", "read windows poisoned"))?;
        if !reads.contains_key(principal) && reads.len() >= MAX_READ_PRINCIPALS {
            reads.retain(|_, w| w.back().is_some_and(|t| now.duration_since(*t) < minute));
            if reads.len() >= MAX_READ_PRINCIPALS {
                return Err(deny(
                    code::RATE_LIMITED,
                    "read_rate",
                    "too many principals are reading this host; try again in a minute",
                ));
            }
        }
        let window = reads.entry(principal.to_owned()).or_default();
        while window
            .front()
            .is_some_and(|t| now.duration_since(*t) >= minute)
        {
            window.pop_front();
        }
        if window.len() >= self.reads_per_minute {
            return Err(deny(
                code::RATE_LIMITED,
                "read_rate",
                format!(
                    "read rate exceeded: more than {} reads in the last minute by this token on this host (the host policy's reads_per_minute); try again shortly",
                    self.reads_per_minute
                ),
            ));
        }
        window.push_back(now);
        Ok(())
    }
}

#[cfg(test)]
mod tests;

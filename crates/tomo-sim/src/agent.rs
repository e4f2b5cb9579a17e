//! One simulated agent: its identity, its connect/serve/reconnect loop, and its session loop.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt as _, StreamExt as _};
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, frame::coding::CloseCode};
use tomo_agent::backoff::Backoff;
use tomo_agent::identity::Keys;
use tomo_agent::pipeline::Guard;
use tomo_agent::replay::{self, ReplayGuard};
use tomo_agent::session::{SessionError, Welcomed, Ws};
use tomo_proto::audit::{AUDIT_RECORD, AuditRecord};
use tomo_proto::handshake::{ChannelBinding, Handshake};
use tomo_proto::methods::{HEALTH_STATUS, METRICS_UPDATE};
use tomo_proto::rpc::{self, Frame, Id, Message, Response, RpcError};

use crate::Shared;
use crate::canned::Canned;

/// How the next handshake identifies the agent.
enum Mode {
    Register {
        code: String,
        fingerprint: String,
    },
    Authenticate {
        agent_id: String,
        command_key: String,
    },
}

/// What one simulated agent keeps across sessions.
pub(crate) struct SimAgent {
    index: usize,
    hostname: String,
    keys: Keys,
    mode: Mode,
    /// The agent's request pipeline: pinned key, replay memory, rate limits.
    guard: Guard,
    started: Instant,
}

/// How a session ended.
enum End {
    Stopped,
    Lost(&'static str),
}

/// Runs agent `index` until the simulation stops or the control plane refuses it for good.
pub(crate) async fn run(shared: Arc<Shared>, index: usize, code: String, delay: Duration) {
    let fingerprint = tomo_proto::handshake::split_code(&code)
        .1
        .map(str::to_ascii_lowercase);
    let Some(fingerprint) = fingerprint else {
        shared
            .stats
            .failed("welcome:code_without_fingerprint".into());
        shared.stats.stopped();
        return;
    };
    let mut agent = SimAgent {
        index,
        hostname: format!("sim-{index:05}"),
        keys: Keys::generate(),
        mode: Mode::Register { code, fingerprint },
        guard: Guard::new(
            ReplayGuard::in_memory(replay::CAPACITY),
            tomo_agent::pipeline::DEFAULT_PER_MINUTE,
            tomo_agent::pipeline::DEFAULT_CONCURRENT,
        ),
        started: Instant::now(),
    };
    tokio::select! {
        _ = tokio::time::sleep(delay) => {}
        _ = shared.stop.cancelled() => return,
    }
    let mut backoff = Backoff::new(
        shared.intervals.backoff_initial,
        shared.intervals.backoff_max,
    );
    loop {
        let dialer = &shared.dialers[agent.index % shared.dialers.len()];
        let hello = |nonce: &str, binding: &ChannelBinding| agent.hello(nonce, binding);
        let opened = tokio::select! {
            r = tomo_agent::session::open(dialer, &shared.url, hello, shared.intervals.handshake_timeout) => r,
            _ = shared.stop.cancelled() => return,
        };
        match opened {
            Ok((ws, welcomed)) => match agent.welcomed(&welcomed) {
                Ok(registered) => {
                    if registered {
                        shared.stats.registered(&welcomed.agent_id);
                    }
                    backoff.reset();
                    shared.stats.session_up();
                    let end = agent.serve(ws, &shared).await;
                    shared.stats.session_down();
                    match end {
                        End::Stopped => return,
                        End::Lost(why) => shared.stats.failed(format!("lost:{why}")),
                    }
                }
                Err(why) => {
                    // Like the agent: a control plane that offers the wrong id or key gets no
                    // more attempts from this agent.
                    shared.stats.failed(format!("welcome:{why}"));
                    shared.stats.stopped();
                    return;
                }
            },
            Err(SessionError::Refused { reason, .. }) if reason.is_permanent() => {
                shared.stats.failed(format!("handshake:{reason}"));
                shared.stats.stopped();
                return;
            }
            Err(e) => shared.stats.failed(failure_kind(&e)),
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff.next_delay()) => {}
            _ = shared.stop.cancelled() => return,
        }
    }
}

/// The failure class of a connection attempt, for the counters.
fn failure_kind(e: &SessionError) -> String {
    match e {
        SessionError::Connect { source, .. }
            if source.kind() == std::io::ErrorKind::ConnectionRefused =>
        {
            "refused".into()
        }
        SessionError::Connect { source, .. } => format!("connect:{:?}", source.kind()),
        SessionError::Tls { .. } => "tls".into(),
        SessionError::WebSocket(_) => "websocket".into(),
        SessionError::Protocol(_) => "protocol".into(),
        SessionError::Refused { reason, .. } => format!("handshake:{reason}"),
        SessionError::Timeout(_) => "timeout".into(),
    }
}

impl SimAgent {
    /// The agent's answer to a challenge: `register` or `authenticate`, signed over the nonce
    /// and the connection's channel binding.
    fn hello(&self, nonce: &str, binding: &ChannelBinding) -> Handshake {
        let mut facts = Canned::facts(&self.hostname);
        facts.clock_ms = Some(tomo_common::now_ms());
        let sign = |m: &[u8]| self.keys.sign_b64(m);
        match &self.mode {
            Mode::Register { code, .. } => tomo_common::hello::register(
                code,
                &self.keys.public_key_b64(),
                sign,
                nonce,
                binding,
                facts,
            ),
            Mode::Authenticate { agent_id, .. } => {
                tomo_common::hello::authenticate(agent_id, sign, nonce, binding, facts, None)
            }
        }
    }

    /// Checks a `welcome` as the agent does (its own id; the command key named by the code, or
    /// the one pinned at registration; the welcome signed by it over this connection) and
    /// trusts the key. Returns whether this was the registration.
    fn welcomed(&mut self, w: &Welcomed) -> Result<bool, &'static str> {
        let (agent_id, offered) = (w.agent_id.as_str(), w.command_key.as_str());
        let key = tomo_common::unb64(offered)
            .filter(|k| k.len() == 32)
            .ok_or("malformed_command_key")?;
        let registered = match &self.mode {
            Mode::Register { fingerprint, .. } => {
                if agent_id != tomo_common::agent_id_for(self.keys.public_key()) {
                    return Err("wrong_agent_id");
                }
                let actual = tomo_proto::handshake::fingerprint_hex(&tomo_common::sha256(&key));
                if &actual != fingerprint {
                    return Err("command_key_not_in_code");
                }
                true
            }
            Mode::Authenticate {
                agent_id: mine,
                command_key,
            } => {
                if agent_id != mine {
                    return Err("wrong_agent_id");
                }
                if command_key != offered {
                    return Err("command_key_changed");
                }
                false
            }
        };
        if !tomo_common::hello::welcome_verifies(
            offered,
            agent_id,
            &self.keys.public_key_b64(),
            &w.nonce,
            &w.binding,
            &w.signature,
        ) {
            return Err("welcome_not_signed");
        }
        if !self.guard.set_trust(agent_id, offered) {
            return Err("malformed_command_key");
        }
        self.mode = Mode::Authenticate {
            agent_id: agent_id.to_owned(),
            command_key: offered.to_owned(),
        };
        Ok(registered)
    }

    /// Serves one session: answers requests, pushes metrics and health, sends heartbeats.
    async fn serve(&self, ws: Ws, shared: &Shared) -> End {
        let iv = shared.intervals;
        let (mut sink, mut stream) = ws.split();
        let start = tokio::time::Instant::now();
        let mut heartbeat = tokio::time::interval_at(start + iv.heartbeat, iv.heartbeat);
        // First ticks are immediate: like the agent, a session starts with a push of each.
        let mut metrics = tokio::time::interval(iv.metrics_push);
        let mut health = tokio::time::interval(iv.health_push);
        for t in [&mut heartbeat, &mut metrics, &mut health] {
            t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        }
        let mut push = shared.push.clone();
        push.borrow_and_update();
        let dead = tokio::time::sleep(iv.dead_after);
        tokio::pin!(dead);
        loop {
            let out: Vec<String> = tokio::select! {
                biased;
                _ = shared.stop.cancelled() => {
                    let close = CloseFrame { code: CloseCode::Away, reason: "agent shutting down".into() };
                    let _ = sink.send(WsMessage::Close(Some(close))).await;
                    let _ = sink.close().await;
                    return End::Stopped;
                }
                msg = stream.next() => {
                    dead.as_mut().reset(tokio::time::Instant::now() + iv.dead_after);
                    match msg {
                        Some(Ok(WsMessage::Text(text))) => self.on_text(&text, shared),
                        Some(Ok(WsMessage::Binary(_))) => vec![Response::err(Id::Null, RpcError::invalid_request("binary frames are not part of the protocol")).to_json()],
                        Some(Ok(WsMessage::Close(_))) => return End::Lost("closed"),
                        Some(Ok(_)) => Vec::new(),
                        Some(Err(_)) => return End::Lost("error"),
                        None => return End::Lost("error"),
                    }
                }
                _ = &mut dead => return End::Lost("dead"),
                _ = heartbeat.tick() => {
                    if sink.send(WsMessage::Ping(Default::default())).await.is_err() {
                        return End::Lost("error");
                    }
                    Vec::new()
                }
                _ = metrics.tick() => vec![rpc::notification_text(METRICS_UPDATE, &shared.canned.metrics())],
                Ok(()) = push.changed() => vec![rpc::notification_text(METRICS_UPDATE, &shared.canned.metrics())],
                _ = health.tick() => vec![rpc::notification_text(HEALTH_STATUS, &Canned::health(self.started.elapsed().as_secs()))],
            };
            for text in out {
                if text.starts_with(r#"{"jsonrpc":"2.0","method""#) {
                    shared.stats.notification();
                }
                if sink.send(WsMessage::text(text)).await.is_err() {
                    return End::Lost("error");
                }
            }
        }
    }

    /// Handles one text frame; returns the frames to send (answers, then audit records).
    fn on_text(&self, text: &str, shared: &Shared) -> Vec<String> {
        match rpc::parse_frame(text) {
            Frame::Error(e) => vec![Response::err(Id::Null, e).to_json()],
            Frame::Single(Message::Invalid(id, e)) => vec![Response::err(id, e).to_json()],
            Frame::Single(Message::Response(_)) => Vec::new(),
            Frame::Single(Message::Request(req)) => {
                let mut audits = Vec::new();
                let answer = self.answer(&req, shared, &mut audits);
                answer
                    .map(|r| r.to_json())
                    .into_iter()
                    .chain(audits)
                    .collect()
            }
            Frame::Batch(items) => {
                let mut audits = Vec::new();
                let answers: Vec<Response> = items
                    .into_iter()
                    .filter_map(|m| match m {
                        Message::Request(req) => self.answer(&req, shared, &mut audits),
                        Message::Invalid(id, e) => Some(Response::err(id, e)),
                        Message::Response(_) => None,
                    })
                    .collect();
                let first = (!answers.is_empty())
                    .then(|| serde_json::to_string(&answers).unwrap_or_default());
                first.into_iter().chain(audits).collect()
            }
        }
    }

    /// One request: the agent's pipeline first, then the canned answer; the decision goes to
    /// `audits` as an `audit.record`. `None` for a notification (not executed, as on the agent).
    fn answer(
        &self,
        req: &rpc::Request,
        shared: &Shared,
        audits: &mut Vec<String>,
    ) -> Option<Response> {
        let id = req.id.clone()?;
        let started = Instant::now();
        let admitted =
            self.guard
                .admit(req, tomo_proto::methods::level_of, |method, level, role| {
                    shared.policy.check_method(method, level, role)
                });
        let (meta, outcome, decision, reason) = match admitted {
            Err(denied) => {
                shared.stats.request(false);
                let reason = denied.reason.to_owned();
                (
                    denied.meta.map(|m| *m),
                    Err(denied.error),
                    "denied",
                    Some(reason),
                )
            }
            Ok(admitted) => {
                shared.stats.request(true);
                let params = req.params.as_deref().map(|p| p.get());
                let outcome = shared.canned.answer(&self.hostname, &req.method, params);
                let reason = outcome.as_ref().err().map(|_| "error".to_owned());
                (Some(admitted.meta), outcome, "allowed", reason)
            }
        };
        let record = AuditRecord {
            at_ms: tomo_common::now_ms(),
            trace_id: meta.as_ref().and_then(|m| m.trace_id.clone()),
            principal: meta.as_ref().and_then(|m| m.principal.clone()),
            role: meta.as_ref().and_then(|m| m.role),
            method: req.method.clone(),
            // Params of a request that is not authentic are not worth keeping.
            params: meta.as_ref().and(
                req.params
                    .as_deref()
                    .and_then(|p| serde_json::from_str(p.get()).ok()),
            ),
            decision: decision.into(),
            reason,
            outcome: match &outcome {
                Ok(_) => "ok".into(),
                Err(e) => e.code.to_string(),
            },
            error: outcome.as_ref().err().map(|e| e.message.clone()),
            duration_ms: started.elapsed().as_millis() as u64,
            admission_id: None,
        };
        audits.push(rpc::notification_text(AUDIT_RECORD, &record));
        Some(match outcome {
            Ok(v) => Response::ok(id, v),
            Err(e) => Response::err(id, e),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tomo_proto::methods::Level;
    use tomo_proto::rpc::RequestMeta;

    fn shared() -> Shared {
        Shared {
            url: "wss://127.0.0.1:1/agent/ws".into(),
            intervals: crate::Intervals::default(),
            dialers: Vec::new(),
            canned: Canned::new(5),
            policy: tomo_agent::policy::HostPolicy::default_for(std::path::Path::new("/srv/tomo")),
            stats: Arc::new(crate::Stats::new(1)),
            stop: tokio_util::sync::CancellationToken::new(),
            push: tokio::sync::watch::channel(0).1,
        }
    }

    /// An agent registered as `agent_id` that trusts `command`.
    fn agent(agent_id: &str, command: &Keys) -> SimAgent {
        let a = SimAgent {
            index: 0,
            hostname: "sim-00000".into(),
            keys: Keys::generate(),
            mode: Mode::Authenticate {
                agent_id: agent_id.into(),
                command_key: command.public_key_b64(),
            },
            guard: Guard::new(ReplayGuard::in_memory(100), 30, 5),
            started: Instant::now(),
        };
        assert!(a.guard.set_trust(agent_id, &command.public_key_b64()));
        a
    }

    /// A request as the control plane builds it, signed by `key`.
    fn request(key: &Keys, id: i64, aud: &str, method: &str, nonce: &str) -> String {
        let meta = RequestMeta {
            trace_id: Some("t".into()),
            principal: Some("bench".into()),
            role: Some(Level::Read),
            aud: Some(aud.into()),
            nonce: Some(nonce.into()),
            ts: Some(tomo_common::now_ms()),
            exp: Some(tomo_common::now_ms() + 30_000),
            wait_ms: Some(30_000),
            idempotency_key: None,
        };
        let meta = serde_json::to_string(&meta).expect("meta");
        let id = id.to_string();
        let payload = rpc::command_payload(&id, method, &meta, "");
        rpc::signed_request_text(&id, method, &meta, None, &key.sign_b64(&payload))
    }

    fn answer_of(frames: &[String]) -> Response {
        serde_json::from_str(&frames[0]).expect("a response")
    }

    #[test]
    fn signed_requests_are_answered_and_audited() {
        let (s, command) = (shared(), Keys::generate());
        let a = agent("agent-1", &command);
        let frames = a.on_text(
            &request(&command, 7, "agent-1", "agent.ping", "0123456789abcdef0"),
            &s,
        );
        assert_eq!(frames.len(), 2, "answer and audit record: {frames:?}");
        let r = answer_of(&frames);
        assert_eq!(r.id, Id::Num(7));
        assert!(!r.is_error(), "{frames:?}");
        assert!(frames[1].contains(r#""method":"audit.record""#));
        assert!(frames[1].contains(r#""decision":"allowed""#));
        assert_eq!(s.stats.snapshot().requests, 1);
    }

    #[test]
    fn forged_replayed_and_misaddressed_requests_are_refused() {
        let (s, command, forger) = (shared(), Keys::generate(), Keys::generate());
        let a = agent("agent-1", &command);
        let cases = [
            (
                request(&forger, 1, "agent-1", "agent.ping", "aaaaaaaaaaaaaaaa1"),
                "bad_signature",
            ),
            (
                request(&command, 2, "agent-2", "agent.ping", "aaaaaaaaaaaaaaaa2"),
                "audience",
            ),
            (
                request(&command, 3, "agent-1", "agent.restart", "aaaaaaaaaaaaaaaa3"),
                "forbidden",
            ),
        ];
        for (text, reason) in cases {
            let frames = a.on_text(&text, &s);
            let r = answer_of(&frames);
            let rpc::Outcome::Error(e) = r.outcome else {
                panic!("{reason}: admitted: {frames:?}");
            };
            assert_eq!(e.code, rpc::code::SECURITY, "{reason}");
            assert!(frames[1].contains(reason), "{reason}: {frames:?}");
        }
        let once = request(&command, 4, "agent-1", "agent.ping", "bbbbbbbbbbbbbbbb4");
        assert!(!answer_of(&a.on_text(&once, &s)).is_error());
        let again = answer_of(&a.on_text(&once, &s));
        assert!(again.is_error(), "a replay is refused");
        let snap = s.stats.snapshot();
        assert_eq!((snap.requests, snap.denied), (1, 4));
    }

    #[test]
    fn the_welcome_must_name_this_agent_and_the_pinned_key_and_be_signed_for_this_connection() {
        let command = Keys::generate();
        let mut a = agent("agent-1", &command);
        let binding = ChannelBinding([5; 32]);
        let mine = a.keys.public_key_b64();
        let signed = |id: &str, key: &Keys, signer: &Keys, on: &ChannelBinding| Welcomed {
            agent_id: id.into(),
            command_key: key.public_key_b64(),
            signature: signer.sign_b64(&tomo_proto::handshake::signing_payload(
                tomo_proto::handshake::Purpose::Welcome,
                "nonce",
                on,
                &tomo_proto::handshake::welcome_subject(id, &mine),
            )),
            nonce: "nonce".into(),
            binding,
            events_since_nanos: None,
            audit_since_ms: None,
        };
        let other = Keys::generate();
        assert_eq!(
            a.welcomed(&signed("agent-2", &command, &command, &binding)),
            Err("wrong_agent_id")
        );
        assert_eq!(
            a.welcomed(&signed("agent-1", &other, &other, &binding)),
            Err("command_key_changed")
        );
        assert_eq!(
            a.welcomed(&signed("agent-1", &command, &other, &binding)),
            Err("welcome_not_signed")
        );
        assert_eq!(
            a.welcomed(&signed(
                "agent-1",
                &command,
                &command,
                &ChannelBinding([6; 32])
            )),
            Err("welcome_not_signed"),
            "signed for another connection (a relay's)"
        );
        assert_eq!(
            a.welcomed(&signed("agent-1", &command, &command, &binding)),
            Ok(false)
        );
    }
}

//! An agent's session on `/agent/ws` once upgraded (the upgrade itself is
//! `http::agent_upgrade`): the session handshake, and the session loop (heartbeats, routing of
//! responses to waiting calls, health and metrics notifications).

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt as _, StreamExt as _};
use ring::signature::{ED25519, UnparsedPublicKey};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, frame::coding::CloseCode};
use tokio_tungstenite::tungstenite::{self, Message as WsMessage};
use tomo_common::{b64, now_ms, unb64};
use tomo_proto::handshake::{
    ChannelBinding, Handshake, HostFacts, Purpose, RefusalReason, signing_payload, welcome_subject,
};
use tomo_proto::methods::{
    DOCKER_EVENT, DockerEvent, HEALTH_STATUS, HealthStatus, METRICS_UPDATE, Metrics, STREAM_DATA,
    STREAM_END, StreamData, StreamEnd,
};
use tomo_proto::rpc::{self, Frame, Id, Message, Response, RpcError};

use crate::AppState;
use crate::agents::hub::AgentConn;
use crate::store::{HostRecord, NewHost, RegisterError, SampleKind, SecurityEvent, StoreError};

type Sink<S> = SplitSink<WebSocketStream<S>, WsMessage>;
type Stream<S> = SplitStream<WebSocketStream<S>>;

/// Runs one agent connection from handshake to close. Generic over the byte stream so that
/// tests drive it over in-memory pipes with a paused clock. `peer` is the source address, for
/// the throttling of guessed codes and credentials; `binding` is the TLS channel binding of the
/// connection (tests over pipes pass the same value to both ends).
pub async fn run_session<S>(
    ws: WebSocketStream<S>,
    state: Arc<AppState>,
    peer: Option<IpAddr>,
    budget: Option<crate::budget::ReadBudget>,
    binding: ChannelBinding,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sink, mut stream) = ws.split();
    // A blocked address is still served a valid agent key (issue 12.6: one guesser behind a NAT
    // must not lock out the fleet behind it); what it may no longer do is guess: a registration
    // code is refused unseen, a failed handshake is answered `throttled`.
    let blocked = peer.and_then(|ip| state.throttle.check(ip).err());
    // The challenge and the agent's first message come before any turn, within their own short
    // deadline: a silent peer holds no session handshake turn (issue 12.5).
    let first = tokio::time::timeout(
        state.config.first_message_timeout,
        first_message(&mut sink, &mut stream),
    )
    .await;
    let mut challenge = String::new();
    // When the agent's message arrived: its clock then, minus this one, is the offset.
    let received_at = now_ms();
    let handshake = match first {
        Ok(Ok((nonce, text))) => {
            challenge.clone_from(&nonce);
            // Handshakes take turns (see `Hub::handshake_turn`). The wait for a turn is bounded
            // apart from the handshake's own deadline: it measures how busy this process is,
            // not the agent.
            let Ok(Some(turn)) =
                tokio::time::timeout(crate::HANDSHAKE_QUEUE, state.hub.handshake_turn()).await
            else {
                tracing::debug!("no turn for the session handshake in time");
                return;
            };
            let handshake = tokio::time::timeout(
                state.config.handshake_timeout,
                handshake(&state, blocked, &nonce, &binding, &text),
            )
            .await;
            // The turn is the handshake's only, not the session's.
            drop(turn);
            handshake
        }
        Ok(Err(refusal)) => Ok(Err(refusal)),
        Err(elapsed) => Err(elapsed),
    };
    let (host, agent_key) = match handshake {
        Ok(Ok(done)) => done,
        Ok(Err(Refusal(reason, message))) => {
            tracing::info!(%reason, %message, "agent handshake refused");
            let guessing = matches!(
                reason,
                RefusalReason::CodeUnknown
                    | RefusalReason::CodeUsed
                    | RefusalReason::CodeExpired
                    | RefusalReason::BadSignature
                    | RefusalReason::UnknownAgent
            );
            if let (true, Some(ip)) = (guessing, peer) {
                // A blocked guesser is told when to come back, and its guess is not counted
                // (nor recorded) again.
                if let Some(wait) = blocked {
                    let message = format!(
                        "too many failed attempts from this address; try again in {} s",
                        wait.as_secs().max(1)
                    );
                    refuse(&mut sink, RefusalReason::Throttled, message).await;
                    return;
                }
                state.throttle.failed(ip);
            }
            if matches!(
                reason,
                RefusalReason::BadSignature
                    | RefusalReason::HostRemoved
                    | RefusalReason::UnknownAgent
            ) {
                let from = peer.map(|p| p.to_string()).unwrap_or_else(|| "?".into());
                record(
                    &state,
                    None,
                    &reason.to_string(),
                    &format!("{message} (from {from})"),
                )
                .await;
            }
            refuse(&mut sink, reason, message).await;
            return;
        }
        Err(_) => {
            refuse(
                &mut sink,
                RefusalReason::Malformed,
                "handshake timed out".into(),
            )
            .await;
            return;
        }
    };
    // Authenticated: the agent may now send answers as large as the protocol allows.
    if let Some(b) = &budget {
        b.lift();
    }
    let offset = clock_offset(host.facts.clock_ms, received_at);
    if offset.abs() > CLOCK_WARN_MS {
        tracing::warn!(host_id = %host.id, offset_ms = offset, "{}", clock_skew_text(&host.hostname, offset));
    }
    let (conn, outbox) = state.hub.attach(&host.id, offset);
    // Signed, so that the agent knows it reached this control plane on this very connection
    // before it trusts or saves anything (a relay cannot welcome it as itself).
    let subject = welcome_subject(&host.id, &b64(&agent_key));
    // Where the agent's event subscription starts: after an outage, at the newest event stored.
    let events_since_nanos = match state.store.newest_docker_event(&host.id).await {
        Ok(t) => t,
        Err(e) => {
            tracing::warn!(host_id = %host.id, error = %e, "cannot read the newest Docker event; events start now");
            None
        }
    };
    let audit_since_ms = match state.store.newest_agent_audit(&host.id).await {
        Ok(t) => t,
        Err(e) => {
            tracing::warn!(host_id = %host.id, error = %e, "cannot read the host's newest audit record");
            None
        }
    };
    let welcome = Handshake::Welcome {
        proto_version: tomo_proto::PROTO_VERSION,
        agent_id: host.id.clone(),
        heartbeat_secs: state.config.heartbeat.as_secs(),
        command_key: state.hub.command_key().to_owned(),
        signature: state.hub.sign_welcome(&signing_payload(
            Purpose::Welcome,
            &challenge,
            &binding,
            &subject,
        )),
        events_since_nanos,
        audit_since_ms,
    };
    if sink.send(WsMessage::text(welcome.to_json())).await.is_ok() {
        tracing::info!(host_id = %host.id, hostname = %host.hostname, "agent connected");
        let why = serve(&mut sink, &mut stream, outbox, &conn, &state).await;
        tracing::info!(host_id = %host.id, reason = %why, "agent disconnected");
    }
    state.hub.detach(&conn);
    state.samples.seen(&host.id, now_ms()).await;
}

/// A clock offset past this is warned about (in the log, `GET /hosts/{host}` and `tomo hosts`).
pub const CLOCK_WARN_MS: i64 = 10_000;

/// The agent's clock minus this one's, from the time the agent put in its handshake message and
/// the time it arrived (0 when it sent none). Its error is the message's one-way delay, bounded
/// by the handshake deadline; the message is on the TLS connection the agent signed for.
fn clock_offset(agent_clock_ms: Option<i64>, received_at: i64) -> i64 {
    agent_clock_ms.map_or(0, |t| t.saturating_sub(received_at))
}

/// What an operator reads about a host whose clock is off: how much, which way, what to do.
pub fn clock_skew_text(host: &str, offset_ms: i64) -> String {
    let secs = offset_ms.abs() as f64 / 1000.0;
    let way = if offset_ms > 0 { "ahead of" } else { "behind" };
    format!(
        "clock skew of {secs:.0} s between the control plane and host {host} (its clock is {way} the control plane's): commands are stamped in the host's time, so they still run, but fix its clock (NTP)"
    )
}

/// A refused handshake: the reason sent to the agent, and a message for the operator.
struct Refusal(RefusalReason, String);

impl Refusal {
    fn new(reason: RefusalReason, message: impl Into<String>) -> Self {
        Self(reason, message.into())
    }
}

impl From<StoreError> for Refusal {
    fn from(e: StoreError) -> Self {
        tracing::error!(error = %e, "store failure during handshake");
        Self::new(
            RefusalReason::Internal,
            "the control plane could not complete the handshake",
        )
    }
}

async fn refuse<S: AsyncRead + AsyncWrite + Unpin>(
    sink: &mut Sink<S>,
    reason: RefusalReason,
    message: String,
) {
    let _ = sink
        .send(WsMessage::text(
            Handshake::Refused { reason, message }.to_json(),
        ))
        .await;
    let close = CloseFrame {
        code: CloseCode::Policy,
        reason: reason.as_str().into(),
    };
    let _ = sink.send(WsMessage::Close(Some(close))).await;
    let _ = sink.close().await;
}

/// The agent id of a public key: the first 16 bytes of its SHA-256, as a UUID-shaped string.
pub fn agent_id_for(public_key: &[u8]) -> String {
    tomo_common::agent_id_for(public_key)
}

/// Sends the challenge and reads the agent's first handshake message: its nonce and text.
async fn first_message<S: AsyncRead + AsyncWrite + Unpin>(
    sink: &mut Sink<S>,
    stream: &mut Stream<S>,
) -> Result<(String, tungstenite::Utf8Bytes), Refusal> {
    let nonce = b64(&tomo_common::random_bytes::<32>());
    let challenge = Handshake::Challenge {
        proto_version: tomo_proto::PROTO_VERSION,
        nonce: nonce.clone(),
    };
    sink.send(WsMessage::text(challenge.to_json()))
        .await
        .map_err(|_| Refusal::new(RefusalReason::Malformed, "connection failed"))?;
    let text = loop {
        match stream.next().await {
            Some(Ok(WsMessage::Text(t))) => break t,
            Some(Ok(WsMessage::Ping(_) | WsMessage::Pong(_))) => continue,
            Some(Err(e)) if crate::budget::is_over_budget(&e) => {
                return Err(Refusal::new(
                    RefusalReason::Malformed,
                    "more data than a handshake before authenticating",
                ));
            }
            _ => {
                return Err(Refusal::new(
                    RefusalReason::Malformed,
                    "expected a text handshake message",
                ));
            }
        }
    };
    Ok((nonce, text))
}

/// A successful handshake: the host and the agent key that answered the challenge (what the
/// welcome is signed over).
type Handshaken = (HostRecord, Vec<u8>);

/// Judges the agent's first message (`text`, an answer to the challenge `nonce` on the
/// connection whose channel binding is `binding`).
async fn handshake(
    state: &AppState,
    blocked: Option<Duration>,
    nonce: &str,
    binding: &ChannelBinding,
    text: &str,
) -> Result<Handshaken, Refusal> {
    let msg = Handshake::parse(text).map_err(|r| {
        // An older agent's message does not parse: tell it which protocol to speak.
        match old_version(text) {
            Some(v) => check_version(v)
                .err()
                .unwrap_or_else(|| Refusal::new(r, "not a handshake message")),
            None => Refusal::new(r, "not a handshake message"),
        }
    })?;
    match msg {
        Handshake::Register {
            proto_version,
            code_key,
            code_signature,
            public_key,
            signature,
            facts,
        } => {
            check_version(proto_version)?;
            if blocked.is_some() {
                return Err(Refusal::new(
                    RefusalReason::Throttled,
                    "too many failed attempts from this address",
                ));
            }
            check_facts(&facts)?;
            let key = unb64(&public_key)
                .filter(|k| k.len() == 32)
                .ok_or_else(|| {
                    Refusal::new(
                        RefusalReason::Malformed,
                        "public_key must be 32 bytes of base64",
                    )
                })?;
            let code_key = unb64(&code_key).filter(|k| k.len() == 32).ok_or_else(|| {
                Refusal::new(
                    RefusalReason::Malformed,
                    "code_key must be 32 bytes of base64",
                )
            })?;
            // Both proofs name this connection: what a relay forwards fails here. Checked before
            // the store is asked, so a failed proof never burns a code.
            verify(
                &key,
                &signing_payload(Purpose::Register, nonce, binding, &public_key),
                &signature,
            )?;
            verify(
                &code_key,
                &signing_payload(Purpose::Code, nonce, binding, &public_key),
                &code_signature,
            )?;
            let host = NewHost {
                id: agent_id_for(&key),
                public_key: key,
                facts,
            };
            // The store knows a code by the hash of its public key only.
            let code_hash = tomo_common::code_id(&code_key);
            match state.store.register(&host, &code_hash, now_ms()).await {
                Ok(h) => {
                    tracing::info!(host_id = %h.id, hostname = %h.hostname, "agent registered");
                    let key = h.public_key.clone();
                    Ok((h, key))
                }
                Err(e) => {
                    let reason = match e {
                        RegisterError::CodeUnknown => RefusalReason::CodeUnknown,
                        RegisterError::CodeUsed => RefusalReason::CodeUsed,
                        RegisterError::CodeExpired => RefusalReason::CodeExpired,
                        // No new refusal reason (a protocol change): the agent's advice is the
                        // same, a new code; the message says which.
                        RegisterError::CodeRevoked => RefusalReason::CodeExpired,
                        RegisterError::KnownKey { removed: true } => RefusalReason::HostRemoved,
                        // The key proves who it is: welcome it as the host it already is.
                        RegisterError::KnownKey { removed: false } => {
                            let h = authenticated(state, &host.id, host.facts.clone()).await?;
                            return Ok((h, host.public_key));
                        }
                        RegisterError::Store(e) => return Err(e.into()),
                    };
                    record(
                        state,
                        None,
                        "registration_refused",
                        &format!("{reason} (hostname {})", host.facts.hostname),
                    )
                    .await;
                    Err(Refusal::new(reason, e.to_string()))
                }
            }
        }
        Handshake::Authenticate {
            proto_version,
            agent_id,
            signature,
            facts,
            rotate,
        } => {
            check_version(proto_version)?;
            check_facts(&facts)?;
            let host = match state.store.host(&agent_id).await {
                Ok(h) => h,
                Err(StoreError::NotFound) => {
                    return Err(Refusal::new(
                        RefusalReason::UnknownAgent,
                        "no host with this agent id",
                    ));
                }
                Err(e) => return Err(e.into()),
            };
            if host.removed_at.is_some() {
                record(
                    state,
                    Some(&host.id),
                    "removed_host_refused",
                    "a removed host tried to authenticate",
                )
                .await;
                return Err(Refusal::new(
                    RefusalReason::HostRemoved,
                    "this host was removed from the fleet; to join again, delete the agent's data directory and register with a new code",
                ));
            }
            // The current key, or the one before the last rotation while the agent has not
            // authenticated with the new one yet.
            let payload = signing_payload(Purpose::Authenticate, nonce, binding, &agent_id);
            let used_previous = match verify(&host.public_key, &payload, &signature) {
                Ok(()) => false,
                Err(e) => match &host.previous_public_key {
                    Some(prev) if verify(prev, &payload, &signature).is_ok() => true,
                    _ => {
                        record(
                            state,
                            Some(&host.id),
                            "bad_signature",
                            "authentication with a wrong key",
                        )
                        .await;
                        return Err(e);
                    }
                },
            };
            let used_key = if used_previous {
                host.previous_public_key.clone().unwrap_or_default()
            } else {
                host.public_key.clone()
            };
            match rotate {
                Some(r) => {
                    let new_key = unb64(&r.new_public_key)
                        .filter(|k| k.len() == 32)
                        .ok_or_else(|| {
                            Refusal::new(
                                RefusalReason::Malformed,
                                "new_public_key is not an Ed25519 key",
                            )
                        })?;
                    let subject =
                        tomo_proto::handshake::rotate_subject(&agent_id, &r.new_public_key);
                    let rotate_payload = signing_payload(Purpose::Rotate, nonce, binding, &subject);
                    verify(&used_key, &rotate_payload, &r.signature_old)?;
                    verify(&new_key, &rotate_payload, &r.signature_new)?;
                    if new_key == host.public_key {
                        // Committed before; the agent had not promoted its key yet.
                    } else if used_previous {
                        return Err(Refusal::new(
                            RefusalReason::OutOfOrder,
                            "another key rotation of this host is already committed",
                        ));
                    } else {
                        state
                            .store
                            .rotate_key(&host.id, &host.public_key, &new_key)
                            .await
                            .map_err(|e| match e {
                                StoreError::Conflict => Refusal::new(
                                    RefusalReason::OutOfOrder,
                                    "the host's key changed meanwhile; try again",
                                ),
                                other => other.into(),
                            })?;
                        tracing::info!(host_id = %host.id, "agent key rotated");
                        record(
                            state,
                            Some(&host.id),
                            "key_rotated",
                            "the agent rotated its key",
                        )
                        .await;
                    }
                }
                None if used_previous => {
                    // The previous key only finishes a rotation (it must offer the key now
                    // current). Alone, it is a retired key: whoever holds it must not undo the
                    // rotation and lock the real agent out.
                    record(
                        state,
                        Some(&host.id),
                        "retired_key",
                        "authentication with the key replaced by the last rotation",
                    )
                    .await;
                    return Err(Refusal::new(
                        RefusalReason::BadSignature,
                        "this key was replaced by a key rotation",
                    ));
                }
                None if host.previous_public_key.is_some() => {
                    // The first session with the new key: the old one is retired.
                    state
                        .store
                        .retire_previous_key(&host.id, &host.public_key)
                        .await?;
                }
                None => {}
            }
            let h = authenticated(state, &host.id, facts).await?;
            Ok((h, used_key))
        }
        Handshake::Challenge { .. } | Handshake::Welcome { .. } | Handshake::Refused { .. } => {
            Err(Refusal::new(
                RefusalReason::OutOfOrder,
                "expected register or authenticate",
            ))
        }
    }
}

/// The last step of every successful handshake: the engine-id check, then fresh facts.
async fn authenticated(
    state: &AppState,
    host_id: &str,
    facts: HostFacts,
) -> Result<HostRecord, Refusal> {
    let host = state.store.host(host_id).await?;
    if let (Some(bound), Some(reported)) = (&host.engine_id, &facts.engine_id)
        && bound != reported
    {
        let detail = format!("bound to Docker engine {bound}, session reported {reported}");
        record(state, Some(&host.id), "engine_mismatch", &detail).await;
        return Err(Refusal::new(RefusalReason::EngineMismatch, detail));
    }
    let now = now_ms();
    state.store.touch_host(&host.id, Some(&facts), now).await?;
    // What the store holds now, without reading it back (one read less per connection).
    Ok(HostRecord {
        hostname: facts.hostname.clone(),
        engine_id: host.engine_id.clone().or_else(|| facts.engine_id.clone()),
        last_seen: Some(now),
        facts,
        ..host
    })
}

/// The `proto_version` of a register or authenticate message that does not parse, when it is
/// not this protocol's: an older (or newer) agent.
fn old_version(text: &str) -> Option<u32> {
    if text.len() > tomo_proto::MAX_HANDSHAKE_BYTES {
        return None;
    }
    let v: serde_json::Value = serde_json::from_str(text).ok()?;
    let hello = matches!(
        v.get("type").and_then(|t| t.as_str()),
        Some("register" | "authenticate")
    );
    let version = u32::try_from(v.get("proto_version")?.as_u64()?).ok()?;
    (hello && version != tomo_proto::PROTO_VERSION).then_some(version)
}

fn check_version(v: u32) -> Result<(), Refusal> {
    if v == tomo_proto::PROTO_VERSION {
        Ok(())
    } else {
        Err(Refusal::new(
            RefusalReason::UnsupportedVersion,
            format!(
                "control plane speaks protocol {}, agent {v}: install the agent of the control plane's release (`tomo` and `tomo-agent` upgrade together)",
                tomo_proto::PROTO_VERSION
            ),
        ))
    }
}

fn check_facts(f: &HostFacts) -> Result<(), Refusal> {
    let hostname_ok = !f.hostname.is_empty()
        && f.hostname.len() <= 253
        && !f.hostname.chars().any(char::is_control);
    if hostname_ok {
        Ok(())
    } else {
        Err(Refusal::new(
            RefusalReason::Malformed,
            "hostname must be 1 to 253 printable characters",
        ))
    }
}

fn verify(public_key: &[u8], payload: &[u8], signature: &str) -> Result<(), Refusal> {
    let sig = unb64(signature)
        .ok_or_else(|| Refusal::new(RefusalReason::BadSignature, "signature is not base64"))?;
    UnparsedPublicKey::new(&ED25519, public_key)
        .verify(payload, &sig)
        .map_err(|_| {
            Refusal::new(
                RefusalReason::BadSignature,
                "signature does not verify over this TLS connection (a wrong key, or a TLS-terminating proxy between agent and control plane)",
            )
        })
}

async fn record(state: &AppState, host_id: Option<&str>, kind: &str, detail: &str) {
    tracing::warn!(host_id, kind, detail, "security event");
    let e = SecurityEvent {
        at: now_ms(),
        host_id: host_id.map(str::to_owned),
        kind: kind.into(),
        detail: detail.into(),
    };
    if let Err(err) = state.store.record_event(&e).await {
        tracing::error!(error = %err, "cannot record a security event");
    }
}

/// The session loop; returns why it ended.
async fn serve<S: AsyncRead + AsyncWrite + Unpin>(
    sink: &mut Sink<S>,
    stream: &mut Stream<S>,
    mut outbox: tokio::sync::mpsc::Receiver<String>,
    conn: &AgentConn,
    state: &AppState,
) -> String {
    let cfg = &state.config;
    let mut heartbeat =
        tokio::time::interval_at(tokio::time::Instant::now() + cfg.heartbeat, cfg.heartbeat);
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let dead = tokio::time::sleep(cfg.dead_after);
    tokio::pin!(dead);
    let (close, why) = loop {
        let out = tokio::select! {
            biased;
            _ = state.shutdown.cancelled() => break (Some((CloseCode::Away, "control plane shutting down")), "shutdown".into()),
            _ = conn.kick.cancelled() => break (Some((CloseCode::Policy, "session ended by the control plane")), "ended by the control plane".into()),
            Some(text) = outbox.recv() => Some(text),
            msg = stream.next() => {
                dead.as_mut().reset(tokio::time::Instant::now() + cfg.dead_after);
                match msg {
                    Some(Ok(WsMessage::Text(t))) => on_text(&t, conn, state).await,
                    Some(Ok(WsMessage::Binary(_))) => Some(Response::err(Id::Null, RpcError::invalid_request("binary frames are not part of the protocol")).to_json()),
                    Some(Ok(WsMessage::Close(_))) => break (None, "closed by the agent".into()),
                    Some(Ok(_)) => None,
                    Some(Err(e)) => break (None, format!("connection error: {e}")),
                    None => break (None, "connection closed".into()),
                }
            }
            _ = &mut dead => break (Some((CloseCode::Away, "no traffic")), format!("silent for {:?}", cfg.dead_after)),
            _ = heartbeat.tick() => {
                if sink.send(WsMessage::Ping(Default::default())).await.is_err() {
                    break (None, "heartbeat failed".into());
                }
                None
            }
        };
        if let Some(text) = out
            && sink.send(WsMessage::text(text)).await.is_err()
        {
            break (None, "send failed".into());
        }
    };
    if let Some((code, reason)) = close {
        let _ = sink
            .send(WsMessage::Close(Some(CloseFrame {
                code,
                reason: reason.into(),
            })))
            .await;
    }
    let _ = sink.close().await;
    why
}

/// Handles one text frame from an agent; returns what to answer, if anything.
async fn on_text(text: &str, conn: &AgentConn, state: &AppState) -> Option<String> {
    match rpc::parse_frame(text) {
        Frame::Error(e) => Some(Response::err(Id::Null, e).to_json()),
        Frame::Single(m) => on_message(m, conn, state).await.map(|r| r.to_json()),
        Frame::Batch(items) => {
            let mut out = Vec::new();
            for m in items {
                out.extend(on_message(m, conn, state).await);
            }
            (!out.is_empty()).then(|| serde_json::to_string(&out).unwrap_or_default())
        }
    }
}

async fn on_message(m: Message, conn: &AgentConn, state: &AppState) -> Option<Response> {
    match m {
        Message::Response(resp) => {
            if !conn.resolve(resp) {
                tracing::debug!(host_id = %conn.host_id, "response to no pending call (late or unknown id)");
            }
            None
        }
        Message::Invalid(id, e) => Some(Response::err(id, e)),
        Message::Request(req) => match req.id {
            // The control plane serves no methods to agents.
            Some(id) => Some(Response::err(id, RpcError::method_not_found(&req.method))),
            None => {
                let params = req.params.as_deref().map(|p| p.get()).unwrap_or("null");
                on_notification(&req.method, params, conn, state).await;
                None
            }
        },
    }
}

async fn on_notification(method: &str, params: &str, conn: &AgentConn, state: &AppState) {
    let now = now_ms();
    let (kind, data) = match method {
        STREAM_DATA => {
            return match serde_json::from_str::<StreamData>(params) {
                Ok(d) => conn.stream_data(d),
                Err(e) => {
                    tracing::warn!(host_id = %conn.host_id, error = %e, "malformed stream.data ignored")
                }
            };
        }
        STREAM_END => {
            return match serde_json::from_str::<StreamEnd>(params) {
                Ok(e) => conn.stream_end(e),
                Err(e) => {
                    tracing::warn!(host_id = %conn.host_id, error = %e, "malformed stream.end ignored")
                }
            };
        }
        DOCKER_EVENT => {
            return match serde_json::from_str::<DockerEvent>(params) {
                Ok(e) => crate::core::events::ingest(state, &conn.host_id, e).await,
                Err(e) => {
                    tracing::warn!(host_id = %conn.host_id, error = %e, "malformed docker.event ignored")
                }
            };
        }
        tomo_proto::audit::AUDIT_RECORD => {
            return crate::audit::on_agent_record(state, &conn.host_id, params).await;
        }
        METRICS_UPDATE => match serde_json::from_str::<Metrics>(params) {
            Ok(m) => (
                SampleKind::Metrics,
                serde_json::to_string(&m).unwrap_or_default(),
            ),
            Err(e) => {
                return tracing::warn!(host_id = %conn.host_id, error = %e, "malformed metrics.update ignored");
            }
        },
        HEALTH_STATUS => match serde_json::from_str::<HealthStatus>(params) {
            Ok(h) => (
                SampleKind::Health,
                serde_json::to_string(&h).unwrap_or_default(),
            ),
            Err(e) => {
                return tracing::warn!(host_id = %conn.host_id, error = %e, "malformed health.status ignored");
            }
        },
        other => {
            return tracing::debug!(host_id = %conn.host_id, method = other, "unknown notification ignored");
        }
    };
    state.hub.set_latest(&conn.host_id, kind, now, &data);
    // Stored in batches by `crate::samples` (the latest is in the hub already).
    state.samples.push(&conn.host_id, kind, now, data).await;
}

//! tomo's wire protocol, shared by the agent and the control plane.
//!
//! This crate holds wire types only: the session handshake ([`handshake`]), the JSON-RPC 2.0
//! envelope and its error codes ([`rpc`]), and one type per agent method ([`methods`]). It knows
//! nothing of tokio, axum, TLS or Docker; `docs/protocol.md` is its prose form.

#![forbid(unsafe_code)]

pub mod audit;
pub mod handshake;
pub mod methods;
pub mod refs;
pub mod rpc;

/// Version of the protocol described in `docs/protocol.md`. Both ends send it in the handshake;
/// a peer speaking another major version is refused with [`handshake::RefusalReason::UnsupportedVersion`].
pub const PROTO_VERSION: u32 = 3;

/// Largest handshake message either end accepts, in bytes. Handshake frames are small; a large
/// one before authentication is an attack or a bug.
pub const MAX_HANDSHAKE_BYTES: usize = 64 * 1024;

/// Largest message the control plane accepts from an authenticated agent (a 10 MiB response cap
/// plus envelope).
pub const MAX_AGENT_MESSAGE_BYTES: usize = 11 * 1024 * 1024;

/// Largest message the agent accepts from the control plane.
pub const MAX_SERVER_MESSAGE_BYTES: usize = 1024 * 1024;

/// Seconds between heartbeats, sent by both ends.
pub const HEARTBEAT_SECS: u64 = 30;

/// Seconds of silence after which either end declares the connection dead.
pub const DEAD_AFTER_SECS: u64 = 90;

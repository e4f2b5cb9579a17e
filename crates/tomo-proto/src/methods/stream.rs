//! Streams: long-lived answers (logs follow, stats stream, image pull progress, interactive exec).
//!
//! A call that opens a stream answers at once with [`StreamOpened`]; the data then arrives as
//! [`STREAM_DATA`] notifications numbered from 0, and the stream finishes with one [`STREAM_END`].
//! The agent sends at most `window` data messages beyond the last acknowledged (`stream.ack`) sequence number,
//! so a slow consumer stops the producer instead of growing a buffer. Either side can close a
//! stream (`stream.close`, or `stream.end` from the agent), and every stream ends with its connection.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::rpc::RpcError;

/// Notification agent → control plane: one piece of a stream.
pub const STREAM_DATA: &str = "stream.data";
/// Notification agent → control plane: the stream is over; no data follows.
pub const STREAM_END: &str = "stream.end";
/// Data messages the agent may send beyond the last acknowledged one.
pub const STREAM_WINDOW: u64 = 64;
/// Streams one session may hold open at once.
pub const MAX_STREAMS_PER_SESSION: usize = 32;
/// Largest payload of one data message (a chunk of logs or exec output), in bytes.
pub const STREAM_CHUNK_BYTES: usize = 32 * 1024;

/// The answer of a call that opened a stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
pub struct StreamOpened {
    /// Stream id, unique within the session.
    pub stream: String,
    /// Unacknowledged data messages the agent will send at most.
    pub window: u64,
}

/// Either a complete answer or a stream that will carry it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[serde(untagged)]
pub enum Streamed<T> {
    Stream(StreamOpened),
    Done(T),
}

/// Params of [`STREAM_DATA`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
pub struct StreamData {
    pub stream: String,
    /// 0, 1, 2, … per stream.
    pub seq: u64,
    /// Depends on the method that opened the stream (see docs/protocol.md).
    pub data: Value,
}

/// Params of [`STREAM_END`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
pub struct StreamEnd {
    pub stream: String,
    /// Number of data messages sent.
    pub sent: u64,
    /// `eof` (the source ended), `closed` (the control plane closed it), `error`, `shutdown`.
    pub reason: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<RpcError>,
    /// A final result, e.g. the exit code of an interactive exec.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<Value>,
}

/// Params of `stream.ack` and `stream.close`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct StreamRef {
    pub stream: String,
    /// For `stream.ack`: the highest sequence number the consumer has taken.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
}

/// Params of `stream.write`: input for an interactive exec.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct StreamWriteParams {
    pub stream: String,
    /// Bytes, base64 (standard alphabet, padded). May be empty with `eof`.
    #[serde(default)]
    pub data_b64: String,
    /// The input has ended: after `data_b64`, the exec's stdin is closed (as `docker exec -i`
    /// does at the end of piped input), so the program in the container reads end-of-file.
    /// Later writes to the stream are refused.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub eof: bool,
}

/// Params of `stream.resize`: a new terminal size for an interactive exec.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct StreamResizeParams {
    pub stream: String,
    pub rows: u16,
    pub cols: u16,
}

/// Result of the `stream.*` control methods.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
pub struct StreamState {
    /// Whether the stream was open.
    pub open: bool,
}

//! JSON-RPC 2.0 envelope, error codes and message classification.
//!
//! Requests keep their `params` as raw JSON text ([`RawValue`]) so that the receiver can verify a
//! signature over the exact bytes that were sent before it interprets them (the security layer
//! signs `method`, `params` and `meta` as they appear on the wire).

use serde::de::Deserializer;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use serde_json::value::RawValue;

/// The seed's error codes, kept exactly, plus tomo's own (documented in `docs/protocol.md`).
pub mod code {
    pub const PARSE_ERROR: i64 = -32700;
    pub const INVALID_REQUEST: i64 = -32600;
    pub const METHOD_NOT_FOUND: i64 = -32601;
    pub const INVALID_PARAMS: i64 = -32602;
    pub const INTERNAL_ERROR: i64 = -32603;
    pub const SECURITY: i64 = -32001;
    pub const RATE_LIMITED: i64 = -32002;
    pub const DOCKER: i64 = -32003;
    pub const CONTAINER_BLOCKED: i64 = -32004;
    pub const COMMAND_BLOCKED: i64 = -32005;
    /// tomo: the host is not connected to the control plane.
    pub const HOST_OFFLINE: i64 = -32010;
    /// tomo: the agent did not answer within the call's timeout.
    pub const TIMEOUT: i64 = -32011;
    /// tomo: the connection to the agent was lost before it answered.
    pub const CONNECTION_LOST: i64 = -32012;
    /// tomo: the agent is shutting down and did not finish the request.
    pub const SHUTTING_DOWN: i64 = -32013;
    /// tomo: a named object (container, image, ...) does not exist.
    pub const NOT_FOUND: i64 = -32014;
}

/// A JSON-RPC id: a string, an integer, or `null` (the latter only in error responses to
/// requests whose id could not be read).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Id {
    Num(i64),
    Str(String),
    Null,
}

/// The `"jsonrpc": "2.0"` marker; anything else is an invalid request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct V2;

impl Serialize for V2 {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str("2.0")
    }
}

impl<'de> Deserialize<'de> for V2 {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // A visitor, not `&str`: the text may be borrowed (a frame) or owned (a `Value`), and
        // neither allocates.
        struct Version;
        impl serde::de::Visitor<'_> for Version {
            type Value = V2;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("\"2.0\"")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<V2, E> {
                if v == "2.0" {
                    Ok(V2)
                } else {
                    Err(E::custom("jsonrpc must be \"2.0\""))
                }
            }
        }
        d.deserialize_str(Version)
    }
}

/// Who asked, with what role, for whom, and when: carried on every control-plane → agent request.
///
/// Every field is optional in protocol version 1; the security layer makes `aud`, `nonce` and `ts`
/// mandatory and adds a signature over the request's `method`, `params` and `meta` bytes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestMeta {
    /// Correlates the request across control plane, agent and audit logs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<String>,
    /// The operator or token on whose behalf the control plane sends the request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub principal: Option<String>,
    /// The principal's role: `read`, `execute` or `admin`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<crate::methods::Level>,
    /// The agent id the request is meant for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aud: Option<String>,
    /// A single-use random value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nonce: Option<String>,
    /// Unix time in milliseconds at which the request was signed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ts: Option<i64>,
    /// Unix time in milliseconds after which the agent refuses the request (`expired`): the
    /// moment the operator's call times out, never later than the replay window allows. A
    /// command held back in the network past it is not run late. Mandatory from protocol 2.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exp: Option<i64>,
    /// How long the control plane waits for the answer, in milliseconds (protocol 3): the agent
    /// cancels a call still running after it, unless its method's deadline says the call must
    /// not be cut ([`crate::methods::Deadline`]). Unlike `exp` it is not capped by the replay
    /// window, and it counts from when the agent received the request, not by its clock.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wait_ms: Option<u64>,
    /// The caller's idempotency key (protocol 3, issue 13.6; derived by the control plane from
    /// the API token's id and its `Idempotency-Key` header): a command sent again with it is
    /// not run twice, the retry gets the first answer. 1 to 64 of `A-Z a-z 0-9 - _`; kept 24 h
    /// by the agent, per principal and method.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
}

/// Whether `key` is an idempotency key a caller may send ([`RequestMeta::idempotency_key`]):
/// 1 to 64 of `A-Z a-z 0-9 - _`.
pub fn valid_idempotency_key(key: &str) -> bool {
    (1..=64).contains(&key.len())
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// The longest a signed command may stay valid (`meta.exp - meta.ts`): the agent's replay window.
pub const MAX_COMMAND_TTL_MS: i64 = 5 * 60 * 1000;

/// Domain separation of command signatures.
pub const COMMAND_DOMAIN: &str = "tomo-command-v1";

/// The bytes the control plane signs for a request and the agent verifies, built from the
/// request's exact text: its id (as JSON), method, and the raw `meta` and `params` values (empty
/// when absent). Every field is length-prefixed, so no two requests share a payload.
pub fn command_payload(id: &str, method: &str, meta: &str, params: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(
        COMMAND_DOMAIN.len() + id.len() + method.len() + meta.len() + params.len() + 40,
    );
    for part in [COMMAND_DOMAIN, id, method, meta, params] {
        out.extend_from_slice(&(part.len() as u64).to_be_bytes());
        out.extend_from_slice(part.as_bytes());
    }
    out
}

/// The text of a signed request, assembled around the exact `meta` and `params` texts that were
/// signed (so the agent's raw values are byte for byte what the signature covers).
pub fn signed_request_text(
    id: &str,
    method: &str,
    meta: &str,
    params: Option<&str>,
    sig_b64: &str,
) -> String {
    let method_json = serde_json::to_string(method).unwrap_or_default();
    let mut out = String::with_capacity(
        64 + id.len() + method_json.len() + meta.len() + params.map_or(0, str::len) + sig_b64.len(),
    );
    out.push_str(r#"{"jsonrpc":"2.0","id":"#);
    out.push_str(id);
    out.push_str(r#","method":"#);
    out.push_str(&method_json);
    if let Some(p) = params {
        out.push_str(r#","params":"#);
        out.push_str(p);
    }
    out.push_str(r#","meta":"#);
    out.push_str(meta);
    out.push_str(r#","sig":""#);
    out.push_str(sig_b64);
    out.push_str(r#""}"#);
    out
}

/// A request or notification as received: params stay raw until a handler asks for them.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Request {
    #[allow(dead_code)]
    jsonrpc: V2,
    /// `None` for a notification; `Some(Id::Null)` for a request with `"id": null`.
    #[serde(default, deserialize_with = "present")]
    pub id: Option<Id>,
    pub method: String,
    #[serde(default)]
    pub params: Option<Box<RawValue>>,
    #[serde(default)]
    pub meta: Option<Box<RawValue>>,
    /// Detached signature over the request (the security layer's).
    #[serde(default)]
    pub sig: Option<String>,
}

/// A request as sent by the control plane.
#[derive(Debug, Serialize)]
pub struct OutgoingRequest<'a> {
    pub jsonrpc: V2,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<Id>,
    pub method: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub params: Option<&'a Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub meta: Option<&'a RequestMeta>,
}

/// A notification as sent by the agent (`health.status`, `metrics.update`, `stream.*`, …).
#[derive(Debug, Serialize)]
pub struct OutgoingNotification<'a, P: Serialize> {
    pub jsonrpc: V2,
    pub method: &'a str,
    pub params: &'a P,
}

/// The text of a notification `method(params)`.
pub fn notification_text<P: Serialize>(method: &str, params: &P) -> String {
    serde_json::to_string(&OutgoingNotification {
        jsonrpc: V2,
        method,
        params,
    })
    .unwrap_or_default()
}

/// A JSON-RPC error object.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, thiserror::Error)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[error("{message} ({code})")]
pub struct RpcError {
    /// The JSON-RPC error code (docs/protocol.md).
    pub code: i64,
    pub message: String,
    /// What the code alone does not say (a refusal's `reason`, Docker's `status`, …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<Value>,
}

impl RpcError {
    pub fn new(code: i64, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            data: None,
        }
    }
    pub fn with_data(mut self, data: Value) -> Self {
        self.data = Some(data);
        self
    }
    pub fn parse_error() -> Self {
        Self::new(
            code::PARSE_ERROR,
            "Parse error: the message is not valid JSON",
        )
    }
    pub fn invalid_request(why: impl std::fmt::Display) -> Self {
        Self::new(code::INVALID_REQUEST, format!("Invalid Request: {why}"))
    }
    pub fn method_not_found(method: &str) -> Self {
        Self::new(
            code::METHOD_NOT_FOUND,
            format!("Method not found: {method}"),
        )
    }
    pub fn invalid_params(why: impl std::fmt::Display) -> Self {
        Self::new(code::INVALID_PARAMS, format!("Invalid params: {why}"))
    }
    pub fn internal(why: impl std::fmt::Display) -> Self {
        Self::new(code::INTERNAL_ERROR, format!("Internal error: {why}"))
    }
    pub fn docker(why: impl std::fmt::Display) -> Self {
        Self::new(code::DOCKER, format!("Docker error: {why}"))
    }
}

/// A response: exactly one of `result` and `error`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Response {
    pub jsonrpc: V2,
    pub id: Id,
    #[serde(flatten)]
    pub outcome: Outcome,
}

/// The two shapes of a response.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Result(Value),
    Error(RpcError),
}

impl Response {
    pub fn ok(id: Id, result: Value) -> Self {
        Self {
            jsonrpc: V2,
            id,
            outcome: Outcome::Result(result),
        }
    }
    pub fn err(id: Id, error: RpcError) -> Self {
        Self {
            jsonrpc: V2,
            id,
            outcome: Outcome::Error(error),
        }
    }
    pub fn is_error(&self) -> bool {
        matches!(self.outcome, Outcome::Error(_))
    }
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("responses always serialize")
    }
}

/// One element of what arrived, classified.
#[derive(Debug)]
pub enum Message {
    /// A request (has an id) or a notification (no id).
    Request(Request),
    Response(Response),
    /// Not a valid request or response; the error to answer with, and the id if one was readable.
    Invalid(Id, RpcError),
}

/// A whole frame, classified.
#[derive(Debug)]
pub enum Frame {
    Single(Message),
    /// A batch: answer with an array of the responses to its requests (none for notifications).
    Batch(Vec<Message>),
    /// Not JSON at all, or an empty batch: answer with this single error and id `null`.
    Error(RpcError),
}

/// Classifies a received text frame per JSON-RPC 2.0: parse errors, invalid requests, batches.
pub fn parse_frame(text: &str) -> Frame {
    let trimmed = text.trim_start();
    if trimmed.starts_with('[') {
        let items: Vec<&RawValue> = match serde_json::from_str(text) {
            Ok(items) => items,
            Err(_) => return Frame::Error(RpcError::parse_error()),
        };
        if items.is_empty() {
            return Frame::Error(RpcError::invalid_request("empty batch"));
        }
        return Frame::Batch(items.into_iter().map(|raw| classify(raw.get())).collect());
    }
    if serde_json::from_str::<&RawValue>(text).is_err() {
        return Frame::Error(RpcError::parse_error());
    }
    Frame::Single(classify(text))
}

/// Classifies one syntactically valid JSON value.
fn classify(text: &str) -> Message {
    // A cheap look at the shape decides which strict parser applies.
    #[derive(Deserialize)]
    struct Probe<'a> {
        #[serde(default, borrow)]
        method: Option<&'a RawValue>,
        #[serde(default, borrow)]
        result: Option<&'a RawValue>,
        #[serde(default, borrow)]
        error: Option<&'a RawValue>,
        #[serde(default)]
        id: Option<Value>,
    }
    let probe: Probe<'_> = match serde_json::from_str(text) {
        Ok(p) => p,
        Err(_) => return Message::Invalid(Id::Null, RpcError::invalid_request("not an object")),
    };
    let id = match probe.id {
        Some(Value::String(s)) => Id::Str(s),
        Some(Value::Number(n)) if n.as_i64().is_some() => Id::Num(n.as_i64().unwrap_or_default()),
        _ => Id::Null,
    };
    if probe.method.is_some() {
        match serde_json::from_str::<Request>(text) {
            Ok(req) => match req
                .params
                .as_deref()
                .map(|p| p.get().trim_start().as_bytes().first())
            {
                None | Some(Some(b'{' | b'[')) => Message::Request(req),
                _ => Message::Invalid(
                    id,
                    RpcError::invalid_request("params must be an object or an array"),
                ),
            },
            Err(e) => Message::Invalid(id, RpcError::invalid_request(e)),
        }
    } else if probe.result.is_some() || probe.error.is_some() {
        match serde_json::from_str::<Response>(text) {
            Ok(resp) => Message::Response(resp),
            Err(e) => Message::Invalid(id, RpcError::invalid_request(e)),
        }
    } else {
        Message::Invalid(
            id,
            RpcError::invalid_request("neither a request nor a response"),
        )
    }
}

/// Deserializes a field that may be `null` into `Some(Id::Null)`, keeping `None` for "absent".
fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Id>, D::Error> {
    Id::deserialize(d).map(Some)
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_response_reads_from_a_value_as_from_text() {
        let text = r#"{"jsonrpc":"2.0","id":1,"result":{"pong":true}}"#;
        let from_text: Response = serde_json::from_str(text).expect("text");
        let value: Value = serde_json::from_str(text).expect("value");
        let from_value: Response = serde_json::from_value(value).expect("value");
        assert_eq!(from_text, from_value);
        let wrong = serde_json::json!({"jsonrpc": "1.0", "id": 1, "result": 1});
        assert!(serde_json::from_value::<Response>(wrong).is_err());
    }

    #[test]
    fn idempotency_keys_are_short_and_plain() {
        assert!(valid_idempotency_key("3f9c0a1b-2c3d_4e5f"));
        assert!(!valid_idempotency_key(""));
        assert!(!valid_idempotency_key(&"a".repeat(65)));
        assert!(!valid_idempotency_key("a b"));
        assert!(!valid_idempotency_key("a\n"));
    }

    use super::*;

    fn single(text: &str) -> Message {
        match parse_frame(text) {
            Frame::Single(m) => m,
            other => panic!("expected a single message, got {other:?}"),
        }
    }

    #[test]
    fn not_json_is_parse_error() {
        for text in ["", "{", "nope", "[1,", "{\"jsonrpc\":\"2.0\",}"] {
            match parse_frame(text) {
                Frame::Error(e) => assert_eq!(e.code, code::PARSE_ERROR, "{text}"),
                other => panic!("{text}: {other:?}"),
            }
        }
    }

    #[test]
    fn empty_batch_is_invalid_request() {
        match parse_frame("[]") {
            Frame::Error(e) => assert_eq!(e.code, code::INVALID_REQUEST),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn invalid_requests_keep_their_id_when_readable() {
        let cases = [
            (r#"{"jsonrpc":"1.0","id":3,"method":"a"}"#, Id::Num(3)),
            (
                r#"{"jsonrpc":"2.0","id":"x","method":5}"#,
                Id::Str("x".into()),
            ),
            (
                r#"{"jsonrpc":"2.0","id":4,"method":"a","params":7}"#,
                Id::Num(4),
            ),
            (r#"{"jsonrpc":"2.0","id":4.5,"method":"a"}"#, Id::Null),
            (r#"{"jsonrpc":"2.0","id":5}"#, Id::Num(5)),
            (
                r#"{"jsonrpc":"2.0","id":6,"method":"a","bogus":1}"#,
                Id::Num(6),
            ),
            ("1", Id::Null),
        ];
        for (text, want) in cases {
            match single(text) {
                Message::Invalid(id, e) => {
                    assert_eq!(e.code, code::INVALID_REQUEST, "{text}");
                    assert_eq!(id, want, "{text}");
                }
                other => panic!("{text}: {other:?}"),
            }
        }
    }

    #[test]
    fn notification_vs_null_id() {
        match single(r#"{"jsonrpc":"2.0","method":"a"}"#) {
            Message::Request(r) => assert_eq!(r.id, None),
            other => panic!("{other:?}"),
        }
        match single(r#"{"jsonrpc":"2.0","method":"a","id":null}"#) {
            Message::Request(r) => assert_eq!(r.id, Some(Id::Null)),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn params_stay_byte_exact() {
        let text = r#"{"jsonrpc":"2.0","id":1,"method":"a","params":{"b": 1,  "a":[2]}}"#;
        match single(text) {
            Message::Request(r) => assert_eq!(
                r.params.map(|p| p.get().to_owned()).as_deref(),
                Some(r#"{"b": 1,  "a":[2]}"#)
            ),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn responses_round_trip() {
        let ok = Response::ok(Id::Num(1), serde_json::json!({"pong": true}));
        assert_eq!(
            ok.to_json(),
            r#"{"jsonrpc":"2.0","id":1,"result":{"pong":true}}"#
        );
        let err = Response::err(Id::Null, RpcError::parse_error());
        assert_eq!(
            err.to_json(),
            r#"{"jsonrpc":"2.0","id":null,"error":{"code":-32700,"message":"Parse error: the message is not valid JSON"}}"#
        );
        match single(&ok.to_json()) {
            Message::Response(r) => assert_eq!(r, ok),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn batch_mixes_valid_and_invalid() {
        match parse_frame(
            r#"[{"jsonrpc":"2.0","id":1,"method":"a"}, 1, {"jsonrpc":"2.0","method":"n"}]"#,
        ) {
            Frame::Batch(items) => {
                assert_eq!(items.len(), 3);
                assert!(matches!(items[0], Message::Request(_)));
                assert!(matches!(items[1], Message::Invalid(Id::Null, _)));
                assert!(matches!(&items[2], Message::Request(r) if r.id.is_none()));
            }
            other => panic!("{other:?}"),
        }
    }
}

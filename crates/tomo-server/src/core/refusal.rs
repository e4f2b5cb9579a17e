//! Why the control plane refused a call, before anything reached a host. Every surface renders
//! the same refusal with the same stable code ([`Refusal::code`]): REST and `/stream` as the
//! API's error shape, `/rpc` the same (an unknown method as a JSON-RPC error, as agents answer
//! one), MCP as a tool error.

use tomo_proto::methods::Level;

use crate::store::StoreError;

/// A call the control plane did not let through.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    /// The envelope or the params break a rule of the call (said in the message).
    #[error("{0}")]
    BadRequest(String),
    /// The params are not the method's params type: the agent's own error (-32602, with
    /// `data.param`), given before anything is sent.
    #[error("{}", .0.message)]
    InvalidParams(tomo_proto::rpc::RpcError),
    /// Method and params would not fit in one frame to the agent (which drops a session whose
    /// frame is over its limit).
    #[error("params exceed the agent's 1 MiB request limit")]
    TooLarge,
    /// A method the protocol does not have: never forwarded (deny by default). The message
    /// suggests the nearest method, when one is near.
    #[error("no method {method:?}{hint}", method = .0, hint = did_you_mean(.0))]
    UnknownMethod(String),
    /// The token's role is below the method's level.
    #[error("this needs the {} role; this token is {}", role_name(*.needs), role_name(*.has))]
    Forbidden { needs: Level, has: Level },
    /// The route is not tied to one host and the token is limited to some hosts.
    #[error("this needs a token without a host scope; this token is limited to some hosts")]
    OutOfScope,
    /// No host (in the token's scope) matches; out of scope answers the same.
    #[error("{0}")]
    NotFound(String),
    /// Several hosts match the key.
    #[error("{0}")]
    Ambiguous(String),
    /// The caller may not do this (said in the message: a token that requires approval cannot
    /// decide, a token cannot approve its own action).
    #[error("{0}")]
    Denied(String),
    /// A decision on an action that is no longer pending (said in the message).
    #[error("{0}")]
    NotPending(String),
    /// `stream.*` control of a stream the caller did not open.
    #[error("stream {0:?} is not open, or was opened by another caller")]
    NotStreamOwner(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl Refusal {
    /// The stable, machine-readable code every surface answers with.
    pub fn code(&self) -> &'static str {
        match self {
            Self::BadRequest(_) | Self::InvalidParams(_) => "bad_request",
            Self::TooLarge => "too_large",
            Self::UnknownMethod(_) => "unknown_method",
            Self::Forbidden { .. } | Self::NotStreamOwner(_) | Self::Denied(_) => "forbidden",
            Self::NotPending(_) => "not_pending",
            Self::OutOfScope => "out_of_scope",
            Self::NotFound(_) => "not_found",
            Self::Ambiguous(_) => "ambiguous",
            Self::Store(_) => "store",
        }
    }
}

fn did_you_mean(method: &str) -> String {
    tomo_proto::methods::nearest(method)
        .map(|m| format!(" (did you mean {m}?)"))
        .unwrap_or_default()
}

/// `read`, `execute` or `admin`.
pub fn role_name(level: Level) -> &'static str {
    match level {
        Level::Read => "read",
        Level::Execute => "execute",
        Level::Admin => "admin",
    }
}

//! Who calls: the authenticated token of a request, with its trace id and idempotency key.

use tomo_proto::methods::Level;

use super::Refusal;
use crate::agents::hub::Caller;
use crate::auth;
use crate::store::{HostRecord, TokenRecord};

/// The authenticated caller (the HTTP layer puts it in the request after the token check).
#[derive(Debug, Clone)]
pub struct Principal {
    /// The calling token.
    pub token: TokenRecord,
    /// The request's trace id, shared by the control plane's audit record and the agent's.
    pub trace_id: Option<String>,
    /// The request's `Idempotency-Key`, if any.
    pub idempotency_key: Option<IdempotencyKey>,
}

/// A valid `Idempotency-Key` (issue 13.6): 1 to 64 of `A-Z a-z 0-9 - _`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyKey(pub String);

impl Principal {
    /// The caller of `token`, without a trace id or idempotency key.
    pub fn of(token: TokenRecord) -> Self {
        Self {
            token,
            trace_id: None,
            idempotency_key: None,
        }
    }

    /// The caller of agent requests made for this principal, with the API request's trace id
    /// (so the control plane's audit record and the agent's share it).
    pub fn caller(&self) -> Caller {
        let mut c = Caller::new(self.token.name.clone(), self.token.role);
        c.owner = self.stream_owner();
        if let Some(t) = &self.trace_id {
            c.trace_id = t.clone();
        }
        // The key the host keeps is the operator's key under this token's id: another token
        // (even one with the same name) that sends the same key gets nothing of this one's.
        c.idempotency_key = self.idempotency_key.as_ref().map(|k| {
            let scoped = format!("tomo-idempotency-v1\0{}\0{}", self.token.id, k.0);
            tomo_common::hex(&tomo_common::sha256(scoped.as_bytes()))[..32].to_owned()
        });
        c
    }

    /// What owns the streams this principal opens: its token's id (names are not unique).
    pub fn stream_owner(&self) -> String {
        format!("token:{}", self.token.id)
    }

    /// The token's role reaches `level`.
    pub fn require(&self, level: Level) -> Result<(), Refusal> {
        if self.token.role >= level {
            Ok(())
        } else {
            Err(Refusal::Forbidden {
                needs: level,
                has: self.token.role,
            })
        }
    }

    /// Whether this token's host scope includes `host` (an unscoped token sees every host).
    pub fn may_see(&self, host: &HostRecord) -> bool {
        auth::scope_allows(&self.token.scope, host)
    }

    /// Routes not tied to one host (codes, audit, token management, labels) need a token without
    /// a host scope: a scoped token must not reach past its hosts, nor mint a wider token.
    pub fn require_unscoped(&self) -> Result<(), Refusal> {
        if self.token.scope.is_empty() {
            Ok(())
        } else {
            Err(Refusal::OutOfScope)
        }
    }
}

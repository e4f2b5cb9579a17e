//! Who calls: the authenticated token of a request, with its trace id and idempotency key.

use tomo_proto::methods::Level;

use super::Refusal;
use crate::auth;
use crate::hub::Caller;
use crate::store::{HostRecord, TokenRecord};

/// The authenticated caller (the HTTP layer puts it in the request after the token check).
#[derive(Debug, Clone)]
pub struct Principal(
    pub TokenRecord,
    pub Option<String>,
    pub Option<IdempotencyKey>,
);

/// A valid `Idempotency-Key` (issue 13.6): 1 to 64 of `A-Z a-z 0-9 - _`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyKey(pub String);

impl Principal {
    /// The caller of agent requests made for this principal, with the API request's trace id
    /// (so the control plane's audit record and the agent's share it).
    pub fn caller(&self) -> Caller {
        let mut c = Caller::new(self.0.name.clone(), self.0.role);
        c.owner = self.stream_owner();
        if let Some(t) = &self.1 {
            c.trace_id = t.clone();
        }
        // The key the host keeps is the operator's key under this token's id: another token
        // (even one with the same name) that sends the same key gets nothing of this one's.
        c.idempotency_key = self.2.as_ref().map(|k| {
            let scoped = format!("tomo-idempotency-v1\0{}\0{}", self.0.id, k.0);
            tomo_common::hex(&tomo_common::sha256(scoped.as_bytes()))[..32].to_owned()
        });
        c
    }

    /// What owns the streams this principal opens: its token's id (names are not unique).
    pub fn stream_owner(&self) -> String {
        format!("token:{}", self.0.id)
    }

    /// The token's role reaches `level`.
    pub fn require(&self, level: Level) -> Result<(), Refusal> {
        if self.0.role >= level {
            Ok(())
        } else {
            Err(Refusal::Forbidden {
                needs: level,
                has: self.0.role,
            })
        }
    }

    /// Whether this token's host scope includes `host` (an unscoped token sees every host).
    pub fn may_see(&self, host: &HostRecord) -> bool {
        auth::scope_allows(&self.0.scope, host)
    }

    /// Routes not tied to one host (codes, audit, token management, labels) need a token without
    /// a host scope: a scoped token must not reach past its hosts, nor mint a wider token.
    pub fn require_unscoped(&self) -> Result<(), Refusal> {
        if self.0.scope.is_empty() {
            Ok(())
        } else {
            Err(Refusal::OutOfScope)
        }
    }
}

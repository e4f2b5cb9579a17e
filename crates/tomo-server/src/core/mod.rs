//! The control plane's domain, without HTTP (issue 14, "one door"): who calls
//! ([`Principal`]), the only way to find a host ([`hosts::resolve`]), the one pipeline every
//! surface admits a host call through ([`call`]), and the refusals it answers with
//! ([`Refusal`]), the engine events of the hosts ([`events`]). The HTTP layer (`http/`) and
//! MCP (`mcp.rs`) render these; nothing here imports axum or knows a status code.

pub mod call;
pub mod events;
pub mod hosts;
mod principal;
mod refusal;

pub use principal::{IdempotencyKey, Principal};
pub use refusal::{Refusal, role_name};

/// RFC 3339 UTC from Unix milliseconds.
pub fn rfc3339(ms: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(ms as i128 * 1_000_000)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}

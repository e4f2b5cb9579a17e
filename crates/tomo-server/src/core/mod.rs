//! The control plane's domain, without HTTP (issue 14, "one door"): who calls
//! ([`Principal`]), the only way to find a host ([`hosts::resolve`]), the one pipeline every
//! surface admits a host call through ([`call`]), and the refusals it answers with
//! ([`Refusal`]). The HTTP layer (`api*.rs`) and MCP (`mcp.rs`) render these; nothing here
//! imports axum or knows a status code.

pub mod call;
pub mod hosts;
mod principal;
mod refusal;

pub use principal::{IdempotencyKey, Principal};
pub use refusal::{Refusal, role_name};

//! The operator API over HTTP (issue 14's layering): the router and its middleware (`api`), one
//! file per route family, the OpenAPI document, and the mapping of the core's refusals and
//! errors to HTTP statuses. The control plane's rules are in `core/`; a route only parses its
//! request, calls them and renders the answer.

pub mod agent_upgrade;
pub mod api;
pub mod api_approvals;
pub mod api_codes;
pub mod api_fleet;
pub mod api_host;
pub mod api_tokens;
pub mod audit;
pub mod openapi;

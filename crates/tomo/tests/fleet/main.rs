//! The crate's integration tests, one binary (issue 14): the real control plane and real
//! agents, in process, over real TLS on 127.0.0.1 with a real SQLite file; and `cli`, end to
//! end through the built `tomo` and `tomo-agent` binaries.

mod audit;
mod cli;
mod clock;
mod docker_env;
mod docker_ops;
mod flood;
mod hung;
mod idempotent;
mod interrupted;
mod malformed;
mod mcp_approvals;
mod mcp_python;
mod openapi;
mod parity;
mod registration;
mod relay;
mod sessions;
mod support;
mod throttle;
mod tokens;

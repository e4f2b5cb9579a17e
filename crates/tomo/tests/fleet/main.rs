//! Integration tests: the real control plane and real agents, in process, over real TLS on
//! 127.0.0.1 with a real SQLite file.

mod audit;
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

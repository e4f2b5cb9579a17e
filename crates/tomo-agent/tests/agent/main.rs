//! The agent's integration tests, one binary (issue 14): the real engine (`adversarial_run`,
//! `docker_methods`), the exec parser (`exec_injection`, `exec_parser_props`) and the
//! connection manager against a scripted control plane (`session`). `tests/docker_bounds.rs`
//! stays a binary of its own: it measures this process's resident memory, which tests running
//! beside it in one process would move.

mod adversarial_run;
mod docker_methods;
mod exec_injection;
mod exec_parser_props;
mod session;

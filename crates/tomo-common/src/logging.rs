//! `tracing` setup for both binaries: human-readable on a terminal, JSON lines when `LOG_JSON` is
//! true, level from `LOG_LEVEL` (default `info`; any `tracing` filter directive works).

use std::io::IsTerminal as _;

/// Installs the global subscriber. Logs go to stderr so that stdout stays for command output.
pub fn init(level: Option<&str>, json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_new(level.unwrap_or("info"))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = if json {
        builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init()
    } else {
        builder
            .with_ansi(std::io::stderr().is_terminal())
            .try_init()
    };
}

/// Parses a boolean environment-style value: `1`, `true`, `yes`, `on` (any case).
pub fn truthy(value: &str) -> bool {
    matches!(
        value.trim().to_ascii_lowercase().as_str(),
        "1" | "true" | "yes" | "on"
    )
}

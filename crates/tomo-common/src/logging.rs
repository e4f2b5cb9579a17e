//! `tracing` setup for both binaries: human-readable on a terminal, JSON lines when `LOG_JSON` is
//! true, level from `LOG_LEVEL` (default `info`; or `target=level` directives separated by
//! commas, e.g. `info,tomo_server=debug`). The filter is `tracing_subscriber`'s `Targets`, not
//! `EnvFilter`: the latter's regular-expression engine was half a megabyte of the agent's binary
//! (issue 6: a stripped agent of at most 10 MB).

use std::io::IsTerminal as _;
use std::sync::{Mutex, OnceLock};

use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{Registry, reload};

/// Changes the level at run time (`agent.update`); set by [`init`].
static RELOAD: OnceLock<(reload::Handle<Targets, Registry>, Mutex<String>)> = OnceLock::new();

/// Installs the global subscriber. Logs go to stderr so that stdout stays for command output.
pub fn init(level: Option<&str>, json: bool) {
    let level = level.unwrap_or("info");
    let filter = filter(level);
    let (filter, handle) = reload::Layer::new(filter);
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let registry = tracing_subscriber::registry().with(filter);
    let done = if json {
        registry
            .with(fmt.json().flatten_event(true).with_current_span(false))
            .try_init()
    } else {
        registry
            .with(fmt.with_ansi(std::io::stderr().is_terminal()))
            .try_init()
    };
    if done.is_ok() {
        let _ = RELOAD.set((handle, Mutex::new(level.to_owned())));
    }
}

/// The filter for a `LOG_LEVEL` value: comma-separated `level` or `target=level` directives,
/// blanks ignored (`Targets` would read an empty directive as "everything at TRACE"); `info` when
/// nothing valid is left.
fn filter(level: &str) -> Targets {
    let directives: Vec<&str> = level
        .split(',')
        .map(str::trim)
        .filter(|d| !d.is_empty())
        .collect();
    if directives.is_empty() {
        return Targets::new().with_default(tracing::Level::INFO);
    }
    directives
        .join(",")
        .parse::<Targets>()
        .unwrap_or_else(|_| Targets::new().with_default(tracing::Level::INFO))
}

/// The log levels [`set_level`] accepts.
pub const LEVELS: [&str; 5] = ["error", "warn", "info", "debug", "trace"];

/// Sets the log level of the whole process, one of [`LEVELS`].
pub fn set_level(level: &str) -> Result<(), String> {
    if !LEVELS.contains(&level) {
        return Err(format!("log level must be one of {}", LEVELS.join(", ")));
    }
    let (handle, current) = RELOAD
        .get()
        .ok_or("logging was not set up by this process")?;
    handle.reload(filter(level)).map_err(|e| e.to_string())?;
    if let Ok(mut c) = current.lock() {
        *c = level.to_owned();
    }
    Ok(())
}

/// The level set by [`init`] or [`set_level`]; `info` when logging is not set up.
pub fn level() -> String {
    RELOAD
        .get()
        .and_then(|(_, c)| c.lock().ok().map(|c| c.clone()))
        .unwrap_or_else(|| "info".into())
}

/// Parses a boolean environment-style value: `1`, `true`, `yes`, `on` (any case).
pub fn truthy(value: &str) -> bool {
    matches!(
        value.trim().to_ascii_lowercase().as_str(),
        "1" | "true" | "yes" | "on"
    )
}

#[cfg(test)]
mod tests {
    use tracing::Level;
    use tracing_subscriber::filter::LevelFilter;

    use super::*;

    fn level_for(filter: &Targets, target: &str) -> Option<LevelFilter> {
        // The most verbose level enabled for `target`.
        [
            Level::TRACE,
            Level::DEBUG,
            Level::INFO,
            Level::WARN,
            Level::ERROR,
        ]
        .into_iter()
        .find(|l| filter.would_enable(target, l))
        .map(LevelFilter::from_level)
    }

    #[test]
    fn blank_directives_do_not_turn_everything_to_trace() {
        for value in ["", " ", ",", "info,", ",info", "info, ,"] {
            let f = filter(value);
            assert_eq!(
                level_for(&f, "tomo_server"),
                Some(LevelFilter::INFO),
                "{value:?}"
            );
            assert_eq!(level_for(&f, "hyper"), Some(LevelFilter::INFO), "{value:?}");
        }
    }

    #[test]
    fn levels_and_per_target_directives() {
        let f = filter("warn,tomo_server=debug");
        assert_eq!(level_for(&f, "tomo_server"), Some(LevelFilter::DEBUG));
        assert_eq!(
            level_for(&f, "tomo_server::agents::hub"),
            Some(LevelFilter::DEBUG)
        );
        assert_eq!(level_for(&f, "hyper"), Some(LevelFilter::WARN));
        assert_eq!(level_for(&filter("error"), "x"), Some(LevelFilter::ERROR));
        // Not a directive at all: the default.
        assert_eq!(level_for(&filter("loud!=="), "x"), Some(LevelFilter::INFO));
    }
}

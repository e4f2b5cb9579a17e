//! `system.exec`, `system.preflight_check` and `system.prepare_volumes`.
//!
//! The handlers here are thin: they read limits and paths from [`crate::Shared`] and call plain
//! functions that tests drive directly.
//!
//! - [`command`]: the strict splitter and the allowlist of `system.exec`.
//! - [`run`]: runs an argument vector (no shell, clean environment, deadline, capped output).
//! - [`mod@preflight`]: the checks of `system.preflight_check`.
//! - [`volumes`]: directory creation under the volume base for `system.prepare_volumes`.
//!
//! # The `system.exec` allowlist
//!
//! A command runs only when its argument vector matches one entry of [`command::BUILTIN`]
//! exactly: same program, same number of arguments, each literal word equal and each
//! placeholder satisfied (`<name>`: `[A-Za-z0-9@._:-]+` not starting with `-`; `<count>`: 1–6
//! digits). A flag is therefore allowed only where an entry spells it out, which stops option
//! injection (`df --output=…`, `systemctl status -H host`). The entries are read-only commands:
//! the seed's (`docker ps|images|info|version|stats --no-stream`, `docker-compose ps|logs`,
//! `systemctl status|is-active <unit>`, `df [-h]`, `free [-m|-h]`, `uptime`, `hostname`,
//! `cat /etc/os-release`), plus `docker ps -a`, `docker compose ls`, `docker compose` and
//! `docker-compose` `-p <name> ps|logs [--tail <count>]` (the working directory is `/`, so a
//! project is found by name), `systemctl is-enabled|is-failed <unit>`, `uname -a|-r|-m`, `id`,
//! `date`, `nproc`, `ip addr` and `ip route`. Forms that change anything are absent even when
//! they share a program (`hostname NAME`, `date -s`, `ip link set`, `docker-compose up`).
//!
//! Programs are looked up in `/usr/sbin:/usr/bin:/sbin:/bin` only. An allowed program that is
//! not there is `-32603` with `data: {"reason": "not_installed", "program": …}`: the command is
//! not blocked by policy, the host lacks it. Refusals are `-32005` with `data.reason` one of
//! `metacharacter`, `control_character`, `unbalanced_quote`, `dangling_escape`, `not_allowed`.

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tomo_proto::methods::{
    ExecOutput, PreflightParams, PreflightResult, PrepareVolumesParams, PreparedVolumes,
    SystemExecParams,
};
use tomo_proto::rpc::RpcError;

use crate::dispatch::Ctx;

pub mod command;
pub mod preflight;
pub mod run;
pub mod volumes;

/// `system.exec`'s timeout when the caller names none, seconds.
pub const EXEC_TIMEOUT_DEFAULT_SECS: u64 = 30;
/// The longest `system.exec` timeout, seconds.
pub const EXEC_TIMEOUT_MAX_SECS: u64 = 300;
/// Longest `system.exec` command line, bytes.
pub const MAX_COMMAND_BYTES: usize = 4096;

/// `system.exec`: split, match against the allowlist, run.
pub async fn exec(ctx: Ctx, p: SystemExecParams) -> Result<ExecOutput, RpcError> {
    let timeout = exec_timeout(p.timeout)?;
    let argv = allowed_argv(&p.command, &ctx.shared.policy.exec_allowlist())?;
    let Some((program, args)) = argv.split_first() else {
        return Err(invalid("command", "empty command"));
    };
    let path = run::resolve(program).ok_or_else(|| run::not_installed(program))?;
    tracing::info!(command = ?argv, timeout_secs = timeout.as_secs(), "system.exec");
    let limits = run::Limits {
        timeout,
        cap_each: ctx.shared.max_response_bytes / 2,
    };
    run::run(&path, args, limits).await
}

/// The timeout asked for: 1 to 300 seconds, 30 by default.
fn exec_timeout(secs: Option<u64>) -> Result<Duration, RpcError> {
    match secs.unwrap_or(EXEC_TIMEOUT_DEFAULT_SECS) {
        s @ 1..=EXEC_TIMEOUT_MAX_SECS => Ok(Duration::from_secs(s)),
        s => Err(invalid(
            "timeout",
            format!("{s} s: between 1 and {EXEC_TIMEOUT_MAX_SECS} seconds"),
        )),
    }
}

/// The argument vector of `line`, when the allowlist has its shape.
fn allowed_argv(line: &str, allowlist: &command::Allowlist) -> Result<Vec<String>, RpcError> {
    if line.len() > MAX_COMMAND_BYTES {
        return Err(invalid(
            "command",
            format!("longer than {MAX_COMMAND_BYTES} bytes"),
        ));
    }
    let argv = command::split(line)?;
    if argv.is_empty() {
        return Err(invalid("command", "empty command"));
    }
    allowlist.check(&argv)?;
    Ok(argv)
}

fn invalid(param: &str, why: impl std::fmt::Display) -> RpcError {
    RpcError::invalid_params(format!("{param}: {why}")).with_data(json!({ "param": param }))
}

/// `system.preflight_check`: Docker, its version, disk, architecture, ports, data directory.
pub async fn preflight(ctx: Ctx, p: PreflightParams) -> Result<PreflightResult, RpcError> {
    preflight::validate(&p)?;
    // Asked fresh: a deployment decision should not rest on a sample up to a minute old.
    let docker = ctx.shared.docker.status().await;
    let shared = Arc::clone(&ctx.shared);
    let checks = tokio::task::spawn_blocking(move || {
        let host = preflight::HostView {
            arch: &shared.facts.arch,
            volume_base: &shared.volume_base,
            data_dir: &shared.data_dir,
        };
        preflight::run(&docker, host, &p)
    })
    .await
    .map_err(RpcError::internal)?;
    Ok(PreflightResult {
        ok: checks.iter().all(|c| c.ok),
        checks,
    })
}

/// `system.prepare_volumes`: directories under the volume base, with owner and mode.
pub async fn prepare_volumes(
    ctx: Ctx,
    p: PrepareVolumesParams,
) -> Result<PreparedVolumes, RpcError> {
    let base = ctx.shared.volume_base.clone();
    let euid = rustix::process::geteuid().as_raw();
    let prepared = tokio::task::spawn_blocking(move || volumes::prepare(&base, &p.volumes, euid))
        .await
        .map_err(RpcError::internal)??;
    tracing::info!(
        base = %prepared.base,
        created = prepared.volumes.iter().filter(|v| v.created).count(),
        total = prepared.volumes.len(),
        "system.prepare_volumes"
    );
    Ok(prepared)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tomo_proto::rpc::code;

    #[test]
    fn timeouts_are_bounded() {
        assert_eq!(exec_timeout(None).ok(), Some(Duration::from_secs(30)));
        assert_eq!(exec_timeout(Some(1)).ok(), Some(Duration::from_secs(1)));
        assert_eq!(exec_timeout(Some(300)).ok(), Some(Duration::from_secs(300)));
        for bad in [0, 301, u64::MAX] {
            let e = exec_timeout(Some(bad)).expect_err("out of range");
            assert_eq!(e.code, code::INVALID_PARAMS);
            assert_eq!(e.data, Some(json!({"param": "timeout"})));
        }
    }

    #[test]
    fn command_lines_are_split_then_matched() {
        let list = command::Allowlist::builtin();
        // (command line, expected error code and data, None when allowed)
        let cases = [
            ("df -h", None),
            ("  uptime  ", None),
            ("systemctl status 'nginx.service'", None),
            (
                "",
                Some((code::INVALID_PARAMS, json!({"param": "command"}))),
            ),
            (
                "   ",
                Some((code::INVALID_PARAMS, json!({"param": "command"}))),
            ),
            (
                "uptime; reboot",
                Some((code::COMMAND_BLOCKED, json!({"reason": "metacharacter"}))),
            ),
            (
                "uptime\nreboot",
                Some((
                    code::COMMAND_BLOCKED,
                    json!({"reason": "control_character"}),
                )),
            ),
            (
                "df '-h",
                Some((code::COMMAND_BLOCKED, json!({"reason": "unbalanced_quote"}))),
            ),
            (
                "df \\",
                Some((code::COMMAND_BLOCKED, json!({"reason": "dangling_escape"}))),
            ),
            (
                "df --output=source",
                Some((code::COMMAND_BLOCKED, json!({"reason": "not_allowed"}))),
            ),
            (
                "systemctl status -H host",
                Some((code::COMMAND_BLOCKED, json!({"reason": "not_allowed"}))),
            ),
            (
                "rm -rf /",
                Some((code::COMMAND_BLOCKED, json!({"reason": "not_allowed"}))),
            ),
        ];
        for (line, want) in cases {
            let got = allowed_argv(line, &list)
                .err()
                .map(|e| (e.code, e.data.unwrap_or_default()));
            assert_eq!(got, want, "{line:?}");
        }
        let long = format!("df {}", "x".repeat(MAX_COMMAND_BYTES));
        let e = allowed_argv(&long, &list).expect_err("too long");
        assert_eq!(e.data, Some(json!({"param": "command"})));
    }
}

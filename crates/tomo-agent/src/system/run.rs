//! Running one program for `system.exec`: an argument vector, never a shell; a clean environment;
//! a deadline; output capped.
//!
//! The runner does not look at the allowlist: callers check first. It is separate so that tests
//! can drive it with programs the allowlist would never let through (`sleep`, `yes`).

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::Command;
use tomo_proto::methods::ExecOutput;
use tomo_proto::rpc::RpcError;

use crate::cap::Capped;

/// The child's `PATH`, and the only directories a program is looked up in, in this order.
pub const SAFE_PATH: &str = "/usr/sbin:/usr/bin:/sbin:/bin";

/// How long and how much.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// The child (and its process group) is killed after this long.
    pub timeout: Duration,
    /// Bytes kept of stdout, and again of stderr; the rest is read and dropped.
    pub cap_each: usize,
}

/// The absolute path of a program named bare, from [`SAFE_PATH`] only: the first regular file
/// with an execute bit.
pub fn resolve(program: &str) -> Option<PathBuf> {
    if program.is_empty() || program.contains('/') || program.starts_with('.') {
        return None;
    }
    SAFE_PATH.split(':').map(Path::new).find_map(|dir| {
        let path = dir.join(program);
        let meta = std::fs::metadata(&path).ok()?;
        (meta.is_file() && meta.permissions().mode() & 0o111 != 0).then_some(path)
    })
}

/// The -32603 answer for an allowed program that is not on the host.
pub fn not_installed(program: &str) -> RpcError {
    RpcError::internal(format!(
        "{program} is not installed on this host (looked in {SAFE_PATH})"
    ))
    .with_data(json!({ "reason": "not_installed", "program": program }))
}

/// Runs `program` with `args` and collects what it printed.
///
/// stdin is `/dev/null`, the working directory `/`, and the environment holds only `PATH`
/// ([`SAFE_PATH`]) and `LANG=C`. The child leads its own process group, so a timeout kills
/// whatever it started too. stdout and stderr are read concurrently to the end, keeping
/// `cap_each` bytes of each, so a chatty child never blocks on a full pipe. A child killed by a
/// signal reports 128 + the signal number, as a shell would; `exit_code` is `None` only after a
/// timeout.
pub async fn run(program: &Path, args: &[String], limits: Limits) -> Result<ExecOutput, RpcError> {
    let started = Instant::now();
    let mut child = Command::new(program)
        .args(args)
        .env_clear()
        .env("PATH", SAFE_PATH)
        .env("LANG", "C")
        .current_dir("/")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => not_installed(&program.display().to_string()),
            _ => RpcError::internal(format!("cannot run {}: {e}", program.display())),
        })?;
    // Taken now: once the child has been waited for, `id()` says nothing.
    let group = child
        .id()
        .and_then(|id| rustix::process::Pid::from_raw(id as i32));
    let (stdout, stderr) = (child.stdout.take(), child.stderr.take());
    let mut out = Capped::new(limits.cap_each);
    let mut err = Capped::new(limits.cap_each);
    let finished = tokio::time::timeout(limits.timeout, async {
        let (_, _, status) = tokio::join!(
            drain(stdout, &mut out),
            drain(stderr, &mut err),
            child.wait()
        );
        status
    })
    .await;
    let (exit_code, timed_out) = match finished {
        Ok(status) => {
            let status =
                status.map_err(|e| RpcError::internal(format!("waiting for the command: {e}")))?;
            let code = status
                .code()
                .or_else(|| status.signal().map(|s| 128 + s))
                .map(i64::from);
            (code, false)
        }
        Err(_) => {
            if let Some(group) = group {
                // The group may be gone already (ESRCH): nothing left to kill.
                let _ = rustix::process::kill_process_group(group, rustix::process::Signal::KILL);
            }
            let _ = child.kill().await;
            (None, true)
        }
    };
    let truncated = out.truncated() || err.truncated();
    Ok(ExecOutput {
        exit_code,
        stdout: out.into_text().0,
        stderr: err.into_text().0,
        truncated,
        timed_out,
        duration_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
    })
}

/// Reads `pipe` to its end into `into`, dropping what does not fit.
async fn drain<R: AsyncRead + Unpin>(pipe: Option<R>, into: &mut Capped) {
    let Some(mut pipe) = pipe else { return };
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        match pipe.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                into.push(&buf[..n]);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(timeout_ms: u64, cap_each: usize) -> Limits {
        Limits {
            timeout: Duration::from_millis(timeout_ms),
            cap_each,
        }
    }

    fn prog(name: &str) -> PathBuf {
        resolve(name).unwrap_or_else(|| panic!("{name} not installed"))
    }

    fn args(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn resolves_only_bare_names_from_the_safe_path() {
        let sh = resolve("sh").expect("sh");
        assert!(sh.is_absolute());
        assert!(
            SAFE_PATH
                .split(':')
                .any(|d| sh.parent() == Some(Path::new(d)))
        );
        for bad in [
            "",
            "/bin/sh",
            "./sh",
            "../bin/sh",
            "bin/sh",
            ".",
            "..",
            "no-such-program-x",
        ] {
            assert_eq!(resolve(bad), None, "{bad:?}");
        }
    }

    #[tokio::test]
    async fn runs_real_commands() {
        for (name, a) in [
            ("uptime", &[][..]),
            ("hostname", &[][..]),
            ("df", &["-h"][..]),
        ] {
            let out = run(&prog(name), &args(a), limits(30_000, 1 << 20))
                .await
                .expect("runs");
            assert_eq!(out.exit_code, Some(0), "{name}: {out:?}");
            assert!(!out.stdout.trim().is_empty(), "{name}: {out:?}");
            assert!(!out.timed_out && !out.truncated, "{name}: {out:?}");
        }
        let df = run(&prog("df"), &args(&["-h"]), limits(30_000, 1 << 20))
            .await
            .expect("df");
        assert!(df.stdout.contains("Filesystem"), "{df:?}");
    }

    #[tokio::test]
    async fn reports_exit_codes_stderr_and_a_clean_environment() {
        let sh = prog("sh");
        let out = run(
            &sh,
            &args(&["-c", "echo oops >&2; env; pwd; exit 3"]),
            limits(30_000, 1 << 20),
        )
        .await
        .expect("runs");
        assert_eq!(out.exit_code, Some(3));
        assert_eq!(out.stderr, "oops\n");
        let mut env: Vec<_> = out.stdout.lines().collect();
        env.sort_unstable();
        // `sh` may add PWD, SHLVL and `_` itself; nothing may come from the agent's environment.
        let ours: Vec<_> = env
            .iter()
            .filter(|l| !l.starts_with("PWD=") && !l.starts_with("SHLVL=") && !l.starts_with("_="))
            .copied()
            .collect();
        assert_eq!(ours, ["/", "LANG=C", format!("PATH={SAFE_PATH}").as_str()]);
        let killed = run(&sh, &args(&["-c", "kill -9 $$"]), limits(30_000, 1024))
            .await
            .expect("runs");
        assert_eq!(killed.exit_code, Some(128 + 9));
        assert!(!killed.timed_out);
    }

    #[tokio::test]
    async fn times_out_and_kills_the_whole_group() {
        let started = Instant::now();
        // The shell prints the pid of a background `sleep`, which must die with the shell.
        let out = run(
            &prog("sh"),
            &args(&["-c", "sleep 60 & echo $!; sleep 60"]),
            limits(1_000, 1 << 20),
        )
        .await
        .expect("runs");
        assert!(out.timed_out, "{out:?}");
        assert_eq!(out.exit_code, None);
        assert!(
            started.elapsed() < Duration::from_secs(4),
            "{:?}",
            started.elapsed()
        );
        assert!((1_000..4_000).contains(&out.duration_ms), "{out:?}");
        let pid: u32 = out.stdout.trim().parse().expect("a pid");
        let mut alive = true;
        for _ in 0..50 {
            // Gone, or a zombie waiting for a reaper that is not us.
            alive = std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
                s.rsplit_once(')')
                    .is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z'))
            });
            if !alive {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(!alive, "the background sleep {pid} survived the timeout");
        let sleep = run(&prog("sleep"), &args(&["5"]), limits(1_000, 64))
            .await
            .expect("runs");
        assert!(sleep.timed_out && sleep.exit_code.is_none(), "{sleep:?}");
    }

    #[tokio::test]
    async fn caps_each_stream_and_keeps_draining() {
        // 1 MiB on each stream against a 16-byte cap: the child must not block on a full pipe.
        let out = run(
            &prog("sh"),
            &args(&[
                "-c",
                "head -c 1048576 /dev/zero | tr '\\0' a; head -c 1048576 /dev/zero | tr '\\0' b >&2",
            ]),
            limits(10_000, 16),
        )
        .await
        .expect("runs");
        assert_eq!(out.exit_code, Some(0), "{out:?}");
        assert!(!out.timed_out);
        assert!(out.truncated);
        assert_eq!(out.stdout, "a".repeat(16));
        assert_eq!(out.stderr, "b".repeat(16));
        let small = run(
            &prog("sh"),
            &args(&["-c", "printf 12345"]),
            limits(30_000, 5),
        )
        .await
        .expect("runs");
        assert_eq!((small.stdout.as_str(), small.truncated), ("12345", false));
    }

    #[test]
    fn not_installed_says_so() {
        let e = not_installed("ip");
        assert_eq!(e.code, tomo_proto::rpc::code::INTERNAL_ERROR);
        assert!(e.message.contains("ip is not installed"), "{}", e.message);
        assert_eq!(
            e.data,
            Some(json!({"reason": "not_installed", "program": "ip"}))
        );
    }
}

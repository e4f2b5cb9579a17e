//! What a benchmark reports besides its figures: the machine it ran on, the targets and whether
//! they were met, printed as a table and written as JSON.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::Context as _;
use serde::Serialize;

use crate::stats::Summary;

/// Where reports go: `target/bench/`, under `CARGO_TARGET_DIR` when that is set.
pub fn bench_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .filter(|d| !d.is_empty())
        .map_or_else(|| PathBuf::from("target"), PathBuf::from)
        .join("bench")
}

/// The machine and build a run happened on.
#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    /// CPUs this process may use (what `nproc` prints).
    pub cpus: usize,
    pub cpu_model: Option<String>,
    pub memory_bytes: Option<u64>,
    pub kernel: Option<String>,
    pub docker_version: Option<String>,
    pub docker_api_version: Option<String>,
    pub rustc: Option<String>,
    pub git_commit: Option<String>,
    /// Whether the working tree had uncommitted changes.
    pub git_dirty: Option<bool>,
    /// The 1, 5 and 15 minute load averages when the run began (2 CPUs: above 2, other work
    /// competed for them).
    pub load_average: Option<[f64; 3]>,
}

impl Machine {
    /// Reads `/proc`, asks the engine for its version, and asks `rustc` and `git` (in the
    /// current directory) for theirs; whatever cannot be read is `None`.
    pub async fn collect(docker: Option<&bollard::Docker>) -> Self {
        let version = match docker {
            Some(d) => d.version().await.ok(),
            None => None,
        };
        let proc = |p: &str| std::fs::read_to_string(p).ok();
        Self {
            cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
            cpu_model: proc("/proc/cpuinfo").and_then(|c| {
                c.lines()
                    .find(|l| l.starts_with("model name"))
                    .and_then(|l| l.split_once(':'))
                    .map(|(_, v)| v.trim().to_owned())
            }),
            memory_bytes: proc("/proc/meminfo").and_then(|m| {
                let kb = m.lines().find(|l| l.starts_with("MemTotal:"))?;
                let kb: u64 = kb.split_whitespace().nth(1)?.parse().ok()?;
                Some(kb * 1024)
            }),
            kernel: proc("/proc/sys/kernel/osrelease").map(|k| k.trim().to_owned()),
            docker_version: version.as_ref().and_then(|v| v.version.clone()),
            docker_api_version: version.as_ref().and_then(|v| v.api_version.clone()),
            rustc: output("rustc", &["--version"]),
            git_commit: output("git", &["rev-parse", "HEAD"]),
            // No optional locks: a benchmark must not hold the index lock of a tree others use.
            git_dirty: output("git", &["--no-optional-locks", "status", "--porcelain"])
                .map(|s| !s.is_empty()),
            load_average: crate::procs::load_average(),
        }
    }
}

/// Trimmed standard output of a command that succeeded.
fn output(program: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(program).args(args).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// One method's figures.
#[derive(Debug, Clone, Serialize)]
pub struct MethodResult {
    pub method: String,
    pub params: Option<serde_json::Value>,
    /// A reference row (no agent involved, no target).
    pub reference: bool,
    /// CPU time of this whole process (client, control plane and agent together; not the Docker
    /// engine) over the measured loop, per call, ms.
    pub cpu_ms_per_call: f64,
    #[serde(flatten)]
    pub summary: Summary,
}

/// One target and whether it was met.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub method: String,
    /// E.g. `p50 <= 2 ms`, `p99 <= 3 x p50` or `>= 20000 req/s`.
    pub target: String,
    pub value: f64,
    pub limit: f64,
    /// `ms` or `req/s`.
    pub unit: &'static str,
    pub pass: bool,
}

impl Check {
    /// `p50 <= limit_ms`.
    pub fn p50(m: &MethodResult, limit_ms: f64) -> Self {
        Self {
            method: m.method.clone(),
            target: format!("p50 <= {limit_ms} ms"),
            value: m.summary.p50_ms,
            limit: limit_ms,
            unit: "ms",
            pass: m.summary.p50_ms <= limit_ms,
        }
    }

    /// `p99 <= factor × p50`.
    pub fn tail(m: &MethodResult, factor: f64) -> Self {
        let limit = factor * m.summary.p50_ms;
        Self {
            method: m.method.clone(),
            target: format!("p99 <= {factor} x p50"),
            value: m.summary.p99_ms,
            limit,
            unit: "ms",
            pass: m.summary.p99_ms <= limit,
        }
    }

    /// At least `limit` requests a second.
    pub fn rate(m: &MethodResult, limit: f64, concurrency: usize) -> Self {
        Self {
            method: m.method.clone(),
            target: format!(">= {limit} req/s ({concurrency} concurrent)"),
            value: m.summary.requests_per_sec,
            limit,
            unit: "req/s",
            pass: m.summary.requests_per_sec >= limit,
        }
    }
}

/// The whole report, as written to JSON.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub benchmark: &'static str,
    pub command: String,
    pub started_at: String,
    pub machine: Machine,
    pub setup: serde_json::Value,
    pub methods: Vec<MethodResult>,
    /// The same agent methods with several clients at once (empty when not measured).
    pub concurrent: Vec<MethodResult>,
    pub concurrency: usize,
    pub targets: Vec<Check>,
    /// Every target met.
    pub pass: bool,
}

impl Report {
    /// The figures and targets as a plain-text table.
    pub fn table(&self) -> String {
        let mut s = Self::rows(&self.methods, true);
        s += "(in parentheses: references that do not reach the agent; CPU ms: this process's CPU\n\
              time per call, client, control plane and agent together, without the Docker engine)\n";
        s += &format!("\n{:<28}", "distribution (ms)");
        for b in crate::stats::BUCKETS_MS {
            s += &format!(" {:>7}", format!("<={b}"));
        }
        s += &format!(" {:>7}\n", ">");
        for m in &self.methods {
            s += &format!("{:<28}", m.method);
            for c in &m.summary.histogram {
                s += &format!(" {:>7}", c.count);
            }
            s += "\n";
        }
        if !self.concurrent.is_empty() {
            s += &format!("\n{} clients at once:\n", self.concurrency);
            s += &Self::rows(&self.concurrent, false);
        }
        s += "\ntargets\n";
        for c in &self.targets {
            s += &format!(
                "  {:<4} {:<26} {:<32} {:>9.3} {} (limit {:.3})\n",
                if c.pass { "ok" } else { "MISS" },
                c.method,
                c.target,
                c.value,
                c.unit,
                c.limit
            );
        }
        s
    }

    /// One line per method; `tail` adds the p99/p50 column. Reference rows are in parentheses.
    fn rows(methods: &[MethodResult], tail: bool) -> String {
        let ratio = |v: String| {
            if tail {
                format!(" {v:>8}")
            } else {
                String::new()
            }
        };
        let mut s = format!(
            "{:<28} {:>6} {:>8} {:>8} {:>8} {:>8} {:>7}{} {:>8}\n",
            "method",
            "n",
            "p50 ms",
            "p90 ms",
            "p99 ms",
            "max ms",
            "req/s",
            ratio("p99/p50".into()),
            "CPU ms"
        );
        for m in methods {
            let f = &m.summary;
            let name = if m.reference {
                format!("({})", m.method)
            } else {
                m.method.clone()
            };
            s += &format!(
                "{:<28} {:>6} {:>8.3} {:>8.3} {:>8.3} {:>8.3} {:>7.0}{} {:>8.3}\n",
                name,
                f.n,
                f.p50_ms,
                f.p90_ms,
                f.p99_ms,
                f.max_ms,
                f.requests_per_sec,
                ratio(format!("{:.2}", f.p99_over_p50)),
                m.cpu_ms_per_call
            );
        }
        s
    }

    /// The machine, in one line.
    pub fn machine_line(&self) -> String {
        let m = &self.machine;
        let unknown = || "?".to_owned();
        format!(
            "{} CPU ({}), {} GiB, kernel {}, Docker {}, {}, commit {}{}, load {}",
            m.cpus,
            m.cpu_model.clone().unwrap_or_else(unknown),
            m.memory_bytes
                .map(|b| format!("{:.1}", b as f64 / (1u64 << 30) as f64))
                .unwrap_or_else(unknown),
            m.kernel.clone().unwrap_or_else(unknown),
            m.docker_version.clone().unwrap_or_else(unknown),
            m.rustc.clone().unwrap_or_else(unknown),
            m.git_commit
                .as_deref()
                .map(|c| c.chars().take(12).collect())
                .unwrap_or_else(unknown),
            if m.git_dirty == Some(true) {
                " (dirty tree)"
            } else {
                ""
            },
            m.load_average
                .map(|l| format!("{:.2} {:.2} {:.2}", l[0], l[1], l[2]))
                .unwrap_or_else(unknown),
        )
    }

    /// Writes the report as pretty JSON, creating the parent directory.
    pub fn write(&self, path: &Path) -> anyhow::Result<()> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
        }
        let json = serde_json::to_string_pretty(self).context("report to JSON")?;
        std::fs::write(path, json + "\n")
            .with_context(|| format!("cannot write {}", path.display()))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::stats::Summary;

    fn result(method: &str, reference: bool, ms: &[u64]) -> MethodResult {
        let samples = ms.iter().map(|m| Duration::from_millis(*m)).collect();
        MethodResult {
            method: method.to_owned(),
            params: None,
            reference,
            cpu_ms_per_call: 0.25,
            summary: Summary::of(samples, Duration::from_secs(1)),
        }
    }

    #[test]
    fn both_tables_line_up_and_only_the_sequential_one_has_the_tail_column() {
        let methods = vec![
            result("GET /healthz", true, &[1, 2, 3]),
            result("agent.ping", false, &[1, 1, 9]),
        ];
        let seq = Report::rows(&methods, true);
        let conc = Report::rows(&methods, false);
        for (table, tail) in [(&seq, true), (&conc, false)] {
            let lines: Vec<&str> = table.lines().collect();
            assert_eq!(lines.len(), 3, "{table}");
            assert!(lines.iter().all(|l| l.len() == lines[0].len()), "{table}");
            assert_eq!(lines[0].contains("p99/p50"), tail, "{table}");
            assert!(lines[0].ends_with("CPU ms"), "{table}");
            assert!(lines[1].starts_with("(GET /healthz)"), "{table}");
            assert!(lines[2].starts_with("agent.ping"), "{table}");
            assert!(lines[2].ends_with("0.250"), "{table}");
        }
        // p99 / p50 of 1, 1, 9 ms.
        assert!(
            seq.lines().nth(2).is_some_and(|l| l.contains(" 9.00 ")),
            "{seq}"
        );
    }
}

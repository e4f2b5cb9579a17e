//! The issue-6 suite: `tomo-bench footprint`, `fleet` and `all` (footprint, round trip and fleet
//! in turn), with the targets of issue 6, a table and a JSON report (`target/bench/*.json`).

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use serde::Serialize;

use crate::footprint::{self, Footprint, FootprintPlan};
use crate::report::{Machine, Report, bench_dir};
use crate::rpc::{self, RpcArgs};
use crate::scale::{self, Fleet, FleetPlan};

/// One target of issue 6 and whether it was met.
#[derive(Debug, Clone, Serialize)]
pub struct Target {
    pub name: String,
    pub value: f64,
    pub limit: f64,
    pub unit: &'static str,
    /// `<=` or `>=`.
    pub op: &'static str,
    pub pass: bool,
    /// By how much it was missed, when it was.
    pub miss: Option<String>,
}

impl Target {
    fn at_most(name: impl Into<String>, value: f64, limit: f64, unit: &'static str) -> Self {
        Self::new(name.into(), value, limit, unit, "<=")
    }

    fn at_least(name: impl Into<String>, value: f64, limit: f64, unit: &'static str) -> Self {
        Self::new(name.into(), value, limit, unit, ">=")
    }

    fn new(name: String, value: f64, limit: f64, unit: &'static str, op: &'static str) -> Self {
        let pass = if op == "<=" {
            value <= limit
        } else {
            value >= limit
        };
        let miss = (!pass).then(|| {
            let by = (value - limit).abs();
            let rel = if limit == 0.0 {
                String::new()
            } else {
                format!(" ({:.0} %)", 100.0 * by / limit)
            };
            let dir = if op == "<=" { "over" } else { "short" };
            format!("{} {unit} {dir}{rel}", fmt(by))
        });
        Self {
            name,
            value,
            limit,
            unit,
            op,
            pass,
            miss,
        }
    }
}

fn fmt(v: f64) -> String {
    if (v == v.trunc() && v.abs() < 1e9) || v.abs() >= 100.0 {
        format!("{v:.0}")
    } else if v.abs() >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

/// The agent's targets.
pub fn footprint_targets(f: &Footprint, quick: bool) -> Vec<Target> {
    let q = if quick {
        " (quick: shorter windows)"
    } else {
        ""
    };
    vec![
        Target::at_most(
            format!("agent idle RSS, {} s after connecting{q}", f.plan.idle_secs),
            f.idle.rss_kib as f64 * 1024.0 / 1e6,
            8.0,
            "MB",
        ),
        Target::at_most(
            format!(
                "agent idle CPU, over {} s, per minute{q}",
                f.plan.cpu_window_secs
            ),
            f.idle_cpu_secs_per_min,
            0.05,
            "s",
        ),
        Target::at_most(
            format!(
                "agent start -> authenticated (median of {} restarts)",
                f.restart_ms.len()
            ),
            f.restart_median_ms,
            100.0,
            "ms",
        ),
        Target::at_most(
            "agent binary, stripped",
            f.binary_bytes as f64 / 1e6,
            10.0,
            "MB",
        ),
    ]
}

/// The round trip's issue-6 targets, from the rpc report.
pub fn rpc_targets(r: &Report) -> Vec<Target> {
    let mut out = Vec::new();
    if let Some(ping) = r.methods.iter().find(|m| m.method == "agent.ping") {
        out.push(Target::at_most(
            "agent.ping p50, sequential",
            ping.summary.p50_ms,
            0.3,
            "ms",
        ));
    }
    if let Some(ping) = r.concurrent.iter().find(|m| m.method == "agent.ping") {
        out.push(Target::at_least(
            format!("agent.ping, {} clients at once", r.concurrency),
            ping.summary.requests_per_sec,
            20_000.0,
            "req/s",
        ));
    }
    out
}

/// The fleet's targets.
pub fn fleet_targets(f: &Fleet, quick: bool) -> Vec<Target> {
    let n = f.plan.agents;
    let q = if quick {
        format!(" (quick: {n} agents; the target is for 10000)")
    } else {
        String::new()
    };
    let fan_out_failures: u64 = f.fan_outs.iter().map(|o| o.failed + o.errors).sum();
    let connect_failures: u64 = f.connect_failures.values().sum();
    let restart_unexpected: u64 = f.restart_unexpected.values().sum();
    vec![
        Target::at_most(
            format!("{n} agents connected{q}"),
            f.connect_secs,
            30.0,
            "s",
        ),
        Target::at_most(
            format!("control plane RSS per connected agent{q}"),
            f.rss_per_agent_bytes / 1e3,
            30.0,
            "KB",
        ),
        Target::at_most(
            format!("fan-out of agent.ping to {n}, median{q}"),
            f.fan_out_median_ms / 1e3,
            2.0,
            "s",
        ),
        Target::at_most(
            "errors: connecting and fan-outs",
            (connect_failures + fan_out_failures) as f64,
            0.0,
            "",
        ),
        Target::at_most(
            format!("restart: all {n} back online after SIGTERM{q}"),
            f.restart_total_secs,
            60.0,
            "s",
        ),
        Target::at_most(
            "restart: errors beyond refused connections (agents + control-plane log)",
            (restart_unexpected + f.restart_server_log.error + f.restart_server_log.warn) as f64,
            0.0,
            "",
        ),
    ]
}

/// The targets as a table.
pub fn targets_table(targets: &[Target]) -> String {
    let mut s = String::new();
    for t in targets {
        s += &format!(
            "  {:<4} {:<70} {:>10} {:<5} {} {} {}\n",
            if t.pass { "ok" } else { "MISS" },
            t.name,
            fmt(t.value),
            t.unit,
            t.op,
            fmt(t.limit),
            t.miss
                .as_ref()
                .map(|m| format!("  missed by {m}"))
                .unwrap_or_default()
        );
    }
    s
}

/// The footprint's figures as a table.
pub fn footprint_table(f: &Footprint) -> String {
    let mb = |kib: u64| kib as f64 * 1024.0 / 1e6;
    format!(
        "agent binary                     {:>10.2} MB ({} bytes, {}, {})\n\
         start -> connected, registering  {:>10.1} ms\n\
         start -> connected, restarts     {:>10.1} ms median, {:.1} ms max ({:?})\n\
         idle {:>3} s: VmRSS / VmHWM        {:>10.2} MB / {:.2} MB\n\
         idle RSS: private / file-backed  {:>10.2} MB / {:.2} MB, {} threads\n\
         idle CPU over {:>3} s               {:>10.3} s ({:.3} s per minute)\n\
         after {} requests: VmRSS / VmHWM {:>7.2} MB / {:.2} MB ({:.1} s)\n",
        f.binary_bytes as f64 / 1e6,
        f.binary_bytes,
        if f.binary_stripped {
            "stripped"
        } else {
            "NOT stripped"
        },
        f.binary_path,
        f.register_ms,
        f.restart_median_ms,
        f.restart_max_ms,
        f.restart_ms
            .iter()
            .map(|v| (v * 10.0).round() / 10.0)
            .collect::<Vec<_>>(),
        f.plan.idle_secs,
        mb(f.idle.rss_kib),
        mb(f.idle.hwm_kib),
        mb(f.idle.rss_anon_kib),
        mb(f.idle.rss_file_kib),
        f.idle.threads,
        f.plan.cpu_window_secs,
        f.idle_cpu_secs,
        f.idle_cpu_secs_per_min,
        f.requests,
        mb(f.after_requests.rss_kib),
        mb(f.after_requests.hwm_kib),
        f.requests_secs,
    )
}

/// The fleet's figures as a table.
pub fn fleet_table(f: &Fleet) -> String {
    let mb = |kib: u64| kib as f64 * 1024.0 / 1e6;
    let fan: Vec<String> = f
        .fan_outs
        .iter()
        .map(|o| format!("{:.0}/{:.0}", o.client_ms, o.server_ms))
        .collect();
    format!(
        "agents (simulated)               {:>10}  over {} source addresses\n\
         registration codes minted        {:>10.2} s\n\
         all connected (registering)      {:>10.2} s  failures: {:?}\n\
         CPU to connect: control plane    {:>10.2} s  simulator {:.2} s ({:.2} / {:.2} ms per agent)\n\
         control plane RSS idle / N conn. {:>10.1} MB / {:.1} MB (peak {:.1} MB)\n\
         RSS per connected agent          {:>10.1} KB\n\
         fan-out agent.ping, ms           {:>10.0}  median; client/server each: {}\n\
         metrics burst of N pushes        {:>10.2} s  {:.2} CPU s, {:.0} pushes per CPU s, {} received\n\
         restart: stop / down / back      {:>10.2} s / {:.2} s / {:.2} s\n\
         restart: SIGTERM -> all back     {:>10.2} s  failures: {:?}\n\
         control-plane log, warn/error    {:>10} / {} (restarted: {} / {})\n\
         control plane RSS after restart  {:>10.1} MB\n",
        f.plan.agents,
        f.plan.source_ips,
        f.codes_secs,
        f.connect_secs,
        f.connect_failures,
        f.server_cpu_connect_secs,
        f.sim_cpu_connect_secs,
        f.server_cpu_connect_secs * 1e3 / f.plan.agents as f64,
        f.sim_cpu_connect_secs * 1e3 / f.plan.agents as f64,
        mb(f.server_baseline.rss_kib),
        mb(f.server_connected.rss_kib),
        mb(f.server_connected.hwm_kib),
        f.rss_per_agent_bytes / 1e3,
        f.fan_out_median_ms,
        fan.join(" "),
        f.ingest_secs,
        f.ingest_cpu_secs,
        f.ingest_per_cpu_sec,
        f.ingest_received,
        f.restart_stop_secs,
        f.restart_down_secs,
        f.restart_back_secs,
        f.restart_total_secs,
        f.restart_failures,
        f.server_log.warn,
        f.server_log.error,
        f.restart_server_log.warn,
        f.restart_server_log.error,
        mb(f.server_after_restart.rss_kib),
    )
}

/// Everything a suite run writes.
#[derive(Debug, Serialize)]
pub struct SuiteReport {
    pub benchmark: &'static str,
    pub command: String,
    pub quick: bool,
    pub started_at: String,
    pub machine: Machine,
    /// Load averages when each part ended.
    pub load_after: Vec<(String, Option<[f64; 3]>)>,
    pub footprint: Option<Footprint>,
    pub rpc: Option<Report>,
    pub fleet: Option<Fleet>,
    pub targets: Vec<Target>,
    pub pass: bool,
}

/// Which parts to run.
#[derive(Debug, Clone, Copy)]
pub struct Parts {
    pub footprint: bool,
    pub rpc: bool,
    pub fleet: bool,
}

/// Runs the parts, prints each table and the targets, and writes `json` (default:
/// `target/bench/<name>.json`).
pub async fn run(
    name: &'static str,
    parts: Parts,
    quick: bool,
    agents: Option<usize>,
    rpc_args: RpcArgs,
    json: Option<PathBuf>,
) -> anyhow::Result<()> {
    let json = json.unwrap_or_else(|| bench_dir().join(format!("{name}.json")));
    let nofile = crate::procs::raise_nofile();
    let scratch = bench_dir().join("run");
    let _ = std::fs::remove_dir_all(&scratch);
    std::fs::create_dir_all(&scratch)
        .with_context(|| format!("cannot create {}", scratch.display()))?;
    let docker = crate::fixtures::engine().await.ok();
    let machine = Machine::collect(docker.as_ref()).await;
    let mut report = SuiteReport {
        benchmark: name,
        command: rpc::command_line(),
        quick,
        started_at: tomo_server::core::rfc3339(tomo_common::now_ms()),
        machine,
        load_after: Vec::new(),
        footprint: None,
        rpc: None,
        fleet: None,
        targets: Vec::new(),
        pass: false,
    };
    println!("{}", report.machine_line());
    println!(
        "{}{}\n",
        report.command,
        if quick {
            "   [QUICK MODE: smaller N, shorter windows]"
        } else {
            ""
        }
    );
    if parts.footprint {
        eprintln!("footprint …");
        let plan = if quick {
            FootprintPlan::quick()
        } else {
            FootprintPlan::full()
        };
        let f = footprint::run(&scratch, plan).await?;
        println!(
            "agent footprint (tomo-agent, its own process)\n{}",
            footprint_table(&f)
        );
        report.targets.extend(footprint_targets(&f, quick));
        report.footprint = Some(f);
        report.load("footprint");
    }
    if parts.rpc {
        eprintln!("round trip …");
        let args = if quick { rpc_args.quick() } else { rpc_args };
        let r = rpc::measure_report(&args).await?;
        println!("round trip through the control plane (in-process control plane and agent)");
        print!("{}", r.table());
        println!();
        report.targets.extend(rpc_targets(&r));
        report.rpc = Some(r);
        report.load("rpc");
    }
    if parts.fleet {
        let mut plan = if quick {
            FleetPlan::quick()
        } else {
            FleetPlan::full()
        };
        if let Some(n) = agents {
            plan.agents = n;
        }
        anyhow::ensure!(
            nofile > plan.agents as u64 + 1000,
            "the open-file limit ({nofile}) is too low for {} agents",
            plan.agents
        );
        eprintln!("fleet of {} simulated agents …", plan.agents);
        let f = scale::run(&scratch, plan).await?;
        println!(
            "fleet (control plane: tomo server, its own process; agents: tomo-sim)\n{}",
            fleet_table(&f)
        );
        report.targets.extend(fleet_targets(&f, quick));
        report.fleet = Some(f);
        report.load("fleet");
    }
    report.pass = report.targets.iter().all(|t| t.pass);
    println!(
        "issue 6 targets{}",
        if quick { " (QUICK MODE)" } else { "" }
    );
    print!("{}", targets_table(&report.targets));
    write(&json, &report)?;
    println!(
        "\n{} report: {}  (logs: {})",
        if report.pass {
            "all targets met;"
        } else {
            "TARGETS MISSED;"
        },
        json.display(),
        scratch.display()
    );
    Ok(())
}

impl SuiteReport {
    fn load(&mut self, part: &str) {
        self.load_after
            .push((part.to_owned(), crate::procs::load_average()));
    }

    fn machine_line(&self) -> String {
        let m = &self.machine;
        format!(
            "{} CPU ({}), kernel {}, Docker {}, {}, commit {}{}, load average {}",
            m.cpus,
            m.cpu_model.clone().unwrap_or_default(),
            m.kernel.clone().unwrap_or_default(),
            m.docker_version.clone().unwrap_or_else(|| "none".into()),
            m.rustc.clone().unwrap_or_default(),
            m.git_commit
                .as_deref()
                .map(|c| c.chars().take(12).collect::<String>())
                .unwrap_or_default(),
            if m.git_dirty == Some(true) {
                " (dirty tree)"
            } else {
                ""
            },
            m.load_average
                .map(|l| format!("{:.2} {:.2} {:.2}", l[0], l[1], l[2]))
                .unwrap_or_default(),
        )
    }
}

fn write(path: &Path, report: &SuiteReport) -> anyhow::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let json = serde_json::to_string_pretty(report).context("report to JSON")?;
    std::fs::write(path, json + "\n").with_context(|| format!("cannot write {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_say_by_how_much_they_were_missed() {
        let t = Target::at_most("rss", 10.0, 8.0, "MB");
        assert!(!t.pass);
        assert_eq!(t.miss.as_deref(), Some("2 MB over (25 %)"));
        let t = Target::at_least("rate", 5000.0, 20000.0, "req/s");
        assert!(!t.pass);
        assert_eq!(t.miss.as_deref(), Some("15000 req/s short (75 %)"));
        let t = Target::at_most("errors", 0.0, 0.0, "");
        assert!(t.pass && t.miss.is_none());
        let t = Target::at_least("rate", 25000.0, 20000.0, "req/s");
        assert!(t.pass);
    }
}

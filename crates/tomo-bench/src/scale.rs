//! `tomo-bench fleet`: one control plane (`tomo server`, its own process, so that its memory is
//! its own) and N simulated agents (`tomo-sim`, in this process) on loopback addresses.
//!
//! Phases: registration codes minted through the API; all N agents started at once (connect time
//! until every one is welcomed); the control plane's memory per connected agent; a fan-out of
//! `agent.ping` to all N through `POST /api/v1/fleet/rpc` (time until every answer is in); a
//! burst of N `metrics.update` pushes (time until the control plane has absorbed them, and its CPU
//! cost); and a restart of the control plane (SIGTERM, start again on the same data directory and
//! port): time until all N are back online, and every failure other than refused connections
//! (agents' side) or warnings and errors (the control plane's log).

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context as _, ensure};
use futures_util::StreamExt as _;
use serde::Serialize;
use serde_json::json;
use tomo_sim::{Intervals, Sim, SimConfig, Snapshot};

use crate::procs::{Api, LogCounts, ServerProc, Usage};

/// Failure kinds that are expected during a control-plane restart: connections refused while
/// nothing listens, and the sessions the control plane closed on its way down.
pub const RESTART_EXPECTED: [&str; 2] = ["refused", "lost:closed"];

/// The size of the run.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct FleetPlan {
    pub agents: usize,
    /// Loopback source addresses the agents are spread over (127.0.0.2 …).
    pub source_ips: u8,
    /// Fan-outs of `agent.ping` to all agents.
    pub fan_outs: usize,
    /// How long to wait for all agents (each phase).
    pub timeout_secs: u64,
}

impl FleetPlan {
    pub fn full() -> Self {
        Self {
            agents: 10_000,
            // 50 agents per address: a restart storm stays within each source's share of
            // unauthenticated connections (64, issue 12.5).
            source_ips: 200,
            fan_outs: 5,
            timeout_secs: 180,
        }
    }

    pub fn quick() -> Self {
        Self {
            agents: 1_000,
            source_ips: 32,
            fan_outs: 3,
            timeout_secs: 60,
        }
    }
}

/// One fan-out.
#[derive(Debug, Clone, Serialize)]
pub struct FanOut {
    /// From sending the API request to having read its answer, ms.
    pub client_ms: f64,
    /// The control plane's own figure: from the first call sent to the last answer in, ms.
    pub server_ms: f64,
    pub hosts: u64,
    pub ok: u64,
    pub errors: u64,
    pub failed: u64,
}

/// The figures.
#[derive(Debug, Clone, Serialize)]
pub struct Fleet {
    pub plan: FleetPlan,
    pub codes_secs: f64,
    /// From starting the agents to the last one online, s.
    pub connect_secs: f64,
    /// Failures while connecting (none expected).
    pub connect_failures: std::collections::BTreeMap<String, u64>,
    /// The control plane idle with no agent (after the codes were minted).
    pub server_baseline: Usage,
    /// The control plane with every agent connected, a few seconds after the last.
    pub server_connected: Usage,
    /// (connected − baseline) / N, bytes (KiB × 1024).
    pub rss_per_agent_bytes: f64,
    /// CPU time spent connecting every agent: the control plane's and this process's (the
    /// simulated agents'), s.
    pub server_cpu_connect_secs: f64,
    pub sim_cpu_connect_secs: f64,
    pub fan_outs: Vec<FanOut>,
    pub fan_out_median_ms: f64,
    /// The burst of N pushes: until the control plane's CPU went quiet, s; its CPU time, s.
    pub ingest_secs: f64,
    pub ingest_cpu_secs: f64,
    /// Hosts whose latest metrics (through `GET /api/v1/hosts`) came from the burst.
    pub ingest_received: u64,
    /// Pushes per second of CPU time.
    pub ingest_per_cpu_sec: f64,
    /// The restart: SIGTERM to exit, s; exit to answering again, s; answering to every agent
    /// back online, s; SIGTERM to every agent back, s.
    pub restart_stop_secs: f64,
    pub restart_down_secs: f64,
    pub restart_back_secs: f64,
    pub restart_total_secs: f64,
    /// Agents' failures during the restart other than [`RESTART_EXPECTED`].
    pub restart_unexpected: std::collections::BTreeMap<String, u64>,
    pub restart_failures: std::collections::BTreeMap<String, u64>,
    /// Warnings and errors in the restarted control plane's log.
    pub restart_server_log: LogCounts,
    /// Warnings and errors in the first control plane's log (connect, fan-out, ingestion,
    /// shutdown).
    pub server_log: LogCounts,
    pub server_after_restart: Usage,
    pub sim: Snapshot,
}

/// Runs the fleet benchmark in `dir` (a scratch directory).
pub async fn run(dir: &Path, plan: FleetPlan) -> anyhow::Result<Fleet> {
    let data = dir.join("fleet-server");
    let log1 = dir.join("fleet-server.log");
    let server = ServerProc::start(&data, "127.0.0.1:0".parse()?, &log1, "info").await?;
    let token = server.first_token.clone().context("no admin token")?;
    let api = Api::new(&server.api_url, &server.ca_file, &token, 16)?;

    eprintln!("  minting {} registration codes …", plan.agents);
    let started = Instant::now();
    let codes: Vec<String> = futures_util::stream::iter(0..plan.agents)
        .map(|_| api.create_code())
        .buffer_unordered(16)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<anyhow::Result<_>>()?;
    let codes_secs = started.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let server_baseline = server.usage()?;

    let mut config = SimConfig::new(server.agent_url.clone(), server.ca_file.clone());
    config.source_ips = (0..plan.source_ips)
        .map(|i| std::net::Ipv4Addr::new(127, 0, 0, 2 + i))
        .collect();
    // Pushes happen at each session's start and in the measured burst only, so that the
    // measurements are not mixed with the periodic ones (their cost is the burst's, per push).
    config.intervals = Intervals {
        metrics_push: Duration::from_secs(3600),
        health_push: Duration::from_secs(3600),
        ..Intervals::default()
    };
    let timeout = Duration::from_secs(plan.timeout_secs);
    eprintln!("  starting {} simulated agents …", plan.agents);
    let me = std::process::id();
    let sim_cpu0 = crate::procs::cpu_secs(me)?;
    let sim = Sim::start(config, codes).context("simulator")?;
    let result = phases(dir, &plan, &api, server, &sim, timeout, sim_cpu0).await;
    sim.stop(Duration::from_secs(30)).await;
    let (server, mut fleet) = result?;
    server.stop().await;
    fleet.codes_secs = codes_secs;
    fleet.server_baseline = server_baseline;
    fleet.rss_per_agent_bytes =
        (fleet.server_connected.rss_kib as f64 - server_baseline.rss_kib as f64) * 1024.0
            / plan.agents as f64;
    fleet.server_log = LogCounts::of(&log1);
    Ok(fleet)
}

async fn phases(
    dir: &Path,
    plan: &FleetPlan,
    api: &Api,
    server: ServerProc,
    sim: &Sim,
    timeout: Duration,
    sim_cpu0: f64,
) -> anyhow::Result<(ServerProc, Fleet)> {
    let n = plan.agents;
    let server_cpu0 = server.usage()?.cpu_secs;
    let connect = sim
        .wait_online(n, timeout)
        .await
        .with_context(|| format!("not all agents online: {:?}", sim.stats().snapshot()))?;
    let server_cpu_connect_secs = server.usage()?.cpu_secs - server_cpu0;
    let sim_cpu_connect_secs = crate::procs::cpu_secs(std::process::id())? - sim_cpu0;
    let connect_failures = sim.stats().snapshot().failures;
    eprintln!(
        "  {n} agents online in {:.2} s; letting the first pushes settle …",
        connect.as_secs_f64()
    );
    settle(server.pid, Duration::from_secs(30)).await;
    let server_connected = server.usage()?;

    let mut fan_outs = Vec::with_capacity(plan.fan_outs);
    for _ in 0..plan.fan_outs {
        let body = json!({"method": "agent.ping", "summary_only": true, "timeout_ms": 30000});
        let started = Instant::now();
        let v = api
            .send(reqwest::Method::POST, "/fleet/rpc", Some(&body))
            .await?;
        let client_ms = started.elapsed().as_secs_f64() * 1e3;
        let count = |k: &str| v[k].as_u64().unwrap_or(0);
        fan_outs.push(FanOut {
            client_ms,
            server_ms: v["elapsed_ms"].as_f64().unwrap_or(0.0),
            hosts: count("hosts"),
            ok: count("ok"),
            errors: count("errors"),
            failed: count("failed"),
        });
        settle(server.pid, Duration::from_secs(10)).await;
    }
    let mut sorted: Vec<f64> = fan_outs.iter().map(|f| f.client_ms).collect();
    sorted.sort_by(f64::total_cmp);
    let fan_out_median_ms = sorted.get(sorted.len() / 2).copied().unwrap_or(0.0);
    eprintln!("  fan-out of agent.ping to {n}: median {fan_out_median_ms:.0} ms; metrics burst …");

    // The burst: every agent pushes once, now.
    let burst_at = tomo_common::now_ms();
    let cpu0 = server.usage()?.cpu_secs;
    let started = Instant::now();
    sim.push_metrics_now();
    let busy_until = settle(server.pid, Duration::from_secs(plan.timeout_secs)).await;
    let ingest_secs = busy_until.duration_since(started).as_secs_f64();
    let ingest_cpu_secs = server.usage()?.cpu_secs - cpu0;
    let hosts = api.send(reqwest::Method::GET, "/hosts", None).await?;
    let ingest_received = hosts
        .as_array()
        .map(|hs| {
            hs.iter()
                .filter(|h| {
                    h["metrics"]["sample"]["sampled_at_ms"]
                        .as_i64()
                        .is_some_and(|t| t >= burst_at)
                })
                .count() as u64
        })
        .unwrap_or(0);
    eprintln!(
        "  {ingest_received} pushes absorbed in {ingest_secs:.2} s ({ingest_cpu_secs:.2} CPU s); restarting the control plane …"
    );

    // The restart.
    sim.stats().clear_failures();
    let (data, listen) = (dir.join("fleet-server"), server.listen);
    let t_kill = Instant::now();
    let stop = server.stop().await;
    let log2 = dir.join("fleet-server-restart.log");
    let server = ServerProc::start(&data, listen, &log2, "info").await?;
    let down = server.ready.duration_since(t_kill).saturating_sub(stop);
    let back = sim.wait_online(n, timeout).await;
    let t_back = Instant::now();
    let snap = sim.stats().snapshot();
    ensure!(back.is_some(), "not all agents came back: {snap:?}");
    settle(server.pid, Duration::from_secs(30)).await;
    let server_after_restart = server.usage()?;
    let restart_server_log = LogCounts::of(&log2);
    eprintln!(
        "  all {n} back {:.2} s after the restart began",
        t_back.duration_since(t_kill).as_secs_f64()
    );
    let fleet = Fleet {
        plan: *plan,
        codes_secs: 0.0,
        connect_secs: connect.as_secs_f64(),
        connect_failures,
        server_baseline: Usage::default(),
        server_connected,
        rss_per_agent_bytes: 0.0,
        server_cpu_connect_secs,
        sim_cpu_connect_secs,
        fan_outs,
        fan_out_median_ms,
        ingest_secs,
        ingest_cpu_secs,
        ingest_received,
        ingest_per_cpu_sec: if ingest_cpu_secs > 0.0 {
            n as f64 / ingest_cpu_secs
        } else {
            0.0
        },
        restart_stop_secs: stop.as_secs_f64(),
        restart_down_secs: down.as_secs_f64(),
        restart_back_secs: t_back.duration_since(server.ready).as_secs_f64(),
        restart_total_secs: t_back.duration_since(t_kill).as_secs_f64(),
        restart_unexpected: snap.failures_except(&RESTART_EXPECTED),
        restart_failures: snap.failures.clone(),
        restart_server_log,
        server_log: LogCounts::default(),
        server_after_restart,
        sim: snap,
    };
    Ok((server, fleet))
}

/// Waits until the process has been quiet (under 5 % of a core for 300 ms), at most `limit`;
/// returns when its last busy moment ended.
async fn settle(pid: u32, limit: Duration) -> Instant {
    const TICK: Duration = Duration::from_millis(50);
    let started = Instant::now();
    let mut last_busy = started;
    let mut quiet = 0;
    let mut before = crate::procs::cpu_secs(pid).unwrap_or(0.0);
    while started.elapsed() < limit && quiet < 6 {
        tokio::time::sleep(TICK).await;
        let now = crate::procs::cpu_secs(pid).unwrap_or(before);
        if now - before > 0.05 * TICK.as_secs_f64() {
            quiet = 0;
            last_busy = Instant::now();
        } else {
            quiet += 1;
        }
        before = now;
    }
    last_busy
}

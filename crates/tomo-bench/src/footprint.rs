//! `tomo-bench footprint`: what the real agent costs its host (issue 6).
//!
//! The control plane (`tomo server`) and the agent (`tomo-agent`, the release binary) each run
//! in their own process, on 127.0.0.1, the agent talking to the local Docker engine. Measured:
//! the binary's size (stripped, as built); the time from process start to the agent's
//! "connected" log line (the control plane's welcome received), at registration and at each of
//! several restarts with the saved key (the everyday case, the target's); resident memory
//! (`VmRSS`, and the peak `VmHWM`) after an idle window following the connection; CPU time over
//! an idle window; and memory again after 1000 requests through the control plane.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context as _, ensure};
use serde::Serialize;
use serde_json::json;

use crate::procs::{AgentProc, Api, ServerProc, Usage, agent_bin};

/// How long each phase lasts.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct FootprintPlan {
    /// Restarts with the saved key, each timed from process start to connected.
    pub restarts: usize,
    /// Idle time after connecting before memory is read (the target says 30 s).
    pub idle_secs: u64,
    /// Window over which idle CPU is measured (the target says 60 s).
    pub cpu_window_secs: u64,
    /// Requests through the control plane before memory is read again.
    pub requests: usize,
}

impl FootprintPlan {
    pub fn full() -> Self {
        Self {
            restarts: 10,
            idle_secs: 30,
            cpu_window_secs: 60,
            requests: 1000,
        }
    }

    pub fn quick() -> Self {
        Self {
            restarts: 3,
            idle_secs: 5,
            cpu_window_secs: 10,
            requests: 1000,
        }
    }
}

/// The figures.
#[derive(Debug, Clone, Serialize)]
pub struct Footprint {
    pub plan: FootprintPlan,
    pub binary_bytes: u64,
    /// The binary has no symbol table.
    pub binary_stripped: bool,
    /// The binary measured (see [`agent_bin`]).
    pub binary_path: String,
    /// Start → connected at registration (key generated and sealed, code claimed), ms.
    pub register_ms: f64,
    /// Start → connected at each restart with the saved key, ms.
    pub restart_ms: Vec<f64>,
    pub restart_median_ms: f64,
    pub restart_max_ms: f64,
    /// After `idle_secs` idle.
    pub idle: Usage,
    /// CPU seconds over `cpu_window_secs` idle, and per minute.
    pub idle_cpu_secs: f64,
    pub idle_cpu_secs_per_min: f64,
    /// After the requests (and one second's rest).
    pub after_requests: Usage,
    /// The requests: how many, by method, and how long they took.
    pub requests: usize,
    pub requests_secs: f64,
}

/// Runs the footprint measurement in `dir` (a scratch directory).
pub async fn run(dir: &Path, plan: FootprintPlan) -> anyhow::Result<Footprint> {
    let bin = agent_bin()?;
    let bytes = std::fs::read(&bin).context("cannot read the agent binary")?;
    let binary_stripped = !bytes.windows(7).any(|w| w == b".symtab");

    let server = ServerProc::start(
        &dir.join("server"),
        "127.0.0.1:0".parse()?,
        &dir.join("footprint-server.log"),
        "warn",
    )
    .await?;
    let result = measure(dir, &server, plan).await;
    server.stop().await;
    let m = result?;
    Ok(Footprint {
        plan,
        binary_bytes: bytes.len() as u64,
        binary_stripped,
        binary_path: bin.display().to_string(),
        ..m
    })
}

async fn measure(
    dir: &Path,
    server: &ServerProc,
    plan: FootprintPlan,
) -> anyhow::Result<Footprint> {
    let token = server.first_token.clone().context("no admin token")?;
    let api = Api::new(&server.api_url, &server.ca_file, &token, 4)?;
    let code = api.create_code().await?;
    let log = dir.join("footprint-agent.log");
    let base = crate::procs::agent_args(
        server,
        server.agent_url.clone(),
        dir,
        "tomo-bench-footprint",
    )?;
    let connect_within = Duration::from_secs(30);

    // Registration, then restarts with the saved key.
    let mut args = base.clone();
    args.extend(["--register-code".to_owned(), code]);
    let mut agent = AgentProc::start(&args, &log).await?;
    let register = agent.wait_connected(connect_within).await?;
    let mut restarts = Vec::with_capacity(plan.restarts);
    for _ in 0..plan.restarts {
        agent.stop().await;
        agent = AgentProc::start(&base, &log).await?;
        restarts.push(agent.wait_connected(connect_within).await?);
    }
    eprintln!(
        "  agent: registered in {:.1} ms, {} restarts; idle {} s …",
        ms(register),
        restarts.len(),
        plan.idle_secs
    );

    // Idle: memory after the idle window, then CPU over the next window.
    tokio::time::sleep(Duration::from_secs(plan.idle_secs)).await;
    let idle = agent.usage()?;
    let cpu0 = idle.cpu_secs;
    eprintln!("  agent: idle CPU over {} s …", plan.cpu_window_secs);
    tokio::time::sleep(Duration::from_secs(plan.cpu_window_secs)).await;
    let idle_cpu_secs = agent.usage()?.cpu_secs - cpu0;

    // Requests through the control plane, the four methods of the round-trip benchmark in turn.
    let hosts = api.send(reqwest::Method::GET, "/hosts", None).await?;
    let host = hosts
        .as_array()
        .and_then(|h| h.first())
        .and_then(|h| h["id"].as_str())
        .context("the agent's host is not listed")?
        .to_owned();
    let methods = [
        ("agent.ping", None),
        ("system.info", None),
        ("system.get_metrics", None),
        ("docker.containers.list", Some(json!({"all": true}))),
    ];
    let started = Instant::now();
    for i in 0..plan.requests {
        let (method, params) = &methods[i % methods.len()];
        api.call(&host, method, params.clone()).await?;
    }
    let requests_secs = started.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after_requests = agent.usage()?;
    agent.stop().await;

    let mut sorted: Vec<f64> = restarts.iter().map(|d| ms(*d)).collect();
    let restart_ms = sorted.clone();
    sorted.sort_by(f64::total_cmp);
    ensure!(
        !sorted.is_empty() || plan.restarts == 0,
        "no restart measured"
    );
    Ok(Footprint {
        plan,
        binary_bytes: 0,
        binary_stripped: false,
        binary_path: String::new(),
        register_ms: ms(register),
        restart_median_ms: sorted.get(sorted.len() / 2).copied().unwrap_or(0.0),
        restart_max_ms: sorted.last().copied().unwrap_or(0.0),
        restart_ms,
        idle,
        idle_cpu_secs,
        idle_cpu_secs_per_min: idle_cpu_secs * 60.0 / plan.cpu_window_secs as f64,
        after_requests,
        requests: plan.requests,
        requests_secs,
    })
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

//! `tomo-bench flood`: the control plane under pre-authentication floods (issue 12.5), bounded
//! and on loopback only. A control plane in this process (default configuration, self-signed
//! TLS, SQLite in a temporary directory); the floods come from 127.0.0.2, the operator's client
//! and the real agents from 127.0.0.1.
//!
//! Phases: no flood (the reference), then three floods, each kept at its size for the whole
//! phase (a connection the control plane closes is opened again after 100 ms):
//! - 200 idle TCP connections (no ClientHello),
//! - 200 TCP connections that sent one byte of a ClientHello and stall,
//! - 300 connections upgraded to `/agent/ws` that never answer the challenge.
//!
//! In each phase: `GET /api/v1/hosts` with an admin token, each request on a new connection (new
//! TCP and TLS handshake: what a flood competes with), sequentially, for at most `--requests`
//! requests or `--window` seconds; a request that fails or takes longer than 5 s counts as 5 s.
//! Then real agents (`tomo_agent::Agent`, new registration codes) register one after the other:
//! the time from start to online, at most 10 s each. Targets of issue 12.5: API p99 <= 100 ms
//! and every agent online within 2 s, under each flood.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use serde::Serialize;
use tokio_util::sync::CancellationToken;
use tomo_agent::config::AgentConfig;
use tomo_agent::{Agent, Status};
use tomo_proto::methods::Level;
use tomo_server::config::ServerConfig;
use tomo_server::{AppState, Server, ServerInfo};
use tomo_sim::flood::{Kind, Sustained};

use crate::report::{Machine, bench_dir};
use crate::stats::Summary;

/// Where the floods come from.
const FLOOD_SOURCE: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);
/// Pause before a closed flood connection is opened again.
const REOPEN_AFTER: Duration = Duration::from_millis(100);
/// Time for a flood to reach its size before the measurements.
const SETTLE: Duration = Duration::from_secs(2);
/// A request slower than this is a failure (and counts as this long).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// An agent not online within this is a failure.
const AGENT_TIMEOUT: Duration = Duration::from_secs(10);
/// Issue 12.5's targets.
const API_P99_MS: f64 = 100.0;
const AGENT_MS: f64 = 2000.0;

#[derive(Debug, Clone, clap::Args)]
pub struct FloodArgs {
    /// Most API requests per phase.
    #[arg(long, default_value_t = 300, value_parser = clap::value_parser!(u32).range(1..))]
    requests: u32,
    /// Most seconds of API requests per phase.
    #[arg(long, default_value_t = 15)]
    window: u64,
    /// Real agents that register in each phase.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    agents: u32,
    /// Where to write the JSON report [default: target/bench/flood.json].
    #[arg(long)]
    json: Option<PathBuf>,
}

impl FloodArgs {
    /// `--quick`: fewer requests, a shorter window, one agent.
    pub fn quick(self) -> Self {
        Self {
            requests: self.requests.min(100),
            window: self.window.min(5),
            agents: 1,
            ..self
        }
    }
}

/// One phase's figures.
#[derive(Debug, Clone, Serialize)]
pub struct Phase {
    pub name: &'static str,
    /// Connections the flood was to keep open (0: no flood).
    pub flood: usize,
    /// Flood connections open when the measurements began, and in total (reopened ones
    /// included) and failed attempts by the end of the phase.
    pub flood_held_at_start: u64,
    pub flood_opened: u64,
    pub flood_failed: u64,
    /// `GET /api/v1/hosts`, each on a new connection.
    pub api: Summary,
    pub api_failures: usize,
    /// Each agent's time from start to online, ms (`None`: not online within 10 s).
    pub agent_online_ms: Vec<Option<f64>>,
    pub api_target_met: bool,
    pub agent_target_met: bool,
}

#[derive(Debug, Serialize)]
struct FloodReport {
    machine: Machine,
    requests: u32,
    window_secs: u64,
    phases: Vec<Phase>,
}

/// A control plane in this process.
struct ControlPlane {
    _tmp: tempfile::TempDir,
    info: ServerInfo,
    state: Arc<AppState>,
    token: String,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

pub async fn run(args: FloodArgs) -> anyhow::Result<()> {
    let machine = Machine::collect(None).await;
    let cp = start().await?;
    let http = client(&cp)?;
    let phases: [(&'static str, Option<(Kind, usize)>); 4] = [
        ("no flood", None),
        ("200 idle TCP (no ClientHello)", Some((Kind::IdleTcp, 200))),
        ("200 stalled TLS (1 byte)", Some((Kind::StalledTls, 200))),
        (
            "300 idle upgraded /agent/ws",
            Some((Kind::IdleUpgraded, 300)),
        ),
    ];
    let mut results = Vec::new();
    for (i, (name, flood)) in phases.into_iter().enumerate() {
        let sustained = match flood {
            Some((kind, n)) => {
                let ca = cp.info.ca_file.clone().context("self-signed CA")?;
                let s =
                    Sustained::start(kind, &cp.info.agent_url, &ca, FLOOD_SOURCE, n, REOPEN_AFTER)
                        .context("flood")?;
                tokio::time::sleep(SETTLE).await;
                Some(s)
            }
            None => None,
        };
        let held_at_start = sustained.as_ref().map_or(0, Sustained::held);
        let (api, api_failures) = api_requests(&cp, &http, &args).await;
        let mut agent_online_ms = Vec::new();
        for a in 0..args.agents {
            agent_online_ms.push(agent_online(&cp, &format!("flood-{i}-{a}")).await?);
        }
        let (opened, failed) = sustained
            .as_ref()
            .map_or((0, 0), |s| (s.opened(), s.failed()));
        if let Some(s) = sustained {
            s.stop().await;
        }
        let phase = Phase {
            name,
            flood: flood.map_or(0, |f| f.1),
            flood_held_at_start: held_at_start,
            flood_opened: opened,
            flood_failed: failed,
            api_target_met: api.p99_ms <= API_P99_MS && api_failures == 0,
            agent_target_met: agent_online_ms
                .iter()
                .all(|ms| ms.is_some_and(|ms| ms <= AGENT_MS)),
            api,
            api_failures,
            agent_online_ms,
        };
        println!("{}", line(&phase));
        results.push(phase);
        // The next phase starts from a quiet control plane.
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    cp.stop.cancel();
    let _ = cp.task.await;
    let report = FloodReport {
        machine,
        requests: args.requests,
        window_secs: args.window,
        phases: results,
    };
    println!("\n{}", table(&report.phases));
    let path = args.json.unwrap_or_else(|| bench_dir().join("flood.json"));
    write(&report, &path)?;
    println!("report: {}", path.display());
    Ok(())
}

async fn start() -> anyhow::Result<ControlPlane> {
    let tmp = tempfile::Builder::new()
        .prefix("tomo-bench-flood-")
        .tempdir()
        .context("temporary directory")?;
    let config = ServerConfig::new(
        tmp.path().join("server"),
        "127.0.0.1:0".parse().context("listen address")?,
    );
    let server = Server::bind(config)
        .await
        .context("the control plane does not start")?;
    let (info, state) = (server.info().clone(), server.state());
    let token = tomo_server::auth::mint_token(&*state.store, "bench", Level::Admin, None)
        .await
        .context("cannot mint an API token")?
        .0;
    let stop = CancellationToken::new();
    let task = tokio::spawn(server.run(stop.clone()));
    Ok(ControlPlane {
        _tmp: tmp,
        info,
        state,
        token,
        stop,
        task,
    })
}

/// An HTTPS client that opens a new connection for every request.
fn client(cp: &ControlPlane) -> anyhow::Result<reqwest::Client> {
    let ca = cp.info.ca_file.clone().context("self-signed CA")?;
    let tls = tomo_common::tls::client_config(&tomo_common::tls::Trust::CaFile(ca))?;
    reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .pool_max_idle_per_host(0)
        .timeout(REQUEST_TIMEOUT)
        .build()
        .context("HTTP client")
}

async fn api_requests(
    cp: &ControlPlane,
    http: &reqwest::Client,
    args: &FloodArgs,
) -> (Summary, usize) {
    let url = format!("{}/api/v1/hosts", cp.info.api_url);
    let (mut samples, mut failures) = (Vec::new(), 0);
    let t0 = Instant::now();
    let window = Duration::from_secs(args.window);
    while samples.len() < args.requests as usize && t0.elapsed() < window {
        let t = Instant::now();
        let ok = matches!(
            http.get(&url).bearer_auth(&cp.token).send().await,
            Ok(r) if r.status().is_success()
        );
        if ok {
            samples.push(t.elapsed());
        } else {
            failures += 1;
            samples.push(t.elapsed().max(REQUEST_TIMEOUT));
        }
    }
    (Summary::of(samples, t0.elapsed()), failures)
}

/// A real agent with a new registration code: ms from start to online, `None` past 10 s.
async fn agent_online(cp: &ControlPlane, name: &str) -> anyhow::Result<Option<f64>> {
    let code = tomo_server::auth::mint_code(&cp.state, Duration::from_secs(900), "bench")
        .await
        .context("cannot mint a registration code")?
        .0;
    let mut config = AgentConfig::new(cp._tmp.path().join("agents").join(name));
    config.server_url = Some(cp.info.agent_url.clone());
    config.ca_file = cp.info.ca_file.clone();
    config.register_code = Some(code);
    config.hostname = Some(name.to_owned());
    config.docker =
        tomo_agent::docker::Endpoint::Refused("the flood benchmark does not use Docker".into());
    let agent = Agent::new(config).context("agent configuration")?;
    let mut status = agent.status();
    let stop = CancellationToken::new();
    let t0 = Instant::now();
    let task = tokio::spawn(agent.run(stop.clone()));
    let online = tokio::time::timeout(
        AGENT_TIMEOUT,
        status.wait_for(|s| matches!(s, Status::Online { .. })),
    )
    .await
    .is_ok_and(|r| r.is_ok());
    let took = t0.elapsed();
    stop.cancel();
    let _ = task.await;
    Ok(online.then_some(took.as_secs_f64() * 1e3))
}

fn line(p: &Phase) -> String {
    format!(
        "{}: flood {} held at start, API p50 {:.1} ms p99 {:.1} ms ({} requests, {} failed), agents {}",
        p.name,
        p.flood_held_at_start,
        p.api.p50_ms,
        p.api.p99_ms,
        p.api.n,
        p.api_failures,
        agents(&p.agent_online_ms)
    )
}

fn agents(ms: &[Option<f64>]) -> String {
    ms.iter()
        .map(|m| m.map_or_else(|| "> 10 s".to_owned(), |m| format!("{m:.0} ms")))
        .collect::<Vec<_>>()
        .join(", ")
}

fn table(phases: &[Phase]) -> String {
    let mut s = format!(
        "{:<32} {:>6} {:>9} {:>9} {:>9} {:>7}  {:<24} {}\n",
        "phase", "held", "API p50", "API p99", "API max", "failed", "agents online", "targets"
    );
    for p in phases {
        let ok = |b: bool| if b { "met" } else { "MISSED" };
        s.push_str(&format!(
            "{:<32} {:>6} {:>9.1} {:>9.1} {:>9.1} {:>7}  {:<24} API {} / agents {}\n",
            p.name,
            p.flood_held_at_start,
            p.api.p50_ms,
            p.api.p99_ms,
            p.api.max_ms,
            p.api_failures,
            agents(&p.agent_online_ms),
            ok(p.api_target_met),
            ok(p.agent_target_met),
        ));
    }
    s
}

fn write(report: &FloodReport, path: &std::path::Path) -> anyhow::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let json = serde_json::to_string_pretty(report).context("report to JSON")?;
    std::fs::write(path, json + "\n").with_context(|| format!("cannot write {}", path.display()))
}

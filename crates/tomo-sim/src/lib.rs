//! `tomo-sim`: many simulated agents in one process, speaking the real protocol to a real control
//! plane, for the fleet benchmark (`tomo-bench fleet`) and the scale tests.
//!
//! What is real: each agent has its own Ed25519 key ([`tomo_agent::identity::Keys`]), registers
//! with a single-use code (checking the command-key fingerprint it names, like the agent), later
//! authenticates by signing the server's challenge, dials over TCP and verified TLS (the control
//! plane's CA pinned; no session resumption, so every handshake is a full one), and runs the
//! handshake through the agent's own [`tomo_agent::session::open`]. Every request it receives
//! passes the agent's pipeline ([`tomo_agent::pipeline::Guard::admit`]: signature, audience,
//! replay and freshness, method, role and the default host policy) before it is answered, and
//! every decision is sent as an `audit.record`, as the agent does. Sessions send heartbeats
//! (30 s), `metrics.update` (at connect, then every 30 s) and `health.status` (at connect, then
//! every 60 s), detect a dead control plane (90 s), and reconnect with the agent's jittered
//! backoff ([`tomo_agent::backoff::Backoff`]).
//!
//! What is simulated: answers come from canned data ([`canned`]) instead of `/proc` and Docker;
//! nothing is written to disk (the replay memory is in memory only); and the agents are spread
//! over several loopback source addresses (127.0.0.2, 127.0.0.3, …) so that ten thousand
//! connections do not exhaust one address's ephemeral ports.
//!
//! Entry point: [`Sim::start`], then [`Sim::wait_online`], [`Sim::push_metrics_now`],
//! [`Sim::stats`] and [`Sim::stop`].

#![forbid(unsafe_code)]

mod agent;
pub mod canned;
mod dial;
pub mod flood;
mod stats;

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use stats::{Snapshot, Stats};

/// Timings of a simulated agent; the defaults are the real agent's.
#[derive(Debug, Clone, Copy)]
pub struct Intervals {
    pub heartbeat: Duration,
    pub metrics_push: Duration,
    pub health_push: Duration,
    pub dead_after: Duration,
    pub handshake_timeout: Duration,
    /// First delay of the reconnect backoff (doubling, ±20 % jitter).
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
}

impl Default for Intervals {
    fn default() -> Self {
        let agent = tomo_agent::config::Intervals::default();
        Self {
            heartbeat: agent.heartbeat,
            metrics_push: agent.metrics_push,
            health_push: agent.health_push,
            dead_after: agent.dead_after,
            handshake_timeout: agent.handshake_timeout,
            backoff_initial: Duration::from_secs(1),
            backoff_max: Duration::from_secs(60),
        }
    }
}

/// Where the simulated agents connect and how they behave.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// The control plane's agent URL, `wss://127.0.0.1:PORT/agent/ws` (an IP literal: the
    /// simulator only dials loopback addresses).
    pub url: String,
    /// The control plane's CA, pinned.
    pub ca_file: PathBuf,
    /// Source addresses, used in turn (agent `i` dials from `source_ips[i % len]`).
    pub source_ips: Vec<Ipv4Addr>,
    pub intervals: Intervals,
    /// First connections are spread uniformly over this window (zero: all at once).
    pub ramp: Duration,
    /// Containers `docker.containers.list` returns.
    pub containers: usize,
}

impl SimConfig {
    /// Agents dialing `url` with the CA `ca_file` pinned, from 127.0.0.2–127.0.0.9, with the
    /// agent's timings and five containers each.
    pub fn new(url: impl Into<String>, ca_file: impl Into<PathBuf>) -> Self {
        Self {
            url: url.into(),
            ca_file: ca_file.into(),
            source_ips: (2..=9).map(|i| Ipv4Addr::new(127, 0, 0, i)).collect(),
            intervals: Intervals::default(),
            ramp: Duration::ZERO,
            containers: 5,
        }
    }
}

/// Why the simulator cannot start.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error("bad control plane URL {0:?}: the simulator dials wss://<IPv4 loopback>:<port>/…")]
    Url(String),
    #[error("source address {0} is not a loopback address")]
    NotLoopback(Ipv4Addr),
    #[error("no source addresses")]
    NoSource,
    #[error(transparent)]
    Tls(#[from] tomo_common::tls::TlsError),
}

/// State shared by every simulated agent.
struct Shared {
    url: String,
    intervals: Intervals,
    dialers: Vec<dial::SimDialer>,
    canned: canned::Canned,
    policy: tomo_agent::policy::HostPolicy,
    stats: Arc<Stats>,
    stop: CancellationToken,
    push: watch::Receiver<u64>,
}

/// A running set of simulated agents.
pub struct Sim {
    stats: Arc<Stats>,
    stop: CancellationToken,
    push: watch::Sender<u64>,
    tasks: TaskTracker,
}

impl std::fmt::Debug for Sim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sim")
            .field("stats", &self.stats.snapshot())
            .finish_non_exhaustive()
    }
}

impl Sim {
    /// Starts one simulated agent per registration code. Agents register, then stay connected
    /// (reconnecting as needed) until [`Sim::stop`]. Must be called inside a tokio runtime.
    pub fn start(config: SimConfig, codes: Vec<String>) -> Result<Self, SimError> {
        let server = dial::server_addr(&config.url)?;
        if config.source_ips.is_empty() {
            return Err(SimError::NoSource);
        }
        if let Some(ip) = config.source_ips.iter().find(|ip| !ip.is_loopback()) {
            return Err(SimError::NotLoopback(*ip));
        }
        let tls = dial::tls_config(&config.ca_file)?;
        let dialers = config
            .source_ips
            .iter()
            .map(|ip| dial::SimDialer::new(*ip, server, Arc::clone(&tls)))
            .collect();
        let stats = Arc::new(Stats::new(codes.len()));
        let stop = CancellationToken::new();
        let (push_tx, push_rx) = watch::channel(0u64);
        let shared = Arc::new(Shared {
            url: config.url.clone(),
            intervals: config.intervals,
            dialers,
            canned: canned::Canned::new(config.containers),
            policy: tomo_agent::policy::HostPolicy::default_for(std::path::Path::new("/srv/tomo")),
            stats: Arc::clone(&stats),
            stop: stop.clone(),
            push: push_rx,
        });
        let tasks = TaskTracker::new();
        let n = codes.len().max(1) as u32;
        for (index, code) in codes.into_iter().enumerate() {
            let delay = config.ramp.mul_f64(f64::from(index as u32) / f64::from(n));
            tasks.spawn(agent::run(Arc::clone(&shared), index, code, delay));
        }
        tasks.close();
        Ok(Self {
            stats,
            stop,
            push: push_tx,
            tasks,
        })
    }

    /// Counters shared with the agents.
    pub fn stats(&self) -> &Arc<Stats> {
        &self.stats
    }

    /// Waits until at least `n` agents are online; returns how long that took, or `None` after
    /// `timeout`.
    pub async fn wait_online(&self, n: usize, timeout: Duration) -> Option<Duration> {
        self.stats.wait_online(n, timeout).await
    }

    /// Makes every connected agent push a `metrics.update` now (at most one pending push per
    /// agent).
    pub fn push_metrics_now(&self) {
        self.push.send_modify(|n| *n += 1);
    }

    /// Closes every session (agents send a Close frame) and waits for the agents, at most
    /// `grace`. Returns whether they all stopped in time.
    pub async fn stop(self, grace: Duration) -> bool {
        self.stop.cancel();
        tokio::time::timeout(grace, self.tasks.wait()).await.is_ok()
    }
}

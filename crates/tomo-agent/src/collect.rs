//! Background collectors: a sampler that keeps the latest metrics and Docker status, so requests
//! and the periodic pushes read a ready sample instead of measuring on the request path.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tomo_proto::methods::{DockerStatus, Metrics};

use crate::docker::DockerClient;
use crate::host;

/// How often the engine's identity and version are re-read when it is available.
const DOCKER_STATUS_REFRESH: Duration = Duration::from_secs(60);
/// A hung engine must not hold up the agent: status probes give up after this.
const DOCKER_PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// How often the engine is pinged (`_ping`), so that its health is known within
/// `DOCKER_PING_EVERY + DOCKER_PROBE_TIMEOUT` (4 s) of it going away or hanging, and at once
/// after a call found it gone (issue 13.4).
const DOCKER_PING_EVERY: Duration = Duration::from_secs(2);

/// Whether the engine answers `_ping` in time; `Err` says why not.
async fn ping(docker: &DockerClient) -> Result<(), String> {
    match tokio::time::timeout(DOCKER_PROBE_TIMEOUT, docker.ping()).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(e.message),
        Err(_) => Err(no_answer()),
    }
}

fn no_answer() -> String {
    format!("Docker engine did not answer within {DOCKER_PROBE_TIMEOUT:?}")
}

/// The engine's status, or "unavailable" when it does not answer in time.
async fn probe(docker: &DockerClient) -> DockerStatus {
    match tokio::time::timeout(DOCKER_PROBE_TIMEOUT, docker.status()).await {
        Ok(s) => s,
        Err(_) => DockerStatus {
            available: false,
            error: Some(no_answer()),
            ..Default::default()
        },
    }
}

/// The latest samples, readable from anywhere without waiting.
#[derive(Debug, Clone)]
pub struct Samples {
    pub metrics: watch::Receiver<Metrics>,
    pub docker: watch::Receiver<DockerStatus>,
}

/// Takes one sample now (so the first request already has data) and returns the receivers and
/// the task that keeps them fresh every `every` until `shutdown`.
pub async fn start(
    docker: Arc<DockerClient>,
    host_root: std::path::PathBuf,
    every: Duration,
    shutdown: CancellationToken,
) -> (Samples, impl std::future::Future<Output = ()>) {
    let mut sampler = Sampler::new(docker, host_root);
    let status = probe(&sampler.docker).await;
    let first = sampler.sample(&status).await;
    let (metrics_tx, metrics) = watch::channel(first);
    let (docker_tx, docker_rx) = watch::channel(status);
    let task = async move {
        let mut status_at = Instant::now();
        let mut tick = tokio::time::interval(every);
        let mut ping_tick = tokio::time::interval(DOCKER_PING_EVERY);
        for t in [&mut tick, &mut ping_tick] {
            t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        }
        tick.tick().await;
        ping_tick.tick().await;
        loop {
            let sample = tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => true,
                _ = ping_tick.tick() => false,
                // Only news while the engine counts as available: when it is down, failing
                // calls must not turn the 2 s probe into a tight loop.
                _ = sampler.docker.went_away(), if docker_tx.borrow().available => false,
            };
            let was = docker_tx.borrow().available;
            if !sample && was && status_at.elapsed() < DOCKER_STATUS_REFRESH {
                // Available: a ping is enough; its failure is news at once.
                if let Err(error) = ping(&sampler.docker).await {
                    docker_tx.send_replace(DockerStatus {
                        available: false,
                        error: Some(error),
                        ..Default::default()
                    });
                    status_at = Instant::now();
                }
            } else if !was || status_at.elapsed() >= DOCKER_STATUS_REFRESH {
                let now = probe(&sampler.docker).await;
                // Unchanged news is not sent: health pushes follow changes.
                docker_tx.send_if_modified(|s| {
                    let changed = *s != now;
                    *s = now;
                    changed
                });
                status_at = Instant::now();
            }
            if sample {
                let status = docker_tx.borrow().clone();
                let m = sampler.sample(&status).await;
                metrics_tx.send_replace(m);
            }
        }
    };
    (
        Samples {
            metrics,
            docker: docker_rx,
        },
        task,
    )
}

struct Sampler {
    docker: Arc<DockerClient>,
    host_root: std::path::PathBuf,
    cpu: (u64, u64),
    net: (u64, u64),
    at: Instant,
}

impl Sampler {
    fn new(docker: Arc<DockerClient>, host_root: std::path::PathBuf) -> Self {
        Self {
            docker,
            host_root,
            cpu: host::cpu_times(),
            net: host::net_bytes(),
            at: Instant::now(),
        }
    }

    async fn sample(&mut self, docker: &DockerStatus) -> Metrics {
        let (cpu, net, at) = (host::cpu_times(), host::net_bytes(), Instant::now());
        let secs = at.duration_since(self.at).as_secs_f64();
        let (memory, swap) = host::memory();
        let containers = if docker.available {
            self.docker.counts().await.ok()
        } else {
            None
        };
        let m = Metrics {
            sampled_at_ms: tomo_common::now_ms(),
            cpu_percent: host::cpu_percent(self.cpu, cpu),
            memory,
            swap,
            disks: host::disks(&self.host_root),
            network: host::rates(self.net, net, secs),
            load: host::load(),
            uptime_secs: host::uptime_secs(),
            containers,
        };
        (self.cpu, self.net, self.at) = (cpu, net, at);
        m
    }
}

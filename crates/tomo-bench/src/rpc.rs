//! `tomo-bench rpc`: the round trip of an agent call through the control plane, as an operator's
//! client sees it (issue 3).
//!
//! One HTTPS client (the server's CA pinned, HTTP/1.1 keep-alive, one connection) calls
//! `POST /api/v1/hosts/{host}/rpc` with an admin token, sequentially, method by method, after a
//! warm-up. Each sample is the time from sending the request to having read the whole answer;
//! every answer is checked afterwards (outside the timed part). The agent's background
//! collectors run as usual meanwhile: that is what "no stalls: p99 <= 3 x p50" is about.
//!
//! Reference rows, timed the same way, tell where the time goes: `GET /healthz` (client, TLS,
//! HTTP), the store reads the API makes before forwarding a call, and the Docker engine's own
//! `GET /containers/json`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::fixtures::{self, Containers};
use crate::fleet::Fleet;
use crate::report::{Check, Machine, MethodResult, Report};
use crate::stats::Summary;

/// Containers that exist on the host during the measurement.
const CONTAINERS: usize = 5;
/// Allowed tail: p99 at most this many times p50.
const TAIL_FACTOR: f64 = 3.0;

/// One kind of request the benchmark times.
#[derive(Debug, Clone)]
enum Probe {
    /// `POST /api/v1/hosts/{host}/rpc` with this method and params; `p50_ms` is its target.
    Rpc {
        method: &'static str,
        params: Option<Value>,
        p50_ms: Option<f64>,
    },
    /// A `GET` that never reaches the agent nor the store, for reference: the client, TLS and
    /// HTTP's share of the round trip (`/healthz`).
    Get { label: &'static str, path: String },
    /// `docker.containers.list`'s engine call made straight from here (bollard, the agent's
    /// client library, over the same socket), for reference: the engine's share.
    DockerList,
    /// What the API reads from the store before it forwards a call (the token by its hash, then
    /// the host), made straight on the control plane's store, for reference.
    StoreLookups,
    /// The command signature of one call, made and checked here as the control plane and the
    /// agent do (Ed25519, ring), for reference: the cryptography's share.
    Signature,
}

impl Probe {
    fn name(&self) -> String {
        match self {
            Self::Rpc { method, .. } => (*method).to_owned(),
            Self::Get { label, .. } => (*label).to_owned(),
            Self::DockerList => "Docker GET /containers/json".into(),
            Self::StoreLookups => "store: token + host reads".into(),
            Self::Signature => "Ed25519 sign + verify".into(),
        }
    }
}

/// What is measured, in order: the references first, then the agent methods of issue 3.
fn probes() -> Vec<Probe> {
    let rpc = |method, params, p50_ms| Probe::Rpc {
        method,
        params,
        p50_ms,
    };
    vec![
        Probe::Get {
            label: "GET /healthz",
            path: "/healthz".into(),
        },
        Probe::StoreLookups,
        Probe::Signature,
        Probe::DockerList,
        rpc("agent.ping", None, Some(0.3)),
        rpc("system.get_metrics", None, Some(2.0)),
        rpc("system.info", None, Some(3.0)),
        rpc(
            "docker.containers.list",
            Some(json!({"all": true})),
            Some(5.0),
        ),
    ]
}

#[derive(Debug, Clone, clap::Args)]
pub struct RpcArgs {
    /// Measured calls per method.
    #[arg(long, default_value_t = 2000, value_parser = clap::value_parser!(u32).range(1..))]
    pub(crate) iterations: u32,
    /// Unmeasured calls per method before the measured ones.
    #[arg(long, default_value_t = 200)]
    pub(crate) warmup: u32,
    /// Clients at once in the concurrent part (0: skip it).
    #[arg(long, default_value_t = 16)]
    pub(crate) concurrency: usize,
    /// Measured calls per method in the concurrent part, all clients together.
    #[arg(long, default_value_t = 20_000)]
    pub(crate) concurrent_requests: u32,
    /// Where to write the JSON report [default: target/bench/rpc.json, or
    /// $CARGO_TARGET_DIR/bench/rpc.json when that is set].
    #[arg(long)]
    pub(crate) json: Option<PathBuf>,
    /// Image of the containers that exist during the run (`scripts/docker-test-env` builds it).
    #[arg(
        long,
        env = "TOMO_TEST_IMAGE",
        default_value = "tomo-test/busybox:latest"
    )]
    pub(crate) image: String,
}

impl RpcArgs {
    /// The defaults, as if no flag was given.
    pub fn parse_default() -> Self {
        use clap::Parser as _;
        #[derive(clap::Parser)]
        struct Defaults {
            #[command(flatten)]
            args: RpcArgs,
        }
        Defaults::parse_from(["rpc"]).args
    }

    /// The `--quick` sizes: fewer calls, same shape.
    pub fn quick(mut self) -> Self {
        self.iterations = self.iterations.min(300);
        self.warmup = self.warmup.min(50);
        self.concurrent_requests = self.concurrent_requests.min(2_000);
        self
    }
}

/// Runs the benchmark, prints the table and writes the report.
pub async fn run(args: RpcArgs) -> anyhow::Result<()> {
    let json_path = args
        .json
        .clone()
        .unwrap_or_else(|| crate::report::bench_dir().join("rpc.json"));
    let report = measure_report(&args).await?;
    println!("{}", report.machine_line());
    println!("{}", report.command);
    println!();
    print!("{}", report.table());
    report.write(&json_path)?;
    println!(
        "\n{} report: {}",
        if report.pass {
            "all targets met;"
        } else {
            "TARGETS MISSED;"
        },
        json_path.display()
    );
    Ok(())
}

/// Measures (containers and the in-process fleet are taken down on every path out, Ctrl-C
/// included) and returns the report.
pub async fn measure_report(args: &RpcArgs) -> anyhow::Result<Report> {
    let stop = CancellationToken::new();
    tokio::spawn(tomo_common::signals::cancel_on_signal(stop.clone()));
    let started_at = tomo_server::core::rfc3339(tomo_common::now_ms());

    let docker = fixtures::engine().await?;
    let machine = Machine::collect(Some(&docker)).await;
    let fleet = Fleet::start().await?;
    // Neither the fleet's start nor the containers' creation is cut short by Ctrl-C (both take
    // a moment), so that everything made so far is known and can be removed.
    let containers = match Containers::create(&docker, CONTAINERS, &args.image).await {
        Ok(c) => c,
        Err(e) => {
            fleet.stop().await;
            return Err(e);
        }
    };
    eprintln!(
        "tomo-bench rpc: host {} online, {} containers up; {} warm-up + {} measured calls per method, then {} × {} clients",
        fleet.host_id,
        containers.len(),
        args.warmup,
        args.iterations,
        args.concurrent_requests,
        args.concurrency
    );
    let probes = probes();
    let measured = tokio::select! {
        r = async {
            let seq = measure(&fleet, &docker, &probes, args, containers.len()).await?;
            let conc = measure_concurrent(&fleet, &probes, args, containers.len()).await?;
            Ok::<_, anyhow::Error>((seq, conc))
        } => r,
        _ = stop.cancelled() => Err(anyhow::anyhow!("interrupted")),
    };
    containers.remove().await;
    fleet.stop().await;
    let (methods, concurrent) = measured?;

    let targets = targets(&probes, &methods, &concurrent, args.concurrency);
    Ok(Report {
        benchmark: "rpc",
        command: command_line(),
        started_at,
        machine,
        setup: json!({
            "iterations": args.iterations,
            "warmup": args.warmup,
            "concurrency": args.concurrency,
            "concurrent_requests": args.concurrent_requests,
            "containers": CONTAINERS,
            "image": args.image,
            "tokio_workers": worker_threads(),
            "order": "sequential, method by method, each after its own warm-up; then the agent methods again with `concurrency` clients at once, each on its own connection",
            "client": "reqwest, HTTP/1.1 keep-alive, TLS with the server's CA pinned, TCP_NODELAY",
            "path": "client -> HTTPS API -> control plane -> agent WebSocket/TLS -> agent (-> Docker engine) and back, all on 127.0.0.1 in one process",
        }),
        pass: targets.iter().all(|t| t.pass),
        targets,
        methods,
        concurrent,
        concurrency: args.concurrency,
    })
}

/// The targets of issue 3 (a p50 limit where the method has one, and no stalls: p99 <= 3 x p50
/// for every agent method) and issue 6 (`agent.ping` p50 <= 0.3 ms sequential, and at least
/// 20 000 requests a second with 16 clients at once). The reference rows have none.
fn targets(
    probes: &[Probe],
    results: &[MethodResult],
    concurrent: &[MethodResult],
    concurrency: usize,
) -> Vec<Check> {
    let rpcs = || {
        probes.iter().zip(results).filter_map(|(p, r)| match p {
            Probe::Rpc { p50_ms, .. } => Some((*p50_ms, r)),
            _ => None,
        })
    };
    let mut checks: Vec<Check> = rpcs()
        .filter_map(|(p50, r)| p50.map(|limit| Check::p50(r, limit)))
        .collect();
    checks.extend(rpcs().map(|(_, r)| Check::tail(r, TAIL_FACTOR)));
    checks.extend(
        concurrent
            .iter()
            .filter(|r| r.method == "agent.ping")
            .map(|r| Check::rate(r, PING_RATE, concurrency)),
    );
    checks
}

/// Requests a second `agent.ping` must reach with 16 clients (issue 6).
const PING_RATE: f64 = 20_000.0;

/// The agent methods again, `concurrency` clients at once, each on its own connection, sharing
/// `concurrent_requests` calls.
async fn measure_concurrent(
    fleet: &Fleet,
    probes: &[Probe],
    args: &RpcArgs,
    containers: usize,
) -> anyhow::Result<Vec<MethodResult>> {
    let mut results = Vec::new();
    if args.concurrency == 0 {
        return Ok(results);
    }
    let client = Arc::new(Client::new(fleet, None, containers, args.concurrency)?);
    let per_client = (args.concurrent_requests as usize).div_ceil(args.concurrency);
    for probe in probes {
        let Probe::Rpc { method, params, .. } = probe else {
            continue;
        };
        eprintln!("  {method} × {} clients …", args.concurrency);
        let request = Arc::new(client.prepare(probe));
        let cpu0 = own_cpu_secs();
        let t0 = Instant::now();
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..args.concurrency {
            let (client, request) = (Arc::clone(&client), Arc::clone(&request));
            let name = (*method).to_owned();
            tasks.spawn(async move {
                // Each client's first calls open its connection.
                for _ in 0..10 {
                    client.time(&name, &request).await?;
                }
                let mut samples = Vec::with_capacity(per_client);
                for _ in 0..per_client {
                    samples.push(client.time(&name, &request).await?);
                }
                Ok::<_, anyhow::Error>(samples)
            });
        }
        let mut samples = Vec::with_capacity(per_client * args.concurrency);
        while let Some(r) = tasks.join_next().await {
            samples.extend(r.context("a client task failed")??);
        }
        // Wall time includes each client's ten warm-up calls: a slight understatement of the rate.
        let wall = t0.elapsed();
        let calls = samples.len() + 10 * args.concurrency;
        let cpu_ms_per_call = (own_cpu_secs() - cpu0) * 1e3 / calls as f64;
        results.push(MethodResult {
            cpu_ms_per_call,
            method: (*method).to_owned(),
            params: params.clone(),
            reference: false,
            summary: Summary::of(samples, wall),
        });
    }
    Ok(results)
}

/// Signs a command the size of an `agent.ping` request (the control plane's share) and checks
/// the signature (the agent's), timed.
fn time_signature(name: &str) -> anyhow::Result<Duration> {
    static SIGNER: std::sync::OnceLock<(tomo_server::signer::CommandSigner, Vec<u8>)> =
        std::sync::OnceLock::new();
    let (signer, public) = SIGNER.get_or_init(|| {
        let signer = tomo_server::signer::CommandSigner::ephemeral();
        let public = tomo_common::unb64(signer.public_key_b64()).unwrap_or_default();
        (signer, public)
    });
    let meta = json!({
        "trace_id": "0123456789abcdef0123456789abcdef",
        "principal": "token:0123456789abcdef",
        "role": "admin",
        "aud": "b7720b1e-ab2a-af77-60d3-51eeeaa1af77",
        "nonce": tomo_common::hex(&tomo_common::random_bytes::<16>()),
        "ts": tomo_common::now_ms(),
        "exp": tomo_common::now_ms() + 30_000,
    })
    .to_string();
    let t0 = Instant::now();
    let payload = tomo_proto::rpc::command_payload("1", "agent.ping", &meta, "");
    let sig = tomo_common::unb64(&signer.sign(&payload)).context("signature")?;
    let checked = ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, public)
        .verify(&payload, &sig);
    let took = t0.elapsed();
    ensure!(checked.is_ok(), "{name}: the signature does not verify");
    Ok(took)
}

/// CPU seconds (user + system) of this process so far, to the nanosecond (`/proc`'s figures
/// count 10 ms ticks, too coarse for a per-call figure).
fn own_cpu_secs() -> f64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ProcessCPUTime);
    t.tv_sec as f64 + t.tv_nsec as f64 / 1e9
}

/// Tokio's worker threads in this process.
fn worker_threads() -> usize {
    tokio::runtime::Handle::current().metrics().num_workers()
}

/// Measures every probe in turn.
async fn measure(
    fleet: &Fleet,
    docker: &bollard::Docker,
    probes: &[Probe],
    args: &RpcArgs,
    containers: usize,
) -> anyhow::Result<Vec<MethodResult>> {
    let client = Client::new(fleet, Some(docker.clone()), containers, 1)?;
    let mut results = Vec::new();
    for probe in probes {
        let name = probe.name();
        eprintln!("  {name} …");
        let request = client.prepare(probe);
        for _ in 0..args.warmup {
            client.time(&name, &request).await?;
        }
        let mut samples = Vec::with_capacity(args.iterations as usize);
        let cpu0 = own_cpu_secs();
        let t0 = Instant::now();
        for _ in 0..args.iterations {
            samples.push(client.time(&name, &request).await?);
        }
        let wall = t0.elapsed();
        let cpu_ms_per_call = (own_cpu_secs() - cpu0) * 1e3 / f64::from(args.iterations);
        results.push(MethodResult {
            cpu_ms_per_call,
            method: name,
            params: match probe {
                Probe::Rpc { params, .. } => params.clone(),
                _ => None,
            },
            reference: !matches!(probe, Probe::Rpc { .. }),
            summary: Summary::of(samples, wall),
        });
    }
    Ok(results)
}

/// What the probes need: the operator's HTTPS client (one connection) and token, and for the
/// reference rows the control plane's store and the Docker engine.
struct Client {
    http: reqwest::Client,
    base: String,
    rpc_url: String,
    token: String,
    host_id: String,
    state: Arc<tomo_server::AppState>,
    /// The engine, for the reference row (the sequential part only).
    docker: Option<bollard::Docker>,
    /// `docker.containers.list` must return at least this many.
    min_containers: usize,
}

impl Client {
    /// A client of `fleet`'s API keeping up to `connections` connections alive.
    fn new(
        fleet: &Fleet,
        docker: Option<bollard::Docker>,
        containers: usize,
        connections: usize,
    ) -> anyhow::Result<Self> {
        let ca = fleet
            .info
            .ca_file
            .clone()
            .context("the control plane has no CA file to pin")?;
        let tls = tomo_common::tls::client_config(&tomo_common::tls::Trust::CaFile(ca))
            .context("client TLS")?;
        let http = reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .tcp_nodelay(true)
            .pool_max_idle_per_host(connections)
            .build()
            .context("HTTP client")?;
        Ok(Self {
            http,
            base: fleet.info.api_url.clone(),
            rpc_url: format!("{}/api/v1/hosts/{}/rpc", fleet.info.api_url, fleet.host_id),
            token: fleet.token.clone(),
            host_id: fleet.host_id.clone(),
            state: Arc::clone(&fleet.state),
            docker,
            min_containers: containers,
        })
    }
}

/// A request ready to send again and again.
enum Prepared {
    Rpc { body: String },
    Get { url: String },
    DockerList,
    StoreLookups,
    Signature,
}

impl Client {
    fn prepare(&self, probe: &Probe) -> Prepared {
        match probe {
            Probe::Rpc { method, params, .. } => Prepared::Rpc {
                body: match params {
                    Some(p) => json!({"method": method, "params": p}),
                    None => json!({"method": method}),
                }
                .to_string(),
            },
            Probe::Get { path, .. } => Prepared::Get {
                url: format!("{}{path}", self.base),
            },
            Probe::DockerList => Prepared::DockerList,
            Probe::StoreLookups => Prepared::StoreLookups,
            Probe::Signature => Prepared::Signature,
        }
    }

    /// One request; returns its round-trip time once the answer checked out.
    async fn time(&self, name: &str, request: &Prepared) -> anyhow::Result<Duration> {
        let t0 = Instant::now();
        let builder = match request {
            Prepared::Rpc { body } => self
                .http
                .post(&self.rpc_url)
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(body.clone()),
            Prepared::Get { url } => self.http.get(url),
            Prepared::DockerList => return self.time_docker(name).await,
            Prepared::StoreLookups => return self.time_store(name).await,
            Prepared::Signature => return time_signature(name),
        };
        let resp = builder
            .bearer_auth(&self.token)
            .send()
            .await
            .with_context(|| format!("{name}: request failed"))?;
        let status = resp.status();
        let bytes = resp
            .bytes()
            .await
            .with_context(|| format!("{name}: reading the answer"))?;
        let rtt = t0.elapsed();
        let text = String::from_utf8_lossy(&bytes);
        ensure!(status.is_success(), "{name}: HTTP {status}: {text}");
        if let Prepared::Rpc { .. } = request {
            self.check_rpc(name, &bytes)?;
        }
        Ok(rtt)
    }

    /// The store reads of the API's request path, straight on the store.
    async fn time_store(&self, name: &str) -> anyhow::Result<Duration> {
        let store = &*self.state.store;
        let t0 = Instant::now();
        let token = tomo_server::auth::check_token(store, &self.token)
            .await
            .with_context(|| format!("{name}: token"))?;
        let host = store
            .host(&self.host_id)
            .await
            .with_context(|| format!("{name}: host"))?;
        let rtt = t0.elapsed();
        ensure!(token.is_some(), "{name}: the token is not valid");
        ensure!(host.removed_at.is_none(), "{name}: the host was removed");
        Ok(rtt)
    }

    /// The engine's container list, straight over its socket.
    async fn time_docker(&self, name: &str) -> anyhow::Result<Duration> {
        let opts = bollard::query_parameters::ListContainersOptionsBuilder::default()
            .all(true)
            .build();
        let docker = self
            .docker
            .as_ref()
            .context("no Docker engine for this client")?;
        let t0 = Instant::now();
        let list = docker
            .list_containers(Some(opts))
            .await
            .with_context(|| format!("{name}: request failed"))?;
        let rtt = t0.elapsed();
        ensure!(
            list.len() >= self.min_containers,
            "{name}: {} containers listed, expected at least {}",
            list.len(),
            self.min_containers
        );
        Ok(rtt)
    }

    /// Fails loudly on anything but a successful JSON-RPC answer of the expected shape.
    fn check_rpc(&self, method: &str, body: &[u8]) -> anyhow::Result<()> {
        let text = String::from_utf8_lossy(body);
        let v: Value = serde_json::from_slice(body)
            .with_context(|| format!("{method}: answer is not JSON: {text}"))?;
        if let Some(e) = v.get("error") {
            bail!("{method}: JSON-RPC error: {e}");
        }
        let Some(result) = v.get("result") else {
            bail!("{method}: answer without a result: {text}");
        };
        if method == "docker.containers.list" {
            let n = result.as_array().map_or(0, Vec::len);
            ensure!(
                n >= self.min_containers,
                "{method}: {n} containers listed, expected at least {}",
                self.min_containers
            );
        }
        Ok(())
    }
}

/// This command as typed (program name without its directory).
pub fn command_line() -> String {
    let mut args = std::env::args();
    let program = args
        .next()
        .map(|p| {
            std::path::Path::new(&p)
                .file_name()
                .map_or(p.clone(), |f| f.to_string_lossy().into_owned())
        })
        .unwrap_or_else(|| "tomo-bench".into());
    std::iter::once(program)
        .chain(args)
        .collect::<Vec<_>>()
        .join(" ")
}

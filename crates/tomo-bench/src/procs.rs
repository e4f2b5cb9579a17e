//! The programs under measurement as child processes: the control plane (`tomo server`) and the
//! agent (`tomo-agent`), the release builds next to this binary; what `/proc` says about them;
//! and an HTTPS client of the control plane's API.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow, bail, ensure};
use serde::Serialize;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::watch;

/// A program built next to this one (`scripts/bench` builds them all in release mode).
pub fn sibling(name: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("where is tomo-bench?")?;
    let path = exe
        .parent()
        .context("tomo-bench has no directory")?
        .join(name);
    ensure!(
        path.is_file(),
        "{} is missing: build it first (scripts/bench builds tomo, tomo-agent and tomo-bench in release mode)",
        path.display()
    );
    Ok(path)
}

/// The agent binary to measure: `$TOMO_BENCH_AGENT` when set, else the `agent` profile's build
/// (`target/agent/tomo-agent`, the agent as it ships; scripts/bench builds it), else the
/// `tomo-agent` beside tomo-bench.
pub fn agent_bin() -> anyhow::Result<PathBuf> {
    if let Some(path) = std::env::var_os("TOMO_BENCH_AGENT") {
        let path = PathBuf::from(path);
        ensure!(
            path.is_file(),
            "TOMO_BENCH_AGENT={} is not a file",
            path.display()
        );
        return Ok(path);
    }
    let exe = std::env::current_exe().context("where is tomo-bench?")?;
    let shipped = exe
        .parent()
        .and_then(Path::parent)
        .map(|target| target.join("agent").join("tomo-agent"));
    match shipped {
        Some(path) if path.is_file() => Ok(path),
        _ => sibling("tomo-agent"),
    }
}

/// Writes a host policy for the benchmarks' agents into `dir`: the defaults, but a read rate
/// (`reads_per_minute`, 600 by default) that the measured call loops never reach, since they
/// measure the round trip, not the limit. The file is 0644 in the caller's scratch directory.
pub fn bench_policy(dir: &Path) -> anyhow::Result<PathBuf> {
    use std::os::unix::fs::PermissionsExt as _;
    let path = dir.join("bench-policy.toml");
    std::fs::write(&path, "reads_per_minute = 1000000\n").context("cannot write the policy")?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644))
        .context("cannot set the policy's mode")?;
    Ok(path)
}

/// Raises this process's open-file limit to its hard limit (children inherit it); returns it.
pub fn raise_nofile() -> u64 {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    let raised = rustix::process::Rlimit {
        current: limit.maximum,
        maximum: limit.maximum,
    };
    match setrlimit(Resource::Nofile, raised) {
        Ok(()) => limit.maximum.unwrap_or(u64::MAX),
        Err(_) => limit.current.unwrap_or(0),
    }
}

/// The 1, 5 and 15 minute load averages.
pub fn load_average() -> Option<[f64; 3]> {
    let text = std::fs::read_to_string("/proc/loadavg").ok()?;
    let mut it = text.split_whitespace().map(|v| v.parse::<f64>().ok());
    Some([it.next()??, it.next()??, it.next()??])
}

/// Memory and CPU time of a process, from `/proc/<pid>/status` and `/proc/<pid>/stat`.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Usage {
    /// Resident memory now, KiB.
    pub rss_kib: u64,
    /// Peak resident memory, KiB.
    pub hwm_kib: u64,
    /// Of `rss_kib`: private memory (heap, stacks), KiB.
    pub rss_anon_kib: u64,
    /// Of `rss_kib`: pages of the executable and libraries, shared with other processes
    /// running the same files, KiB.
    pub rss_file_kib: u64,
    /// Threads.
    pub threads: u64,
    /// User + system CPU time so far, seconds.
    pub cpu_secs: f64,
}

impl Usage {
    pub fn of(pid: u32) -> anyhow::Result<Self> {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
            .with_context(|| format!("process {pid} is gone"))?;
        let kib = |key: &str| {
            status
                .lines()
                .find(|l| l.starts_with(key))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
        };
        Ok(Self {
            rss_kib: kib("VmRSS:"),
            hwm_kib: kib("VmHWM:"),
            rss_anon_kib: kib("RssAnon:"),
            rss_file_kib: kib("RssFile:"),
            threads: kib("Threads:"),
            cpu_secs: cpu_secs(pid)?,
        })
    }
}

/// User + system CPU seconds of a process (clock ticks of 1/100 s, Linux's USER_HZ).
pub fn cpu_secs(pid: u32) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("process {pid} is gone"))?;
    // Fields after the command name (which may hold spaces), from field 3 (state) on.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .context("odd /proc/pid/stat")?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let tick = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    Ok((tick(11) + tick(12)) as f64 / 100.0)
}

/// Sends SIGTERM to a child this benchmark started.
fn terminate(pid: u32) {
    if let Some(pid) = rustix::process::Pid::from_raw(pid as i32) {
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
    }
}

/// Stops a child: SIGTERM, then SIGKILL after `grace`. Returns how long it took to exit.
async fn stop_child(child: &mut Child, grace: Duration) -> Duration {
    let started = Instant::now();
    if let Some(pid) = child.id() {
        terminate(pid);
    }
    if tokio::time::timeout(grace, child.wait()).await.is_err() {
        let _ = child.kill().await;
    }
    started.elapsed()
}

/// A control plane in its own process.
#[derive(Debug)]
pub struct ServerProc {
    child: Child,
    pub pid: u32,
    pub listen: SocketAddr,
    pub api_url: String,
    pub agent_url: String,
    pub ca_file: PathBuf,
    /// Its log (JSON lines), one file per start.
    pub log: PathBuf,
    /// The admin token printed at the first start of a data directory.
    pub first_token: Option<String>,
    /// When it answered `/healthz`.
    pub ready: Instant,
}

impl ServerProc {
    /// Starts `tomo server` on `dir` (created on first start), listening on `listen` (port 0 on
    /// a first start: the port is read from what it prints), logging at `log_level` as JSON
    /// lines into `log`. Returns once it answers `/healthz`.
    pub async fn start(
        dir: &Path,
        listen: SocketAddr,
        log: &Path,
        log_level: &str,
    ) -> anyhow::Result<Self> {
        let tomo = sibling("tomo")?;
        let log_file = std::fs::File::create(log)
            .with_context(|| format!("cannot create {}", log.display()))?;
        let spawned = Instant::now();
        let mut child = Command::new(tomo)
            .args(["server", "--data-dir"])
            .arg(dir)
            .args(["--listen", &listen.to_string()])
            .env("LOG_LEVEL", log_level)
            .env("LOG_JSON", "true")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log_file)
            .kill_on_drop(true)
            .spawn()
            .context("cannot start tomo server")?;
        let pid = child.id().context("tomo server exited at once")?;
        let stdout = child.stdout.take().context("no stdout")?;
        // The first start prints the admin token and the URL; later starts print nothing.
        let (tx, mut rx) = watch::channel((None::<String>, None::<String>));
        tokio::spawn(async move {
            let mut lines = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if let Some(t) = line
                    .split(": ")
                    .nth(1)
                    .filter(|_| line.starts_with("Admin token"))
                {
                    tx.send_modify(|s| s.0 = Some(t.trim().to_owned()));
                }
                // `tomo login --url URL …` (older releases printed `TOMO_URL=URL`).
                if let Some(u) = line
                    .split("tomo login --url ")
                    .nth(1)
                    .or_else(|| line.split("TOMO_URL=").nth(1))
                {
                    let url = u.split_whitespace().next().unwrap_or_default().to_owned();
                    tx.send_modify(|s| s.1 = Some(url));
                }
            }
        });
        let (first_token, listen) = if listen.port() == 0 {
            let got = tokio::time::timeout(
                Duration::from_secs(30),
                rx.wait_for(|s| s.0.is_some() && s.1.is_some()),
            )
            .await
            .map_err(|_| {
                anyhow!(
                    "tomo server printed no URL within 30 s (see {})",
                    log.display()
                )
            })?
            .map_err(|_| anyhow!("tomo server exited (see {})", log.display()))?
            .clone();
            let url = got.1.unwrap_or_default();
            let addr: SocketAddr = url
                .trim_start_matches("https://")
                .parse()
                .with_context(|| format!("odd URL {url}"))?;
            (got.0, addr)
        } else {
            (None, listen)
        };
        let mut me = Self {
            child,
            pid,
            listen,
            api_url: format!("https://{listen}"),
            agent_url: format!("wss://{listen}/agent/ws"),
            ca_file: dir.join("tls/ca.pem"),
            log: log.to_owned(),
            first_token,
            ready: spawned,
        };
        me.wait_ready().await?;
        Ok(me)
    }

    async fn wait_ready(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(api) = Api::new(&self.api_url, &self.ca_file, "", 1)
                && api.healthz().await
            {
                self.ready = Instant::now();
                return Ok(());
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                bail!(
                    "tomo server exited with {status} (see {})",
                    self.log.display()
                );
            }
            ensure!(
                Instant::now() < deadline,
                "tomo server did not answer /healthz within 60 s"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    pub fn usage(&self) -> anyhow::Result<Usage> {
        Usage::of(self.pid)
    }

    /// SIGTERM, and waits for the exit (SIGKILL after 30 s). Returns how long it took.
    pub async fn stop(mut self) -> Duration {
        stop_child(&mut self.child, Duration::from_secs(30)).await
    }

    /// SIGKILL (a crash: nothing is shut down), and waits for the exit.
    pub async fn kill(mut self) {
        let _ = self.child.kill().await;
    }
}

/// What the log lines of a process said, by level.
#[derive(Debug, Clone, Default, Serialize)]
pub struct LogCounts {
    pub warn: u64,
    pub error: u64,
    /// The distinct warning and error messages, with their counts.
    pub messages: std::collections::BTreeMap<String, u64>,
}

impl LogCounts {
    /// Counts WARN and ERROR lines of a JSON-lines log.
    pub fn of(path: &Path) -> Self {
        let mut c = Self::default();
        let Ok(text) = std::fs::read_to_string(path) else {
            return c;
        };
        for line in text.lines() {
            let Ok(v) = serde_json::from_str::<Value>(line) else {
                continue;
            };
            let level = v["level"].as_str().unwrap_or_default();
            match level {
                "WARN" => c.warn += 1,
                "ERROR" => c.error += 1,
                _ => continue,
            }
            let message = v["message"].as_str().unwrap_or_default();
            *c.messages.entry(format!("{level}: {message}")).or_default() += 1;
        }
        c
    }
}

/// The arguments of a `tomo-agent` that dials `url` with `server`'s CA, keeps its state in
/// `<dir>/agent` and follows the benchmarks' host policy ([`bench_policy`]).
pub fn agent_args(
    server: &ServerProc,
    url: String,
    dir: &Path,
    hostname: &str,
) -> anyhow::Result<Vec<String>> {
    Ok(vec![
        "--server-url".to_owned(),
        url,
        "--ca-file".into(),
        server.ca_file.display().to_string(),
        "--data-dir".into(),
        dir.join("agent").display().to_string(),
        "--policy".into(),
        bench_policy(dir)?.display().to_string(),
        "--hostname".into(),
        hostname.to_owned(),
    ])
}

/// A real agent in its own process.
#[derive(Debug)]
pub struct AgentProc {
    child: Child,
    pub pid: u32,
    pub spawned: Instant,
    connected: watch::Receiver<Option<Instant>>,
}

impl AgentProc {
    /// Starts `tomo-agent` with `args`, logging JSON lines at info level into `log` (appended).
    pub async fn start(args: &[String], log: &Path) -> anyhow::Result<Self> {
        Self::start_with_env(args, log, &[]).await
    }

    /// [`AgentProc::start`] with extra environment variables (a faked clock, for one).
    pub async fn start_with_env(
        args: &[String],
        log: &Path,
        env: &[(&str, &str)],
    ) -> anyhow::Result<Self> {
        let bin = agent_bin()?;
        let mut out = tokio::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .await
            .with_context(|| format!("cannot open {}", log.display()))?;
        let spawned = Instant::now();
        let mut child = Command::new(bin)
            .args(args)
            .envs(env.iter().copied())
            .env("LOG_LEVEL", "info")
            .env("LOG_JSON", "true")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .context("cannot start tomo-agent")?;
        let pid = child.id().context("tomo-agent exited at once")?;
        let stderr = child.stderr.take().context("no stderr")?;
        let (tx, connected) = watch::channel(None);
        tokio::spawn(async move {
            let mut lines = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if line.contains(r#""message":"connected""#) {
                    tx.send_if_modified(|at| at.replace(Instant::now()).is_none());
                }
                let _ = out.write_all(line.as_bytes()).await;
                let _ = out.write_all(b"\n").await;
            }
        });
        Ok(Self {
            child,
            pid,
            spawned,
            connected,
        })
    }

    /// Time from the process's start to its "connected" log line (the control plane welcomed
    /// it), at most `timeout`.
    pub async fn wait_connected(&mut self, timeout: Duration) -> anyhow::Result<Duration> {
        let at = tokio::time::timeout(timeout, self.connected.wait_for(Option::is_some))
            .await
            .map_err(|_| anyhow!("the agent did not connect within {timeout:?}"))?
            .map_err(|_| anyhow!("the agent exited before connecting"))?
            .unwrap_or_else(Instant::now);
        Ok(at.duration_since(self.spawned))
    }

    pub fn usage(&self) -> anyhow::Result<Usage> {
        Usage::of(self.pid)
    }

    /// SIGTERM, and waits for the exit (SIGKILL after 10 s).
    pub async fn stop(mut self) -> Duration {
        stop_child(&mut self.child, Duration::from_secs(10)).await
    }

    /// SIGKILL (a crash: nothing is shut down), and waits for the exit.
    pub async fn kill(mut self) {
        let _ = self.child.kill().await;
    }
}

/// An HTTPS client of the control plane's API, its CA pinned.
#[derive(Debug, Clone)]
pub struct Api {
    http: reqwest::Client,
    base: String,
    token: String,
}

impl Api {
    /// A client keeping up to `connections` connections alive.
    pub fn new(
        base: &str,
        ca_file: &Path,
        token: &str,
        connections: usize,
    ) -> anyhow::Result<Self> {
        let tls =
            tomo_common::tls::client_config(&tomo_common::tls::Trust::CaFile(ca_file.to_owned()))
                .context("client TLS")?;
        let http = reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .tcp_nodelay(true)
            .pool_max_idle_per_host(connections)
            .timeout(Duration::from_secs(300))
            .build()
            .context("HTTP client")?;
        Ok(Self {
            http,
            base: base.trim_end_matches('/').to_owned(),
            token: token.to_owned(),
        })
    }

    pub async fn healthz(&self) -> bool {
        self.http
            .get(format!("{}/healthz", self.base))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
    }

    /// A request to `/api/v1{path}`; the JSON answer of a 2xx, an error otherwise.
    pub async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
    ) -> anyhow::Result<Value> {
        let mut req = self
            .http
            .request(method, format!("{}/api/v1{path}", self.base))
            .bearer_auth(&self.token);
        if let Some(b) = body {
            req = req.json(b);
        }
        let resp = req
            .send()
            .await
            .with_context(|| format!("{path}: request failed"))?;
        let status = resp.status();
        let text = resp
            .text()
            .await
            .with_context(|| format!("{path}: reading the answer"))?;
        ensure!(status.is_success(), "{path}: HTTP {status}: {text}");
        serde_json::from_str(&text).with_context(|| format!("{path}: answer is not JSON"))
    }

    /// A request to `/api/v1{path}` with extra headers; the status and the body (JSON when it
    /// parses), or the transport error.
    pub async fn raw(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
        headers: &[(&str, &str)],
    ) -> Result<(reqwest::StatusCode, Value), reqwest::Error> {
        let mut req = self
            .http
            .request(method, format!("{}/api/v1{path}", self.base))
            .bearer_auth(&self.token);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        if let Some(b) = body {
            req = req.json(b);
        }
        let resp = req.send().await?;
        let status = resp.status();
        let text = resp.text().await?;
        Ok((
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        ))
    }

    /// A `GET /api/v1{path}` whose answer is read by the caller (a stream).
    pub async fn open(&self, path: &str) -> Result<reqwest::Response, reqwest::Error> {
        self.http
            .get(format!("{}/api/v1{path}", self.base))
            .bearer_auth(&self.token)
            .send()
            .await
    }

    /// A new single-use registration code.
    pub async fn create_code(&self) -> anyhow::Result<String> {
        let v = self
            .send(
                reqwest::Method::POST,
                "/codes",
                Some(&json!({"ttl_secs": 3600})),
            )
            .await?;
        v["code"]
            .as_str()
            .map(str::to_owned)
            .context("no code in the answer")
    }

    /// `POST /hosts/{host}/rpc`; fails on anything but a result.
    pub async fn call(
        &self,
        host: &str,
        method: &str,
        params: Option<Value>,
    ) -> anyhow::Result<Value> {
        let body = match params {
            Some(p) => json!({"method": method, "params": p}),
            None => json!({"method": method}),
        };
        let v = self
            .send(
                reqwest::Method::POST,
                &format!("/hosts/{host}/rpc"),
                Some(&body),
            )
            .await?;
        match v.get("result") {
            Some(r) => Ok(r.clone()),
            None => bail!("{method}: {}", v["error"]),
        }
    }
}

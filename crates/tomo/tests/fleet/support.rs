//! `Fleet`: a real control plane on 127.0.0.1 (real TLS, real SQLite file) with real agents, and
//! `Raw`: a hand-driven protocol client for the cases a well-behaved agent never produces.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt as _, StreamExt as _};
use reqwest::{Method, StatusCode};
use serde_json::Value;
use tokio::sync::watch;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;
use tomo_agent::config::AgentConfig;
use tomo_agent::docker::Endpoint;
use tomo_agent::identity::Keys;
use tomo_agent::session::{Dialer as _, Io, TlsDialer};
use tomo_agent::{Agent, AgentError, Status};
use tomo_proto::handshake::{ChannelBinding, Handshake, HostFacts, RefusalReason};
use tomo_proto::methods::Level;
use tomo_server::config::ServerConfig;
use tomo_server::{AppState, Server, ServerInfo};

pub const WAIT: Duration = Duration::from_secs(10);

/// A running control plane in a temporary directory.
pub struct Fleet {
    pub dir: PathBuf,
    _tmp: Option<tempfile::TempDir>,
    pub info: ServerInfo,
    pub state: Arc<AppState>,
    pub token: String,
    shutdown: CancellationToken,
    task: Option<tokio::task::JoinHandle<()>>,
    pub http: reqwest::Client,
}

impl Fleet {
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    pub async fn start_with(tweak: impl FnOnce(&mut ServerConfig)) -> Self {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().to_owned();
        let mut f = Self::start_in(&dir, "127.0.0.1:0", tweak).await;
        f._tmp = Some(tmp);
        f
    }

    /// Starts (or restarts) a control plane on `dir`, listening on `listen`.
    pub async fn start_in(dir: &Path, listen: &str, tweak: impl FnOnce(&mut ServerConfig)) -> Self {
        let mut config = ServerConfig::new(dir.join("server"), listen.parse().expect("addr"));
        tweak(&mut config);
        let server = Server::bind(config).await.expect("control plane starts");
        let state = server.state();
        let token = tomo_server::auth::mint_token(&*state.store, "test", Level::Admin, None)
            .await
            .expect("token")
            .0;
        let info = server.info().clone();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(server.run(shutdown.clone()));
        let ca = info.ca_file.clone().expect("self-signed");
        let tls =
            tomo_common::tls::client_config(&tomo_common::tls::Trust::CaFile(ca)).expect("tls");
        let http = reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .build()
            .expect("http");
        Self {
            dir: dir.to_owned(),
            _tmp: None,
            info,
            state,
            token,
            shutdown,
            task: Some(task),
            http,
        }
    }

    /// Stops the control plane; returns how long it took.
    pub async fn stop(&mut self) -> Duration {
        let t0 = std::time::Instant::now();
        self.shutdown.cancel();
        if let Some(t) = self.task.take() {
            t.await.expect("server task");
        }
        t0.elapsed()
    }

    pub async fn code(&self) -> String {
        tomo_server::auth::mint_code(&self.state, Duration::from_secs(900), "test")
            .await
            .expect("code")
            .0
    }

    /// An agent configuration for this fleet, its state under `<dir>/agents/<name>`.
    pub fn agent(&self, name: &str, code: Option<String>) -> AgentConfig {
        let mut c = AgentConfig::new(self.dir.join("agents").join(name));
        c.server_url = Some(self.info.agent_url.clone());
        c.ca_file = self.info.ca_file.clone();
        c.register_code = code;
        c.hostname = Some(name.to_owned());
        c.docker = Endpoint::Refused("Docker is not used by this test".into());
        c
    }

    pub async fn api(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        self.api_as(&self.token, method, path, body).await
    }

    pub async fn api_as(
        &self,
        token: &str,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut req = self
            .http
            .request(method, format!("{}/api/v1{path}", self.info.api_url))
            .bearer_auth(token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.expect("API reachable");
        let status = resp.status();
        let body = resp.json().await.unwrap_or(Value::Null);
        (status, body)
    }

    pub async fn rpc(
        &self,
        host: &str,
        method: &str,
        params: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut body = serde_json::json!({"method": method});
        if let Some(p) = params {
            body["params"] = p;
        }
        self.api(Method::POST, &format!("/hosts/{host}/rpc"), Some(body))
            .await
    }

    pub async fn hosts(&self) -> Vec<Value> {
        let (s, v) = self.api(Method::GET, "/hosts", None).await;
        assert_eq!(s, StatusCode::OK, "{v}");
        v.as_array().cloned().expect("array")
    }

    /// Waits until the API reports the host with `status`.
    pub async fn wait_status(&self, host: &str, status: &str) {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let (_, v) = self.api(Method::GET, &format!("/hosts/{host}"), None).await;
            if v["status"] == status {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "host {host} never became {status}: {v}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Registers a host through the real handshake and leaves it offline (a call that gets past
/// every check then answers 503 at once, without waiting for an agent).
pub async fn offline_host(f: &Fleet, name: &str) -> String {
    let (raw, id) = Raw::register(
        f,
        &tomo_agent::identity::Keys::generate(),
        &f.code().await,
        facts(name, None),
    )
    .await
    .expect("registered");
    drop(raw);
    f.wait_status(&id, "offline").await;
    id
}

/// A real agent running in this process.
pub struct RunningAgent {
    pub status: watch::Receiver<Status>,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<Result<(), AgentError>>,
}

impl RunningAgent {
    pub fn spawn(config: AgentConfig) -> Self {
        let agent = Agent::new(config).expect("valid agent config");
        let status = agent.status();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(agent.run(shutdown.clone()));
        Self {
            status,
            shutdown,
            task,
        }
    }

    /// Waits until the agent is online; returns its id.
    pub async fn online(&mut self) -> String {
        let s = tokio::time::timeout(
            WAIT,
            self.status.wait_for(|s| matches!(s, Status::Online { .. })),
        )
        .await
        .expect("agent online in time")
        .expect("agent running")
        .clone();
        match s {
            Status::Online { agent_id } => agent_id,
            _ => unreachable!(),
        }
    }

    /// Waits for the agent to stop by itself.
    pub async fn finished(self) -> Result<(), AgentError> {
        tokio::time::timeout(WAIT, self.task)
            .await
            .expect("agent stops in time")
            .expect("join")
    }

    /// Ends the agent about as a kill does: its task is dropped and nothing shuts down (the
    /// tasks of requests in flight are not killed, but nothing else runs).
    pub fn kill(self) {
        self.task.abort();
    }

    pub async fn stop(self) -> Result<(), AgentError> {
        self.shutdown.cancel();
        self.finished().await
    }
}

/// A raw protocol client speaking to the control plane over real TLS.
pub struct Raw {
    pub ws: WebSocketStream<Box<dyn Io>>,
    /// The TLS channel binding of this connection, which handshake signatures must name.
    pub binding: ChannelBinding,
}

impl Raw {
    pub async fn connect(fleet: &Fleet) -> Self {
        let ca = fleet.info.ca_file.clone().expect("ca");
        let tls =
            tomo_common::tls::client_config(&tomo_common::tls::Trust::CaFile(ca)).expect("tls");
        let dialed = TlsDialer::new(tls, false)
            .dial(&fleet.info.agent_url)
            .await
            .expect("dial");
        let (ws, _) =
            tokio_tungstenite::client_async_with_config(&fleet.info.agent_url, dialed.io, None)
                .await
                .expect("ws");
        Self {
            ws,
            binding: dialed.binding,
        }
    }

    /// The next text frame, `None` once closed.
    pub async fn text(&mut self) -> Option<String> {
        loop {
            match tokio::time::timeout(WAIT, self.ws.next())
                .await
                .expect("frame in time")
            {
                Some(Ok(Message::Text(t))) => return Some(t.to_string()),
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return None,
                Some(Ok(_)) => continue,
            }
        }
    }

    pub async fn send(&mut self, text: &str) {
        let _ = self.ws.send(Message::text(text.to_owned())).await;
    }

    /// Reads the challenge; returns its nonce.
    pub async fn challenge(&mut self) -> String {
        match Handshake::parse(&self.text().await.expect("challenge")) {
            Ok(Handshake::Challenge { nonce, .. }) => nonce,
            other => panic!("expected a challenge, got {other:?}"),
        }
    }

    /// Reads the handshake answer: the agent id, or the refusal.
    pub async fn outcome(&mut self) -> Result<String, RefusalReason> {
        match self.text().await.map(|t| Handshake::parse(&t)) {
            Some(Ok(Handshake::Welcome { agent_id, .. })) => Ok(agent_id),
            Some(Ok(Handshake::Refused { reason, .. })) => Err(reason),
            other => panic!("expected welcome or refused, got {other:?}"),
        }
    }

    /// Waits until the server closes the connection (no more text frames).
    pub async fn closed(&mut self) {
        while self.text().await.is_some() {}
    }

    pub async fn register(
        fleet: &Fleet,
        keys: &Keys,
        code: &str,
        facts: HostFacts,
    ) -> Result<(Self, String), RefusalReason> {
        let mut raw = Self::connect(fleet).await;
        // A refusal may come in place of the challenge.
        let nonce = match Handshake::parse(&raw.text().await.expect("challenge")) {
            Ok(Handshake::Challenge { nonce, .. }) => nonce,
            Ok(Handshake::Refused { reason, .. }) => return Err(reason),
            other => panic!("expected a challenge, got {other:?}"),
        };
        let msg = tomo_common::hello::register(
            code,
            &keys.public_key_b64(),
            |m| keys.sign_b64(m),
            &nonce,
            &raw.binding,
            facts,
        );
        raw.send(&msg.to_json()).await;
        let id = raw.outcome().await?;
        Ok((raw, id))
    }

    pub async fn authenticate(
        fleet: &Fleet,
        keys: &Keys,
        agent_id: &str,
        facts: HostFacts,
    ) -> Result<Self, RefusalReason> {
        Self::authenticate_rotating(fleet, keys, agent_id, facts, None).await
    }

    /// [`Raw::authenticate`], offering `next` as the key to rotate to.
    pub async fn authenticate_rotating(
        fleet: &Fleet,
        keys: &Keys,
        agent_id: &str,
        facts: HostFacts,
        next: Option<&Keys>,
    ) -> Result<Self, RefusalReason> {
        let mut raw = Self::connect(fleet).await;
        let nonce = raw.challenge().await;
        let sign_next = |m: &[u8]| next.map(|n| n.sign_b64(m)).unwrap_or_default();
        let next = next.map(|n| tomo_common::hello::NextKey {
            public_key: n.public_key_b64(),
            sign: &sign_next,
        });
        let msg = tomo_common::hello::authenticate(
            agent_id,
            |m| keys.sign_b64(m),
            &nonce,
            &raw.binding,
            facts,
            next,
        );
        raw.send(&msg.to_json()).await;
        raw.outcome().await?;
        Ok(raw)
    }
}

pub fn facts(hostname: &str, engine_id: Option<&str>) -> HostFacts {
    HostFacts {
        hostname: hostname.into(),
        engine_id: engine_id.map(str::to_owned),
        os: "test".into(),
        kernel: "test".into(),
        arch: "x86_64".into(),
        cpus: 1,
        memory_bytes: 1 << 30,
        agent_version: "test".into(),
        ..Default::default()
    }
}

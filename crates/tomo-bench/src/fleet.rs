//! A real control plane on 127.0.0.1:0 (self-signed TLS, SQLite in a temporary directory) and a
//! real agent talking to the local Docker engine, both in this process: the same setup as the
//! fleet integration tests (`crates/tomo/tests/fleet/support.rs`).

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, anyhow, bail};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tomo_agent::config::AgentConfig;
use tomo_agent::{Agent, AgentError, Status};
use tomo_proto::methods::Level;
use tomo_server::config::ServerConfig;
use tomo_server::{AppState, Server, ServerInfo};

/// How long the agent gets to come online.
const ONLINE_WITHIN: Duration = Duration::from_secs(30);
/// The hostname the agent reports.
pub const HOSTNAME: &str = "tomo-bench";

/// A running control plane with one agent online.
pub struct Fleet {
    _tmp: tempfile::TempDir,
    pub info: ServerInfo,
    /// The control plane's state (its store, for the reference rows).
    pub state: Arc<AppState>,
    /// An admin API token.
    pub token: String,
    /// The agent's host id.
    pub host_id: String,
    server: (CancellationToken, JoinHandle<()>),
    agent: (CancellationToken, JoinHandle<Result<(), AgentError>>),
}

impl std::fmt::Debug for Fleet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The token is a secret.
        f.debug_struct("Fleet")
            .field("info", &self.info)
            .field("host_id", &self.host_id)
            .finish_non_exhaustive()
    }
}

impl Fleet {
    /// Starts the control plane, registers an agent with a fresh code, and waits until it is
    /// online.
    pub async fn start() -> anyhow::Result<Self> {
        let tmp = tempfile::Builder::new()
            .prefix("tomo-bench-")
            .tempdir()
            .context("temporary directory")?;
        let listen = "127.0.0.1:0".parse().context("listen address")?;
        let config = ServerConfig::new(tmp.path().join("server"), listen);
        let server = Server::bind(config)
            .await
            .context("the control plane does not start")?;
        let state = server.state();
        let info = server.info().clone();
        let token = tomo_server::auth::mint_token(&*state.store, "bench", Level::Admin, None)
            .await
            .context("cannot mint an API token")?
            .0;
        let code = tomo_server::auth::mint_code(&state, Duration::from_secs(900), "bench")
            .await
            .context("cannot mint a registration code")?
            .0;
        let server_stop = CancellationToken::new();
        let server_task = tokio::spawn(server.run(server_stop.clone()));

        let mut config = AgentConfig::new(tmp.path().join("agent"));
        config.server_url = Some(info.agent_url.clone());
        config.ca_file = info.ca_file.clone();
        config.register_code = Some(code);
        config.hostname = Some(HOSTNAME.into());
        config.policy_path = Some(crate::procs::bench_policy(tmp.path())?);
        let agent = Agent::new(config).context("agent configuration")?;
        let mut status = agent.status();
        let agent_stop = CancellationToken::new();
        let agent_task = tokio::spawn(agent.run(agent_stop.clone()));

        let online = tokio::time::timeout(
            ONLINE_WITHIN,
            status.wait_for(|s| matches!(s, Status::Online { .. })),
        )
        .await
        .map(|r| r.map(|s| s.clone()));
        let host_id = match online {
            Ok(Ok(Status::Online { agent_id })) => agent_id,
            Ok(Ok(other)) => bail!("agent in state {other:?}"),
            Ok(Err(_)) => bail!("the agent stopped before coming online"),
            Err(_) => {
                let now = status.borrow().clone();
                return Err(anyhow!(
                    "the agent was not online within {ONLINE_WITHIN:?} (last status: {now:?})"
                ));
            }
        };
        Ok(Self {
            _tmp: tmp,
            info,
            state,
            token,
            host_id,
            server: (server_stop, server_task),
            agent: (agent_stop, agent_task),
        })
    }

    /// Stops the agent, then the control plane.
    pub async fn stop(self) {
        let (stop, task) = self.agent;
        stop.cancel();
        match task.await {
            Ok(Err(e)) => tracing::warn!(error = %e, "the agent stopped with an error"),
            Err(e) => tracing::warn!(error = %e, "the agent task failed"),
            Ok(Ok(())) => {}
        }
        let (stop, task) = self.server;
        stop.cancel();
        if let Err(e) = task.await {
            tracing::warn!(error = %e, "the control plane task failed");
        }
    }
}

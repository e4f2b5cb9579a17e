//! `tomo dev`: a control plane and a local agent in one process, with the CLI configured to talk
//! to them, so that `tomo …` in another terminal just works.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tomo_agent::config::AgentConfig;
use tomo_proto::methods::Level;
use tomo_server::config::ServerConfig;

use crate::Failure;
use crate::client::{ClientConfig, config_path};

#[derive(Debug, clap::Args)]
pub struct DevArgs {
    /// Where the development control plane and agent keep their state
    /// (default: $XDG_DATA_HOME/tomo/dev or ~/.local/share/tomo/dev).
    #[arg(long, env = "TOMO_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:7443")]
    pub listen: SocketAddr,
}

fn default_data_dir() -> PathBuf {
    std::env::var_os("XDG_DATA_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share")))
        .unwrap_or_else(|| PathBuf::from("."))
        .join("tomo/dev")
}

pub async fn run(args: DevArgs) -> Result<ExitCode, Failure> {
    let data_dir = args.data_dir.unwrap_or_else(default_data_dir);
    let config = ServerConfig::new(data_dir.join("server"), args.listen);
    let server = tomo_server::Server::bind(config)
        .await
        .map_err(Failure::server_start)?;
    let info = server.info().clone();
    let state = server.state();

    // The CLI's token: the first admin token, or the one already in the client config if it is
    // for this server and still valid, or a new one.
    let cfg_path = config_path();
    let existing = ClientConfig::load(&cfg_path).unwrap_or_default();
    let reusable = match (&existing.url, &existing.token) {
        (Some(u), Some(t)) if *u == info.api_url => {
            tomo_server::auth::check_token(&*state.store, t)
                .await
                .ok()
                .flatten()
                .is_some()
        }
        _ => false,
    };
    let token = match (&server.first_admin_token, reusable) {
        (Some(t), _) => t.clone(),
        (None, true) => existing.token.clone().unwrap_or_default(),
        (None, false) => {
            tomo_server::auth::mint_token(&*state.store, "dev", Level::Admin, None)
                .await
                .map_err(|e| Failure::new(1, format!("cannot create a token: {e}")))?
                .0
        }
    };
    let client = ClientConfig {
        url: Some(info.api_url.clone()),
        token: Some(token),
        ca_file: info.ca_file.clone(),
    };
    client
        .save(&cfg_path)
        .map_err(|e| Failure::new(1, format!("cannot write {}: {e}", cfg_path.display())))?;

    // The local agent: registered with a fresh code the first time, by its key afterwards.
    let agent_dir = data_dir.join("agent");
    let mut agent_cfg = AgentConfig::new(agent_dir.clone());
    agent_cfg.server_url = Some(info.agent_url.clone());
    agent_cfg.ca_file = info.ca_file.clone();
    // The control plane's database and command key sit beside the agent's data: never bound.
    agent_cfg.protect = vec![data_dir.clone()];
    if !agent_dir.join("agent.json").exists() {
        let (code, _) = tomo_server::auth::mint_code(&state, Duration::from_secs(60), "tomo dev")
            .await
            .map_err(|e| Failure::new(1, format!("cannot create a registration code: {e}")))?;
        agent_cfg.register_code = Some(code);
    }
    let agent = tomo_agent::Agent::new(agent_cfg).map_err(Failure::config)?;

    let shutdown = CancellationToken::new();
    tokio::spawn(tomo_common::signals::cancel_on_signal(shutdown.clone()));
    let server_task = tokio::spawn(server.run(shutdown.clone()));
    // The local agent stops after the control plane: had both stopped at once, a stream the
    // agent's session carried could end as "the connection to the host was lost" before the
    // control plane said it was shutting down (issue 13.8).
    let agent_shutdown = CancellationToken::new();
    let agent_stop = agent_shutdown.clone();
    let agent_task = tokio::spawn(async move {
        if let Err(e) = agent.run(agent_shutdown).await {
            tracing::error!(error = %e, "the local agent stopped");
        }
    });

    let hostname = tomo_agent::host::static_facts(std::path::Path::new("/"), None).hostname;
    outln!("tomo dev is running\n");
    outln!("  API        {}", info.api_url);
    outln!("  agents     {}", info.agent_url);
    if let Some(ca) = &info.ca_file {
        outln!("  CA         {}", ca.display());
    }
    outln!("  data       {}", data_dir.display());
    outln!("  CLI config {} (URL, token, CA)\n", cfg_path.display());
    outln!("Try, in another terminal:");
    outln!("  tomo hosts ls");
    outln!("  tomo call {hostname} agent.ping");
    outln!("  tomo call {hostname} system.info");
    outln!("  tomo call {hostname} docker.containers.list '{{\"all\": true}}'");
    outln!("  tomo codes create          # join another host\n");
    outln!("Ctrl-C stops it.");

    shutdown.cancelled().await;
    let _ = server_task.await;
    agent_stop.cancel();
    let _ = agent_task.await;
    Ok(ExitCode::SUCCESS)
}

//! `tomo-agent`: parses configuration, starts logging and signal handling, and runs the agent.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use tokio_util::sync::CancellationToken;
use tomo_agent::config::AgentConfig;

/// tomo's agent: dials out to a tomo control plane and manages this host's Docker engine.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Control plane endpoint, e.g. wss://tomo.example.com/agent/ws (saved at registration).
    #[arg(long, env = "SERVER_URL")]
    server_url: Option<String>,
    /// One-time registration code (first start only).
    #[arg(long, env = "REGISTER_CODE", hide_env_values = true)]
    register_code: Option<String>,
    /// Where the agent keeps its identity.
    #[arg(long, env = "TOMO_DATA_DIR", default_value = "/data")]
    data_dir: PathBuf,
    /// PEM file of the CA that signed the control plane's certificate.
    #[arg(long, env = "TOMO_CA_FILE")]
    ca_file: Option<PathBuf>,
    /// Report this hostname instead of the host's own.
    #[arg(long, env = "TOMO_HOSTNAME")]
    hostname: Option<String>,
    /// Development mode: without --ca-file, skip certificate verification (warned at every connect).
    #[arg(long = "dev", env = "TOMO_DEV", value_parser = parse_flag, default_value = "false")]
    dev: bool,
    /// `system.prepare_volumes` creates directories only under this one.
    #[arg(long, env = "TOMO_VOLUME_BASE", default_value = "/srv/tomo")]
    volume_base: PathBuf,
    /// Largest single response in bytes (longer output is cut and marked truncated).
    #[arg(long, env = "TOMO_MAX_RESPONSE_BYTES", default_value_t = tomo_agent::config::DEFAULT_MAX_RESPONSE_BYTES as u64,
          value_parser = clap::value_parser!(u64).range(65_536..=10_485_760))]
    max_response_bytes: u64,
    /// Host policy file (TOML); the defaults when the default path does not exist.
    #[arg(long = "policy", env = "TOMO_POLICY")]
    policy: Option<PathBuf>,
    /// Rotate the agent's key now (no new registration code needed).
    #[arg(long, env = "TOMO_ROTATE_KEY", value_parser = parse_flag, default_value = "false")]
    rotate_key: bool,
    /// Log level or filter (error, warn, info, debug, trace).
    #[arg(long, env = "LOG_LEVEL", default_value = "info")]
    log_level: String,
    /// Log JSON lines instead of human-readable text.
    #[arg(long, env = "LOG_JSON", value_parser = parse_flag, default_value = "false")]
    log_json: bool,
}

fn parse_flag(v: &str) -> Result<bool, std::convert::Infallible> {
    Ok(tomo_common::logging::truthy(v))
}

fn main() -> ExitCode {
    let args = Args::parse();
    tomo_common::logging::init(Some(&args.log_level), args.log_json);
    let mut config = AgentConfig::new(args.data_dir);
    config.server_url = args.server_url;
    config.register_code = args.register_code.filter(|c| !c.is_empty());
    config.ca_file = args.ca_file;
    config.hostname = args.hostname;
    config.insecure_dev = args.dev && config.ca_file.is_none();
    config.volume_base = args.volume_base;
    config.rotate_key = args.rotate_key;
    config.max_response_bytes = args.max_response_bytes as usize;
    config.policy_path = args.policy;
    tracing::info!(version = tomo_agent::VERSION, config = ?config, "starting tomo-agent");

    let agent = match tomo_agent::Agent::new(config) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("tomo-agent: {e}");
            return ExitCode::from(64);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("tomo-agent: cannot start the runtime: {e}");
            return ExitCode::from(70);
        }
    };
    let code = runtime.block_on(async {
        let shutdown = CancellationToken::new();
        tokio::spawn(tomo_common::signals::cancel_on_signal(shutdown.clone()));
        match agent.run_once(shutdown).await {
            Ok(tomo_agent::Exit::Stopped) => {
                tracing::info!("stopped");
                ExitCode::SUCCESS
            }
            Ok(tomo_agent::Exit::Restart) => {
                // A fresh process (a new binary in place is picked up), same arguments and
                // environment; `exec` only returns on failure.
                use std::os::unix::process::CommandExt as _;
                tracing::info!("restarting (agent.restart)");
                let err = std::env::current_exe()
                    .map(|exe| {
                        std::process::Command::new(exe)
                            .args(std::env::args_os().skip(1))
                            .exec()
                    })
                    .unwrap_or_else(|e| e);
                tracing::error!(error = %err, "cannot restart the process");
                eprintln!("tomo-agent: cannot restart: {err}");
                ExitCode::from(75)
            }
            Err(e) => {
                tracing::error!(error = %e, "tomo-agent stopped");
                eprintln!("tomo-agent: {e}");
                ExitCode::from(if e.is_config() { 64 } else { 1 })
            }
        }
    });
    // Bound the teardown: nothing left at this point is worth delaying the exit for.
    runtime.shutdown_timeout(std::time::Duration::from_millis(200));
    code
}

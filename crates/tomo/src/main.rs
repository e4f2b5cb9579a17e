//! `tomo`: runs the control plane (`tomo server`, `tomo dev`) and is the operator's CLI
//! (`tomo hosts`, `tomo codes`, `tomo call`). `main` parses arguments and dispatches; the work is
//! in the libraries and in the modules below.

mod client;
mod commands;
mod dev;
mod duration;
mod serve;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// tomo: a secure fleet manager for Docker hosts.
#[derive(Debug, Parser)]
#[command(name = "tomo", version, about, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Log level or filter for server commands.
    #[arg(long, global = true, env = "LOG_LEVEL", default_value = "info")]
    log_level: String,
    /// Log JSON lines.
    #[arg(long, global = true, env = "LOG_JSON", value_parser = flag, default_value = "false")]
    log_json: bool,
}

fn flag(v: &str) -> Result<bool, std::convert::Infallible> {
    Ok(tomo_common::logging::truthy(v))
}

/// Where the CLI finds the control plane.
#[derive(Debug, Clone, clap::Args)]
pub struct ClientArgs {
    /// Control plane URL, e.g. https://tomo.example.com:7443.
    #[arg(long, global = true, env = "TOMO_URL")]
    url: Option<String>,
    /// API token.
    #[arg(long, global = true, env = "TOMO_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// CA file to verify the control plane's certificate against.
    #[arg(long, global = true, env = "TOMO_CA_FILE")]
    ca_file: Option<PathBuf>,
    /// Output format.
    #[arg(short = 'o', long, global = true, value_enum, default_value = "table")]
    output: Output,
}

/// Output formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    Table,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the control plane.
    Server(serve::ServerArgs),
    /// Run a control plane and a local agent for development, and configure this CLI for them.
    Dev(dev::DevArgs),
    /// Registration codes for new agents.
    Codes {
        #[command(subcommand)]
        command: commands::CodesCommand,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Hosts of the fleet.
    Hosts {
        #[command(subcommand)]
        command: commands::HostsCommand,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Call an agent method and print the JSON-RPC response (exit 0: result, 1: error, 2: failure).
    Call {
        /// Host id, hostname or unique id prefix.
        host: String,
        /// Method, e.g. agent.ping or system.info.
        method: String,
        /// Params as JSON (an object or an array).
        params: Option<String>,
        /// Timeout, e.g. 30s or 2m.
        #[arg(long)]
        timeout: Option<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("tomo: cannot start the runtime: {e}");
            return ExitCode::from(70);
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Server(args) => {
                tomo_common::logging::init(Some(&cli.log_level), cli.log_json);
                serve::run(args).await
            }
            Command::Dev(args) => {
                tomo_common::logging::init(Some(&cli.log_level), cli.log_json);
                dev::run(args).await
            }
            Command::Codes { command, client } => commands::codes(command, &client).await,
            Command::Hosts { command, client } => commands::hosts(command, &client).await,
            Command::Call {
                host,
                method,
                params,
                timeout,
                client,
            } => {
                commands::call(
                    &host,
                    &method,
                    params.as_deref(),
                    timeout.as_deref(),
                    &client,
                )
                .await
            }
        }
    });
    // Do not wait for stray blocking tasks at exit.
    runtime.shutdown_timeout(std::time::Duration::from_millis(100));
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("tomo: {}", e.message);
            if let Some(hint) = e.hint {
                eprintln!("hint: {hint}");
            }
            ExitCode::from(e.status)
        }
    }
}

/// A failure reported to the user: one line, an optional hint, an exit status.
#[derive(Debug)]
pub struct Failure {
    pub status: u8,
    pub message: String,
    pub hint: Option<String>,
}

impl Failure {
    pub fn new(status: u8, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            hint: None,
        }
    }
    pub fn hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }
    /// Bad configuration: status 64.
    pub fn config(message: impl std::fmt::Display) -> Self {
        Self::new(64, message.to_string())
    }
}

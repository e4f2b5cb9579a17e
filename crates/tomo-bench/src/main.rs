//! `tomo-bench`: benchmarks that run the real control plane and a real agent in this process,
//! against the real Docker engine, and print figures (plus a JSON report). Not a test: nothing
//! here fails a build; a missed target is reported as such.
//!
//! `tomo-bench rpc`: the round trip of `POST /api/v1/hosts/{host}/rpc` as an operator's client
//! sees it (issue 3). Run it with `scripts/bench rpc`, in release mode.

#![forbid(unsafe_code)]

mod fixtures;
mod fleet;
mod report;
mod rpc;
mod stats;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "tomo-bench", version, about = "tomo's benchmarks")]
struct Cli {
    /// Log level of the in-process control plane and agent (quiet by default so that the
    /// figures stand out).
    #[arg(long, env = "LOG_LEVEL", default_value = "warn", global = true)]
    log_level: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Round trip of agent calls through the control plane's API (issue 3).
    Rpc(rpc::RpcArgs),
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    tomo_common::logging::init(Some(&cli.log_level), false);
    let result = match cli.command {
        Command::Rpc(args) => rpc::run(args).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tomo-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

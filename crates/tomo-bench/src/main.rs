//! `tomo-bench`: tomo's benchmarks. Not a test: nothing here fails a build; a missed target is
//! reported as such (and the exit status is 0 as long as the measurement itself worked).
//!
//! - `tomo-bench rpc`: the round trip of `POST /api/v1/hosts/{host}/rpc` as an operator's client
//!   sees it, sequential and with 16 clients at once (issues 3 and 6); the control plane and a
//!   real agent in this process, against the Docker engine.
//! - `tomo-bench footprint`: the real `tomo-agent` binary in its own process: size, start to
//!   authenticated, memory and CPU idle and after 1000 requests (issue 6).
//! - `tomo-bench fleet`: `tomo server` in its own process and N simulated agents (`tomo-sim`):
//!   connect time, memory per agent, fan-out, a metrics burst and a restart storm (issue 6).
//! - `tomo-bench all`: the three, with the targets of issue 6 in one table and one report.
//! - `tomo-bench flood`: the API's latency and real agents' connect time under pre-auth floods
//!   (issue 12.5), bounded, loopback only; a control plane in this process.
//!
//! - `tomo-bench chaos`: faults injected into a real fleet (issue 13); fails when a case does
//!   not hold. Run it with `scripts/chaos`.
//!
//! Run them with `scripts/bench`, which builds `tomo`, `tomo-agent` and this in release mode.

#![forbid(unsafe_code)]

mod chaos;
mod fixtures;
mod fleet;
mod flood;
mod footprint;
mod procs;
mod report;
mod rpc;
mod scale;
mod stats;
mod suite;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "tomo-bench", version, about = "tomo's benchmarks")]
struct Cli {
    /// Log level of the in-process control plane, agent and simulator (quiet by default so that
    /// the figures stand out).
    #[arg(long, env = "LOG_LEVEL", default_value = "warn", global = true)]
    log_level: String,
    /// Smaller and shorter: 1000 simulated agents, 5 s / 10 s idle windows, fewer calls. The
    /// report says so; the targets are for the full run.
    #[arg(long, global = true)]
    quick: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Round trip of agent calls through the control plane's API (issues 3 and 6).
    Rpc(rpc::RpcArgs),
    /// The real agent's size, start time, memory and CPU (issue 6).
    Footprint {
        /// Where to write the JSON report [default: target/bench/footprint.json].
        #[arg(long)]
        json: Option<PathBuf>,
    },
    /// A control plane with N simulated agents (issue 6).
    Fleet {
        /// Simulated agents [default: 10000; 1000 with --quick].
        #[arg(long)]
        agents: Option<usize>,
        /// Where to write the JSON report [default: target/bench/fleet.json].
        #[arg(long)]
        json: Option<PathBuf>,
    },
    /// The API and real agents under pre-authentication floods (issue 12.5).
    Flood(flood::FloodArgs),
    /// Faults injected into a real fleet (issue 13): kill -9 of either binary mid-command, a
    /// run retried across a kill, a network black hole. Fails when a case does not hold.
    Chaos(chaos::ChaosArgs),
    /// Footprint, round trip and fleet, with every target of issue 6.
    All {
        /// Simulated agents [default: 10000; 1000 with --quick].
        #[arg(long)]
        agents: Option<usize>,
        #[command(flatten)]
        rpc: rpc::RpcArgs,
    },
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    tomo_common::logging::init(Some(&cli.log_level), false);
    let none = suite::Parts {
        footprint: false,
        rpc: false,
        fleet: false,
    };
    let default_rpc = rpc::RpcArgs::parse_default;
    let result = match cli.command {
        Command::Rpc(args) => {
            if cli.quick {
                rpc::run(args.quick()).await
            } else {
                rpc::run(args).await
            }
        }
        Command::Flood(args) => {
            if cli.quick {
                flood::run(args.quick()).await
            } else {
                flood::run(args).await
            }
        }
        Command::Chaos(args) => chaos::run(args).await,
        Command::Footprint { json } => {
            let parts = suite::Parts {
                footprint: true,
                ..none
            };
            suite::run("footprint", parts, cli.quick, None, default_rpc(), json).await
        }
        Command::Fleet { agents, json } => {
            let parts = suite::Parts {
                fleet: true,
                ..none
            };
            suite::run("fleet", parts, cli.quick, agents, default_rpc(), json).await
        }
        Command::All { agents, rpc } => {
            let parts = suite::Parts {
                footprint: true,
                rpc: true,
                fleet: true,
            };
            let json = rpc.json.clone();
            let rpc = rpc::RpcArgs { json: None, ..rpc };
            suite::run("report", parts, cli.quick, agents, rpc, json).await
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tomo-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

//! `tomo`: runs the control plane (`tomo server`, `tomo dev`) and is the operator's CLI
//! (`tomo hosts`, `tomo codes`, `tomo call`). `main` parses arguments and dispatches; the work is
//! in the libraries and in the modules below.

// clap turns the doc comments of arguments into `--help` text, written for a terminal: a URL
// or `[IP:]HOST` there is plain text, not a rustdoc link.
#![allow(rustdoc::bare_urls, rustdoc::broken_intra_doc_links)]

/// `println!` for the CLI's output: a reader that went away (`tomo events | head -1`) ends the
/// command quietly instead of a panic (issue 17.7). Defined before the modules so they see it.
macro_rules! outln {
    () => {
        $crate::out::line(format_args!(""))
    };
    ($($arg:tt)*) => {
        $crate::out::line(format_args!($($arg)*))
    };
}

/// `print!` with [`outln!`]'s handling of a closed pipe.
macro_rules! out {
    ($($arg:tt)*) => {
        $crate::out::text(format_args!($($arg)*))
    };
}

mod access;
mod approvals_cmd;
mod audit_cmd;
mod client;
mod commands;
mod dev;
mod duration;
mod interactive;
mod mcp_stdio;
mod ops;
mod out;
mod serve;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory as _, Parser, Subcommand};
use serde_json::json;

/// tomo: a secure fleet manager for Docker hosts.
#[derive(Debug, Parser)]
#[command(name = "tomo", version, about, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// How `tomo server` and `tomo dev` log (the client commands print, they do not log: issue 17,
/// their help lists no server flag).
#[derive(Debug, Clone, clap::Args)]
struct LogArgs {
    /// Log level, or a `tracing` filter.
    #[arg(long, env = "LOG_LEVEL", default_value = "info")]
    log_level: String,
    /// Log JSON lines.
    #[arg(long, env = "LOG_JSON", value_parser = flag, default_value = "false")]
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

/// `tomo approvals show ID`.
#[derive(Debug, Subcommand)]
enum ApprovalsCommand {
    /// The whole request of an action, risky parts first, for whoever decides it.
    Show {
        /// The action id, `act_…`.
        id: String,
        #[command(flatten)]
        client: ClientArgs,
    },
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the control plane.
    Server {
        #[command(flatten)]
        args: serve::ServerArgs,
        #[command(flatten)]
        log: LogArgs,
    },
    /// Run a control plane and a local agent for development, and configure this CLI for them.
    Dev {
        #[command(flatten)]
        args: dev::DevArgs,
        #[command(flatten)]
        log: LogArgs,
    },
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
        /// Run the call at most once under this key (1 to 64 of A-Z a-z 0-9 - _): calling again
        /// with the same key and params within 24 h answers with the first call's answer.
        #[arg(long, value_name = "KEY")]
        idempotency_key: Option<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// List containers: on one host, or on every host in the token's scope (a HOST column).
    Ps {
        /// One host (id, hostname or id prefix); without it, every online host in scope.
        host: Option<String>,
        /// Include stopped containers.
        #[arg(short, long)]
        all: bool,
        /// Only these hosts (repeatable; id, hostname or id prefix), without HOST.
        #[arg(long = "host", value_name = "HOST", conflicts_with = "host")]
        hosts: Vec<String>,
        /// Only hosts with this label (KEY=VALUE, repeatable: all must match), without HOST.
        #[arg(long = "label", value_name = "KEY=VALUE", conflicts_with = "host")]
        labels: Vec<String>,
        /// Only the container ids, one a line.
        #[arg(short, long)]
        quiet: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Show a container's logs.
    Logs {
        #[command(flatten)]
        logs: ops::LogsArgs,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Run a command in a container (`-it` for an interactive terminal).
    Exec {
        #[command(flatten)]
        exec: ops::ExecArgs,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Create and start a container (pulls the image when missing).
    Run {
        #[command(flatten)]
        run: ops::RunArgs,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Start a container.
    Start {
        host: String,
        container: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Stop a container (10 s before it is killed, or --time).
    Stop {
        host: String,
        container: String,
        #[arg(short, long)]
        time: Option<u32>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Restart a container.
    Restart {
        host: String,
        container: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Remove a container.
    Rm {
        host: String,
        container: String,
        /// Kill it first when running.
        #[arg(short, long)]
        force: bool,
        /// Remove its anonymous volumes too.
        #[arg(short, long)]
        volumes: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Pull the container's image again and recreate it; rolls back when the new one fails.
    Update {
        host: String,
        container: String,
        /// Recreate it even when the pull brings the image it already runs (without, such an
        /// update leaves it as it is and says so).
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Pull an image.
    Pull {
        host: String,
        image: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Images on a host: ls, rm.
    Images {
        /// One host (id, hostname or id prefix); without it, the images of every online host in
        /// scope, with a HOST column (listing only).
        host: Option<String>,
        #[command(subcommand)]
        action: Option<ops::ObjectAction>,
        /// Only these hosts (repeatable; id, hostname or id prefix), without HOST.
        #[arg(long = "host", value_name = "HOST", conflicts_with = "host")]
        hosts: Vec<String>,
        /// Only hosts with this label (KEY=VALUE, repeatable: all must match), without HOST.
        #[arg(long = "label", value_name = "KEY=VALUE", conflicts_with = "host")]
        labels: Vec<String>,
        /// Only the image ids, one a line (across hosts).
        #[arg(short, long, conflicts_with = "host")]
        quiet: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Networks on a host: ls, create, rm.
    Networks {
        host: String,
        #[command(subcommand)]
        action: Option<ops::ObjectAction>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Volumes on a host: ls, create, rm.
    Volumes {
        host: String,
        #[command(subcommand)]
        action: Option<ops::ObjectAction>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Resource usage of running containers, as `docker stats`: one host's (or one container's),
    /// or every online host's in scope, with a HOST column.
    Stats {
        /// One host (id, hostname or id prefix); without it, every online host in scope, with a
        /// HOST column.
        host: Option<String>,
        /// One container of HOST (its samples as a stream with `-f`).
        #[arg(requires = "host")]
        container: Option<String>,
        /// Only these hosts (repeatable; id, hostname or id prefix), without HOST.
        #[arg(long = "host", value_name = "HOST", conflicts_with = "host")]
        hosts: Vec<String>,
        /// Only hosts with this label (KEY=VALUE, repeatable: all must match), without HOST.
        #[arg(long = "label", value_name = "KEY=VALUE", conflicts_with = "host")]
        labels: Vec<String>,
        /// Keep refreshing.
        #[arg(short, long)]
        follow: bool,
        /// One sample and exit (the default; as `docker stats --no-stream`).
        #[arg(long, conflicts_with = "follow")]
        no_stream: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// A container's configuration and state as JSON, as `docker inspect` shows it
    /// (secret-looking environment values redacted).
    Inspect {
        host: String,
        container: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Docker engine events of a host.
    Events {
        host: String,
        /// Keep following new events.
        #[arg(short, long)]
        follow: bool,
        /// How many stored events to show first.
        #[arg(long, default_value_t = 100)]
        limit: u32,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// A host's latest metrics (CPU, memory, disks, network, load).
    Metrics {
        host: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// API tokens: create, ls, revoke (admin tokens without a host scope).
    Tokens {
        #[command(subcommand)]
        command: access::TokensCommand,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Show the token this CLI uses: name, role, host scope, expiry.
    Whoami {
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Check a token against a control plane, then save URL, token and CA in the client config.
    Login {
        #[command(flatten)]
        login: access::LoginArgs,
        /// Output format.
        #[arg(short = 'o', long, value_enum, default_value = "table")]
        output: Output,
    },
    /// Actions waiting for approval (made with tokens that require it).
    #[command(args_conflicts_with_subcommands = true)]
    Approvals {
        #[command(subcommand)]
        show: Option<ApprovalsCommand>,
        /// open (pending and interrupted: what needs a human), pending, approved, denied,
        /// expired, done, failed, interrupted or all.
        #[arg(long, default_value = "open")]
        status: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Approve a pending action: it runs now, as the token that asked for it.
    Approve {
        /// The action id, `act_…`.
        id: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Deny a pending action: it never runs.
    Deny {
        /// The action id, `act_…`.
        id: String,
        /// Told to whoever asked.
        #[arg(long)]
        reason: Option<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Serve MCP on stdin/stdout for AI assistants (Claude Desktop, Claude Code), forwarding to
    /// the control plane's /mcp with this CLI's URL, token and CA.
    Mcp {
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Print a shell completion script: `tomo completions bash > /etc/bash_completion.d/tomo`.
    Completions {
        #[arg(value_enum)]
        shell: CompletionShell,
    },
    /// The audit trail: agents' request decisions and operator API requests (admin tokens).
    Audit {
        /// Only this host's records (id, hostname or unique id prefix).
        #[arg(long)]
        host: Option<String>,
        /// Only records with this decision.
        #[arg(long, value_parser = ["allowed", "denied"])]
        decision: Option<String>,
        /// Keep following new records.
        #[arg(short, long)]
        follow: bool,
        /// How many stored records to show first.
        #[arg(long, default_value_t = 100)]
        limit: u32,
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
            Command::Server { args, log } => {
                tomo_common::logging::init(Some(&log.log_level), log.log_json);
                serve::run(args).await
            }
            Command::Dev { args, log } => {
                tomo_common::logging::init(Some(&log.log_level), log.log_json);
                dev::run(args).await
            }
            Command::Codes { command, client } => commands::codes(command, &client).await,
            Command::Hosts { command, client } => commands::hosts(command, &client).await,
            Command::Call {
                host,
                method,
                params,
                timeout,
                idempotency_key,
                client,
            } => {
                commands::call(
                    &host,
                    &method,
                    params.as_deref(),
                    timeout.as_deref(),
                    idempotency_key.as_deref(),
                    &client,
                )
                .await
            }
            Command::Ps {
                host,
                all,
                hosts,
                labels,
                quiet,
                client,
            } => {
                let which = ops::PsHosts {
                    one: host,
                    named: hosts,
                    labels,
                };
                ops::ps(&which, all, quiet, &client).await
            }
            Command::Logs { logs, client } => ops::logs(&logs, &client).await,
            Command::Exec { exec, client } => ops::exec(exec, &client).await,
            Command::Run { run, client } => ops::run(&run, &client).await,
            Command::Start {
                host,
                container,
                client,
            } => ops::action(&host, &container, "start", json!({}), &client).await,
            Command::Stop {
                host,
                container,
                time,
                client,
            } => {
                let body = match time {
                    Some(t) => json!({"timeout": t}),
                    None => json!({}),
                };
                ops::action(&host, &container, "stop", body, &client).await
            }
            Command::Restart {
                host,
                container,
                client,
            } => ops::action(&host, &container, "restart", json!({}), &client).await,
            Command::Rm {
                host,
                container,
                force,
                volumes,
                client,
            } => {
                ops::action(
                    &host,
                    &container,
                    "rm",
                    json!({"force": force, "volumes": volumes}),
                    &client,
                )
                .await
            }
            Command::Update {
                host,
                container,
                force,
                client,
            } => {
                ops::action(
                    &host,
                    &container,
                    "update",
                    json!({"force": force}),
                    &client,
                )
                .await
            }
            Command::Pull {
                host,
                image,
                client,
            } => ops::pull(&host, &image, &client).await,
            Command::Images {
                host,
                action,
                hosts,
                labels,
                quiet,
                client,
            } => match (host, action) {
                (Some(host), action) => ops::objects("images", &host, action, &client).await,
                (None, None | Some(ops::ObjectAction::Ls)) => {
                    let which = ops::PsHosts {
                        one: None,
                        named: hosts,
                        labels,
                    };
                    ops::images_fleet(&which, quiet, &client).await
                }
                (None, Some(_)) => Err(Failure::new(
                    2,
                    "name the host: tomo images HOST create|rm … (only the listing spans hosts)",
                )),
            },
            Command::Networks {
                host,
                action,
                client,
            } => ops::objects("networks", &host, action, &client).await,
            Command::Volumes {
                host,
                action,
                client,
            } => ops::objects("volumes", &host, action, &client).await,
            Command::Stats {
                host,
                container,
                hosts,
                labels,
                follow,
                no_stream: _,
                client,
            } => {
                let which = ops::PsHosts {
                    one: host,
                    named: hosts,
                    labels,
                };
                ops::stats(&which, container.as_deref(), follow, &client).await
            }
            Command::Inspect {
                host,
                container,
                client,
            } => ops::inspect(&host, &container, &client).await,
            Command::Events {
                host,
                follow,
                limit,
                client,
            } => ops::events(&host, follow, limit, &client).await,
            Command::Metrics { host, client } => ops::metrics(&host, &client).await,
            Command::Audit {
                host,
                follow,
                decision,
                limit,
                client,
            } => {
                let filter = audit_cmd::Filter {
                    host: host.as_deref(),
                    decision: decision.as_deref(),
                };
                audit_cmd::audit(filter, follow, limit, &client).await
            }
            Command::Tokens { command, client } => access::tokens(command, &client).await,
            Command::Whoami { client } => access::whoami(&client).await,
            Command::Approvals {
                show: Some(ApprovalsCommand::Show { id, client }),
                ..
            } => approvals_cmd::show(&id, &client).await,
            Command::Approvals { status, client, .. } => {
                approvals_cmd::list(&status, &client).await
            }
            Command::Approve { id, client } => {
                approvals_cmd::decide(&id, true, None, &client).await
            }
            Command::Deny { id, reason, client } => {
                approvals_cmd::decide(&id, false, reason.as_deref(), &client).await
            }
            Command::Mcp { client } => mcp_stdio::run(&client).await,
            Command::Login { login, output } => access::login(login, output).await,
            Command::Completions { shell } => {
                completions(shell);
                Ok(ExitCode::SUCCESS)
            }
        }
    });
    // Do not wait for stray blocking tasks at exit.
    runtime.shutdown_timeout(std::time::Duration::from_millis(100));
    match result {
        Ok(code) => code,
        Err(e) => {
            // Errors can quote a host or a container (an engine's message, a name).
            eprintln!("tomo: {}", out::terminal_safe(&e.message));
            if let Some(hint) = e.hint {
                eprintln!("hint: {}", out::terminal_safe(&hint));
            }
            ExitCode::from(e.status)
        }
    }
}

/// Shells `tomo completions` writes scripts for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum CompletionShell {
    Bash,
    Zsh,
    Fish,
}

fn completions(shell: CompletionShell) {
    let shell = match shell {
        CompletionShell::Bash => clap_complete::Shell::Bash,
        CompletionShell::Zsh => clap_complete::Shell::Zsh,
        CompletionShell::Fish => clap_complete::Shell::Fish,
    };
    // Into memory first: clap_complete panics when its writer fails (`tomo completions bash | head`).
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), "tomo", &mut script);
    // A closed pipe is the reader's choice, not an error.
    let _ = std::io::Write::write_all(&mut std::io::stdout(), &script);
}

/// The exit status of a command whose call is held for approval (not a success, not an error).
pub const PENDING_STATUS: u8 = 3;

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
    /// A call held for approval: status [`PENDING_STATUS`], the action's id and what to run.
    pub fn pending(id: &str) -> Self {
        Self::new(
            PENDING_STATUS,
            format!("waiting for approval: {id} (tomo approve {id})"),
        )
        .hint(format!(
            "this token requires approval: the call runs once an approver runs `tomo approve {id}` (`tomo deny {id}` drops it; `tomo approvals show {id}` shows the request)"
        ))
    }

    /// Bad configuration: status 64.
    pub fn config(message: impl std::fmt::Display) -> Self {
        Self::new(64, message.to_string())
    }
    /// A control plane that could not start (`tomo dev`, `tomo server`), with what to do.
    pub fn server_start(e: tomo_server::ServerError) -> Self {
        let in_use = matches!(&e, tomo_server::ServerError::Bind { source, .. }
            if source.kind() == std::io::ErrorKind::AddrInUse);
        let f = Self::config(e);
        if in_use {
            f.hint("another process listens there (another `tomo dev`?): stop it, or pick another address with --listen")
        } else {
            f
        }
    }
}

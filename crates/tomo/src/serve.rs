//! `tomo server`: the control plane.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use tokio_util::sync::CancellationToken;
use tomo_server::config::ServerConfig;
use tomo_server::tls::TlsSource;

use crate::Failure;

#[derive(Debug, clap::Args)]
pub struct ServerArgs {
    /// Where the database, TLS material and state live.
    #[arg(long, env = "TOMO_DATA_DIR", default_value = "/var/lib/tomo")]
    pub data_dir: PathBuf,
    /// Address to listen on (use 0.0.0.0:7443 to accept remote agents).
    #[arg(long, env = "TOMO_LISTEN", default_value = "127.0.0.1:7443")]
    pub listen: SocketAddr,
    /// PEM certificate chain; without it a development CA and certificate are generated.
    #[arg(long, env = "TOMO_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, env = "TOMO_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// URL agents and clients use to reach this server, e.g. https://tomo.example.com.
    #[arg(long, env = "TOMO_PUBLIC_URL")]
    pub public_url: Option<String>,
    /// Default timeout of calls to agents.
    #[arg(long, env = "TOMO_CALL_TIMEOUT", default_value = "30s")]
    pub call_timeout: String,
    /// How long health and metrics history is kept.
    #[arg(long, env = "TOMO_HISTORY_RETENTION", default_value = "24h")]
    pub history_retention: String,
    /// How long audit records are kept.
    #[arg(long, env = "TOMO_AUDIT_RETENTION", default_value = "30d")]
    pub audit_retention: String,
    /// How long an action made with a token that requires approval waits for a human.
    #[arg(long, env = "TOMO_APPROVAL_TTL", default_value = "15m")]
    pub approval_ttl: String,
    /// MCP tool calls per minute and token, for tokens without a rate of their own.
    #[arg(long, env = "TOMO_TOOL_RATE", default_value_t = 60,
          value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub tool_rate: u32,
    /// Largest MCP tool result, in bytes (bigger results are cut, and say so).
    #[arg(long, env = "TOMO_TOOL_OUTPUT_BYTES", default_value_t = 24 * 1024,
          value_parser = clap::value_parser!(u64).range(1024..=1_048_576))]
    pub tool_output_bytes: u64,
    /// A browser origin allowed to call /mcp (repeatable; e.g. https://dash.example.com).
    /// Requests with any other Origin header are refused.
    #[arg(
        long = "mcp-allowed-origin",
        env = "TOMO_MCP_ALLOWED_ORIGINS",
        value_delimiter = ','
    )]
    pub mcp_allowed_origins: Vec<String>,
    /// Connections one address (an IPv6 /64) may have open before they authenticate; past it,
    /// a new one is closed at once. Raise it for many agents behind one NAT.
    #[arg(long, env = "TOMO_UNAUTHENTICATED_PER_SOURCE", default_value_t = 64,
          value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub unauthenticated_per_source: u32,
    /// Agent session handshakes one address may have in progress at once.
    #[arg(long, env = "TOMO_AGENT_HANDSHAKES_PER_SOURCE", default_value_t = 64,
          value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub agent_handshakes_per_source: u32,
    /// Connections all addresses together may have open before they authenticate (0: half the
    /// process's open-file limit).
    #[arg(long, env = "TOMO_MAX_UNAUTHENTICATED", default_value_t = 0)]
    pub max_unauthenticated: u32,
}

impl ServerArgs {
    pub fn to_config(&self) -> Result<ServerConfig, Failure> {
        let mut c = ServerConfig::new(self.data_dir.clone(), self.listen);
        if let (Some(cert), Some(key)) = (&self.tls_cert, &self.tls_key) {
            c.tls = TlsSource::Files {
                cert: cert.clone(),
                key: key.clone(),
            };
        }
        c.public_url = self.public_url.clone();
        c.call_timeout = crate::duration::parse(&self.call_timeout).map_err(Failure::config)?;
        c.history_retention =
            crate::duration::parse(&self.history_retention).map_err(Failure::config)?;
        c.audit_retention =
            crate::duration::parse(&self.audit_retention).map_err(Failure::config)?;
        c.approval_ttl = crate::duration::parse(&self.approval_ttl).map_err(Failure::config)?;
        c.tool_rate_per_min = self.tool_rate;
        c.tool_output_bytes = self.tool_output_bytes as usize;
        c.mcp_allowed_origins = self.mcp_allowed_origins.clone();
        c.unauthenticated_per_source = self.unauthenticated_per_source as usize;
        c.agent_handshakes_per_source = self.agent_handshakes_per_source as usize;
        c.max_unauthenticated = self.max_unauthenticated as usize;
        c.validate().map_err(Failure::config)?;
        Ok(c)
    }
}

pub async fn run(args: ServerArgs) -> Result<ExitCode, Failure> {
    let config = args.to_config()?;
    tracing::info!(?config, "starting the control plane");
    let server = tomo_server::Server::bind(config)
        .await
        .map_err(Failure::server_start)?;
    if let Some(token) = &server.first_admin_token {
        outln!("Admin token (shown once; store it safely): {token}");
        let info = server.info();
        outln!(
            "Log the CLI in with (then paste the token):\n  {}",
            crate::access::login_line(&info.api_url, info.ca_file.as_deref())
        );
    }
    let shutdown = CancellationToken::new();
    tokio::spawn(tomo_common::signals::cancel_on_signal(shutdown.clone()));
    server.run(shutdown).await;
    Ok(ExitCode::SUCCESS)
}

//! The control plane's configuration: a typed struct, validated whole before any port is bound.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::tls::TlsSource;

/// Everything the control plane needs to run.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub data_dir: PathBuf,
    pub listen: SocketAddr,
    pub tls: TlsSource,
    /// Base URL agents and clients use to reach this server, e.g. `https://tomo.example.com`.
    /// Default: derived from the listen address.
    pub public_url: Option<String>,
    /// Default timeout of a call to an agent (per-call override in the API).
    pub call_timeout: Duration,
    /// How long health and metrics history is kept.
    pub history_retention: Duration,
    /// How long audit records are kept.
    pub audit_retention: Duration,
    pub heartbeat: Duration,
    pub dead_after: Duration,
    pub handshake_timeout: Duration,
    /// Unauthenticated connections one source (IPv4 address, IPv6 /64) may hold at once:
    /// waiting for their first TLS byte, in TLS, or in HTTP before a request authenticates
    /// (see `admission`). Past it, a new connection is closed as soon as it is accepted.
    pub unauthenticated_per_source: usize,
    /// Upgraded `/agent/ws` connections one source may have in their session handshake at once
    /// (a budget apart from the operators' connections above).
    pub agent_handshakes_per_source: usize,
    /// Unauthenticated connections (both kinds above) all sources together may hold at once,
    /// so that a flood from many addresses cannot take every descriptor of the process. `0`:
    /// half the process's open-file limit (see `admission::default_cap`).
    pub max_unauthenticated: usize,
    /// How long an accepted connection may take to send its first TLS byte. It holds no shared
    /// turn meanwhile, only its source's slot.
    pub first_byte_timeout: Duration,
    /// How long an upgraded `/agent/ws` connection may take to send its first handshake message
    /// after the challenge. It holds no session handshake turn meanwhile.
    pub first_message_timeout: Duration,
    /// Time given to sessions and requests to finish at shutdown.
    pub shutdown_grace: Duration,
    /// How long a pending action waits for a human before it expires.
    pub approval_ttl: Duration,
    /// MCP tool calls per minute and token, unless the token sets its own.
    pub tool_rate_per_min: u32,
    /// Largest text an MCP tool returns to the assistant (bigger results are cut, and say so).
    pub tool_output_bytes: usize,
    /// Browser origins allowed to call `/mcp` (besides requests without `Origin`, which MCP
    /// clients outside browsers send). Empty: every request with an `Origin` is refused.
    pub mcp_allowed_origins: Vec<String>,
}

/// Bad configuration (exit status 64).
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{0} does not exist")]
    Missing(PathBuf),
    #[error("public URL {0:?} must start with https://")]
    PublicUrl(String),
    #[error("{0} must be greater than zero")]
    Zero(&'static str),
}

impl ServerConfig {
    /// Defaults for everything but where to keep data and where to listen.
    pub fn new(data_dir: PathBuf, listen: SocketAddr) -> Self {
        Self {
            data_dir,
            listen,
            tls: TlsSource::SelfSigned,
            public_url: None,
            call_timeout: Duration::from_secs(30),
            history_retention: Duration::from_secs(24 * 3600),
            audit_retention: Duration::from_secs(30 * 24 * 3600),
            heartbeat: Duration::from_secs(tomo_proto::HEARTBEAT_SECS),
            dead_after: Duration::from_secs(tomo_proto::DEAD_AFTER_SECS),
            handshake_timeout: Duration::from_secs(10),
            unauthenticated_per_source: 64,
            agent_handshakes_per_source: 64,
            max_unauthenticated: 0,
            first_byte_timeout: Duration::from_secs(5),
            first_message_timeout: Duration::from_secs(5),
            shutdown_grace: Duration::from_millis(1500),
            approval_ttl: Duration::from_secs(15 * 60),
            tool_rate_per_min: 60,
            tool_output_bytes: 24 * 1024,
            mcp_allowed_origins: Vec::new(),
        }
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        if let TlsSource::Files { cert, key } = &self.tls {
            for p in [cert, key] {
                if !p.exists() {
                    return Err(ConfigError::Missing(p.clone()));
                }
            }
        }
        if let Some(u) = &self.public_url
            && !u.starts_with("https://")
        {
            return Err(ConfigError::PublicUrl(u.clone()));
        }
        for (name, n) in [
            (
                "unauthenticated connections per source",
                self.unauthenticated_per_source,
            ),
            (
                "agent handshakes per source",
                self.agent_handshakes_per_source,
            ),
        ] {
            if n == 0 {
                return Err(ConfigError::Zero(name));
            }
        }
        for (name, d) in [
            ("the handshake timeout", self.handshake_timeout),
            ("the first-byte timeout", self.first_byte_timeout),
            ("the first-message timeout", self.first_message_timeout),
        ] {
            if d.is_zero() {
                return Err(ConfigError::Zero(name));
            }
        }
        Ok(())
    }

    /// The host name (or IP address) of the public URL, which a generated certificate must
    /// cover (issue 17.3).
    pub fn public_host(&self) -> Option<String> {
        let rest = self.public_url.as_deref()?.strip_prefix("https://")?;
        let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
        let authority = authority.rsplit_once('@').map_or(authority, |(_, a)| a);
        let host = match authority.strip_prefix('[') {
            Some(v6) => v6.split(']').next().unwrap_or_default(),
            None => authority.split(':').next().unwrap_or_default(),
        };
        (!host.is_empty()).then(|| host.to_ascii_lowercase())
    }

    /// The HTTPS base URL of the API.
    pub fn api_url(&self, bound: SocketAddr) -> String {
        if let Some(u) = &self.public_url {
            return u.trim_end_matches('/').to_owned();
        }
        let host = if bound.ip().is_unspecified() {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|h| h.trim().to_owned())
                .unwrap_or_else(|_| "localhost".into())
        } else if bound.is_ipv6() {
            format!("[{}]", bound.ip())
        } else {
            bound.ip().to_string()
        };
        format!("https://{host}:{}", bound.port())
    }

    /// The URL agents dial.
    pub fn agent_url(&self, bound: SocketAddr) -> String {
        format!(
            "{}/agent/ws",
            self.api_url(bound).replacen("https://", "wss://", 1)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_public_host_is_the_urls_host_without_port_or_path() {
        let host = |u: &str| {
            let mut c = ServerConfig::new("/x".into(), "127.0.0.1:0".parse().expect("addr"));
            c.public_url = Some(u.into());
            c.public_host()
        };
        assert_eq!(
            host("https://Tomo.Example.com"),
            Some("tomo.example.com".into())
        );
        assert_eq!(
            host("https://tomo.example.com:7443/x"),
            Some("tomo.example.com".into())
        );
        assert_eq!(
            host("https://[2001:db8::1]:7443"),
            Some("2001:db8::1".into())
        );
        assert_eq!(host("https://192.0.2.7"), Some("192.0.2.7".into()));
        assert_eq!(host("https://"), None);
    }
}

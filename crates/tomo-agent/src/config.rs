//! The agent's configuration: a typed struct built from flags and environment, validated whole
//! before anything connects.

use std::path::PathBuf;
use std::time::Duration;

/// Everything the agent needs to run. `Debug` redacts the registration code.
#[derive(Clone)]
pub struct AgentConfig {
    /// Where to dial, e.g. `wss://tomo.example.com/agent/ws`. `None`: the URL saved at registration.
    pub server_url: Option<String>,
    /// One-time registration code; used only when the agent has no identity yet.
    pub register_code: Option<String>,
    /// Where the identity and state live (0700 directory, 0600 files).
    pub data_dir: PathBuf,
    /// PEM file of the CA that signed the control plane's certificate (self-signed setups).
    pub ca_file: Option<PathBuf>,
    /// `TOMO_DEV=1` without a CA file: no certificate verification, with a warning at every connect.
    pub insecure_dev: bool,
    /// Overrides the reported hostname.
    pub hostname: Option<String>,
    /// Root of the host's filesystem as the agent sees it (`/host` when containerized).
    pub host_root: PathBuf,
    /// Where the Docker engine is (from `DOCKER_HOST` and friends by default).
    pub docker: crate::docker::Endpoint,
    pub intervals: Intervals,
    /// `system.prepare_volumes` creates directories only under this one (`/srv/tomo` by default).
    pub volume_base: PathBuf,
    /// Largest single response, in bytes; longer output is cut and marked truncated.
    pub max_response_bytes: usize,
    /// Start a key rotation at the next start (the agent's own initiative; `agent.rotate_key` is
    /// the control plane's).
    pub rotate_key: bool,
    /// The host policy file; `None`: `/etc/tomo/policy.toml`, the defaults when it is missing.
    pub policy_path: Option<PathBuf>,
    /// More host paths never bind-mounted, nor their ancestors (`tomo dev`: the control plane's
    /// data directory, beside the agent's).
    pub protect: Vec<PathBuf>,
}

/// Default of [`AgentConfig::max_response_bytes`]: 10 MiB.
pub const DEFAULT_MAX_RESPONSE_BYTES: usize = 10 * 1024 * 1024;

/// Timings of the background collectors and the connection.
#[derive(Debug, Clone, Copy)]
pub struct Intervals {
    pub metrics_push: Duration,
    pub health_push: Duration,
    pub sample: Duration,
    pub heartbeat: Duration,
    pub dead_after: Duration,
    /// From dialing to the control plane's welcome. Generous: under a reconnect storm the
    /// control plane serves handshakes in turn (up to 20 s in its queue, then milliseconds
    /// each); an agent that gave up sooner would throw its place away and queue again.
    pub handshake_timeout: Duration,
    /// How long in-flight requests get to finish at shutdown.
    pub shutdown_grace: Duration,
}

impl Default for Intervals {
    fn default() -> Self {
        Self {
            metrics_push: Duration::from_secs(30),
            health_push: Duration::from_secs(60),
            sample: Duration::from_secs(10),
            heartbeat: Duration::from_secs(tomo_proto::HEARTBEAT_SECS),
            dead_after: Duration::from_secs(tomo_proto::DEAD_AFTER_SECS),
            handshake_timeout: Duration::from_secs(30),
            shutdown_grace: Duration::from_millis(1500),
        }
    }
}

/// Bad configuration: the binary prints it on one line and exits with status 64.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(
        "server URL {0:?} must start with wss:// (the agent never talks to the control plane in clear)"
    )]
    NotWss(String),
    /// An `https://` URL: most likely the API's, given where the agent's endpoint was meant.
    #[error(
        "server URL {0:?} is an https:// URL; the agent dials its WebSocket endpoint: use {1} (the join line of `tomo codes create` prints it)"
    )]
    Https(String, String),
    #[error("server URL {0:?} is not a valid URL")]
    BadUrl(String),
    #[error("CA file {0} does not exist")]
    MissingCa(PathBuf),
    #[error(transparent)]
    Policy(#[from] crate::policy::PolicyError),
}

impl AgentConfig {
    /// A configuration with defaults for everything but the data directory.
    pub fn new(data_dir: PathBuf) -> Self {
        Self {
            server_url: None,
            register_code: None,
            data_dir,
            ca_file: None,
            insecure_dev: false,
            hostname: None,
            host_root: default_host_root(),
            docker: crate::docker::Endpoint::from_env(),
            intervals: Intervals::default(),
            volume_base: PathBuf::from("/srv/tomo"),
            max_response_bytes: DEFAULT_MAX_RESPONSE_BYTES,
            rotate_key: false,
            policy_path: None,
            protect: Vec::new(),
        }
    }

    /// The host paths that no bind mount may reach, besides the built-in ones and the policy's:
    /// the data directory (the agent's key), [`AgentConfig::protect`], and the Docker engine's
    /// socket or its TLS client certificates.
    pub fn protected_paths(&self) -> Vec<PathBuf> {
        let mut all = vec![self.data_dir.clone()];
        all.extend(self.protect.iter().cloned());
        match &self.docker {
            crate::docker::Endpoint::Unix(socket) => all.push(PathBuf::from(socket)),
            crate::docker::Endpoint::TcpTls { cert_dir, .. } => all.push(cert_dir.clone()),
            crate::docker::Endpoint::Refused(_) => {}
        }
        all
    }

    /// Checks everything that can be checked before connecting.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if let Some(url) = &self.server_url {
            check_url(url)?;
        }
        if let Some(ca) = &self.ca_file
            && !ca.exists()
        {
            return Err(ConfigError::MissingCa(ca.clone()));
        }
        crate::policy::HostPolicy::load(self.policy_path.as_deref(), &self.volume_base)?;
        Ok(())
    }
}

/// A server URL must be `wss://host[:port]/path`.
pub fn check_url(url: &str) -> Result<(), ConfigError> {
    let uri: tokio_tungstenite::tungstenite::http::Uri =
        url.parse().map_err(|_| ConfigError::BadUrl(url.into()))?;
    if uri.scheme_str() == Some("https") {
        let authority = uri.authority().map(|a| a.as_str()).unwrap_or_default();
        return Err(ConfigError::Https(
            url.into(),
            format!("wss://{authority}/agent/ws"),
        ));
    }
    if uri.scheme_str() != Some("wss") {
        return Err(ConfigError::NotWss(url.into()));
    }
    if uri.host().is_none() {
        return Err(ConfigError::BadUrl(url.into()));
    }
    Ok(())
}

/// `/host` when the host's root is mounted there (the agent runs in a container), else `/`.
fn default_host_root() -> PathBuf {
    let host = PathBuf::from("/host");
    if host.join("etc").is_dir() {
        host
    } else {
        PathBuf::from("/")
    }
}

impl std::fmt::Debug for AgentConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentConfig")
            .field("server_url", &self.server_url)
            .field(
                "register_code",
                &self.register_code.as_ref().map(|_| "<redacted>"),
            )
            .field("data_dir", &self.data_dir)
            .field("ca_file", &self.ca_file)
            .field("insecure_dev", &self.insecure_dev)
            .field("hostname", &self.hostname)
            .field("host_root", &self.host_root)
            .field("docker", &self.docker)
            .field("intervals", &self.intervals)
            .field("volume_base", &self.volume_base)
            .field("max_response_bytes", &self.max_response_bytes)
            .field("policy_path", &self.policy_path)
            .field("protect", &self.protect)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_wss_urls() {
        assert!(check_url("wss://127.0.0.1:7443/agent/ws").is_ok());
        assert!(matches!(
            check_url("ws://127.0.0.1/agent/ws"),
            Err(ConfigError::NotWss(_))
        ));
        // Issue 17.10: an https:// URL is told the wss:// one to use, not "never in clear".
        match check_url("https://tomo.example.com:7443") {
            Err(e @ ConfigError::Https(..)) => assert!(
                e.to_string()
                    .contains("use wss://tomo.example.com:7443/agent/ws"),
                "{e}"
            ),
            other => panic!("{other:?}"),
        }
        assert!(check_url("not a url").is_err());
    }

    #[test]
    fn debug_redacts_code() {
        let mut c = AgentConfig::new("/data".into());
        c.register_code = Some("secret-code".into());
        let text = format!("{c:?}");
        assert!(!text.contains("secret-code"), "{text}");
    }
}

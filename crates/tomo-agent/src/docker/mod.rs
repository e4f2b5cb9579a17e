//! The only module that talks to the Docker engine, through bollard with API version negotiation.
//!
//! The endpoint comes from `DOCKER_HOST`: the local unix socket by default; a TCP endpoint only
//! with TLS and certificate verification (`DOCKER_TLS_VERIFY`, `DOCKER_CERT_PATH`), never in clear.
//! The client is made lazily and dropped after a connection failure, so the agent finds the
//! engine again by itself when it comes back (possibly with another API version).
//!
//! Every read from the engine is bounded ([`transport`]): a whole-body answer (inspect, lists,
//! `info`) at most the host policy's `docker_read_bytes` (4 MiB by default), a stream at most that
//! between two items; past it the call fails with -32003 `docker_answer_too_large`, naming the cap.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

pub mod containers;
pub mod events;
pub mod guard;
pub mod images;
pub mod ops;
pub mod transport;

use bollard::Docker;
use tomo_proto::methods::{ContainerCounts, ContainerSummary, DockerStatus};
use tomo_proto::rpc::{RpcError, code};
use transport::{Dial, Meter, Transport};

const TIMEOUT_SECS: u64 = 120;

/// Where the engine is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    Unix(String),
    TcpTls {
        addr: String,
        cert_dir: PathBuf,
    },
    /// A configuration the agent refuses, with the reason; Docker methods answer it as -32003.
    Refused(String),
}

impl Endpoint {
    /// Reads `DOCKER_HOST`, `DOCKER_TLS_VERIFY` and `DOCKER_CERT_PATH`.
    pub fn from_env() -> Self {
        let host = std::env::var("DOCKER_HOST").ok().filter(|h| !h.is_empty());
        let verify = std::env::var("DOCKER_TLS_VERIFY").is_ok_and(|v| !v.is_empty() && v != "0");
        let cert = std::env::var("DOCKER_CERT_PATH").ok().map(PathBuf::from);
        Self::parse(host.as_deref(), verify, cert)
    }

    fn parse(host: Option<&str>, tls_verify: bool, cert_path: Option<PathBuf>) -> Self {
        match host {
            None => Self::Unix("/var/run/docker.sock".into()),
            Some(h) if h.starts_with("unix://") => {
                Self::Unix(h.trim_start_matches("unix://").into())
            }
            Some(h) if h.starts_with("tcp://") || h.starts_with("https://") => {
                if !tls_verify {
                    return Self::Refused(format!(
                        "DOCKER_HOST={h} is a TCP endpoint without TLS; set DOCKER_TLS_VERIFY=1 and DOCKER_CERT_PATH"
                    ));
                }
                let cert_dir = cert_path
                    .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".docker")))
                    .unwrap_or_else(|| PathBuf::from(".docker"));
                let addr = h.replacen("tcp://", "https://", 1);
                Self::TcpTls { addr, cert_dir }
            }
            Some(h) => Self::Refused(format!(
                "DOCKER_HOST={h}: unsupported scheme (use unix:// or tcp:// with TLS)"
            )),
        }
    }
}

/// A lazily connected, self-healing Docker client.
#[derive(Debug)]
pub struct DockerClient {
    endpoint: Endpoint,
    body_cap: usize,
    client: Mutex<Option<(Docker, Arc<Dial>)>>,
    /// Woken when a call finds the engine gone, so its status is probed again at once.
    gone: tokio::sync::Notify,
}

impl DockerClient {
    pub fn new(endpoint: Endpoint) -> Self {
        Self::with_body_cap(endpoint, transport::DEFAULT_BODY_CAP)
    }

    /// A client whose reads from the engine are capped at `body_cap` bytes (see [`transport`]).
    pub fn with_body_cap(endpoint: Endpoint, body_cap: usize) -> Self {
        Self {
            endpoint,
            body_cap,
            client: Mutex::new(None),
            gone: tokio::sync::Notify::new(),
        }
    }

    /// Waits until a call finds the engine gone (see [`DockerClient::error`]).
    pub async fn went_away(&self) {
        self.gone.notified().await;
    }

    /// The engine's `_ping`: the cheapest proof that it answers.
    pub async fn ping(&self) -> Result<(), RpcError> {
        let docker = self.client().await?;
        docker.ping().await.map(|_| ()).map_err(|e| self.error(e))
    }

    /// A connected client with a negotiated API version, or -32003 saying why there is none.
    /// Each of its calls reads at most the body cap in all: for whole-body answers. (A stream
    /// read through it is cut at the cap too, but bollard reports that as a lost connection:
    /// streams take [`DockerClient::streaming`].)
    pub async fn client(&self) -> Result<Docker, RpcError> {
        self.connected().await.map(|(docker, _)| docker)
    }

    /// A client for one stream (logs, stats, events, exec, pull progress): what it reads between
    /// two items is capped, as long as the caller passes each item through [`Meter::reset`]
    /// ([`transport::metered`] does). Use it for the stream's request only.
    pub async fn streaming(&self) -> Result<(Docker, Meter), RpcError> {
        let (docker, dial) = self.connected().await?;
        let meter = Meter::new(self.body_cap);
        let transport = Transport::shared(dial, meter.clone());
        let stream = Self::over(transport, &docker.client_version())
            .map_err(|e| unavailable(&self.endpoint, &e))?;
        Ok((stream, meter))
    }

    async fn connected(&self) -> Result<(Docker, Arc<Dial>), RpcError> {
        if let Some(c) = self.client.lock().ok().and_then(|c| c.clone()) {
            return Ok(c);
        }
        let dial = match &self.endpoint {
            Endpoint::Unix(path) => Dial::Unix(PathBuf::from(path)),
            Endpoint::TcpTls { addr, cert_dir } => Dial::tls(addr, cert_dir)
                .map_err(|e| RpcError::new(code::DOCKER, format!("Docker TLS: {e}")))?,
            Endpoint::Refused(why) => return Err(RpcError::new(code::DOCKER, why.clone())),
        };
        let dial = Arc::new(dial);
        let transport = Transport::per_request(Arc::clone(&dial), self.body_cap);
        let fresh = Self::over(transport, bollard::API_DEFAULT_VERSION)
            .map_err(|e| unavailable(&self.endpoint, &e))?;
        // Any failure here is the engine's absence, as before; an oversized answer says so.
        let negotiated = fresh.negotiate_version().await.map_err(|e| {
            transport::too_large(&e).map_or_else(|| unavailable(&self.endpoint, &e), too_large)
        })?;
        let pair = (negotiated, dial);
        if let Ok(mut slot) = self.client.lock() {
            *slot = Some(pair.clone());
        }
        Ok(pair)
    }

    fn over(
        transport: Transport,
        version: &bollard::ClientVersion,
    ) -> Result<Docker, bollard::errors::Error> {
        Docker::connect_with_custom_transport(
            move |req| transport.request(req),
            Some("http://docker"),
            TIMEOUT_SECS,
            version,
        )
    }

    /// Maps a bollard error to JSON-RPC, forgetting the client when the engine went away.
    pub fn error(&self, e: bollard::errors::Error) -> RpcError {
        use bollard::errors::Error as E;
        if let Some(t) = transport::too_large(&e) {
            return too_large(t);
        }
        match e {
            E::DockerResponseServerError {
                status_code: 404,
                message,
            } => RpcError::new(code::NOT_FOUND, format!("not found: {message}")),
            // The engine's status travels in `data.status`: a 409 (name in use, container
            // running) is the caller's conflict, not a failed engine (issue 17.10).
            E::DockerResponseServerError {
                status_code,
                message,
            } => RpcError::new(
                code::DOCKER,
                format!("Docker error ({status_code}): {message}"),
            )
            .with_data(serde_json::json!({ "status": status_code })),
            other => {
                if let Ok(mut slot) = self.client.lock() {
                    *slot = None;
                }
                self.gone.notify_one();
                unavailable(&self.endpoint, &other)
            }
        }
    }

    /// Engine version, API version and id; never fails (an unavailable engine is reported as such).
    pub async fn status(&self) -> DockerStatus {
        let info = async {
            let docker = self.client().await?;
            let info = docker.info().await.map_err(|e| self.error(e))?;
            Ok::<_, RpcError>((info, docker.client_version().to_string()))
        };
        match info.await {
            Ok((info, api)) => DockerStatus {
                available: true,
                version: info.server_version,
                api_version: Some(api),
                engine_id: info.id,
                error: None,
            },
            Err(e) => DockerStatus {
                available: false,
                error: Some(e.message),
                ..Default::default()
            },
        }
    }

    /// Containers, running only unless `all`.
    pub async fn list_containers(&self, all: bool) -> Result<Vec<ContainerSummary>, RpcError> {
        let docker = self.client().await?;
        let opts = bollard::query_parameters::ListContainersOptionsBuilder::default()
            .all(all)
            .build();
        let list = docker
            .list_containers(Some(opts))
            .await
            .map_err(|e| self.error(e))?;
        Ok(list
            .into_iter()
            .map(|c| ContainerSummary {
                id: c.id.unwrap_or_default(),
                name: c
                    .names
                    .and_then(|n| n.into_iter().next())
                    .map(|n| n.trim_start_matches('/').to_owned())
                    .unwrap_or_default(),
                image: c.image.unwrap_or_default(),
                state: c.state.map(|s| s.to_string()).unwrap_or_default(),
                status: c.status.unwrap_or_default(),
                created: c.created.unwrap_or_default(),
                labels: c.labels.unwrap_or_default().into_iter().collect(),
            })
            .collect())
    }

    /// Running and stopped container counts.
    pub async fn counts(&self) -> Result<ContainerCounts, RpcError> {
        let all = self.list_containers(true).await?;
        let running = all.iter().filter(|c| c.state == "running").count() as u64;
        Ok(ContainerCounts {
            running,
            stopped: all.len() as u64 - running,
        })
    }
}

/// A read from the engine went past the cap: -32003 naming the cap. The engine is fine, so the
/// client is kept.
fn too_large(t: transport::BodyTooLarge) -> RpcError {
    RpcError::new(
        code::DOCKER,
        format!(
            "Docker's answer is larger than the agent's cap of {} bytes ({} MiB) for one read; narrow the request",
            t.cap,
            t.cap / (1024 * 1024)
        ),
    )
    .with_data(serde_json::json!({"reason": "docker_answer_too_large", "cap_bytes": t.cap}))
}

/// The engine does not answer: where it was looked for, why, and what to check (issue 13.8).
fn unavailable(endpoint: &Endpoint, e: &dyn std::fmt::Display) -> RpcError {
    let at = match endpoint {
        Endpoint::Unix(path) => format!("unix://{path}"),
        Endpoint::TcpTls { addr, .. } => addr.clone(),
        Endpoint::Refused(why) => why.clone(),
    };
    RpcError::new(
        code::DOCKER,
        format!(
            "Docker engine unavailable at {at}: {e}; check that dockerd runs on this host (`systemctl status docker`); the agent reconnects by itself"
        ),
    )
    .with_data(serde_json::json!({"reason": "docker_unavailable"}))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tcp_without_tls_is_refused() {
        assert!(matches!(
            Endpoint::parse(Some("tcp://10.0.0.1:2375"), false, None),
            Endpoint::Refused(_)
        ));
        assert!(matches!(
            Endpoint::parse(Some("tcp://10.0.0.1:2376"), true, Some("/certs".into())),
            Endpoint::TcpTls { .. }
        ));
        assert_eq!(
            Endpoint::parse(None, false, None),
            Endpoint::Unix("/var/run/docker.sock".into())
        );
        assert_eq!(
            Endpoint::parse(Some("unix:///run/d.sock"), false, None),
            Endpoint::Unix("/run/d.sock".into())
        );
        assert!(matches!(
            Endpoint::parse(Some("ssh://x"), false, None),
            Endpoint::Refused(_)
        ));
    }

    #[tokio::test]
    async fn missing_socket_is_a_docker_error() {
        let d = DockerClient::new(Endpoint::Unix("/nonexistent/docker.sock".into()));
        let e = d.list_containers(true).await.expect_err("no engine there");
        assert_eq!(e.code, code::DOCKER);
        let s = d.status().await;
        assert!(!s.available && s.error.is_some());
    }
}

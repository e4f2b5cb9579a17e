//! Canned answers: what a simulated agent returns instead of reading `/proc` and asking Docker.
//! Every answer has the shape of the real method's result type (`tomo_proto::methods`), and params
//! are parsed by the method's own params type, so a malformed call fails as it would on an agent.

use std::collections::BTreeMap;

use serde_json::Value;
use tomo_proto::handshake::HostFacts;
use tomo_proto::methods::{
    ContainerCounts, ContainerSummary, ContainersListParams, DockerStatus, HealthStatus, Metrics,
    NetworkRates, NoParams, Pong, SystemInfoResult, Usage,
};
use tomo_proto::rpc::RpcError;

/// The methods a simulated agent answers; others are refused with -32603 (`simulated`).
pub const METHODS: [&str; 4] = [
    "agent.ping",
    "system.info",
    "system.get_metrics",
    "docker.containers.list",
];

/// Answers shared by every simulated agent.
#[derive(Debug)]
pub struct Canned {
    containers: Value,
    counts: ContainerCounts,
}

impl Canned {
    /// Answers with `containers` running containers.
    pub fn new(containers: usize) -> Self {
        let list: Vec<ContainerSummary> = (0..containers)
            .map(|i| ContainerSummary {
                id: tomo_common::hex(&tomo_common::sha256(format!("sim-{i}").as_bytes())),
                name: format!("sim-app-{i}"),
                image: "tomo-test/busybox:latest".into(),
                state: "running".into(),
                status: "Up 2 hours".into(),
                created: 1_732_000_000 + i as i64,
                labels: BTreeMap::from([("tomo.sim".to_owned(), "1".to_owned())]),
            })
            .collect();
        Self {
            containers: serde_json::to_value(list).unwrap_or_default(),
            counts: ContainerCounts {
                running: containers as u64,
                stopped: 0,
            },
        }
    }

    /// The facts a simulated host reports.
    pub fn facts(hostname: &str) -> HostFacts {
        HostFacts {
            hostname: hostname.to_owned(),
            engine_id: None,
            docker_version: Some("27.3.1".into()),
            os: "Debian GNU/Linux 12 (bookworm)".into(),
            kernel: "6.1.0-26-amd64".into(),
            arch: "x86_64".into(),
            cpus: 4,
            memory_bytes: 8 << 30,
            agent_version: tomo_agent::VERSION.into(),
            clock_ms: None,
        }
    }

    fn docker() -> DockerStatus {
        DockerStatus {
            available: true,
            version: Some("27.3.1".into()),
            api_version: Some("1.47".into()),
            engine_id: None,
            error: None,
        }
    }

    /// A metrics sample taken now.
    pub fn metrics(&self) -> Metrics {
        let gib = 1u64 << 30;
        Metrics {
            sampled_at_ms: tomo_common::now_ms(),
            cpu_percent: 12.5,
            memory: Usage {
                used: 3 * gib,
                total: 8 * gib,
                percent: 37.5,
            },
            swap: Usage::default(),
            disks: vec![tomo_proto::methods::DiskUsage {
                device: "/dev/vda1".into(),
                mount: "/".into(),
                used: 20 * gib,
                total: 80 * gib,
                percent: 25.0,
            }],
            network: NetworkRates {
                rx_bytes_per_sec: 1200.0,
                tx_bytes_per_sec: 800.0,
            },
            load: [0.3, 0.2, 0.1],
            uptime_secs: 86_400,
            containers: Some(self.counts),
        }
    }

    /// The `health.status` of a simulated agent up for `uptime_secs`.
    pub fn health(uptime_secs: u64) -> HealthStatus {
        HealthStatus {
            status: "healthy".into(),
            uptime_secs,
            agent_version: tomo_agent::VERSION.into(),
            docker: Self::docker(),
        }
    }

    /// The answer to `method` with raw `params` on host `hostname`.
    pub fn answer(
        &self,
        hostname: &str,
        method: &str,
        params: Option<&str>,
    ) -> Result<Value, RpcError> {
        let raw = params.unwrap_or("{}");
        let no_params = || parse::<NoParams>(raw).map(drop);
        let value = match method {
            "agent.ping" => {
                no_params()?;
                to_value(Pong {
                    pong: true,
                    agent_version: tomo_agent::VERSION.into(),
                    time_ms: tomo_common::now_ms(),
                })
            }
            "system.info" => {
                no_params()?;
                let f = Self::facts(hostname);
                to_value(SystemInfoResult {
                    hostname: f.hostname,
                    os: f.os,
                    kernel: f.kernel,
                    arch: f.arch,
                    uptime_secs: 86_400,
                    cpus: f.cpus,
                    memory_bytes: f.memory_bytes,
                    agent_version: f.agent_version,
                    docker: Self::docker(),
                })
            }
            "system.get_metrics" => {
                no_params()?;
                to_value(self.metrics())
            }
            "docker.containers.list" => {
                parse::<ContainersListParams>(raw)?;
                self.containers.clone()
            }
            other => {
                return Err(RpcError::internal(format!(
                    "{other} is not simulated (the simulator answers {})",
                    METHODS.join(", ")
                ))
                .with_data(serde_json::json!({"reason": "simulated"})));
            }
        };
        Ok(value)
    }
}

fn to_value(v: impl serde::Serialize) -> Value {
    serde_json::to_value(v).unwrap_or_default()
}

fn parse<P: serde::de::DeserializeOwned>(raw: &str) -> Result<P, RpcError> {
    serde_json::from_str(raw).map_err(|e| {
        RpcError::invalid_params(e.to_string()).with_data(serde_json::json!({"param": "."}))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tomo_proto::methods::Method;

    #[test]
    fn answers_have_the_shape_of_the_real_results() {
        let c = Canned::new(5);
        let ping = c.answer("h", "agent.ping", None).expect("ping");
        assert!(serde_json::from_value::<Pong>(ping).is_ok_and(|p| p.pong));
        let info = c.answer("h", "system.info", Some("{}")).expect("info");
        let info: SystemInfoResult = serde_json::from_value(info).expect("info shape");
        assert_eq!(info.hostname, "h");
        let m = c.answer("h", "system.get_metrics", None).expect("metrics");
        assert!(serde_json::from_value::<Metrics>(m).is_ok());
        let list = c
            .answer("h", "docker.containers.list", Some(r#"{"all":true}"#))
            .expect("list");
        let list: <tomo_proto::methods::DockerContainersList as Method>::Result =
            serde_json::from_value(list).expect("list shape");
        assert_eq!(list.len(), 5);
    }

    #[test]
    fn bad_params_and_other_methods_are_errors() {
        let c = Canned::new(1);
        let e = c
            .answer("h", "docker.containers.list", Some(r#"{"all":"yes"}"#))
            .expect_err("bad params");
        assert_eq!(e.code, tomo_proto::rpc::code::INVALID_PARAMS);
        let e = c
            .answer("h", "agent.ping", Some(r#"{"x":1}"#))
            .expect_err("unknown param");
        assert_eq!(e.code, tomo_proto::rpc::code::INVALID_PARAMS);
        let e = c
            .answer("h", "docker.containers.run", Some("{}"))
            .expect_err("not simulated");
        assert_eq!(e.code, tomo_proto::rpc::code::INTERNAL_ERROR);
    }
}

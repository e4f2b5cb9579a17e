//! The methods this agent serves, and the table they form.

use std::sync::Arc;

use tomo_proto::methods::{
    AgentPing, ContainerSummary, ContainersListParams, DockerContainersList, Metrics, NoParams,
    Pong, SystemGetMetrics, SystemInfo, SystemInfoResult,
};
use tomo_proto::rpc::RpcError;

use crate::Shared;
use crate::dispatch::Dispatcher;

/// Every method of the agent. Adding a method means adding its type in `tomo-proto` and a line here.
pub fn table() -> Dispatcher {
    Dispatcher::new()
        .register(AgentPing, ping)
        .register(SystemInfo, system_info)
        .register(SystemGetMetrics, get_metrics)
        .register(DockerContainersList, containers_list)
}

async fn ping(_: Arc<Shared>, _: NoParams) -> Result<Pong, RpcError> {
    Ok(Pong {
        pong: true,
        agent_version: crate::VERSION.into(),
        time_ms: tomo_common::now_ms(),
    })
}

async fn system_info(s: Arc<Shared>, _: NoParams) -> Result<SystemInfoResult, RpcError> {
    let f = &s.facts;
    Ok(SystemInfoResult {
        hostname: f.hostname.clone(),
        os: f.os.clone(),
        kernel: f.kernel.clone(),
        arch: f.arch.clone(),
        uptime_secs: crate::host::uptime_secs(),
        cpus: f.cpus,
        memory_bytes: f.memory_bytes,
        agent_version: crate::VERSION.into(),
        docker: s.samples.docker.borrow().clone(),
    })
}

async fn get_metrics(s: Arc<Shared>, _: NoParams) -> Result<Metrics, RpcError> {
    Ok(s.samples.metrics.borrow().clone())
}

async fn containers_list(
    s: Arc<Shared>,
    p: ContainersListParams,
) -> Result<Vec<ContainerSummary>, RpcError> {
    s.docker.list_containers(p.all).await
}

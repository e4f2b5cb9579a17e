//! The methods this agent serves, and the table they form.

use tomo_proto::methods::{
    AgentPing, ContainerSummary, ContainersListParams, DockerContainersGet, DockerContainersList,
    DockerContainersRun, DockerContainersUpdate, Metrics, NoParams, Pong, SystemExec,
    SystemGetMetrics, SystemInfo, SystemInfoResult, SystemPreflightCheck, SystemPrepareVolumes,
};
use tomo_proto::rpc::RpcError;

use crate::dispatch::{Ctx, Dispatcher};
use crate::docker::containers;

/// Every method of the agent. Adding a method means adding its type in `tomo-proto` and a line here.
pub fn table() -> Dispatcher {
    Dispatcher::new()
        .register(AgentPing, ping)
        .register(SystemInfo, system_info)
        .register(SystemGetMetrics, get_metrics)
        .register(SystemExec, crate::system::exec)
        .register(SystemPreflightCheck, crate::system::preflight)
        .register(SystemPrepareVolumes, crate::system::prepare_volumes)
        .register(DockerContainersList, containers_list)
        .register(DockerContainersGet, containers::get)
        .register(DockerContainersRun, containers::run)
        .register(DockerContainersUpdate, containers::update)
}

async fn ping(_: Ctx, _: NoParams) -> Result<Pong, RpcError> {
    Ok(Pong {
        pong: true,
        agent_version: crate::VERSION.into(),
        time_ms: tomo_common::now_ms(),
    })
}

async fn system_info(ctx: Ctx, _: NoParams) -> Result<SystemInfoResult, RpcError> {
    let s = &ctx.shared;
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

async fn get_metrics(ctx: Ctx, _: NoParams) -> Result<Metrics, RpcError> {
    Ok(ctx.shared.samples.metrics.borrow().clone())
}

async fn containers_list(
    ctx: Ctx,
    p: ContainersListParams,
) -> Result<Vec<ContainerSummary>, RpcError> {
    ctx.shared.docker.list_containers(p.all).await
}

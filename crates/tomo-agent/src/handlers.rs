//! The methods this agent serves, and the table they form.

use std::time::Duration;

use tomo_proto::methods::*;
use tomo_proto::methods::{
    AgentPing, ContainerSummary, ContainersListParams, DockerContainersGet, DockerContainersList,
    DockerContainersRun, DockerContainersUpdate, Metrics, NoParams, Pong, SystemExec,
    SystemGetMetrics, SystemInfo, SystemInfoResult, SystemPreflightCheck, SystemPrepareVolumes,
};
use tomo_proto::rpc::RpcError;

use crate::dispatch::{Ctx, Dispatcher};
use crate::docker::{containers, ops};
use crate::stream::Input;

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
        .register(DockerImagesPull, crate::docker::images::pull_handler)
        .register(DockerContainersStart, ops::start)
        .register(DockerContainersStop, ops::stop)
        .register(DockerContainersRestart, ops::restart)
        .register(DockerContainersRemove, ops::remove)
        .register(DockerContainersLogs, ops::logs)
        .register(DockerContainersStats, ops::stats)
        .register(DockerContainersExec, ops::exec)
        .register(DockerImagesList, ops::images_list)
        .register(DockerImagesRemove, ops::images_remove)
        .register(DockerNetworksList, ops::networks_list)
        .register(DockerNetworksCreate, ops::networks_create)
        .register(DockerNetworksRemove, ops::networks_remove)
        .register(DockerVolumesList, ops::volumes_list)
        .register(DockerVolumesCreate, ops::volumes_create)
        .register(DockerVolumesRemove, ops::volumes_remove)
        .register(AgentUpdate, agent_update)
        .register(AgentRestart, agent_restart)
        .register(AgentRotateKey, agent_rotate_key)
        .register(StreamAcknowledge, stream_ack)
        .register(StreamClose, stream_close)
        .register(StreamWrite, stream_write)
        .register(StreamResize, stream_resize)
}

/// Push intervals `agent.update` accepts, seconds.
const PUSH_INTERVAL_RANGE: std::ops::RangeInclusive<u64> = 5..=3600;

async fn agent_update(ctx: Ctx, p: AgentSettingsPatch) -> Result<AgentSettings, RpcError> {
    let bad = |param: &str, msg: String| {
        RpcError::invalid_params(format!("{param}: {msg}"))
            .with_data(serde_json::json!({ "param": param }))
    };
    for (name, v) in [
        ("metrics_interval", p.metrics_interval),
        ("health_interval", p.health_interval),
    ] {
        if let Some(v) = v
            && !PUSH_INTERVAL_RANGE.contains(&v)
        {
            return Err(bad(name, "must be 5–3600 seconds".into()));
        }
    }
    if let Some(level) = &p.log_level {
        // Validated before anything changes: a bad level leaves the intervals alone too.
        if !tomo_common::logging::LEVELS.contains(&level.as_str()) {
            return Err(bad(
                "log_level",
                format!("must be one of {}", tomo_common::logging::LEVELS.join(", ")),
            ));
        }
        tomo_common::logging::set_level(level).map_err(RpcError::internal)?;
        tracing::info!(level, "log level changed by agent.update");
    }
    ctx.shared.settings.send_modify(|s| {
        if let Some(m) = p.metrics_interval {
            s.metrics_push = Duration::from_secs(m);
        }
        if let Some(h) = p.health_interval {
            s.health_push = Duration::from_secs(h);
        }
    });
    let now = *ctx.shared.settings.borrow();
    Ok(AgentSettings {
        log_level: tomo_common::logging::level(),
        metrics_interval: now.metrics_push.as_secs(),
        health_interval: now.health_push.as_secs(),
    })
}

async fn agent_restart(ctx: Ctx, _: NoParams) -> Result<Restarting, RpcError> {
    // The answer goes out first; then the session closes and the agent starts over.
    let replied = ctx.replied.clone();
    let restart = ctx.shared.restart.clone();
    tokio::spawn(async move {
        replied.cancelled().await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        restart.cancel();
    });
    Ok(Restarting { restarting: true })
}

async fn agent_rotate_key(ctx: Ctx, _: NoParams) -> Result<RotatingKey, RpcError> {
    // A rotation already in flight is reused: only one next key at a time.
    let store = &ctx.shared.identity;
    let next = match store.load_next().map_err(RpcError::internal)? {
        Some(k) => k,
        None => {
            let k = crate::identity::Keys::generate();
            store.save_next(&k).map_err(RpcError::internal)?;
            k
        }
    };
    tracing::info!("key rotation started by the control plane");
    // Answer first; then reconnect, offering the new key.
    let replied = ctx.replied.clone();
    let restart = ctx.shared.restart.clone();
    tokio::spawn(async move {
        replied.cancelled().await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        restart.cancel();
    });
    Ok(RotatingKey {
        rotating: true,
        new_public_key: next.public_key_b64(),
    })
}

async fn stream_ack(ctx: Ctx, p: StreamRef) -> Result<StreamState, RpcError> {
    let seq = p.seq.ok_or_else(|| {
        RpcError::invalid_params("seq: missing").with_data(serde_json::json!({"param": "seq"}))
    })?;
    Ok(StreamState {
        open: ctx.streams.ack(&p.stream, seq),
    })
}

async fn stream_close(ctx: Ctx, p: StreamRef) -> Result<StreamState, RpcError> {
    Ok(StreamState {
        open: ctx.streams.close(&p.stream),
    })
}

async fn stream_write(ctx: Ctx, p: StreamWriteParams) -> Result<StreamState, RpcError> {
    let bytes = tomo_common::unb64(&p.data_b64).ok_or_else(|| {
        RpcError::invalid_params("data_b64: not valid base64")
            .with_data(serde_json::json!({"param": "data_b64"}))
    })?;
    if bytes.len() > tomo_proto::methods::STREAM_CHUNK_BYTES {
        return Err(
            RpcError::invalid_params("data_b64: at most 32 KiB per write")
                .with_data(serde_json::json!({"param": "data_b64"})),
        );
    }
    let mut open = true;
    if !bytes.is_empty() || !p.eof {
        open = ctx.streams.input(&p.stream, Input::Data(bytes)).await?;
    }
    if p.eof && open {
        open = ctx.streams.input(&p.stream, Input::Eof).await?;
    }
    Ok(StreamState { open })
}

async fn stream_resize(ctx: Ctx, p: StreamResizeParams) -> Result<StreamState, RpcError> {
    if p.rows == 0 || p.cols == 0 {
        return Err(RpcError::invalid_params("rows and cols must be positive")
            .with_data(serde_json::json!({"param": "rows"})));
    }
    let input = Input::Resize {
        rows: p.rows,
        cols: p.cols,
    };
    Ok(StreamState {
        open: ctx.streams.input(&p.stream, input).await?,
    })
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

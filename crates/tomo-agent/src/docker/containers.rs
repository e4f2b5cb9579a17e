//! `docker.containers.get`, `run` and `update`: typed parameters to and from Docker's container
//! configuration, secret redaction, and the recreate-with-rollback update.

use tomo_proto::methods::{
    ContainerDetails, ContainerRef, RunParams, RunResult, UpdateParams, UpdateResult,
};
use tomo_proto::rpc::RpcError;

use crate::dispatch::Ctx;

pub async fn get(_ctx: Ctx, _p: ContainerRef) -> Result<ContainerDetails, RpcError> {
    Err(RpcError::internal("docker.containers.get: not built yet"))
}

pub async fn run(_ctx: Ctx, _p: RunParams) -> Result<RunResult, RpcError> {
    Err(RpcError::internal("docker.containers.run: not built yet"))
}

pub async fn update(_ctx: Ctx, _p: UpdateParams) -> Result<UpdateResult, RpcError> {
    Err(RpcError::internal(
        "docker.containers.update: not built yet",
    ))
}

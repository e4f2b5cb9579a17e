//! `system.exec`, `system.preflight_check` and `system.prepare_volumes`.

use tomo_proto::methods::{
    ExecOutput, PreflightParams, PreflightResult, PrepareVolumesParams, PreparedVolumes,
    SystemExecParams,
};
use tomo_proto::rpc::RpcError;

use crate::dispatch::Ctx;

pub async fn exec(_ctx: Ctx, _p: SystemExecParams) -> Result<ExecOutput, RpcError> {
    Err(RpcError::internal("system.exec: not built yet"))
}

pub async fn preflight(_ctx: Ctx, _p: PreflightParams) -> Result<PreflightResult, RpcError> {
    Err(RpcError::internal("system.preflight_check: not built yet"))
}

pub async fn prepare_volumes(
    _ctx: Ctx,
    _p: PrepareVolumesParams,
) -> Result<PreparedVolumes, RpcError> {
    Err(RpcError::internal("system.prepare_volumes: not built yet"))
}

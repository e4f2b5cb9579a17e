//! The one call pipeline (issue 14): every surface that calls a host — the REST host routes,
//! `POST /hosts/{host}/rpc`, `/hosts/{host}/stream`, `/fleet/rpc`, the MCP tools, and whatever
//! comes next — admits its call through [`admit`], then runs what it admitted. A surface only
//! parses its own envelope and renders the answer; the rules are here, once, in this order:
//!
//! 1. **Envelope**: params absent, an object or an array (an object for a stream), and method
//!    and params within the agent's frame limit. First: it needs nothing, and a frame the agent
//!    would drop its session over (every call of that session lost) must go no further.
//! 2. **Known method**: deny by default. A method the protocol does not have has no level to
//!    check nor an approval to wait for, so it is never forwarded.
//! 3. **Role**: the token's role reaches the method's level. Before anything about hosts, so
//!    that a refusal tells nothing of which hosts exist.
//! 4. **Params**: read as the method's own params type (`tomo_proto::methods::Spec`), with the
//!    agent's own -32602 naming the parameter at fault, and written back from that type: what
//!    goes on is exactly what was checked, and malformed params never wait for a human nor
//!    reach a host (an offline one included). After the role, so that a caller without the
//!    right learns nothing from them.
//! 5. **Mode**: what the surface may do with the method: a fan-out reads and answers at once
//!    (no command to many hosts at once, no stream); the timeout within 1 ms–600 s.
//! 6. **Scope**: the host, through [`resolve`] only (the fan-out's, through
//!    [`fan_out_targets`]); a host outside the token's scope answers as one that does not exist.
//! 7. **Stream owner**: `stream.*` acts only on a stream the caller opened; it needs the host.
//! 8. **Approval**: last before the host, after every refusal, so that only a call that would
//!    run becomes a pending action (a refused call never waits for a human, nor is run once one
//!    approves it).
//! 9. **Hub**: [`Admitted::call`], [`Admitted::call_stream`] or [`Admitted::fan_out`] sign and
//!    send it, with the caller's identity (each agent checks signature, audience, freshness and
//!    role again, and audits it).
//!
//! An approved action runs through the same stages as the token that asked (`Mode::Approved`:
//! all but the approval), so a token revoked, narrowed or lowered meanwhile is refused.
//!
//! The MCP tool rate is not a stage: MCP counts every tool call, most of which reach no host,
//! right after the tool's role (`mcp.rs`).

use std::time::Duration;

use serde_json::Value;
use tomo_proto::methods::{self, Level, Method as _};
use tomo_proto::rpc::{Outcome, Response, RpcError};

use super::hosts::{by_id, fan_out_targets, resolve};
use super::{Principal, Refusal};
use crate::AppState;
use crate::agents::hub::{CallError, Caller, StreamHandle};
use crate::approvals;
use crate::store::HostRecord;

/// Longest timeout a caller may ask for.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(600);
/// Pulls, runs, updates and execs may take minutes: their timeout when the caller names none.
const LONG_CALL: Duration = Duration::from_secs(600);
const LONG_METHODS: [&str; 5] = [
    methods::DockerImagesPull::NAME,
    methods::DockerContainersRun::NAME,
    methods::DockerContainersUpdate::NAME,
    methods::DockerContainersExec::NAME,
    methods::SystemExec::NAME,
];
/// Read methods that may open a stream: never fanned out.
const MAY_STREAM: [&str; 2] = [
    methods::DockerContainersLogs::NAME,
    methods::DockerContainersStats::NAME,
];
/// Hosts per task of a fan-out.
const CHUNK: usize = 256;

/// How the surface will run the call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// One host, one answer.
    Unary,
    /// One host; the answer may open a stream (params are an object).
    Stream,
    /// The same read to many hosts at once.
    FanOut,
    /// An approved action, run as the token that asked for it: every stage again (the token,
    /// its role and scope may have changed while a human looked), but the approval, which was
    /// just given.
    Approved,
}

/// Which hosts the call is for.
#[derive(Debug, Clone, Copy)]
pub enum Hosts<'a> {
    /// One host, by id, hostname or unique id prefix ([`resolve`]).
    Key(&'a str),
    /// One host by its exact id only (an approved action: a hostname must not capture it).
    Id(&'a str),
    /// A fan-out's: these exact ids, or (`None`) every online host in scope.
    Fleet(Option<&'a [String]>),
}

/// A call as a surface asks for it.
#[derive(Debug)]
pub struct CallRequest<'a> {
    pub hosts: Hosts<'a>,
    pub method: &'a str,
    pub params: Option<Value>,
    /// `None`: the method's usual timeout.
    pub timeout: Option<Duration>,
    pub mode: Mode,
}

/// What the pipeline answers.
#[derive(Debug)]
pub enum Admission {
    /// Every rule holds: run it.
    Run(Box<Admitted>),
    /// The call became this pending action, waiting for a human (the approval flow).
    Pending(Value),
}

/// A call that passed every stage, ready for the hub.
#[derive(Debug)]
pub struct Admitted {
    pub method: String,
    pub params: Option<Value>,
    pub timeout: Duration,
    pub caller: Caller,
    pub target: Target,
}

/// The host(s) an admitted call goes to.
#[derive(Debug)]
pub enum Target {
    One(Box<HostRecord>),
    Fleet(Vec<String>),
}

/// Runs the stages of the module's list, in order, and stops at the first refusal.
pub async fn admit(
    state: &AppState,
    who: &Principal,
    req: CallRequest<'_>,
) -> Result<Admission, Refusal> {
    let CallRequest {
        hosts,
        method,
        params,
        timeout,
        mode,
    } = req;
    // 1. Envelope.
    if method.is_empty() {
        return Err(Refusal::BadRequest("method must not be empty".into()));
    }
    match (&params, mode) {
        (None | Some(Value::Object(_)), _) => {}
        (Some(Value::Array(_)), Mode::Unary | Mode::FanOut | Mode::Approved) => {}
        (Some(_), Mode::Stream) => {
            return Err(Refusal::BadRequest("params must be an object".into()));
        }
        (Some(_), _) => {
            return Err(Refusal::BadRequest(
                "params must be an object or an array".into(),
            ));
        }
    }
    check_size(method, params.as_ref())?;
    // 2. Known method.
    let spec = methods::spec(method).ok_or_else(|| Refusal::UnknownMethod(method.to_owned()))?;
    let level = spec.level;
    // 3. Role.
    who.require(level)?;
    // 4. Params. Measured again as written back: a struct given as an array, or defaults
    // filled in, makes them longer (the review of this stage found a 2.4x growth past the
    // agent's frame limit, which would drop the session and every call on it).
    let params = Some(
        spec.canonical_params(params)
            .map_err(Refusal::InvalidParams)?,
    );
    check_size(method, params.as_ref())?;
    // 5. Mode.
    if mode == Mode::FanOut
        && (level != Level::Read || method.starts_with("stream.") || MAY_STREAM.contains(&method))
    {
        return Err(Refusal::BadRequest(format!(
            "{method:?} cannot be fanned out: only read methods that answer at once"
        )));
    }
    let timeout = timeout.unwrap_or_else(|| default_timeout(state, method));
    if timeout.is_zero() || timeout > MAX_TIMEOUT {
        return Err(Refusal::BadRequest(
            "timeout_ms must be between 1 and 600000".into(),
        ));
    }
    // 6. Scope.
    let target = match (hosts, mode) {
        (Hosts::Id(id), Mode::Approved) => Target::One(Box::new(by_id(state, who, id).await?)),
        (Hosts::Key(key), Mode::Unary | Mode::Stream | Mode::Approved) => {
            Target::One(Box::new(resolve(state, who, key).await?))
        }
        (Hosts::Fleet(named), Mode::FanOut) => {
            Target::Fleet(fan_out_targets(state, who, named).await?)
        }
        // A surface bug, not a caller's: said plainly rather than guessed at.
        _ => {
            return Err(Refusal::BadRequest(
                "a fan-out names its hosts as a fleet, any other call one host".into(),
            ));
        }
    };
    // 7. Stream owner (a fan-out never reaches here with `stream.*`).
    if let Target::One(h) = &target {
        check_stream_owner(state, who, &h.id, method, params.as_ref())?;
    }
    // 8. Approval (read methods, the only ones a fan-out sends, never wait for one; an approved
    // action has its approval).
    if let Target::One(h) = &target
        && mode != Mode::Approved
        && let approvals::Gate::Pending(action) =
            approvals::gate(state, who, h, method, params.as_ref()).await?
    {
        return Ok(Admission::Pending(action));
    }
    Ok(Admission::Run(Box::new(Admitted {
        method: method.to_owned(),
        params,
        timeout,
        caller: who.caller(),
        target,
    })))
}

impl Admitted {
    /// The one host of a unary or stream call.
    pub fn host(&self) -> Option<&HostRecord> {
        match &self.target {
            Target::One(h) => Some(h),
            Target::Fleet(_) => None,
        }
    }

    /// The hub stage: the call to its one host, and the agent's answer.
    pub async fn call(&self, state: &AppState) -> Result<Response, CallError> {
        let host = self.one()?;
        state
            .hub
            .call(
                &host.id,
                &self.method,
                self.params.as_ref(),
                &self.caller,
                self.timeout,
            )
            .await
    }

    /// [`Admitted::call`] of a method known by its type: the answer is read as the method's
    /// result type. A host is untrusted: an answer of another shape is an error (-32603,
    /// `data.reason = "bad_answer"`), never passed on as if it were the protocol's.
    pub async fn call_as<M: methods::Method>(
        &self,
        state: &AppState,
    ) -> Result<Result<M::Result, RpcError>, CallError> {
        if self.method != M::NAME {
            // A surface bug (it admitted one method and runs another): refused, not guessed.
            return Ok(Err(RpcError::internal(format!(
                "{} was admitted and {} asked for",
                self.method,
                M::NAME
            ))));
        }
        Ok(match self.call(state).await?.outcome {
            Outcome::Result(v) => read_result::<M>(v),
            Outcome::Error(e) => Err(e),
        })
    }

    /// The hub stage: like [`Admitted::call`], with the stream the answer opens, if any.
    pub async fn call_stream(
        &self,
        state: &AppState,
    ) -> Result<(Response, Option<StreamHandle>), CallError> {
        let host = self.one()?;
        state
            .hub
            .call_stream(
                &host.id,
                &self.method,
                self.params.as_ref(),
                &self.caller,
                self.timeout,
            )
            .await
    }

    /// The hub stage of a fan-out: the call to every target at once; each host's answer (or
    /// failure), in the targets' order. Calls are signed as they are made, in tasks of
    /// `CHUNK` (256) hosts, so that every worker thread signs, not only the request's.
    pub async fn fan_out(
        self,
        state: &std::sync::Arc<AppState>,
    ) -> Vec<(String, Result<Response, CallError>)> {
        let targets = match self.target {
            Target::Fleet(ids) => ids,
            Target::One(h) => vec![h.id.clone()],
        };
        let mut tasks = Vec::with_capacity(targets.len().div_ceil(CHUNK));
        for chunk in targets.chunks(CHUNK) {
            let (state, caller, chunk) = (
                std::sync::Arc::clone(state),
                self.caller.clone(),
                chunk.to_vec(),
            );
            let (method, params, timeout) =
                (self.method.clone(), self.params.clone(), self.timeout);
            let ids = chunk.clone();
            let task = tokio::spawn(async move {
                let calls = chunk.into_iter().map(|host_id| {
                    let (state, caller, method, params) = (&state, &caller, &method, &params);
                    async move {
                        let answer = state
                            .hub
                            .call(&host_id, method, params.as_ref(), caller, timeout)
                            .await;
                        (host_id, answer)
                    }
                });
                futures_util::future::join_all(calls).await
            });
            tasks.push((ids, task));
        }
        let mut answers = Vec::with_capacity(targets.len());
        for (ids, task) in tasks {
            match task.await {
                Ok(a) => answers.extend(a),
                // A panic in one task: its hosts are answered as lost, the others stand.
                Err(e) => {
                    tracing::error!(error = %e, "a fan-out task failed");
                    answers.extend(ids.into_iter().map(|id| {
                        let lost = CallError::ConnectionLost(id.clone());
                        (id, Err(lost))
                    }));
                }
            }
        }
        answers
    }

    fn one(&self) -> Result<&HostRecord, CallError> {
        self.host()
            .ok_or_else(|| CallError::ConnectionLost("(a fan-out run as one call)".into()))
    }
}

/// A host's result read as method `M`'s result type.
pub fn read_result<M: methods::Method>(result: Value) -> Result<M::Result, RpcError> {
    serde_json::from_value(result).map_err(|e| {
        RpcError::new(
            tomo_proto::rpc::code::INTERNAL_ERROR,
            format!(
                "the host answered {} with a result that is not the protocol's: {e}",
                M::NAME
            ),
        )
        .with_data(serde_json::json!({"reason": "bad_answer"}))
    })
}

/// The agent drops a session whose frame exceeds its limit (every call of that session is then
/// lost): a call whose method and params could not fit is refused.
pub fn check_size(method: &str, params: Option<&Value>) -> Result<(), Refusal> {
    let size = params.map(|p| p.to_string().len()).unwrap_or(0) + method.len();
    if size > tomo_proto::MAX_SERVER_MESSAGE_BYTES - 4096 {
        return Err(Refusal::TooLarge);
    }
    Ok(())
}

/// The timeout of a call whose caller named none.
fn default_timeout(state: &AppState, method: &str) -> Duration {
    if LONG_METHODS.contains(&method) {
        LONG_CALL
    } else {
        state.config.call_timeout
    }
}

/// `stream.*` requests are for the caller's own streams only (whatever their role), with
/// params that name the stream.
fn check_stream_owner(
    state: &AppState,
    who: &Principal,
    host_id: &str,
    method: &str,
    params: Option<&Value>,
) -> Result<(), Refusal> {
    if !method.starts_with("stream.") {
        return Ok(());
    }
    let stream = params
        .and_then(|p| p.as_object())
        .and_then(|p| p.get("stream"))
        .and_then(Value::as_str)
        .ok_or_else(|| {
            Refusal::BadRequest("stream.* params must be an object naming the stream".into())
        })?;
    if state.hub.stream_owner(host_id, stream).as_deref() != Some(who.stream_owner().as_str()) {
        return Err(Refusal::NotStreamOwner(stream.to_owned()));
    }
    Ok(())
}

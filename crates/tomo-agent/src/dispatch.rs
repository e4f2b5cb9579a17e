//! The closed table of methods the agent serves.
//!
//! Each entry is built from a [`Method`] type, so it has a name, a level and typed params; there is
//! no other way in. An unknown method is -32601 before anything else looks at the request; params
//! are parsed only by the entry's own type, and a failure names the offending parameter (-32602).

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use serde_json::Value;
use tomo_proto::methods::{Deadline, Level, Method};
use tomo_proto::rpc::RpcError;

use tokio_util::sync::CancellationToken;

use crate::Shared;
use crate::stream::{Input, StreamSink, Streams};

type BoxFuture = Pin<Box<dyn Future<Output = Result<Value, RpcError>> + Send>>;
type Handler = Box<dyn Fn(Ctx, &str) -> BoxFuture + Send + Sync>;

/// What a handler gets besides its params: the agent's state and the request's session.
#[derive(Debug, Clone)]
pub struct Ctx {
    pub shared: Arc<Shared>,
    pub streams: Arc<Streams>,
    /// Cancelled once this request's answer is queued for sending.
    pub replied: CancellationToken,
}

impl Ctx {
    /// Opens a stream announced by this request's answer.
    pub fn open_stream(
        &self,
        input: bool,
    ) -> Result<
        (
            tomo_proto::methods::StreamOpened,
            StreamSink,
            Option<tokio::sync::mpsc::Receiver<Input>>,
        ),
        RpcError,
    > {
        self.streams.open(self.replied.clone(), input)
    }
}

struct Entry {
    level: Level,
    deadline: Deadline,
    handler: Handler,
}

/// Method name → handler, fixed once built.
pub struct Dispatcher {
    table: HashMap<&'static str, Entry>,
}

impl std::fmt::Debug for Dispatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut names: Vec<_> = self.table.keys().collect();
        names.sort();
        f.debug_struct("Dispatcher")
            .field("methods", &names)
            .finish()
    }
}

impl Dispatcher {
    /// An empty table; see [`Dispatcher::register`].
    pub fn new() -> Self {
        Self {
            table: HashMap::new(),
        }
    }

    /// Adds method `M`, served by `f`. Registering a name twice is a programming error.
    pub fn register<M, F, Fut>(mut self, _method: M, f: F) -> Self
    where
        M: Method,
        F: Fn(Ctx, M::Params) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<M::Result, RpcError>> + Send + 'static,
    {
        let f = Arc::new(f);
        let handler: Handler = Box::new(move |ctx, raw| {
            let params = parse_params::<M::Params>(raw);
            let f = Arc::clone(&f);
            Box::pin(async move {
                let result = f(ctx, params?).await?;
                serde_json::to_value(result).map_err(RpcError::internal)
            })
        });
        let previous = self.table.insert(
            M::NAME,
            Entry {
                level: M::LEVEL,
                deadline: M::DEADLINE,
                handler,
            },
        );
        assert!(previous.is_none(), "method {} registered twice", M::NAME);
        self
    }

    /// The level of a method, `None` when the agent does not serve it.
    pub fn level(&self, method: &str) -> Option<Level> {
        self.table.get(method).map(|e| e.level)
    }

    /// How long a call of `method` may run, `None` when the agent does not serve it.
    pub fn deadline(&self, method: &str) -> Option<Deadline> {
        self.table.get(method).map(|e| e.deadline)
    }

    /// Names of all methods, sorted.
    pub fn methods(&self) -> Vec<&'static str> {
        let mut v: Vec<_> = self.table.keys().copied().collect();
        v.sort_unstable();
        v
    }

    /// Runs `method` with its raw params (`None` when absent).
    pub fn call(&self, ctx: Ctx, method: &str, params: Option<&str>) -> BoxFuture {
        match self.table.get(method) {
            Some(entry) => (entry.handler)(ctx, params.unwrap_or("{}")),
            None => {
                let e = RpcError::method_not_found(method);
                Box::pin(async move { Err(e) })
            }
        }
    }
}

impl Default for Dispatcher {
    fn default() -> Self {
        Self::new()
    }
}

/// Parses params, naming the parameter at fault (as the control plane does before it sends).
fn parse_params<P: serde::de::DeserializeOwned>(raw: &str) -> Result<P, RpcError> {
    let mut de = serde_json::Deserializer::from_str(raw);
    tomo_proto::methods::read_params(&mut de)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tomo_proto::methods::ContainersListParams;

    #[test]
    fn the_agent_serves_exactly_the_protocol_methods() {
        let mut declared: Vec<_> = tomo_proto::methods::ALL.iter().map(|s| s.name).collect();
        declared.sort_unstable();
        let table = crate::handlers::table();
        assert_eq!(table.methods(), declared);
        for spec in tomo_proto::methods::ALL {
            assert_eq!(table.level(spec.name), Some(spec.level), "{}", spec.name);
        }
    }

    /// docs/protocol.md's "Deadlines" table is the agent's: one row per method, as served.
    #[test]
    fn the_documented_deadlines_are_the_agents() {
        let doc = include_str!("../../../docs/protocol.md");
        let table = crate::handlers::table();
        for name in table.methods() {
            let row = match table.deadline(name).expect("served") {
                Deadline::Cut(s) => format!("| `{name}` | {s} s |"),
                Deadline::Whole(s) => format!("| `{name}` | {s} s, not cut at the wait |"),
            };
            assert!(doc.contains(&row), "docs/protocol.md lacks {row}");
        }
    }

    #[test]
    fn a_deadline_is_cut_to_the_wait_unless_whole() {
        use std::time::Duration;
        assert_eq!(Deadline::Cut(30).limit(None), Duration::from_secs(30));
        assert_eq!(
            Deadline::Cut(30).limit(Some(1500)),
            Duration::from_millis(1500)
        );
        assert_eq!(
            Deadline::Cut(30).limit(Some(60_000)),
            Duration::from_secs(30)
        );
        assert_eq!(
            Deadline::Whole(900).limit(Some(1500)),
            Duration::from_secs(900)
        );
    }

    #[test]
    fn params_errors_name_the_parameter() {
        let e = parse_params::<ContainersListParams>(r#"{"all":"yes"}"#).expect_err("bad type");
        assert_eq!(e.code, tomo_proto::rpc::code::INVALID_PARAMS);
        assert!(e.message.contains("all"), "{}", e.message);
        let e = parse_params::<ContainersListParams>(r#"{"al":true}"#).expect_err("unknown field");
        assert!(e.message.contains("al"), "{}", e.message);
        assert!(parse_params::<ContainersListParams>("{}").is_ok());
        assert!(parse_params::<ContainersListParams>("[true]").is_ok_and(|p| p.all));
    }
}

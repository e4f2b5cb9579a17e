//! Forwards the engine's events (`docker events`) to the control plane as `docker.event`
//! notifications while a session is up. Events go through the session's bounded queue: when the
//! control plane is slow, reading from Docker pauses instead of buffering. Events that happen
//! while no session is up are not replayed.

use std::sync::Arc;
use std::time::Duration;

use bollard::query_parameters::EventsOptionsBuilder;
use futures_util::StreamExt as _;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tomo_proto::methods::{DOCKER_EVENT, DockerEvent};
use tomo_proto::rpc::{OutgoingNotification, V2};

use super::DockerClient;
use crate::stream::Outgoing;

/// Pause before subscribing again after the engine went away.
const RETRY: Duration = Duration::from_secs(2);

/// Maps an engine event, redacting secret-looking attributes (labels may carry credentials).
pub fn convert(m: bollard::models::EventMessage) -> DockerEvent {
    let actor = m.actor.unwrap_or_default();
    DockerEvent {
        time_nanos: m
            .time_nano
            .or(m.time.map(|t| t.saturating_mul(1_000_000_000)))
            .unwrap_or(0),
        kind: m.typ.map(|t| t.to_string()).unwrap_or_default(),
        action: m.action.unwrap_or_default(),
        id: actor.id.unwrap_or_default(),
        attributes: actor
            .attributes
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| {
                let v = redact_attribute(&k, v);
                (k, v)
            })
            .collect(),
    }
}

// Replaced by crate::redact once it lands (same rule as container environments).
fn redact_attribute(key: &str, value: String) -> String {
    let k = key.to_ascii_uppercase();
    if [
        "PASSWORD",
        "PASSWD",
        "SECRET",
        "TOKEN",
        "APIKEY",
        "API_KEY",
        "PRIVATE",
        "CREDENTIAL",
    ]
    .iter()
    .any(|s| k.contains(s))
    {
        "***".into()
    } else {
        value
    }
}

/// Runs until `stop`: subscribes, forwards, and subscribes again after an engine failure.
pub async fn forward(
    docker: Arc<DockerClient>,
    out: mpsc::Sender<Outgoing>,
    stop: CancellationToken,
) {
    loop {
        let client = tokio::select! {
            c = docker.client() => c,
            _ = stop.cancelled() => return,
        };
        if let Ok(client) = client {
            let since = tomo_common::now_secs().to_string();
            let opts = EventsOptionsBuilder::default().since(&since).build();
            let mut events = client.events(Some(opts));
            loop {
                let next = tokio::select! {
                    n = events.next() => n,
                    _ = stop.cancelled() => return,
                };
                match next {
                    Some(Ok(m)) => {
                        let text = serde_json::to_string(&OutgoingNotification {
                            jsonrpc: V2,
                            method: DOCKER_EVENT,
                            params: &convert(m),
                        })
                        .unwrap_or_default();
                        let sent = tokio::select! {
                            r = out.send(Outgoing { task: None, text }) => r.is_ok(),
                            _ = stop.cancelled() => return,
                        };
                        if !sent {
                            return;
                        }
                    }
                    Some(Err(e)) => {
                        let _ = docker.error(e);
                        break;
                    }
                    None => break,
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(RETRY) => {}
            _ = stop.cancelled() => return,
        }
    }
}

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
                let v = crate::redact::redact_value(&k, &v);
                (k, v)
            })
            .collect(),
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
            c = docker.streaming() => c,
            _ = stop.cancelled() => return,
        };
        if let Ok((client, meter)) = client {
            let since = tomo_common::now_secs().to_string();
            let opts = EventsOptionsBuilder::default().since(&since).build();
            let mut events = super::transport::metered(client.events(Some(opts)), meter);
            loop {
                let next = tokio::select! {
                    n = events.next() => n,
                    _ = stop.cancelled() => return,
                };
                match next {
                    Some(Ok(m)) => {
                        let text = tomo_proto::rpc::notification_text(DOCKER_EVENT, &convert(m));
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

#[cfg(test)]
mod tests {
    use super::*;
    use bollard::models::{EventActor, EventMessage, EventMessageTypeEnum};

    #[test]
    fn events_keep_their_fields_and_lose_their_secrets() {
        let m = EventMessage {
            typ: Some(EventMessageTypeEnum::CONTAINER),
            action: Some("start".into()),
            actor: Some(EventActor {
                id: Some("abc".into()),
                attributes: Some(
                    [
                        ("name".to_owned(), "web".to_owned()),
                        ("DB_PASSWORD".to_owned(), "hunter2".to_owned()),
                        ("repo".to_owned(), "https://u:pw@git.example/x".to_owned()),
                    ]
                    .into(),
                ),
            }),
            time: Some(2),
            time_nano: None,
            ..Default::default()
        };
        let e = convert(m);
        assert_eq!(
            (e.kind.as_str(), e.action.as_str(), e.id.as_str()),
            ("container", "start", "abc")
        );
        assert_eq!(e.time_nanos, 2_000_000_000);
        assert_eq!(e.attributes["name"], "web");
        assert_eq!(e.attributes["DB_PASSWORD"], "***");
        assert!(
            !e.attributes["repo"].contains("pw"),
            "{}",
            e.attributes["repo"]
        );
    }
}

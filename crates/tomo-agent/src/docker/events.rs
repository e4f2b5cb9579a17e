//! Forwards the engine's events (`docker events`) to the control plane as `docker.event`
//! notifications while a session is up. Events go through the session's bounded queue: when the
//! control plane is slow, reading from Docker pauses instead of buffering.
//!
//! Nothing is lost across an outage, within the engine's memory: the subscription starts at the
//! newest event the control plane holds (sent in the welcome), and after an engine failure again
//! at the last event read, with the engine's `since` (inclusive; the control plane drops the
//! copies). The engine keeps its last 256 events, and none from before its own restart.

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
        // `exec_start: <the command line>` can quote a secret (red team, 2026-12-03).
        action: crate::redact::params::redact_output(&m.action.unwrap_or_default()),
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

/// The engine's `since` for a Unix time in nanoseconds: `seconds.nanoseconds`.
fn since_text(nanos: i64) -> String {
    format!(
        "{}.{:09}",
        nanos.div_euclid(1_000_000_000),
        nanos.rem_euclid(1_000_000_000)
    )
}

/// Runs until `stop`: subscribes from `since_nanos` (now when `None`), forwards, and subscribes
/// again from the last event read after an engine failure.
pub async fn forward(
    docker: Arc<DockerClient>,
    out: mpsc::Sender<Outgoing>,
    mut since_nanos: Option<i64>,
    stop: CancellationToken,
) {
    loop {
        let client = tokio::select! {
            c = docker.streaming() => c,
            _ = stop.cancelled() => return,
        };
        if let Ok((client, meter)) = client {
            // Never from the future: one stored event with a wrong time would stop the replay.
            let now = tomo_common::now_ms().saturating_mul(1_000_000);
            let since = since_nanos.map_or_else(
                || tomo_common::now_secs().to_string(),
                |t| since_text(t.min(now)),
            );
            let opts = EventsOptionsBuilder::default().since(&since).build();
            let mut events = super::transport::metered(client.events(Some(opts)), meter);
            loop {
                let next = tokio::select! {
                    n = events.next() => n,
                    _ = stop.cancelled() => return,
                };
                match next {
                    Some(Ok(m)) => {
                        let event = convert(m);
                        if event.time_nanos > 0 {
                            since_nanos = Some(event.time_nanos);
                        }
                        let text = tomo_proto::rpc::notification_text(DOCKER_EVENT, &event);
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
    fn since_is_seconds_dot_nanoseconds() {
        assert_eq!(
            since_text(1_700_000_000_000_000_123),
            "1700000000.000000123"
        );
        assert_eq!(since_text(5), "0.000000005");
    }

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
        let exec = convert(EventMessage {
            action: Some("exec_start: sh -c echo GITHUB=ghp_abcdefghijklmnopqrstuvwxyz0123456789 --password hunter2xx".into()),
            ..Default::default()
        });
        assert!(
            exec.action.starts_with("exec_start: sh -c echo"),
            "{}",
            exec.action
        );
        assert!(
            !exec.action.contains("abcdefghij") && !exec.action.contains("hunter2xx"),
            "{}",
            exec.action
        );
        assert!(
            !e.attributes["repo"].contains("pw"),
            "{}",
            e.attributes["repo"]
        );
    }
}

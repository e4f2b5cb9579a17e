//! Docker engine events from the agents: stored with a retention limit, and fanned out live to
//! followers (`GET /api/v1/hosts/{host}/events?follow=true`, `tomo events HOST -f`).

use tomo_proto::methods::DockerEvent;

use crate::AppState;
use crate::store::{NewEvent, StoredEvent};

/// Events kept per host at most (older ones are pruned with the history).
pub const KEEP_PER_HOST: u32 = 10_000;
/// Live events buffered per follower before it is told it lagged.
pub const FOLLOW_BUFFER: usize = 1024;

/// A stored event, for followers.
#[derive(Debug, Clone)]
pub struct Live {
    pub host_id: String,
    pub id: i64,
    pub view: EventView,
}

/// An event in the API: the engine's event, with its place in the host's stored events and
/// when it came (what [`view`] builds; the OpenAPI document's schema).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct EventView {
    /// The engine's event: `id` is the object's id (a container's, for instance).
    #[serde(flatten)]
    pub event: DockerEvent,
    /// Its place in the host's stored events: the cursor of `after`.
    pub seq: i64,
    /// RFC 3339.
    pub received_at: String,
}

/// A stored event as the API shows it: the engine's event (`id` is the object's id, a
/// container's for instance), with `seq`, its place in the host's stored events (the cursor
/// for `after`), and `received_at`. `None` for a row that is not an event (only [`ingest`]
/// writes them, from a typed event: a damaged database), which is logged and left out.
pub fn view(e: &StoredEvent) -> Option<EventView> {
    match serde_json::from_str::<DockerEvent>(&e.event) {
        Ok(event) => Some(EventView {
            event,
            seq: e.id,
            received_at: crate::core::rfc3339(e.received_at),
        }),
        Err(err) => {
            tracing::warn!(seq = e.id, error = %err, "a stored Docker event does not read as one");
            None
        }
    }
}

/// What makes an event itself: a copy replayed after an outage has the same key, the hash of
/// the whole event (its attributes are sorted, so its JSON is canonical). `None` for an event
/// without an engine time, which cannot be told from another.
pub fn key(e: &DockerEvent) -> Option<String> {
    let text = serde_json::to_string(e).ok()?;
    (e.time_nanos > 0).then(|| tomo_common::hex(&tomo_common::sha256(text.as_bytes())))
}

/// Stores an event and hands it to live followers; a copy of one already stored (replayed after
/// an outage) is dropped.
pub async fn ingest(state: &AppState, host_id: &str, event: DockerEvent) {
    let text = serde_json::to_string(&event).unwrap_or_default();
    let now = tomo_common::now_ms();
    let key = key(&event);
    let new = NewEvent {
        received_at: now,
        time_nanos: event.time_nanos,
        key: key.as_deref(),
        event: &text,
    };
    match state.store.add_docker_event(host_id, &new).await {
        Ok(Some(id)) => {
            // No receivers is fine: nobody follows.
            let _ = state.events.send(Live {
                host_id: host_id.to_owned(),
                id,
                view: EventView {
                    event,
                    seq: id,
                    received_at: crate::core::rfc3339(now),
                },
            });
        }
        Ok(None) => tracing::debug!(host_id, "a replayed Docker event was already stored"),
        Err(e) => tracing::warn!(host_id, error = %e, "cannot store a Docker event"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 17.9: `tomo events -o json` showed the database row id as `id` and lost the
    /// container's id.
    /// Two containers joining one network in the same nanosecond are two events (the
    /// network's id, the time and the action are the same); a copy of one is the same event.
    #[test]
    fn events_that_differ_in_an_attribute_have_different_keys() {
        let e = |c: &str| DockerEvent {
            time_nanos: 5,
            kind: "network".into(),
            action: "connect".into(),
            id: "net1".into(),
            attributes: [("container".to_owned(), c.to_owned())].into(),
        };
        assert_ne!(key(&e("a")), key(&e("b")));
        assert_eq!(key(&e("a")), key(&e("a")));
        assert_eq!(
            key(&DockerEvent {
                time_nanos: 0,
                ..e("a")
            }),
            None
        );
    }

    #[test]
    fn an_event_keeps_its_objects_id_and_gets_a_seq() {
        let e = StoredEvent {
            id: 42,
            received_at: 0,
            event: r#"{"time_nanos":1,"type":"container","action":"start","id":"abc123","attributes":{}}"#.into(),
        };
        let v = serde_json::to_value(view(&e).expect("an event")).expect("JSON");
        assert_eq!(v["id"], "abc123");
        assert_eq!(v["seq"], 42);
        assert_eq!(v["action"], "start");
        assert_eq!(v["type"], "container");
        // A row that is not an event is left out, not shown as `null`.
        let damaged = StoredEvent {
            event: "{}".into(),
            ..e
        };
        assert!(view(&damaged).is_none());
    }
}

//! Docker engine events from the agents: stored with a retention limit, and fanned out live to
//! followers (`GET /api/v1/hosts/{host}/events?follow=true`, `tomo events HOST -f`).

use serde_json::{Value, json};
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
    pub view: Value,
}

/// The JSON shape of an event in the API (what [`view`] builds; the OpenAPI document's schema,
/// and a test reads every view back as one).
#[derive(Debug, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct EventView {
    /// The engine's event: `id` is the object's id (a container's, for instance).
    #[serde(flatten)]
    pub event: DockerEvent,
    /// Its place in the host's stored events: the cursor of `after`.
    pub seq: i64,
    /// RFC 3339.
    pub received_at: String,
}

/// The JSON shape of an event in the API: the engine's event (`id` is the object's id, a
/// container's for instance), with `seq`, its place in the host's stored events (the cursor
/// for `after`), and `received_at`.
pub fn view(e: &StoredEvent) -> Value {
    let mut v: Value = serde_json::from_str(&e.event).unwrap_or(Value::Null);
    if let Some(obj) = v.as_object_mut() {
        obj.insert("seq".into(), json!(e.id));
        obj.insert(
            "received_at".into(),
            json!(crate::api::rfc3339(e.received_at)),
        );
    }
    v
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
            let stored = StoredEvent {
                id,
                received_at: now,
                event: text,
            };
            // No receivers is fine: nobody follows.
            let _ = state.events.send(Live {
                host_id: host_id.to_owned(),
                id,
                view: view(&stored),
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
        let v = view(&e);
        assert_eq!(v["id"], "abc123");
        assert_eq!(v["seq"], 42);
        assert_eq!(v["action"], "start");
        // The documented schema is what the view is.
        let typed: EventView = serde_json::from_value(v).expect("an EventView");
        assert_eq!((typed.seq, typed.event.id.as_str()), (42, "abc123"));
    }
}

-- Issue 13.4: events are replayed after an outage from the newest one stored, so a replayed copy
-- must not be stored twice. `time_nanos` is the engine's time of the event; `event_key` names the
-- event itself (engine time, type, action, object id), unique per host. Rows written before this
-- migration have no key (NULLs never collide in a UNIQUE index).
ALTER TABLE docker_events ADD COLUMN time_nanos INTEGER;
ALTER TABLE docker_events ADD COLUMN event_key TEXT;
UPDATE docker_events SET time_nanos = json_extract(event, '$.time_nanos') WHERE json_valid(event);
CREATE UNIQUE INDEX docker_events_key ON docker_events (host_id, event_key);
CREATE INDEX docker_events_time ON docker_events (host_id, time_nanos);

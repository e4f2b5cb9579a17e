-- Docker engine events forwarded by agents; pruned by age (history retention) and count per host.
CREATE TABLE docker_events (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    host_id     TEXT    NOT NULL,
    received_at INTEGER NOT NULL,
    event       TEXT    NOT NULL
);
CREATE INDEX docker_events_host ON docker_events (host_id, id);
CREATE INDEX docker_events_received ON docker_events (received_at);

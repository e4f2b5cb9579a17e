-- Hosts: one row per registered agent. Only the public key is kept: no bearer secret.
CREATE TABLE hosts (
    id            TEXT PRIMARY KEY,
    public_key    BLOB NOT NULL UNIQUE,
    hostname      TEXT NOT NULL,
    engine_id     TEXT,
    facts         TEXT NOT NULL,
    registered_at INTEGER NOT NULL,
    last_seen     INTEGER,
    removed_at    INTEGER
);
CREATE INDEX hosts_hostname ON hosts (hostname);

-- Registration codes, stored as SHA-256 only. Single use: used_at/used_by set once.
CREATE TABLE registration_codes (
    code_hash  BLOB PRIMARY KEY,
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    created_by TEXT NOT NULL,
    used_at    INTEGER,
    used_by    TEXT
);

-- Operator API tokens, stored as SHA-256 only.
CREATE TABLE api_tokens (
    id           TEXT PRIMARY KEY,
    token_hash   BLOB NOT NULL UNIQUE,
    name         TEXT NOT NULL,
    role         TEXT NOT NULL,
    created_at   INTEGER NOT NULL,
    expires_at   INTEGER,
    revoked_at   INTEGER
);

-- Refused handshakes and other security-relevant facts about hosts.
CREATE TABLE security_events (
    id      INTEGER PRIMARY KEY AUTOINCREMENT,
    at      INTEGER NOT NULL,
    host_id TEXT,
    kind    TEXT NOT NULL,
    detail  TEXT NOT NULL
);
CREATE INDEX security_events_host ON security_events (host_id, at);

-- History of health.status and metrics.update notifications, pruned by retention.
CREATE TABLE samples (
    host_id TEXT NOT NULL,
    kind    TEXT NOT NULL,
    at      INTEGER NOT NULL,
    data    TEXT NOT NULL
);
CREATE INDEX samples_host_kind_at ON samples (host_id, kind, at);
CREATE INDEX samples_at ON samples (at);

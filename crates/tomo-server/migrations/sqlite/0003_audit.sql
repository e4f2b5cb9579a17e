-- Audit records: the agents' request decisions (host_id set) and the operator API's actions
-- (host_id NULL). `record` is the AuditRecord as JSON; `at_ms` is when the recorder decided
-- (its clock), `received_at` when the control plane stored it (pruning uses this clock).
CREATE TABLE audit (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    host_id     TEXT,
    at_ms       INTEGER NOT NULL,
    received_at INTEGER NOT NULL,
    record      TEXT    NOT NULL
);
CREATE INDEX audit_host ON audit (host_id, id);
CREATE INDEX audit_received ON audit (received_at);

-- Issue 13 (double fault): an agent sends again, at each session start, the records of its
-- audit log from the newest one the control plane holds for it, so a record made while no
-- session was up is not lost when the agent restarts before it reconnects. `record_key` (the
-- SHA-256 of an agent's record) keeps a copy from being stored twice; operator records (no
-- host) have none (NULLs never collide in a UNIQUE index).
ALTER TABLE audit ADD COLUMN record_key TEXT;
CREATE UNIQUE INDEX audit_key ON audit (host_id, record_key);
CREATE INDEX audit_host_at ON audit (host_id, at_ms);

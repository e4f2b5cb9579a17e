-- Issue 5: scoped API tokens, operator-set host labels, pending actions awaiting approval.

-- JSON array of host ids and `key=value` labels; NULL: every host.
ALTER TABLE api_tokens ADD COLUMN host_scope TEXT;
-- 1: execute/admin calls made with this token wait for a human's approval.
ALTER TABLE api_tokens ADD COLUMN requires_approval INTEGER NOT NULL DEFAULT 0;
-- MCP tool calls per minute; NULL: the control plane's default.
ALTER TABLE api_tokens ADD COLUMN tool_rate_per_min INTEGER;
ALTER TABLE api_tokens ADD COLUMN last_used_at INTEGER;

-- JSON object of labels the operators set (never what the host reports about itself).
ALTER TABLE hosts ADD COLUMN labels TEXT NOT NULL DEFAULT '{}';

-- A call made with a token that requires approval, waiting for a human.
CREATE TABLE pending_actions (
    id           TEXT PRIMARY KEY,
    token_id     TEXT NOT NULL,
    token_name   TEXT NOT NULL,
    host_id      TEXT NOT NULL,
    method       TEXT NOT NULL,
    params       TEXT,
    summary      TEXT NOT NULL,
    status       TEXT NOT NULL,
    created_at   INTEGER NOT NULL,
    expires_at   INTEGER NOT NULL,
    decided_at   INTEGER,
    decided_by   TEXT,
    result       TEXT
);
CREATE INDEX pending_actions_status ON pending_actions (status, created_at);

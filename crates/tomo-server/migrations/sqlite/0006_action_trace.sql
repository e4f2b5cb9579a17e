-- Issue 13.2: the trace id an approved action's call carried to the host, to find the host's
-- audit record of it when the control plane stopped while it ran (status `interrupted`).
ALTER TABLE pending_actions ADD COLUMN trace_id TEXT;
CREATE INDEX pending_actions_trace ON pending_actions (host_id, trace_id);

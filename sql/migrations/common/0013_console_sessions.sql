-- The machines' serial console sessions (docs/bmc.md, "The console
-- path"): who opened which machine's console, when, when and why it ended
-- and how many bytes went each way; written by central/internal/console
-- only. The opening call also writes its audit row; this table is the
-- rest of the record (end and bytes are known only when it is over).
CREATE TABLE console_sessions (
    id            TEXT PRIMARY KEY,
    machine_id    TEXT NOT NULL,
    project_id    TEXT,
    subject       TEXT NOT NULL,
    request_id    TEXT NOT NULL DEFAULT '',
    agent_id      TEXT NOT NULL,
    started_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    ended_at      TIMESTAMPTZ,
    reason        TEXT NOT NULL DEFAULT '',
    bytes_in      BIGINT NOT NULL DEFAULT 0,
    bytes_out     BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX console_sessions_machine ON console_sessions (machine_id, started_at);

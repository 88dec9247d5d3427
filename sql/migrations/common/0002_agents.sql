-- The agent fleet (docs/agent-protocol.md): one row per agent with its
-- credential hash, desired document and observed state; the agents' event
-- log; one-time boot tokens for PXE-booted installers.

CREATE TABLE agents (
    id                TEXT PRIMARY KEY,
    kind              TEXT NOT NULL,
    identity          TEXT NOT NULL,
    partition_id      TEXT REFERENCES partitions (id),
    -- sha256 of the agent's credential; replaced on re-enrolment and on
    -- every boot token exchange.
    token_hash        BYTEA NOT NULL UNIQUE,
    enrolled_by       TEXT NOT NULL,
    -- desired is agent.v1.Desired as protojson; desired_revision is its
    -- revision, increased by one in the transaction that changes it.
    desired_revision  BIGINT NOT NULL CHECK (desired_revision > 0),
    desired           JSONB NOT NULL,
    desired_at        TIMESTAMPTZ NOT NULL,
    applied_revision  BIGINT NOT NULL DEFAULT 0 CHECK (applied_revision >= 0),
    health            TEXT NOT NULL DEFAULT '',
    message           TEXT NOT NULL DEFAULT '',
    facts             JSONB,
    replica           TEXT NOT NULL DEFAULT '',
    last_contact      TIMESTAMPTZ,
    created_at        TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at        TIMESTAMPTZ NOT NULL DEFAULT now(),
    CONSTRAINT agents_kind_identity UNIQUE (kind, identity)
);

-- The poll hint source (CockroachDB) asks for documents changed since a time.
CREATE INDEX agents_by_desired_at ON agents (desired_at);

CREATE TABLE agent_events (
    id           TEXT PRIMARY KEY,
    agent_id     TEXT NOT NULL REFERENCES agents (id) ON DELETE CASCADE,
    at           TIMESTAMPTZ NOT NULL,
    received_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    type         TEXT NOT NULL,
    message      TEXT NOT NULL
);

CREATE INDEX agent_events_by_agent ON agent_events (agent_id, at);

CREATE TABLE boot_tokens (
    id            TEXT PRIMARY KEY,
    partition_id  TEXT NOT NULL REFERENCES partitions (id) ON DELETE CASCADE,
    secret_hash   BYTEA NOT NULL UNIQUE,
    expires_at    TIMESTAMPTZ NOT NULL,
    -- used_at is set exactly once, by the exchange that consumes the token.
    used_at       TIMESTAMPTZ,
    used_by       TEXT,
    created_by    TEXT NOT NULL,
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now()
);

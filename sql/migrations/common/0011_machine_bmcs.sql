-- What the partitions' metal-bmc agents read from the BMCs, one row per
-- BMC keyed by the machine UUID the BMC returns (lower case), written by
-- central/internal/bmc only. The machine need not exist yet: a machine
-- known only from its BMC is listed before its first PXE boot.
CREATE TABLE machine_bmcs (
    machine_uuid  TEXT PRIMARY KEY,
    partition_id  TEXT NOT NULL REFERENCES partitions (id) ON DELETE CASCADE,
    agent_id      TEXT NOT NULL REFERENCES agents (id) ON DELETE CASCADE,
    reachable     BOOLEAN NOT NULL,
    fact          JSONB NOT NULL,
    updated_at    TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX machine_bmcs_partition ON machine_bmcs (partition_id);
CREATE INDEX machine_bmcs_agent ON machine_bmcs (agent_id);

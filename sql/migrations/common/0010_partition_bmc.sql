-- How a partition's metal-bmc reaches the partition's BMCs (issue 15):
-- one row per partition, written by central/internal/bmc only. The
-- password is a secret: the API never returns it, it travels only in the
-- desired documents of the partition's metal-bmc agents. It is stored as
-- given, as those documents are (agents.desired): the database is
-- central's trust boundary for both.
CREATE TABLE partition_bmc (
    partition_id   TEXT PRIMARY KEY REFERENCES partitions (id) ON DELETE CASCADE,
    bmc_user       TEXT NOT NULL DEFAULT '',
    bmc_password   TEXT NOT NULL DEFAULT '',
    static_bmcs    JSONB NOT NULL DEFAULT '[]',
    lease_cidrs    TEXT[] NOT NULL DEFAULT '{}',
    poll_interval  INT NOT NULL DEFAULT 0,
    updated_at     TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- The machines' BMC intents (power, boot, identify, firmware), each with
-- its own generation counter, as central puts them into its partition's
-- metal-bmc document (BmcMachine, JSON); written by central/internal/bmc
-- only. A row is never deleted: a generation that went back to 1 would be
-- one metal-bmc's journal has already executed, and it would not run.
CREATE TABLE bmc_intents (
    machine_uuid  TEXT PRIMARY KEY,
    partition_id  TEXT NOT NULL REFERENCES partitions (id) ON DELETE CASCADE,
    intent        JSONB NOT NULL DEFAULT '{}',
    -- results: metal-bmc's newest result per intent kind (BmcIntentResult
    -- JSON), as last reported; a result not in here yet is a machine event.
    results       JSONB NOT NULL DEFAULT '[]',
    updated_at    TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX bmc_intents_partition ON bmc_intents (partition_id);

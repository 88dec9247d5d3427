-- Stuck machines are power-cycled through their BMC (docs/bmc.md, "Stuck
-- machines"). Per partition (partition_bmc, written by
-- central/internal/bmc only): whether central cycles them, and how many
-- cycles one stuck episode gets before central gives up and shows the
-- issue stuck-cycles-exhausted. A partition without a row has the
-- defaults.
ALTER TABLE partition_bmc ADD COLUMN stuck_cycle BOOLEAN NOT NULL DEFAULT TRUE;
ALTER TABLE partition_bmc ADD COLUMN stuck_max_cycles INT NOT NULL DEFAULT 3;

-- Per machine (machines, written by central/internal/machine only): the
-- stuck episode being counted. stuck_state is the state the machine was
-- stuck in when central last cycled it (or gave up), stuck_cycles the
-- cycles raised in that episode, stuck_cycled_at the newest of them, and
-- stuck_exhausted says that central gave up on it. Reaching a stable
-- state clears them; being stuck in another state starts a new count.
ALTER TABLE machines ADD COLUMN stuck_state TEXT NOT NULL DEFAULT '';
ALTER TABLE machines ADD COLUMN stuck_cycles INT NOT NULL DEFAULT 0;
ALTER TABLE machines ADD COLUMN stuck_cycled_at TIMESTAMPTZ;
ALTER TABLE machines ADD COLUMN stuck_exhausted BOOLEAN NOT NULL DEFAULT FALSE;

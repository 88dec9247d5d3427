-- Provisioning (docs/machine-lifecycle.md): machines register themselves,
-- move through one lifecycle state machine and are allocated to projects.
-- Columns the allocation query filters on live next to spec; spec keeps the
-- api.v1.Machine (hardware, allocation, labels) as protojson.

ALTER TABLE machines ADD COLUMN agent_id TEXT REFERENCES agents (id) ON DELETE SET NULL;
-- provisioning is the lifecycle state ("Waiting", ...); '' before the first event.
ALTER TABLE machines ADD COLUMN provisioning TEXT NOT NULL DEFAULT '';
ALTER TABLE machines ADD COLUMN last_event TEXT NOT NULL DEFAULT '';
ALTER TABLE machines ADD COLUMN last_event_at TIMESTAMPTZ;
-- crashes counts Crashed events since the machine last reached a stable
-- state (Waiting, Phoned Home); three make a crash loop.
ALTER TABLE machines ADD COLUMN crashes INT NOT NULL DEFAULT 0;
-- allocation_id is set while a project owns the machine; the unique index
-- makes one allocation never back two machines.
ALTER TABLE machines ADD COLUMN allocation_id TEXT UNIQUE;
-- installed: the allocation's system phoned home; the PXE service then
-- boots the machine from its disk.
ALTER TABLE machines ADD COLUMN installed BOOLEAN NOT NULL DEFAULT FALSE;
ALTER TABLE machines ADD CONSTRAINT machines_allocation_has_project CHECK ((allocation_id IS NULL) = (project_id IS NULL));
ALTER TABLE machines ADD CONSTRAINT machines_state CHECK (state IN ('available', 'reserved', 'locked'));

-- The allocation query: waiting, unowned machines of a size in a partition.
CREATE INDEX machines_pool ON machines (partition_id, size_id, provisioning) WHERE project_id IS NULL;
CREATE INDEX machines_agent ON machines (agent_id);

-- A MAC belongs to one machine: the PXE service asks by MAC.
CREATE TABLE machine_nics (
    mac         TEXT PRIMARY KEY,
    machine_id  TEXT NOT NULL REFERENCES machines (id) ON DELETE CASCADE,
    name        TEXT NOT NULL
);
CREATE INDEX machine_nics_machine ON machine_nics (machine_id);

-- The provisioning event log. seq orders events of one machine (the
-- machine row is locked while an event is written, so it is gap-free per
-- machine and needs no global sequence).
CREATE TABLE machine_events (
    machine_id  TEXT NOT NULL REFERENCES machines (id) ON DELETE CASCADE,
    seq         BIGINT NOT NULL,
    at          TIMESTAMPTZ NOT NULL,
    received_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    event       TEXT NOT NULL,
    message     TEXT NOT NULL DEFAULT '',
    state       TEXT NOT NULL,
    error       TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (machine_id, seq)
);
ALTER TABLE machines ADD COLUMN event_seq BIGINT NOT NULL DEFAULT 0;

-- Machine IPs are released with the machine.
CREATE INDEX ips_machine ON ips (machine_id);

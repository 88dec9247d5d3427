-- Boot tokens are bound to what they were minted for (docs/agent-protocol.md,
-- "Boot tokens and the threat model"): the MAC of the PXE boot and the
-- machine that owned it then. NULL only for tokens an admin mints by hand.
ALTER TABLE boot_tokens ADD COLUMN mac TEXT;
ALTER TABLE boot_tokens ADD COLUMN machine_id TEXT;
-- A boot supersedes the unused token of its MAC; the cap of unused tokens
-- per partition counts these.
CREATE INDEX boot_tokens_unused_by_mac ON boot_tokens (mac) WHERE used_at IS NULL;
CREATE INDEX boot_tokens_unused_by_partition ON boot_tokens (partition_id, expires_at) WHERE used_at IS NULL;

-- A MAC reported by a machine while it belongs to another one does not
-- move: both machines get a duplicate-mac issue until an admin resolves it
-- (metalctl machine resolve-mac, or deleting a machine).
CREATE TABLE machine_mac_conflicts (
    mac          TEXT NOT NULL,
    -- the machine that reported the MAC it does not own
    machine_id   TEXT NOT NULL REFERENCES machines (id) ON DELETE CASCADE,
    -- the machine the MAC belongs to
    owner_id     TEXT NOT NULL REFERENCES machines (id) ON DELETE CASCADE,
    reported_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (mac, machine_id)
);
CREATE INDEX machine_mac_conflicts_owner ON machine_mac_conflicts (owner_id);
CREATE INDEX machine_mac_conflicts_machine ON machine_mac_conflicts (machine_id);

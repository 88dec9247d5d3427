-- A free's reset or a reinstall's power cycle waits until the machine's
-- switches applied the document that moves its ports back to the PXE
-- VLAN, so that its firmware's PXE attempt finds the VLAN (docs/network.md,
-- "When a port changes VRF"). Per machine (machines, written by
-- central/internal/machine only): the held power action (agent.v1
-- BmcPowerAction; 0: none), the revisions to wait for (switch id →
-- revision of its document), and when to stop waiting (a switch that
-- does not apply in time must not keep a machine from being reclaimed).
ALTER TABLE machines ADD COLUMN reboot_power SMALLINT NOT NULL DEFAULT 0;
ALTER TABLE machines ADD COLUMN reboot_after JSONB;
ALTER TABLE machines ADD COLUMN reboot_deadline TIMESTAMPTZ;
CREATE INDEX machines_reboot_held ON machines (reboot_deadline) WHERE reboot_power <> 0;

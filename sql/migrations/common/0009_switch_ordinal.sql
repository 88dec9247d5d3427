-- A leaf's ordinal in its partition (1, 2, …): its ASN and loopback derive
-- from it (catalog's partition fabric settings). Given when the switch first
-- reports, kept for good, taken over by a replacement switch.
ALTER TABLE switches ADD COLUMN ordinal INT;
CREATE UNIQUE INDEX switches_partition_ordinal ON switches (partition_id, ordinal);

-- IPAM hot paths. NetworkService.Allocate finds a partition's super network
-- by (partition_id, type); without an index that read scans every network,
-- and every child network it allocates adds one more row to scan.
CREATE INDEX networks_partition_type ON networks (partition_id, type);

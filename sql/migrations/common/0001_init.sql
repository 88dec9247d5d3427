-- Metalfleet schema, version 1. Common subset of PostgreSQL >= 15 and CockroachDB:
-- no SERIAL, no triggers, no advisory locks; ids are client-made (text or UUID).
-- Simple catalogue objects keep their full proto form in `spec` (JSONB); every
-- column something is looked up, joined or constrained by is a real column.

CREATE TABLE partitions (
    id          TEXT PRIMARY KEY,
    spec        JSONB NOT NULL,
    generation  BIGINT NOT NULL DEFAULT 1,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE sizes (
    id          TEXT PRIMARY KEY,
    spec        JSONB NOT NULL,
    generation  BIGINT NOT NULL DEFAULT 1,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE images (
    id          TEXT PRIMARY KEY,
    os          TEXT NOT NULL,
    version     TEXT NOT NULL,
    spec        JSONB NOT NULL,
    generation  BIGINT NOT NULL DEFAULT 1,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    UNIQUE (os, version)
);

CREATE TABLE filesystem_layouts (
    id          TEXT PRIMARY KEY,
    spec        JSONB NOT NULL,
    generation  BIGINT NOT NULL DEFAULT 1,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE tenants (
    id          TEXT PRIMARY KEY,
    spec        JSONB NOT NULL,
    generation  BIGINT NOT NULL DEFAULT 1,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE projects (
    id          TEXT PRIMARY KEY,
    tenant_id   TEXT NOT NULL REFERENCES tenants (id),
    name        TEXT NOT NULL,
    spec        JSONB NOT NULL,
    generation  BIGINT NOT NULL DEFAULT 1,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    UNIQUE (tenant_id, name)
);

CREATE TABLE size_reservations (
    id            TEXT PRIMARY KEY,
    size_id       TEXT NOT NULL REFERENCES sizes (id),
    partition_id  TEXT NOT NULL REFERENCES partitions (id),
    project_id    TEXT NOT NULL REFERENCES projects (id),
    amount        INT NOT NULL CHECK (amount > 0),
    spec          JSONB NOT NULL,
    generation    BIGINT NOT NULL DEFAULT 1,
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at    TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX size_reservations_project ON size_reservations (project_id);

-- IPAM. A pool is a range of integer units [first, last]: addresses of a prefix,
-- child-prefix slots of a super prefix, or VRF ids. Free space is a set of
-- ranges, each covering [start_unit, stop_unit] of which [next_unit, stop_unit]
-- is still free; the spans of different rows never overlap. Taking a unit
-- bumps next_unit of one range row; next_unit is not indexed, so that update is
-- a heap-only (HOT) update that leaves the index untouched. Writers spread
-- across ranges (SKIP LOCKED), so no single row serialises them. The consumers
-- (ips, prefixes, networks.vrf) carry the unique constraints that make a
-- double hand-out impossible even if the free list were wrong.
CREATE TABLE pools (
    id          TEXT PRIMARY KEY,
    kind        TEXT NOT NULL CHECK (kind IN ('ip', 'child', 'vrf')),
    first_unit  NUMERIC NOT NULL,
    last_unit   NUMERIC NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    CHECK (first_unit <= last_unit)
);

CREATE TABLE pool_free (
    pool_id     TEXT NOT NULL REFERENCES pools (id) ON DELETE CASCADE,
    start_unit  NUMERIC NOT NULL,
    next_unit   NUMERIC NOT NULL,
    stop_unit   NUMERIC NOT NULL,
    PRIMARY KEY (pool_id, start_unit),
    CHECK (start_unit <= next_unit AND next_unit <= stop_unit)
);

CREATE TABLE networks (
    id            TEXT PRIMARY KEY,
    type          TEXT NOT NULL CHECK (type IN ('super', 'child', 'underlay', 'external')),
    partition_id  TEXT REFERENCES partitions (id),
    project_id    TEXT REFERENCES projects (id),
    parent_id     TEXT REFERENCES networks (id),
    vrf           BIGINT UNIQUE,
    spec          JSONB NOT NULL,
    generation    BIGINT NOT NULL DEFAULT 1,
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    CHECK ((type = 'child') = (project_id IS NOT NULL AND parent_id IS NOT NULL)),
    CHECK (type <> 'child' OR vrf IS NOT NULL)
);
CREATE INDEX networks_project ON networks (project_id);
CREATE INDEX networks_parent ON networks (parent_id);

-- A prefix belongs to one network. Super prefixes have a child_pool, the others
-- an ip_pool. Child prefixes record the slot they took in
-- their parent's child pool, unique, so one slot cannot back two prefixes.
CREATE TABLE prefixes (
    cidr          TEXT PRIMARY KEY,
    network_id    TEXT NOT NULL REFERENCES networks (id),
    family        INT NOT NULL CHECK (family IN (4, 6)),
    ip_pool       TEXT UNIQUE REFERENCES pools (id),
    child_pool    TEXT UNIQUE REFERENCES pools (id),
    parent_pool   TEXT REFERENCES pools (id),
    parent_unit   NUMERIC,
    UNIQUE (parent_pool, parent_unit),
    CHECK ((parent_pool IS NULL) = (parent_unit IS NULL))
);
CREATE INDEX prefixes_network ON prefixes (network_id);

CREATE TABLE ips (
    ip            TEXT PRIMARY KEY,
    pool_id       TEXT NOT NULL,
    unit          NUMERIC NOT NULL,
    network_id    TEXT NOT NULL REFERENCES networks (id),
    project_id    TEXT NOT NULL REFERENCES projects (id),
    type          TEXT NOT NULL CHECK (type IN ('ephemeral', 'static')),
    machine_id    TEXT,
    spec          JSONB NOT NULL,
    generation    BIGINT NOT NULL DEFAULT 1,
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    UNIQUE (pool_id, unit)
);
CREATE INDEX ips_network ON ips (network_id);
CREATE INDEX ips_project ON ips (project_id);

CREATE TABLE tokens (
    id            TEXT PRIMARY KEY,
    secret_hash   BYTEA NOT NULL UNIQUE,
    spec          JSONB NOT NULL,
    expires_at    TIMESTAMPTZ NOT NULL,
    revoked_at    TIMESTAMPTZ,
    created_by    TEXT,
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE audit (
    id          TEXT PRIMARY KEY,
    at          TIMESTAMPTZ NOT NULL DEFAULT now(),
    subject     TEXT NOT NULL,
    method      TEXT NOT NULL,
    request_id  TEXT NOT NULL,
    target      TEXT NOT NULL,
    project_id  TEXT
);
CREATE INDEX audit_at ON audit (at);

CREATE TABLE machines (
    id            TEXT PRIMARY KEY,
    partition_id  TEXT REFERENCES partitions (id),
    size_id       TEXT REFERENCES sizes (id),
    project_id    TEXT REFERENCES projects (id),
    rack          TEXT NOT NULL DEFAULT '',
    state         TEXT NOT NULL DEFAULT 'available',
    spec          JSONB NOT NULL,
    generation    BIGINT NOT NULL DEFAULT 1,
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at    TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX machines_project ON machines (project_id);

CREATE TABLE switches (
    id            TEXT PRIMARY KEY,
    partition_id  TEXT REFERENCES partitions (id),
    rack          TEXT NOT NULL DEFAULT '',
    spec          JSONB NOT NULL,
    generation    BIGINT NOT NULL DEFAULT 1,
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at    TIMESTAMPTZ NOT NULL DEFAULT now()
);

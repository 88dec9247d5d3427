-- The lineage of tokens minted before 0006, from created_by. A migration of
-- its own: CockroachDB cannot write a column in the transaction that adds it.
-- A token whose creator is gone starts its chain with the creator's id.
UPDATE tokens SET ancestors = l.chain
FROM (
    WITH RECURSIVE lineage (id, chain) AS (
        SELECT t.id, CASE WHEN t.created_by IS NULL THEN ARRAY[]::TEXT[] ELSE ARRAY[t.created_by] END
        FROM tokens t
        WHERE t.created_by IS NULL OR NOT EXISTS (SELECT 1 FROM tokens p WHERE p.id = t.created_by)
        UNION ALL
        SELECT c.id, l.chain || l.id FROM tokens c JOIN lineage l ON c.created_by = l.id
    )
    SELECT id, chain FROM lineage
) AS l
WHERE tokens.id = l.id;

-- A token's lineage: the ids of the tokens that minted it, root first and
-- parent (created_by) last. Revoking a token revokes every token whose
-- lineage contains it with one UPDATE through the inverted index, and
-- authentication refuses a token whose lineage holds a revoked token
-- (central/internal/service: Principal), which also covers a child minted
-- while its ancestor was being revoked.
ALTER TABLE tokens ADD COLUMN ancestors TEXT[] NOT NULL DEFAULT ARRAY[]::TEXT[];
CREATE INDEX tokens_ancestors ON tokens USING GIN (ancestors);

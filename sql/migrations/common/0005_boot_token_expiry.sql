-- Every PXE boot of the installer gets a boot token; expired ones are
-- swept (central/internal/service: SweepBootTokens) by expiry time.
CREATE INDEX boot_tokens_expires ON boot_tokens (expires_at);

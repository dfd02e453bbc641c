-- When a key's `expiring` event was written (`--expiry-warning`): one per key, however many
-- instances sweep; cleared when its expiry changes (UpdateKey), so a new expiry is warned of
-- again. The index serves the sweep and the `keyauth_keys_expiring` gauge.
ALTER TABLE api_keys ADD COLUMN expiry_warned_time BIGINT;
CREATE INDEX api_keys_by_expiry ON api_keys (expire_time) WHERE expire_time IS NOT NULL;

-- A key's check value (keyauth-core `check_value`): 32 bits of HMAC-SHA256 of its secret under
-- a key derived from the seal key, as `v1.<fingerprint>.<check>`. A wrong secret is refused
-- without argon2 and without counting against the key id. NULL for keys made before it; such
-- a key gets one on its next successful proof.
ALTER TABLE api_keys ADD COLUMN secret_check TEXT;

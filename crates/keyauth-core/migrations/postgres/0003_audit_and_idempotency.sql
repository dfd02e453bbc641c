-- The audit trail: key_events also records who (operator id, peer) and failed operator
-- authentication, which has no key.
ALTER TABLE key_events ALTER COLUMN key_id DROP NOT NULL;
ALTER TABLE key_events ALTER COLUMN application_id DROP NOT NULL;
ALTER TABLE key_events ADD COLUMN operator TEXT;
ALTER TABLE key_events ADD COLUMN peer TEXT;
CREATE INDEX key_events_by_application ON key_events (application_id, seq);

-- Events without a key (failed operator authentication) concern no cache.
CREATE OR REPLACE FUNCTION keyauth_notify_key_event() RETURNS trigger AS $$
BEGIN
    IF NEW.key_id IS NOT NULL THEN
        PERFORM pg_notify('keyauth_key_events', NEW.seq::text || ' ' || NEW.event || ' ' || NEW.key_id);
    END IF;
    RETURN NEW;
END
$$ LANGUAGE plpgsql;

-- Completed operator calls made with an idempotency key, replayed on retry. The response is
-- stored without its secret; the secret is sealed (AEAD) under the server's seal key.
CREATE TABLE idempotency_records (
    operator      TEXT   NOT NULL,
    key           TEXT   NOT NULL,
    fingerprint   TEXT   NOT NULL,
    response      BYTEA  NOT NULL,
    sealed_secret TEXT,
    create_time   BIGINT NOT NULL,
    expire_time   BIGINT NOT NULL,
    PRIMARY KEY (operator, key)
);
CREATE INDEX idempotency_records_by_expiry ON idempotency_records (expire_time);

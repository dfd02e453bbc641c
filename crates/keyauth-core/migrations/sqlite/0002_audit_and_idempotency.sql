-- The audit trail: key_events also records who (operator id, peer) and failed operator
-- authentication, which has no key. SQLite cannot drop NOT NULL in place: rebuild the table.
CREATE TABLE key_events_new (
    seq            INTEGER PRIMARY KEY AUTOINCREMENT,
    event          TEXT    NOT NULL,                  -- issued, rolled, revoked, operator_auth_failed
    key_id         TEXT,
    related_key_id TEXT,                              -- rolled: the new key
    application_id TEXT,
    operator       TEXT,                              -- short hash of the operator token
    peer           TEXT,                              -- caller's address
    request_id     TEXT,
    event_time     BIGINT  NOT NULL
);
INSERT INTO key_events_new (seq, event, key_id, related_key_id, application_id, request_id, event_time)
    SELECT seq, event, key_id, related_key_id, application_id, request_id, event_time FROM key_events;
DROP TABLE key_events;
ALTER TABLE key_events_new RENAME TO key_events;
CREATE INDEX key_events_by_key ON key_events (key_id, seq);
CREATE INDEX key_events_by_application ON key_events (application_id, seq);

-- Completed operator calls made with an idempotency key, replayed on retry. The response is
-- stored without its secret; the secret is sealed (AEAD) under the server's seal key.
CREATE TABLE idempotency_records (
    operator      TEXT   NOT NULL,
    key           TEXT   NOT NULL,
    fingerprint   TEXT   NOT NULL,                    -- SHA-256 of method and request
    response      BLOB   NOT NULL,                    -- encoded response, secret blanked
    sealed_secret TEXT,
    create_time   BIGINT NOT NULL,
    expire_time   BIGINT NOT NULL,
    PRIMARY KEY (operator, key)
);
CREATE INDEX idempotency_records_by_expiry ON idempotency_records (expire_time);

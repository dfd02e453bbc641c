-- Keys: the lookup part (inside the id) and an argon2id PHC string of the secret; never the key.
-- Times are microseconds since the Unix epoch, UTC.
CREATE TABLE api_keys (
    id                 TEXT    NOT NULL PRIMARY KEY,  -- key_<lookup>
    application_id     TEXT    NOT NULL,
    environment        TEXT    NOT NULL CHECK (environment IN ('test', 'live')),
    name               TEXT    NOT NULL,
    secret_hash        TEXT    NOT NULL,
    redacted           TEXT    NOT NULL,
    restricted         BOOLEAN NOT NULL,
    permissions        TEXT    NOT NULL,              -- resource:action,action;…
    metadata           TEXT    NOT NULL,              -- JSON object of strings
    create_time        BIGINT  NOT NULL,
    expire_time        BIGINT,
    revoke_time        BIGINT,
    revoke_reason      TEXT,
    last_used_time     BIGINT,
    replaced_by_key_id TEXT REFERENCES api_keys (id)
);

CREATE INDEX api_keys_by_application ON api_keys (application_id, create_time DESC, id DESC);

-- Append-only record of every key change, written in the change's transaction.
CREATE TABLE key_events (
    seq            BIGSERIAL PRIMARY KEY,
    event          TEXT    NOT NULL,                  -- issued, rolled, revoked
    key_id         TEXT    NOT NULL,
    related_key_id TEXT,                              -- rolled: the new key
    application_id TEXT    NOT NULL,
    request_id     TEXT,
    event_time     BIGINT  NOT NULL
);

CREATE INDEX key_events_by_key ON key_events (key_id, seq);

-- Server-wide values created once and shared by every instance (the page-token MAC key).
CREATE TABLE settings (
    name  TEXT NOT NULL PRIMARY KEY,
    value TEXT NOT NULL
);

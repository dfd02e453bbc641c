-- Verifications per key and bucket (`usage_counts`): hourly rows, folded into daily rows once
-- older than `--usage-hourly-retention`, deleted after `--usage-retention`. Written in batches
-- by the housekeeping task (counts are added, never set), never once per call. The key's
-- application and environment are copied so that an application's usage is one index range.
CREATE TABLE key_usage (
    key_id                   TEXT   NOT NULL,
    application_id           TEXT   NOT NULL,
    environment              TEXT   NOT NULL,
    granularity              TEXT   NOT NULL CHECK (granularity IN ('hour', 'day')),
    bucket_start             BIGINT NOT NULL,  -- µs since the epoch, on the UTC hour or day
    valid                    BIGINT NOT NULL,
    authentication_error     BIGINT NOT NULL,
    api_key_revoked          BIGINT NOT NULL,
    api_key_expired          BIGINT NOT NULL,
    insufficient_permissions BIGINT NOT NULL,
    PRIMARY KEY (key_id, granularity, bucket_start)
);

CREATE INDEX key_usage_by_application ON key_usage (application_id, granularity, bucket_start);
CREATE INDEX key_usage_by_age ON key_usage (granularity, bucket_start);

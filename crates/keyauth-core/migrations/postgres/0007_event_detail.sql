-- UpdateKey's `updated` events name the fields they changed: a comma-separated list of
-- UpdateKey paths (NULL for every other event).
ALTER TABLE key_events ADD COLUMN detail TEXT;
-- ListKeyEvents over the whole authority filtered by time.
CREATE INDEX key_events_by_time ON key_events (event_time);

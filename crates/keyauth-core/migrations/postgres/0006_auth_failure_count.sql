-- Refused operator calls are written in aggregate: one row per peer per interval, carrying how
-- many calls it stands for (NULL for every other event: one).
ALTER TABLE key_events ADD COLUMN occurrences BIGINT;
CREATE INDEX key_events_by_event_time ON key_events (event, event_time);

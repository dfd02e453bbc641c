-- Every key change reaches every instance at once: a notification per key_events row, sent at
-- commit (so never for a rolled-back change). Payload: "<seq> <key_id>".
CREATE FUNCTION keyauth_notify_key_event() RETURNS trigger AS $$
BEGIN
    PERFORM pg_notify('keyauth_key_events', NEW.seq::text || ' ' || NEW.key_id);
    RETURN NEW;
END
$$ LANGUAGE plpgsql;

CREATE TRIGGER key_events_notify AFTER INSERT ON key_events
    FOR EACH ROW EXECUTE FUNCTION keyauth_notify_key_event();

-- A roll's notification also names the new key (related_key_id), so that every instance's key
-- filter learns of it at once. Payload: "<seq> <event> <key_id>[ <related_key_id>]".
CREATE OR REPLACE FUNCTION keyauth_notify_key_event() RETURNS trigger AS $$
BEGIN
    IF NEW.key_id IS NOT NULL THEN
        PERFORM pg_notify('keyauth_key_events', NEW.seq::text || ' ' || NEW.event || ' ' || NEW.key_id
            || COALESCE(' ' || NEW.related_key_id, ''));
    END IF;
    RETURN NEW;
END
$$ LANGUAGE plpgsql;

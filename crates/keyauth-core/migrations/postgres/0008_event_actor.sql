-- The audit trail names the principal that made each change (DESIGN §7 "Audit"): its name,
-- its subject (a JWT's `sub`, a certificate's URI or subject) and its issuer (a JWT's `iss`).
-- NULL where there is none: events no principal made, and a static token's empty subject and
-- issuer (so that no ListKeyEvents actor filter matches an empty subject).
ALTER TABLE key_events ADD COLUMN actor_name TEXT;
ALTER TABLE key_events ADD COLUMN actor_subject TEXT;
ALTER TABLE key_events ADD COLUMN actor_issuer TEXT;
-- ListKeyEvents filtered by actor (`actor_name = $x OR actor_subject = $x`), newest first.
CREATE INDEX key_events_by_actor_name ON key_events (actor_name, seq);
CREATE INDEX key_events_by_actor_subject ON key_events (actor_subject, seq);

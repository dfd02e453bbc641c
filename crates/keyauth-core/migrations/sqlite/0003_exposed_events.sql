-- Leaked keys revoke themselves: an `exposed` event records where the key was found (the
-- reporter, e.g. `github`, and the URL of the finding). Never the key itself.
ALTER TABLE key_events ADD COLUMN source TEXT;
ALTER TABLE key_events ADD COLUMN url TEXT;

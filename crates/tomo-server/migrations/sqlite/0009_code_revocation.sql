-- Issue 17: a registration code can be revoked before it is used (a code that leaked, or one
-- no longer needed): it is then refused like an expired one, and listed as revoked.
ALTER TABLE registration_codes ADD COLUMN revoked_at INTEGER;

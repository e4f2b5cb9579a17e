-- Agent key rotation: the key an agent used before its last rotation stays valid until the agent
-- authenticates with the new one (so a crash between the two sides' commits locks nobody out).
ALTER TABLE hosts ADD COLUMN previous_public_key BLOB;

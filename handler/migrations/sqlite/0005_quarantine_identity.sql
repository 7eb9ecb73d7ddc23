-- A poison message is quarantined once, however often it is delivered (a completion lost after the quarantine
-- commits, a producer that sends the same message again): `message_identity` (SHA-256 of the Service Bus message
-- id and the body, `store::QuarantinedMessage::identity_of`) is unique, and each further delivery only counts in
-- `deliveries` and moves `last_received_at`. Rows written before this migration have no identity and stay as
-- they are.
ALTER TABLE quarantine_messages ADD COLUMN message_identity TEXT NULL;
ALTER TABLE quarantine_messages ADD COLUMN deliveries INTEGER NOT NULL DEFAULT 1 CHECK (deliveries >= 1);
ALTER TABLE quarantine_messages ADD COLUMN last_received_at TEXT NULL;
CREATE UNIQUE INDEX ux_quarantine_identity ON quarantine_messages (message_identity) WHERE message_identity IS NOT NULL;

-- Quarantine identity on SQL Server (mirror of migrations/sqlite/0005_quarantine_identity.sql, which explains it).
-- The index on the new column is created through EXEC: the whole file is one batch, and a column added in a
-- batch cannot be referenced by a statement compiled with it.

ALTER TABLE dbo.quarantine_messages ADD message_identity CHAR(64) NULL;
ALTER TABLE dbo.quarantine_messages ADD deliveries INT NOT NULL CONSTRAINT df_quarantine_deliveries DEFAULT 1
    CONSTRAINT ck_quarantine_deliveries CHECK (deliveries >= 1);
ALTER TABLE dbo.quarantine_messages ADD last_received_at DATETIME2(6) NULL;
EXEC (N'CREATE UNIQUE INDEX ux_quarantine_identity ON dbo.quarantine_messages (message_identity) WHERE message_identity IS NOT NULL');

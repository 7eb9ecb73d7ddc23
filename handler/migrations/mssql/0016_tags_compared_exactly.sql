-- Tags, and the CloudEvents `(source, id)` that key the inbox, are compared exactly, code point by code point, as
-- SQLite's BINARY collation compares them. Under the database's default collation (SQL_Latin1_General_CP1_CI_AS on
-- Azure SQL) `straße` and `strasse`, or a full-width and an ASCII spelling, were one tag: the second of them on a
-- document broke the primary key (409 where SQLite stored both), a filter on one found the other, and facets
-- counted them as one. The API lower-cases tags itself (in Rust, the same on both stores), so nothing here needs
-- the collation to ignore case. CloudEvents ids and sources are case-sensitive strings: under that collation the
-- events `Order-1` and `order-1` of one source were one inbox key, and the second was completed as a duplicate
-- without being applied, where SQLite applied both.
--
-- Changing a column's collation needs every index and CHECK constraint on it dropped first; they are made again
-- as they were (the inbox's key is its only index and it has no CHECK; quarantine rows are keyed by an id and the
-- hex of a SHA-256, which no collation confuses). No two tags of one document, and no two inbox keys, were equal
-- under the old collation, so none are under the new one, and the primary keys are made again without a
-- conflict. The release before this one runs on the result unchanged: it binds tags, sources and ids as
-- parameters, which take the column's collation. Even a binary collation ignores trailing spaces when `=`
-- compares (SQL Server pads the shorter string), so the consumer refuses an id or a source that ends in one.
-- Dropping and making again a clustered primary key rewrites the table twice under a schema lock: inbox rows are
-- never purged yet, so on a large inbox the consumer's transactions wait meanwhile (or fail, and Service Bus
-- redelivers their messages): on a large inbox, run `handler migrate` at a quiet time.
DROP INDEX ix_document_tags_tag ON dbo.document_tags;
ALTER TABLE dbo.document_tags DROP CONSTRAINT pk_document_tags;
ALTER TABLE dbo.document_tags DROP CONSTRAINT ck_document_tags_tag;
ALTER TABLE dbo.document_tags ALTER COLUMN tag NVARCHAR(64) COLLATE Latin1_General_100_BIN2 NOT NULL;
ALTER TABLE dbo.document_tags ADD CONSTRAINT ck_document_tags_tag CHECK (LEN(tag) >= 1);
ALTER TABLE dbo.document_tags ADD CONSTRAINT pk_document_tags PRIMARY KEY (document_id, tag);
CREATE INDEX ix_document_tags_tag ON dbo.document_tags (tenant_id, tag, document_id);
ALTER TABLE dbo.inbox_messages DROP CONSTRAINT pk_inbox_messages;
ALTER TABLE dbo.inbox_messages ALTER COLUMN source NVARCHAR(200) COLLATE Latin1_General_100_BIN2 NOT NULL;
ALTER TABLE dbo.inbox_messages ALTER COLUMN event_id NVARCHAR(200) COLLATE Latin1_General_100_BIN2 NOT NULL;
ALTER TABLE dbo.inbox_messages ADD CONSTRAINT pk_inbox_messages PRIMARY KEY (source, event_id);

-- Tags are compared exactly, code point by code point, as SQLite's BINARY collation compares them. Under the
-- database's default collation (SQL_Latin1_General_CP1_CI_AS on Azure SQL) `straße` and `strasse`, or a full-width
-- and an ASCII spelling, were one tag: the second of them on a document broke the primary key (409 where SQLite
-- stored both), a filter on one found the other, and facets counted them as one. The API lower-cases tags itself
-- (in Rust, the same on both stores), so nothing here needs the collation to ignore case.
--
-- Changing a column's collation needs every index and CHECK constraint on it dropped first; they are made again
-- as they were. No two tags of one document were equal under the old collation, so none are under the new one,
-- and the primary key is made again without a conflict. The release before this one runs on the result unchanged:
-- it binds tags as parameters, which take the column's collation.
DROP INDEX ix_document_tags_tag ON dbo.document_tags;
ALTER TABLE dbo.document_tags DROP CONSTRAINT pk_document_tags;
ALTER TABLE dbo.document_tags DROP CONSTRAINT ck_document_tags_tag;
ALTER TABLE dbo.document_tags ALTER COLUMN tag NVARCHAR(64) COLLATE Latin1_General_100_BIN2 NOT NULL;
ALTER TABLE dbo.document_tags ADD CONSTRAINT ck_document_tags_tag CHECK (LEN(tag) >= 1);
ALTER TABLE dbo.document_tags ADD CONSTRAINT pk_document_tags PRIMARY KEY (document_id, tag);
CREATE INDEX ix_document_tags_tag ON dbo.document_tags (tenant_id, tag, document_id);

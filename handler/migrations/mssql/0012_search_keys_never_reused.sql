-- The SQLite store's migration 12 rebuilds its search keys table so that a key's rowid is never given twice (the
-- search window there is a range of those rowids). SQL Server has no such table: its search window is a range of
-- (updated_at, id) on ix_documents_updated, and a document's position there is never reused. Nothing changes
-- here; the migration keeps both stores at the same version.
DECLARE @nothing_to_change BIT;

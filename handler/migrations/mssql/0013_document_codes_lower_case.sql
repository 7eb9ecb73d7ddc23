-- A document's docType and jurisdiction are codes, kept in lower case as tags are (the SQLite migration of the
-- same version says why). The comparisons are binary: under the database's case-insensitive collation `EU` and
-- `eu` are equal, and no row would be found. Each row this changes gets a new version (its ETag changes).
UPDATE dbo.documents
SET doc_type = LOWER(doc_type), jurisdiction = LOWER(jurisdiction), version = version + 1
WHERE doc_type COLLATE Latin1_General_100_BIN2 <> LOWER(doc_type) COLLATE Latin1_General_100_BIN2
   OR jurisdiction COLLATE Latin1_General_100_BIN2 <> LOWER(jurisdiction) COLLATE Latin1_General_100_BIN2;

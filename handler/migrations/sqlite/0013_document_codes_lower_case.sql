-- A document's docType and jurisdiction are codes, kept in lower case as tags are (docs/api-design.md,
-- "Validation"): SQL Server compares text ignoring case and SQLite does not, so `jurisdiction=eu` found `EU` on
-- one store only, and facets counted `EU` and `eu` apart. Each row this changes gets a new version, so its ETag
-- changes with what it shows. The API lower-cases them on every write from here on.
UPDATE documents
SET doc_type = lower(doc_type), jurisdiction = lower(jurisdiction), version = version + 1
WHERE doc_type <> lower(doc_type) OR jurisdiction <> lower(jurisdiction);

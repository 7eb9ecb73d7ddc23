-- A search key's rowid is never given twice (docs/data-model.md, "Search"): the search window is a range of these
-- rowids carried in a cursor, and without AUTOINCREMENT a key written after the newest one was deleted took the
-- deleted key's rowid again, so a newer document could fall inside an older cursor's window. The table is
-- rebuilt with AUTOINCREMENT; the rows keep their rowids (the full-text index refers to them), and the sequence
-- starts at the largest of them.
CREATE TABLE document_search_keys_autoincrement (
    search_rowid INTEGER NOT NULL PRIMARY KEY AUTOINCREMENT,
    document_id  TEXT    NOT NULL UNIQUE REFERENCES documents (id) ON DELETE CASCADE,
    tenant_id    TEXT    NOT NULL
) STRICT;
INSERT INTO document_search_keys_autoincrement (search_rowid, document_id, tenant_id)
SELECT search_rowid, document_id, tenant_id FROM document_search_keys ORDER BY search_rowid;
DROP TABLE document_search_keys;
ALTER TABLE document_search_keys_autoincrement RENAME TO document_search_keys;

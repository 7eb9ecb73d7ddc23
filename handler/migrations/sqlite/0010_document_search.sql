-- Full-text search (docs/api-design.md, "Search"): an FTS5 index of every live document's title, summary, body
-- and tags, written in the transaction of the document's write and searched with relevance (bm25).
-- A document's index row is found through `document_search_keys` (documents has a text key, and the implicit
-- rowid of such a table may change when the file is vacuumed).
CREATE TABLE document_search_keys (
    search_rowid INTEGER NOT NULL PRIMARY KEY,
    document_id  TEXT    NOT NULL UNIQUE REFERENCES documents (id) ON DELETE CASCADE,
    tenant_id    TEXT    NOT NULL
) STRICT;

-- Words are runs of letters and digits of any script, lower-cased, with diacritics removed; no stemming (the
-- documents are in many languages; a prefix reaches a word's forms). Prefixes of 2 and 3 characters are indexed
-- so that `word*` does not scan the vocabulary.
CREATE VIRTUAL TABLE document_search USING fts5 (
    title, summary, body, tags,
    tokenize = 'unicode61 remove_diacritics 2',
    prefix = '2 3'
);

-- The documents already stored.
INSERT INTO document_search_keys (document_id, tenant_id)
SELECT id, tenant_id FROM documents WHERE deleted_at IS NULL ORDER BY tenant_id, id;
INSERT INTO document_search (rowid, title, summary, body, tags)
SELECT k.search_rowid, d.title, d.summary, d.body,
       (SELECT group_concat(t.tag, ' ') FROM document_tags t WHERE t.document_id = d.id)
FROM document_search_keys k JOIN documents d ON d.id = k.document_id;

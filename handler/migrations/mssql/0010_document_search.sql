-- Full-text search (docs/api-design.md, "Search"), the same on every SQL Server flavour: the handler cuts each
-- live document into words (store::search::indexed_words: letters and digits of any script, lower case, no
-- diacritics) and writes them here in the transaction of the document's write. Words are compared in a binary
-- collation: they are already folded. The documents stored before this migration are indexed by the handler in
-- the migration's own transaction (store/mssql/operations.rs).
CREATE TABLE dbo.document_words (
    tenant_id   UNIQUEIDENTIFIER NOT NULL,
    word        NVARCHAR(64)     COLLATE Latin1_General_100_BIN2 NOT NULL,
    document_id UNIQUEIDENTIFIER NOT NULL
        CONSTRAINT fk_document_words_document REFERENCES dbo.documents (id) ON DELETE CASCADE,
    weight      INT              NOT NULL CONSTRAINT ck_document_words_weight CHECK (weight > 0),
    CONSTRAINT pk_document_words PRIMARY KEY (tenant_id, word, document_id)
);
CREATE INDEX ix_document_words_document ON dbo.document_words (document_id);

-- The words of each field in order, ' w1 w2 | w3 ... ' (fields separated by '|'): a phrase is a LIKE on it,
-- after the word index has narrowed the candidates.
CREATE TABLE dbo.document_search_text (
    document_id UNIQUEIDENTIFIER NOT NULL CONSTRAINT pk_document_search_text PRIMARY KEY
        CONSTRAINT fk_document_search_text_document REFERENCES dbo.documents (id) ON DELETE CASCADE,
    words       NVARCHAR(MAX)    COLLATE Latin1_General_100_BIN2 NOT NULL
);

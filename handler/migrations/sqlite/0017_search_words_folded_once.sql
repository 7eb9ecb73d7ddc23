-- The search index made again with the words folded in Rust (`store::search::fold`), the same fold every query
-- goes through. Until now FTS5's unicode61 tokenizer folded the index and Rust folded the queries, and the two
-- disagreed outside Latin letters: a Hangul syllable, a Japanese voiced kana, a Greek accented word, a Devanagari
-- word with a vowel sign or a Cyrillic й could never be found, not even by its exact stored text, and letters
-- newer than unicode61's Unicode 6.1 tables (Adlam, Osage) were not words at all. The `ascii` tokenizer splits
-- only at ASCII spaces and punctuation, so it takes each word the store writes (letters, digits and kept marks,
-- separated by spaces) as it is. The rows of the live documents are written again by the store right after this
-- script, in the same transaction (`store::sqlite::documents::index_stored_documents`).
DROP TABLE document_search;
CREATE VIRTUAL TABLE document_search USING fts5 (
    title, summary, body, tags,
    tokenize = 'ascii',
    prefix = '2 3'
);

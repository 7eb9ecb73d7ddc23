-- The words of every document indexed again: the fold of a word changed (`store::search::fold`: the marks of
-- scripts other than Latin and Greek are kept, words are composed again, a Greek final sigma is a sigma), and
-- every query is folded the new way. The store writes the words of the live documents right after this script,
-- in the same transaction (`store::mssql::documents::index_stored_documents`, as after migration 10).
DELETE FROM dbo.document_words;
DELETE FROM dbo.document_search_text;

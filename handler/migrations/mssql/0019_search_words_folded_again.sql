-- The words of every document indexed again. The fold of a word changed (`store::search::fold`): `ß`, `ł`, `ø` and
-- the other Latin letters no decomposition takes apart are spelled as their base letters, the micro sign is the
-- Greek mu, and invisible joiners inside a word (a soft hyphen) are dropped; and a document's tags are separated
-- by `|` in its word order, as its fields are, so a phrase matches inside one tag only. The store writes the words
-- of the live documents right after this script, in the same transaction
-- (`store::mssql::documents::index_stored_documents`, as after migrations 10 and 17).
DELETE FROM dbo.document_words;
DELETE FROM dbo.document_search_text;

-- The search index written again. The fold of a word changed (`store::search::fold`): `ß`, `ł`, `ø` and the other
-- Latin letters no decomposition takes apart are spelled as their base letters, the micro sign is the Greek mu,
-- and invisible joiners inside a word (a soft hyphen) are dropped; and a barrier token now separates a document's
-- tags (`store::search::TAG_BARRIER`), so a phrase matches inside one tag only. The store writes the rows of the
-- live documents again right after this script, in the same transaction
-- (`store::sqlite::documents::index_stored_documents`, as after migration 17).
DELETE FROM document_search;

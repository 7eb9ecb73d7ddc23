//! Full-text search over documents, as both stores see it: the parsed query, the word rule and the field weights.
//!
//! A document's searchable text is its title, summary, body and tags. Both stores cut it into words the same
//! way ([`words`]): a word is a run of letters and digits (any script), folded to lower case with the diacritics
//! of Latin and Greek letters removed ([`fold`]), so `Régulation` and `regulation` are one word and `co-operation`
//! is two. There is no stemming: the
//! documents are legal texts in many languages, and a prefix (`regulat*`) reaches a word's forms in any of them.
//! The API parses what a client typed into a [`SearchQuery`] (`api::search`); the stores only ever see that.

use unicode_normalization::UnicodeNormalization;
use unicode_normalization::char::is_combining_mark;

/// A parsed search: every term that is not excluded must match, no excluded term may. At least one term is
/// not excluded (the parser refuses a query of exclusions only).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SearchQuery {
    pub terms: Vec<SearchTerm>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SearchTerm {
    pub kind: TermKind,
    /// `-term`: documents containing it are left out.
    pub excluded: bool,
}

/// What one term matches; every word in it is already folded ([`fold`]) and made only of letters and digits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TermKind {
    /// The word itself.
    Word(String),
    /// Any word starting with it (at least [`MIN_PREFIX`] characters).
    Prefix(String),
    /// These words next to each other in this order, within one field.
    Phrase(Vec<String>),
}

/// The fewest characters before a `*`.
pub const MIN_PREFIX: usize = 2;
/// The most terms in one query.
pub const MAX_TERMS: usize = 16;
/// The longest word the index keeps whole (longer words still match, on their first 64 characters).
pub const MAX_WORD: usize = 64;

/// How much a match in each field counts toward relevance: title, summary, body, tags.
pub const FIELD_WEIGHTS: [f64; 4] = [10.0, 4.0, 1.0, 3.0];

/// The most matches a search in relevance order ranks, and its facets count: past this many, only the most
/// recently written matches are ([`SearchWindow`]). Neither store can rank without scoring every match (FTS5 has
/// no top-k pruning: bm25 and the join cost about a microsecond per match), so an unbounded window makes a
/// search for a word in most documents as slow as ranking all of them (BENCHMARKS.md, "Search at 10 000 and
/// 100 000 documents").
pub const SEARCH_WINDOW: u32 = 2_000;

/// The matches a search ranks when it has more than `size` (after every filter): those written after `after`
/// and up to `through` in the store's order of writes, the `size` most recent ones when the window was taken.
/// Chosen on a search's first page and carried in its cursor, so every page ranks the same documents: one
/// written later falls after `through`, one changed later moves there (a change is a write), one deleted leaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SearchWindow {
    pub size: u32,
    /// Exclusive: the newest match left out when the window was taken.
    pub after: WritePosition,
    /// Inclusive: the newest match when the window was taken.
    pub through: WritePosition,
}

/// A document's place in a store's order of writes, opaque outside the store: on SQLite its search index rowid
/// (the id is unused, nil), on SQL Server its `updated_at` in microseconds and its id (the tie-breaker).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct WritePosition {
    pub at: i64,
    pub id: uuid::Uuid,
}

impl SearchQuery {
    /// The terms that must match.
    pub fn required(&self) -> impl Iterator<Item = &TermKind> {
        self.terms.iter().filter(|t| !t.excluded).map(|t| &t.kind)
    }

    /// The terms that must not match.
    pub fn excluded(&self) -> impl Iterator<Item = &TermKind> {
        self.terms.iter().filter(|t| t.excluded).map(|t| &t.kind)
    }

    /// A canonical spelling of the query (a cursor's fingerprint includes it): two queries that parse alike
    /// spell alike.
    pub fn canonical(&self) -> String {
        let spelled: Vec<String> = self
            .terms
            .iter()
            .map(|t| {
                let sign = if t.excluded { "-" } else { "" };
                match &t.kind {
                    TermKind::Word(w) => format!("{sign}{w}"),
                    TermKind::Prefix(p) => format!("{sign}{p}*"),
                    TermKind::Phrase(words) => format!("{sign}\"{}\"", words.join(" ")),
                }
            })
            .collect();
        spelled.join(" ")
    }

    /// The query as an SQLite FTS5 `MATCH` expression. Every word is double-quoted and made only of letters and
    /// digits, so nothing a client typed can be read as FTS5 syntax.
    pub fn fts5(&self) -> String {
        let quoted = |kind: &TermKind| match kind {
            TermKind::Word(w) => format!("\"{w}\""),
            TermKind::Prefix(p) => format!("\"{p}\" *"),
            TermKind::Phrase(words) => format!("\"{}\"", words.join(" ")),
        };
        let required: Vec<String> = self.required().map(quoted).collect();
        let mut expression = format!("({})", required.join(" AND "));
        for kind in self.excluded() {
            expression.push_str(&format!(" NOT {}", quoted(kind)));
        }
        expression
    }
}

impl TermKind {
    /// Whether `word` (folded) is one this term matches on its own (a phrase's words each count).
    pub fn matches_word(&self, word: &str) -> bool {
        match self {
            TermKind::Word(w) => w == word,
            TermKind::Prefix(p) => word.starts_with(p.as_str()),
            TermKind::Phrase(words) => words.iter().any(|w| w == word),
        }
    }
}

/// What the SQL Server store indexes of a document (its title, summary, body and tags): each word once with its
/// weight (per field, the field's weight from [`FIELD_WEIGHTS`] times the word's occurrences there, at most 10),
/// and the words of each field in order, as ` w1 w2 | w3 … ` (fields separated by `|`), for phrases. Words longer
/// than [`MAX_WORD`] UTF-16 code units (`document_words.word` is an `NVARCHAR(64)`) are cut to it.
pub fn indexed_words(fields: [&str; 4]) -> (Vec<(String, i32)>, String) {
    let mut weights: std::collections::BTreeMap<String, [i32; 4]> = std::collections::BTreeMap::new();
    let mut text = String::from(" ");
    for (field, content) in fields.iter().enumerate() {
        for (part, piece) in content.split(TAG_BARRIER).enumerate() {
            // Fields, and the tags within theirs, are separated by `|`: no phrase runs across one.
            if field > 0 || part > 0 {
                text.push_str("| ");
            }
            for (word, _) in words(piece) {
                let word = super::clip_utf16(&word, MAX_WORD);
                text.push_str(&word);
                text.push(' ');
                let counts = weights.entry(word).or_default();
                counts[field] = (counts[field] + 1).min(10);
            }
        }
    }
    let weighted = weights
        .into_iter()
        .map(|(word, counts)| {
            let weight = counts.iter().zip(FIELD_WEIGHTS).map(|(n, w)| n * w as i32).sum();
            (word, weight)
        })
        .collect();
    (weighted, text)
}

/// Lower case without the diacritics of Latin and Greek letters: `Émission` -> `emission`, `Νόμος` -> `νομοσ`;
/// the Latin letters no decomposition takes apart spelled as their base letters (`groß` -> `gross`, `Łódź` ->
/// `lodz`, [`unfolded`]); invisible joiners inside a word (a soft hyphen from a PDF) dropped.
///
/// Other scripts keep their marks, which are part of their letters (the Japanese `ガ` is not `カ`, a Devanagari
/// vowel sign is a vowel), except the diaeresis of Cyrillic (`ё` is written `е` as often as not). The result is
/// composed again (NFC), so a Hangul syllable stays one syllable, and a Greek final sigma is a sigma. Both stores
/// index the words folded here and every query is folded here, so a word is found by any spelling that folds to
/// it, in every script Rust's Unicode tables know.
pub fn fold(word: &str) -> String {
    let mut lower = String::with_capacity(word.len());
    for c in word.chars().filter(|c| !is_joiner(*c)).flat_map(char::to_lowercase) {
        match unfolded(c) {
            Some(spelled) => lower.push_str(spelled),
            None => lower.push(c),
        }
    }
    let mut bare = String::with_capacity(lower.len());
    let mut base = Script::Other;
    for c in lower.nfd() {
        if is_combining_mark(c) {
            let dropped = match base {
                Script::LatinOrGreek => true,
                Script::Cyrillic => c == '\u{308}',
                Script::Other => false,
            };
            if !dropped {
                bare.push(c);
            }
        } else {
            base = Script::of(c);
            bare.push(c);
        }
    }
    bare.nfc().map(|c| if c == 'ς' { 'σ' } else { c }).collect()
}

/// A lower-case letter Unicode does not decompose into a base letter and a mark, spelled as search engines fold
/// it: Unicode's case folding for `ß` and the long `ſ`, ICU's Latin folding for the letters with a stroke and the
/// ligatures, and the micro sign as the Greek mu it stands for.
fn unfolded(c: char) -> Option<&'static str> {
    Some(match c {
        'ß' => "ss",
        'ſ' => "s",
        'ł' | 'ŀ' => "l",
        'ø' => "o",
        'đ' | 'ð' => "d",
        'ħ' => "h",
        'ŧ' => "t",
        'ı' => "i",
        'æ' => "ae",
        'œ' => "oe",
        'þ' => "th",
        'µ' => "μ",
        _ => return None,
    })
}

/// Invisible characters that join what surrounds them into one word (a soft hyphen, the zero-width joiners, the
/// word joiner): part of a word, dropped by [`fold`]. A zero-width space still separates words.
fn is_joiner(c: char) -> bool {
    matches!(c, '\u{00AD}' | '\u{200C}' | '\u{200D}' | '\u{2060}' | '\u{FEFF}')
}

/// Between two tags in the text the stores index: no word, so no phrase runs from one tag into the next.
pub const TAG_BARRIER: char = '\u{E000}';

/// A document's tags as one field of the text the stores index, [`TAG_BARRIER`] between two.
pub fn tags_field(tags: &[&str]) -> String {
    tags.join(&TAG_BARRIER.to_string())
}

/// Which diacritics [`fold`] drops after a letter: by the letter's script.
#[derive(Clone, Copy)]
enum Script {
    LatinOrGreek,
    Cyrillic,
    Other,
}

impl Script {
    fn of(c: char) -> Script {
        match c as u32 {
            0x0000..=0x024F | 0x1E00..=0x1EFF | 0x2C60..=0x2C7F | 0xA720..=0xA7FF | 0xAB30..=0xAB6F => {
                Script::LatinOrGreek
            }
            0x0370..=0x03FF | 0x1F00..=0x1FFF => Script::LatinOrGreek,
            0x0400..=0x052F | 0x1C80..=0x1C8F | 0x2DE0..=0x2DFF | 0xA640..=0xA69F => Script::Cyrillic,
            _ => Script::Other,
        }
    }
}

/// `text` as the SQLite index stores it: its words ([`words`]), folded, separated by single spaces. The index's
/// tokenizer (FTS5's `ascii`, which splits only at ASCII punctuation and spaces) then sees exactly these words.
///
/// Parts separated by [`TAG_BARRIER`] (a document's tags) keep it between them as a token of its own, which no
/// query word can be (it is no letter or digit): a phrase matches inside one tag only.
pub fn folded_text(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for (part, piece) in text.split(TAG_BARRIER).enumerate() {
        let mut first = true;
        for (word, _) in words(piece) {
            if !out.is_empty() {
                out.push(' ');
            }
            if first && part > 0 && !out.is_empty() {
                out.push(TAG_BARRIER);
                out.push(' ');
            }
            first = false;
            out.push_str(&word);
        }
    }
    out
}

/// Whether `c` belongs to a word (letters and digits of any script, and combining marks, which folding drops).
pub fn is_word_char(c: char) -> bool {
    c.is_alphanumeric() || is_combining_mark(c) || is_joiner(c)
}

/// The words of `text`, folded, each with its byte range in `text`.
pub fn words(text: &str) -> impl Iterator<Item = (String, std::ops::Range<usize>)> + '_ {
    let mut rest = text.char_indices().peekable();
    std::iter::from_fn(move || {
        while rest.peek().is_some_and(|(_, c)| !is_word_char(*c)) {
            rest.next();
        }
        let (start, _) = *rest.peek()?;
        let mut end = start;
        while let Some((at, c)) = rest.peek().copied().filter(|(_, c)| is_word_char(*c)) {
            end = at + c.len_utf8();
            rest.next();
        }
        let word = fold(&text[start..end]);
        // A run of combining marks alone folds to nothing: not a word.
        Some(Some((word, start..end)).filter(|(w, _)| !w.is_empty()))
    })
    .flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_are_runs_of_letters_and_digits_folded_to_lower_case_without_diacritics() {
        let found: Vec<String> =
            words("Régulation (EU) 2016/679 — co-operation, ÉMISSIONS naïve straße").map(|w| w.0).collect();
        assert_eq!(found, ["regulation", "eu", "2016", "679", "co", "operation", "emissions", "naive", "strasse"]);
        let text = "Zoll: Ausfuhr";
        let ranges: Vec<&str> = words(text).map(|(_, r)| &text[r]).collect();
        assert_eq!(ranges, ["Zoll", "Ausfuhr"]);
        assert_eq!(words("  ,;- ").count(), 0);
    }

    #[test]
    fn folding_drops_the_diacritics_of_latin_and_greek_and_keeps_the_letters_of_other_scripts() {
        let folded = |text: &str| words(text).map(|w| w.0).collect::<Vec<_>>();
        assert_eq!(folded("İstanbul ÉCOLE cafe\u{301} Łódź"), ["istanbul", "ecole", "cafe", "lodz"]);
        assert_eq!(
            folded("groß GROSS Maßnahmen ſtatute Øre đ ħ Æsir œuvre Þing µm Zoll\u{AD}union foo\u{200D}bar"),
            [
                "gross",
                "gross",
                "massnahmen",
                "statute",
                "ore",
                "d",
                "h",
                "aesir",
                "oeuvre",
                "thing",
                "μm",
                "zollunion",
                "foobar"
            ],
            "letters no decomposition takes apart, spelled as their base letters; joiners dropped"
        );
        assert_eq!(folded("a\u{200B}b"), ["a", "b"], "a zero-width space separates words");
        assert_eq!(folded_text(&tags_field(&["crossa", "crossb zed"])), "crossa \u{E000} crossb zed");
        let (_, text) = indexed_words(["", "", "", &tags_field(&["crossa", "crossb zed"])]);
        assert_eq!(text, " | | | crossa | crossb zed ", "no phrase runs from one tag into the next");
        assert_eq!(folded("Νόμος ΣΊΣΥΦΟΣ"), ["νομοσ", "σισυφοσ"], "Greek: no accents, one sigma");
        assert_eq!(folded("Ёлка мой"), ["елка", "мой"], "Cyrillic: the diaeresis only");
        assert_eq!(
            folded("서울 ガイド が भाषा தமிழ்"),
            ["서울", "ガイド", "が", "भाषा", "தமிழ்"],
            "marks kept, composed"
        );
        assert_eq!(folded("\u{1100}\u{1161}"), ["가"], "conjoining jamo compose into the syllable");
        assert_eq!(folded_text("Régulation (EU) 2016/679, ガイド"), "regulation eu 2016 679 ガイド");
        for word in ["서울", "νομοσ", "ガイド", "भाषा", "கஅ"] {
            assert_eq!(fold(&fold(word)), fold(word), "folding twice changes nothing: {word}");
        }
    }

    #[test]
    fn indexed_words_weigh_each_field_and_keep_the_word_order_of_each() {
        let (weighted, text) = indexed_words(["Customs code", "", "customs customs union", "trade"]);
        assert_eq!(
            weighted,
            vec![("code".to_owned(), 10), ("customs".to_owned(), 12), ("trade".to_owned(), 3), ("union".to_owned(), 1)]
        );
        assert_eq!(text, " customs code | | customs customs union | trade ");
    }

    #[test]
    fn the_fts5_expression_quotes_every_word_and_puts_exclusions_last() {
        let query = SearchQuery {
            terms: vec![
                SearchTerm { kind: TermKind::Word("customs".into()), excluded: false },
                SearchTerm { kind: TermKind::Phrase(vec!["union".into(), "code".into()]), excluded: true },
                SearchTerm { kind: TermKind::Prefix("regul".into()), excluded: false },
            ],
        };
        assert_eq!(query.fts5(), r#"("customs" AND "regul" *) NOT "union code""#);
        assert_eq!(query.canonical(), r#"customs -"union code" regul*"#);
        assert!(TermKind::Prefix("regul".into()).matches_word("regulation"));
        assert!(!TermKind::Word("regul".into()).matches_word("regulation"));
    }
}

//! The search query language of `q` (words, `"phrases"`, `prefix*`, `-exclusion`), the highlights of a match and
//! the wire form of highlights and facets.
//!
//! What a client types is parsed here into `store::search::SearchQuery`, or refused with a 422 that names the
//! character where it went wrong; no text of the client's ever reaches a store as query syntax. The grammar
//! (docs/api-design.md, "Search"): terms separated by spaces; a term is a word, a `"quoted phrase"` or a word
//! ending in `*`, optionally preceded by `-`. Punctuation inside a word splits it, and a term that splits into
//! several words is a phrase (`co-operation` is `"co operation"`). There are no other operators: `AND`, `OR`
//! and `NOT` are ordinary words.

use serde::Serialize;

use crate::error::FieldError;
use crate::store::search::{MAX_TERMS, MAX_WORD, MIN_PREFIX, SearchQuery, SearchTerm, TermKind, words};
use crate::store::{Document, Facet, FacetField};

/// Parses `q`; the error is the `q` parameter's, at the character (1-based) where the problem starts.
pub fn parse(raw: &str) -> Result<SearchQuery, Box<FieldError>> {
    let chars: Vec<char> = raw.chars().map(operator).collect();
    let fail = |at: usize, code: &str, message: &str| {
        Err(Box::new(
            FieldError::new("q", code, format!("{message} (at character {})", at + 1)).in_query("q").at(at + 1),
        ))
    };
    let mut terms = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        if chars[i].is_whitespace() {
            i += 1;
            continue;
        }
        let start = i;
        let excluded = chars[i] == '-';
        if excluded {
            i += 1;
            if i == chars.len() || chars[i].is_whitespace() {
                return fail(start, "syntax", "'-' must be followed by a word or a phrase");
            }
        }
        let kind = if chars[i] == '"' {
            let open = i;
            let Some(close) = chars[open + 1..].iter().position(|c| *c == '"').map(|p| open + 1 + p) else {
                return fail(open, "syntax", "this quote is never closed");
            };
            if let Some(star) = chars[open + 1..close].iter().position(|c| *c == '*') {
                return fail(
                    open + 1 + star,
                    "syntax",
                    "'*' makes a prefix of a word outside quotes, not inside a phrase",
                );
            }
            let text: String = chars[open + 1..close].iter().collect();
            let found: Vec<String> = words(&text).map(|(w, _)| w).collect();
            if found.is_empty() {
                return fail(open, "syntax", "a phrase needs at least one word");
            }
            i = close + 1;
            if chars.get(i) == Some(&'*') {
                return fail(i, "syntax", "'*' ends a word, not a phrase");
            }
            one_or_phrase(found)
        } else {
            let begin = i;
            while i < chars.len() && !chars[i].is_whitespace() && chars[i] != '"' {
                i += 1;
            }
            let token: String = chars[begin..i].iter().collect();
            let (body, prefix) = match token.strip_suffix('*') {
                Some(body) => (body, true),
                None => (token.as_str(), false),
            };
            if let Some(star) = body.chars().position(|c| c == '*') {
                return fail(begin + star, "syntax", "'*' is only allowed at the end of a word");
            }
            let found: Vec<String> = words(body).map(|(w, _)| w).collect();
            // Punctuation or symbols standing alone (`Q & A`, `title : x`, an emoji) separate words like a space;
            // with an operator (`-`, `*`) there is nothing for the operator to apply to.
            if found.is_empty() && !excluded && !prefix {
                continue;
            }
            if found.is_empty() {
                return fail(begin, "syntax", "a term needs at least one letter or digit");
            }
            if prefix {
                if !body.chars().last().is_some_and(char::is_alphanumeric) {
                    // `customs-*`: the star follows punctuation, so there is no word for it to end.
                    return fail(i - 1, "syntax", "'*' must follow a letter or digit");
                }
                if found.len() > 1 {
                    return fail(begin, "syntax", "a prefix (word*) must be a single word");
                }
                if found[0].chars().count() < MIN_PREFIX {
                    return fail(begin, "syntax", "a prefix needs at least 2 letters or digits before '*'");
                }
                TermKind::Prefix(found.into_iter().next().expect("one word"))
            } else {
                one_or_phrase(found)
            }
        };
        let longest = match &kind {
            TermKind::Word(w) | TermKind::Prefix(w) => crate::store::utf16_width(w),
            TermKind::Phrase(ws) => ws.iter().map(|w| crate::store::utf16_width(w)).max().unwrap_or(0),
        };
        if longest > MAX_WORD {
            return fail(start, "maxLength", "a word has at most 64 characters (UTF-16 code units)");
        }
        terms.push(SearchTerm { kind, excluded });
        if terms.len() > MAX_TERMS {
            return fail(start, "maxItems", "a search has at most 16 terms");
        }
    }
    match terms.iter().position(|t| !t.excluded) {
        Some(_) => Ok(SearchQuery { terms }),
        None if terms.is_empty() => fail(0, "syntax", "a search needs at least one word"),
        None => fail(0, "syntax", "a search needs at least one term that is not excluded with '-'"),
    }
}

/// The operator a typographic character stands for, as word processors and keyboards write them: curly, low and
/// angle quotes and the full-width quote are `"`; the en and em dashes and the minus sign are `-`. Each stays one
/// character, so positions in errors still count the characters the client sent.
fn operator(c: char) -> char {
    match c {
        '\u{201C}' | '\u{201D}' | '\u{201E}' | '\u{201F}' | '\u{00AB}' | '\u{00BB}' | '\u{FF02}' => '"',
        '\u{2013}' | '\u{2014}' | '\u{2212}' | '\u{FE63}' | '\u{FF0D}' => '-',
        c => c,
    }
}

fn one_or_phrase(mut found: Vec<String>) -> TermKind {
    if found.len() == 1 { TermKind::Word(found.remove(0)) } else { TermKind::Phrase(found) }
}

/// Words shown before the first match of a snippet.
const BEFORE: usize = 8;
/// Words shown in all of a snippet.
const SNIPPET_WORDS: usize = 32;
/// Characters shown in all of a snippet, whatever its words' lengths.
const SNIPPET_CHARS: usize = 320;

/// The byte offset `n` characters before `at` in `text` (or its start).
fn chars_before(text: &str, at: usize, n: usize) -> usize {
    text[..at].char_indices().rev().nth(n.saturating_sub(1)).map_or(0, |(i, _)| i)
}

/// The byte offset `n` characters after `from` in `text` (or its end).
fn chars_after(text: &str, from: usize, n: usize) -> usize {
    text[from..].char_indices().nth(n).map_or(text.len(), |(i, _)| from + i)
}

/// `text` HTML-escaped, with every word the query looks for wrapped in `<mark>` and `</mark>`; `None` when no
/// such word is in it. Long text is cut to a snippet of about 32 words (at most 320 characters) around the first
/// match, with `…`
/// where it was cut. The result is safe to insert as HTML: the only markup in it is `<mark>`.
pub fn highlight(text: &str, query: &SearchQuery, snippet: bool) -> Option<String> {
    let wanted = |word: &str| query.required().any(|kind| kind.matches_word(word));
    // Each word of the text with whether it is wanted, as far as needed: for a snippet, up to a snippet's worth
    // past the first match (`complete` when that reached the end of the text).
    let mut all: Vec<(bool, std::ops::Range<usize>)> = Vec::new();
    let mut first = None;
    let mut complete = true;
    for (word, range) in words(text) {
        let hit = wanted(&word);
        if hit && first.is_none() {
            first = Some(all.len());
        }
        all.push((hit, range));
        if snippet && first.is_some_and(|f| all.len() >= f + SNIPPET_WORDS) {
            complete = false;
            break;
        }
    }
    let first = first?;
    let (from, to) = if snippet {
        let from = first.saturating_sub(BEFORE);
        (from, (from + SNIPPET_WORDS).min(all.len()))
    } else {
        (0, all.len())
    };
    let mut start = if from == 0 { 0 } else { all[from].1.start };
    let mut end = if complete && to == all.len() { text.len() } else { all[to - 1].1.end };
    if snippet && text[start..end].chars().count() > SNIPPET_CHARS {
        // Long words (a run of CJK, a long token): the snippet is cut at characters, a third before the first match.
        let hit = all[first].1.start;
        start = start.max(chars_before(text, hit, SNIPPET_CHARS / 3));
        end = end.min(chars_after(text, start, SNIPPET_CHARS));
    }
    let mut out = String::new();
    if start > 0 {
        out.push('…');
    }
    let mut at = start;
    for (hit, range) in &all[from..to] {
        // A match the cut reaches into is marked as far as it is shown.
        let shown = range.start.max(start)..range.end.min(end);
        if *hit && !shown.is_empty() {
            escape_into(&mut out, &text[at..shown.start]);
            out.push_str("<mark>");
            escape_into(&mut out, &text[shown.clone()]);
            out.push_str("</mark>");
            at = shown.end;
        }
    }
    escape_into(&mut out, &text[at..end]);
    if end < text.len() {
        out.push('…');
    }
    Some(out)
}

/// The words of a document that a search looked for, marked with `<mark>` in HTML-escaped text; a field is
/// absent when none of them is in it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Highlights {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    /// A snippet of about 32 words around the first match (`…` where cut).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub summary: Option<String>,
    /// A snippet of about 32 words around the first match (`…` where cut).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
    /// The tags with a match, each marked.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
}

impl Highlights {
    pub fn of(d: &Document, query: &SearchQuery) -> Self {
        Highlights {
            title: highlight(&d.title, query, false),
            summary: d.summary.as_deref().and_then(|text| highlight(text, query, true)),
            body: d.body.as_deref().and_then(|text| highlight(text, query, true)),
            tags: d.tags.iter().filter_map(|tag| highlight(tag, query, false)).collect(),
        }
    }
}

/// One value of a facet and how many matching documents have it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct FacetValue {
    pub value: String,
    pub count: u64,
}

/// The counts asked for with `facets`, over every matching document (not just the page).
#[derive(Debug, Clone, Default, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct FacetCounts {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub doc_type: Option<Vec<FacetValue>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jurisdiction: Option<Vec<FacetValue>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tags: Option<Vec<FacetValue>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<Vec<FacetValue>>,
}

impl From<Vec<Facet>> for FacetCounts {
    fn from(facets: Vec<Facet>) -> Self {
        let mut counts = FacetCounts::default();
        for facet in facets {
            let values = Some(facet.values.into_iter().map(|(value, count)| FacetValue { value, count }).collect());
            match facet.field {
                FacetField::DocType => counts.doc_type = values,
                FacetField::Jurisdiction => counts.jurisdiction = values,
                FacetField::Tags => counts.tags = values,
                FacetField::Status => counts.status = values,
            }
        }
        counts
    }
}

/// Present on a search's list response only when the search matched more documents than its window (2 000):
/// ranking costs in proportion to the matches, so of a search for a word most documents contain only the `window`
/// most recently written matches (created or changed; every filter applied first) are ranked. In relevance order
/// the pages, `count` and `facets` then cover those; in another order the pages list every match and only
/// `facets` cover the window. A narrower search (another word, a phrase, a filter) reaches the older matches.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(example = json!({"window": 2000}))]
pub struct SearchCoverage {
    /// How many matches, the most recently written, were ranked (and counted and faceted).
    pub window: u32,
}

fn escape_into(out: &mut String, text: &str) {
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            // Control characters other than white space are not allowed in HTML text (NUL least of all): the
            // replacement character, as an HTML parser would read them.
            c if c.is_control() && !matches!(c, '\t' | '\n' | '\r') => out.push('\u{FFFD}'),
            c => out.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn terms(raw: &str) -> Vec<(String, bool)> {
        parse(raw).unwrap().terms.into_iter().map(|t| (format!("{:?}", t.kind), t.excluded)).collect()
    }

    #[test]
    fn words_phrases_prefixes_and_exclusions_parse_into_terms() {
        assert_eq!(
            terms(r#"  Customs "Union  Code" regul* -draft -"old text" co-operation AND "#),
            vec![
                (r#"Word("customs")"#.into(), false),
                (r#"Phrase(["union", "code"])"#.into(), false),
                (r#"Prefix("regul")"#.into(), false),
                (r#"Word("draft")"#.into(), true),
                (r#"Phrase(["old", "text"])"#.into(), true),
                (r#"Phrase(["co", "operation"])"#.into(), false),
                (r#"Word("and")"#.into(), false),
            ]
        );
        assert_eq!(terms(r#""émission""#), vec![(r#"Word("emission")"#.into(), false)]);
        // Punctuation and symbols standing alone separate words, as they do inside a word.
        assert_eq!(terms("Q & A"), terms("q a"));
        assert_eq!(terms("title : customs \u{1F680}"), terms("title customs"));
        // Typographic quotes and dashes are the operators they stand for.
        assert_eq!(
            terms("\u{201C}customs union\u{201D} \u{2013}draft \u{2212}old"),
            terms(r#""customs union" -draft -old"#)
        );
        assert_eq!(
            terms("\u{00AB} customs union \u{00BB} \u{201E}tax code\u{201C}"),
            terms(r#""customs union" "tax code""#)
        );
    }

    #[test]
    fn what_the_grammar_refuses_is_named_with_its_position() {
        for (raw, position, says) in [
            (r#"tax "customs union"#, 5, "never closed"),
            ("tax -", 5, "followed by"),
            ("tax - customs", 5, "followed by"),
            ("ta*x", 3, "end of a word"),
            ("*", 1, "letter or digit"),
            ("a*", 1, "at least 2"),
            ("co-op*", 1, "single word"),
            (r#""union code"*"#, 13, "not a phrase"),
            (r#"tax "cust*""#, 10, "not inside a phrase"),
            ("tax \u{201C}a* b\u{201D}", 7, "not inside a phrase"),
            (r#"tax """#, 5, "at least one word"),
            ("-tax -customs", 1, "not excluded"),
            ("&& ||", 1, "at least one word"),
            ("-& tax", 2, "letter or digit"),
            ("customs-*", 9, "follow a letter or digit"),
            ("tax ab.*", 8, "follow a letter or digit"),
        ] {
            let err = parse(raw).unwrap_err();
            assert_eq!(err.position, Some(position), "{raw}: {err:?}");
            assert!(err.message.contains(says), "{raw}: {}", err.message);
            assert_eq!(err.parameter.as_deref(), Some("q"));
        }
        let long = "x".repeat(65);
        assert_eq!(parse(&format!("tax {long}")).unwrap_err().position, Some(5));
        let many = (0..17).map(|n| format!("w{n}")).collect::<Vec<_>>().join(" ");
        assert!(parse(&many).unwrap_err().message.contains("16 terms"));
    }

    #[test]
    fn highlights_mark_the_matching_words_escape_the_rest_and_cut_long_text() {
        let query = parse(r#"customs "union code" regul*"#).unwrap();
        assert_eq!(
            highlight("Customs <b>Union</b> & Regulations", &query, false).as_deref(),
            Some("<mark>Customs</mark> &lt;b&gt;<mark>Union</mark>&lt;/b&gt; &amp; <mark>Regulations</mark>")
        );
        assert_eq!(highlight("nothing here", &query, false), None);
        assert_eq!(
            highlight("customs\u{0}\u{1}\tnote\n", &query, false).as_deref(),
            Some("<mark>customs</mark>\u{FFFD}\u{FFFD}\tnote\n"),
            "no control character but white space reaches the HTML"
        );
        let long = format!("{} customs {}", "lorem ".repeat(100), "ipsum ".repeat(100));
        let cut = highlight(&long, &query, true).unwrap();
        assert!(cut.starts_with('…') && cut.ends_with('…'), "{cut}");
        assert_eq!(cut.matches("lorem").count(), BEFORE);
        assert_eq!(cut.matches("<mark>customs</mark>").count(), 1);
        assert_eq!(highlight("short customs text", &query, true).as_deref(), Some("short <mark>customs</mark> text"));
        // Long words (here two tokens of 60 000 characters, or a run of CJK) do not make a long snippet.
        let tokens = format!("{} customs {}", "ab".repeat(30_000), "cd".repeat(30_000));
        let cut = highlight(&tokens, &query, true).unwrap();
        assert!(cut.chars().count() <= SNIPPET_CHARS + "<mark></mark>……".len(), "{} characters", cut.len());
        assert!(cut.starts_with("…") && cut.ends_with("cd…") && cut.contains(" <mark>customs</mark> "), "{cut}");
        let cjk = format!("{}customs{}", "関税".repeat(2_500), "規則".repeat(2_500));
        let cut = highlight(&cjk, &parse("customs").unwrap(), true);
        assert!(cut.as_ref().is_none_or(|cut| cut.chars().count() <= SNIPPET_CHARS + 20), "{cut:?}");
        let prefix = format!("x {} y", "regulation".repeat(1_000));
        let cut = highlight(&prefix, &query, true).unwrap();
        assert!(
            cut.starts_with("x <mark>regulation") && cut.ends_with("</mark>…"),
            "a long match is marked as far as shown"
        );
    }
}

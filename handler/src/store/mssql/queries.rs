//! The T-SQL statements of the SQL Server store not yet moved to their aggregate's file, and what the
//! statements assembled at run time share (`Arg`, `Assembled`, `ceil_micros`, the `DATE` range).
//!
//! Parameters are tiberius' positional `@P1`, `@P2`, …; ids bind as UNIQUEIDENTIFIER, times as DATETIME2.
//!
//! Each aggregate's file (`mssql/<aggregate>.rs`) holds its statements and lists them in its `STATEMENTS`;
//! [`ALL`] lists the constants still here, and `mssql::STATEMENTS` registers every list for `store::tsql_check`.
//! The document listing and the audit listing have a shape that depends on the request, so they are assembled
//! from fixed fragments (`mssql::documents::list_documents`, `mssql::audit::list_audit_events`); user values only ever
//! become bound parameters. The parse check cannot see function output through a constant, so
//! [`assembled_examples`] builds every shape those functions produce (each order and direction, with and
//! without a cursor, each filter alone and all together) and `store::tsql_check` parses them with the constants.

use chrono::{DateTime, NaiveDate, Utc};
use uuid::Uuid;

/// Session options every connection sets once: the ANSI settings filtered indexes require for writes,
/// and XACT_ABORT so any error inside a transaction rolls the whole transaction back.
pub const SESSION_OPTIONS: &str = "SET ANSI_NULLS ON;
SET ANSI_PADDING ON;
SET ANSI_WARNINGS ON;
SET ARITHABORT ON;
SET CONCAT_NULL_YIELDS_NULL ON;
SET QUOTED_IDENTIFIER ON;
SET NUMERIC_ROUNDABORT OFF;
SET XACT_ABORT ON";

/// A value bound to an assembled statement; `args[0]` is `@P1`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Arg {
    Int(i64),
    Id(Uuid),
    Text(String),
    Time(DateTime<Utc>),
    Date(NaiveDate),
}

/// A statement assembled from fixed fragments, and the values of its placeholders in order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Assembled {
    pub sql: String,
    pub args: Vec<Arg>,
}

impl Assembled {
    /// Binds a value and returns its placeholder, `@P<n>`.
    pub(crate) fn bind(&mut self, arg: Arg) -> String {
        self.args.push(arg);
        format!("@P{}", self.args.len())
    }
}

/// Every shape the assembling functions produce, named, for the parse check (`store::tsql_check`).
#[cfg(test)]
pub fn assembled_examples() -> Vec<(String, Assembled)> {
    use chrono::TimeZone;

    use super::documents::{count_documents, list_documents, tags_of_documents, undated_documents};
    use crate::store::search::{SearchQuery, SearchTerm, SearchWindow, TermKind, WritePosition};
    use crate::store::{
        AuditCursor, AuditFilter, DocumentCursor, DocumentFilter, DocumentSort, DocumentSortKey, DocumentStatus,
        FacetField, NO_EFFECTIVE_DATE, SortValue,
    };

    let tenant = Uuid::from_u128(1);
    let id = Uuid::from_u128(2);
    let t = Utc.with_ymd_and_hms(2026, 1, 31, 12, 0, 0).unwrap();
    let date = NaiveDate::from_ymd_opt(2026, 1, 31).unwrap();
    let full = DocumentFilter {
        status: Some(DocumentStatus::Published),
        doc_type: Some("contract".into()),
        jurisdiction: Some("FR".into()),
        tags_any: vec!["a".into(), "b".into(), "c".into()],
        updated_after: Some(t),
        updated_before: Some(t),
        effective_from: Some(date),
        effective_to: Some(date),
        search: Some(SearchQuery {
            terms: vec![
                SearchTerm { kind: TermKind::Word("customs".into()), excluded: false },
                SearchTerm { kind: TermKind::Phrase(vec!["union".into(), "code".into()]), excluded: false },
                SearchTerm { kind: TermKind::Prefix("regul".into()), excluded: false },
                SearchTerm { kind: TermKind::Word("draft".into()), excluded: true },
                SearchTerm { kind: TermKind::Phrase(vec!["old".into(), "text".into()]), excluded: true },
            ],
        }),
        window: Some(SearchWindow {
            size: 2_000,
            after: WritePosition { at: t.timestamp_micros() - 1, id: tenant },
            through: WritePosition { at: t.timestamp_micros(), id },
        }),
        take_window: None,
    };
    let alone: Vec<(&str, DocumentFilter)> = vec![
        ("status", DocumentFilter { status: full.status, ..Default::default() }),
        ("doc_type", DocumentFilter { doc_type: full.doc_type.clone(), ..Default::default() }),
        ("jurisdiction", DocumentFilter { jurisdiction: full.jurisdiction.clone(), ..Default::default() }),
        ("one tag", DocumentFilter { tags_any: vec!["a".into()], ..Default::default() }),
        ("updated_after", DocumentFilter { updated_after: full.updated_after, ..Default::default() }),
        ("updated_before", DocumentFilter { updated_before: full.updated_before, ..Default::default() }),
        ("effective_from", DocumentFilter { effective_from: full.effective_from, ..Default::default() }),
        ("effective_to", DocumentFilter { effective_to: full.effective_to, ..Default::default() }),
        ("search", DocumentFilter { search: full.search.clone(), ..Default::default() }),
        (
            "search in a window",
            DocumentFilter { search: full.search.clone(), window: full.window, ..Default::default() },
        ),
        ("all filters", full.clone()),
        ("no filter", DocumentFilter::default()),
    ];
    let mut out = Vec::new();
    for key in
        [DocumentSortKey::UpdatedAt, DocumentSortKey::Title, DocumentSortKey::EffectiveDate, DocumentSortKey::Relevance]
    {
        let value = match key {
            DocumentSortKey::UpdatedAt => SortValue::Time(t),
            DocumentSortKey::Title => SortValue::Text("Lease".into()),
            DocumentSortKey::EffectiveDate => SortValue::Date(date),
            DocumentSortKey::Relevance => SortValue::Rank(-42),
        };
        let mut cursors = vec![("first page", None), ("next page", Some(DocumentCursor::at(value, id)))];
        if key == DocumentSortKey::EffectiveDate {
            let undated = DocumentCursor::at(SortValue::Date(NO_EFFECTIVE_DATE), id);
            cursors.push(("next page after an undated document", Some(undated)));
        }
        for descending in [false, true] {
            for (cursor_name, cursor) in &cursors {
                for filter in [&DocumentFilter::default(), &full] {
                    let sort = DocumentSort { key, descending };
                    if crate::store::check_sort(sort, filter).is_err() {
                        continue;
                    }
                    let name = format!("list_documents {key:?} descending={descending} {cursor_name} {filter:?}");
                    out.push((name, list_documents(tenant, filter, sort, cursor.as_ref(), 21).expect("assembles")));
                }
            }
        }
    }
    out.push(("undated_documents all filters".to_owned(), undated_documents(tenant, &full, 21).expect("assembles")));
    for (name, filter) in &alone {
        let sort = DocumentSort { key: DocumentSortKey::UpdatedAt, descending: true };
        out.push((
            format!("list_documents {name}"),
            list_documents(tenant, filter, sort, None, 21).expect("assembles"),
        ));
        out.push((format!("count_documents {name}"), count_documents(tenant, filter).expect("assembles")));
    }
    let audit = AuditFilter {
        actor: Some("oid".into()),
        action: Some("createDocument".into()),
        resource_type: Some("documents".into()),
        resource_id: Some("x".into()),
        outcome: Some(crate::store::AuditOutcome::Denied),
        from: Some(t),
        to: Some(t),
    };
    let audit_cursor = AuditCursor { occurred_at: t, id };
    for (tenant_name, tenant_id) in [("tenant", Some(tenant)), ("platform", None)] {
        for (filter_name, filter) in [("no filter", AuditFilter::default()), ("all filters", audit.clone())] {
            for cursor in [None, Some(&audit_cursor)] {
                let name = format!("list_audit_events {tenant_name} {filter_name} cursor={}", cursor.is_some());
                out.push((name, super::audit::list_audit_events(tenant_id, &filter, cursor, 26)));
            }
            let name = format!("count_audit_events {tenant_name} {filter_name}");
            out.push((name, super::audit::count_audit_events(tenant_id, &filter)));
        }
    }
    for (name, filter) in [("no filter", DocumentFilter::default()), ("all filters", full.clone())] {
        for field in [FacetField::DocType, FacetField::Jurisdiction, FacetField::Tags, FacetField::Status] {
            let facet = super::documents::facet_values(tenant, &filter, field).expect("assembles");
            out.push((format!("facet_values {field:?} {name}"), facet));
        }
    }
    for (name, filter) in &alone {
        if filter.search.is_some() {
            let window = super::documents::search_window(tenant, filter, 2_000).expect("assembles");
            out.push((format!("search_window {name}"), window));
        }
    }
    let window = super::documents::search_window(tenant, &full, 2_000).expect("assembles");
    out.push(("search_window all filters".into(), window));
    let (words, _) = crate::store::search::indexed_words(["Customs code", "", "union", "trade"]);
    out.push(("insert_words".into(), super::documents::insert_words(tenant, id, &words)));
    out.push(("tags_of_documents 1".into(), tags_of_documents(tenant, &[id])));
    out.push(("tags_of_documents 3".into(), tags_of_documents(tenant, &[id, tenant, id])));
    out
}

/// Every constant statement above, named, for the parse check (the assembled ones: [`assembled_examples`]).
pub const ALL: &[(&str, &str)] = &[("SESSION_OPTIONS", SESSION_OPTIONS)];

//! The documents API's wire types: what a client sends (`DocumentInput`, the merge patch it may send instead) and
//! what it is shown (`DocumentView`), with the rules the OpenAPI schema cannot state, kept apart from the store's
//! `Document` row.

use chrono::{DateTime, NaiveDate, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;
use validator::Validate;

use crate::api::conditional::etag;
use crate::api::search::Highlights;
use crate::store::{Document, DocumentStatus};

/// Most tags per document, and per `tag` filter.
pub(super) const MAX_TAGS: usize = 20;

/// The lifecycle status of a document.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Draft,
    Published,
    Archived,
}

impl From<Status> for DocumentStatus {
    fn from(s: Status) -> Self {
        match s {
            Status::Draft => DocumentStatus::Draft,
            Status::Published => DocumentStatus::Published,
            Status::Archived => DocumentStatus::Archived,
        }
    }
}

impl From<DocumentStatus> for Status {
    fn from(s: DocumentStatus) -> Self {
        match s {
            DocumentStatus::Draft => Status::Draft,
            DocumentStatus::Published => Status::Published,
            DocumentStatus::Archived => Status::Archived,
        }
    }
}

fn valid_code(value: &str) -> Result<(), validator::ValidationError> {
    let ok = value.chars().all(|c| c.is_ascii_alphanumeric() || "-_.:".contains(c));
    if ok {
        Ok(())
    } else {
        Err(validator::ValidationError::new("format").with_message("letters, digits and - _ . : only".into()))
    }
}

fn title_fits(value: &str) -> Result<(), validator::ValidationError> {
    crate::api::validation::utf16_at_most(value, 300)
}

fn summary_fits(value: &str) -> Result<(), validator::ValidationError> {
    crate::api::validation::utf16_at_most(value, 2000)
}

/// Whether both stores can hold `date` (SQL Server's `DATE` starts at year 1, chrono's dates before it).
pub(super) fn storable_date(date: NaiveDate) -> bool {
    (crate::store::FIRST_DATE..=crate::store::LAST_DATE).contains(&date)
}

fn valid_effective_date(date: &NaiveDate) -> Result<(), validator::ValidationError> {
    if storable_date(*date) {
        Ok(())
    } else {
        Err(validator::ValidationError::new("range").with_message("a date from 0001-01-01 to 9999-12-31".into()))
    }
}

fn valid_tags(tags: &[String]) -> Result<(), validator::ValidationError> {
    if tags.len() > MAX_TAGS {
        return Err(validator::ValidationError::new("length").with_message(format!("at most {MAX_TAGS} tags").into()));
    }
    for (item, tag) in tags.iter().enumerate() {
        // As stored: trimmed and lower-cased, which can lengthen it ('İ' is two characters in lower case).
        if tag.trim().is_empty() || crate::store::utf16_width(&tag.trim().to_lowercase()) > 64 {
            let mut err = validator::ValidationError::new("length")
                .with_message("each tag has 1 to 64 characters (UTF-16 code units)".into());
            err.add_param("item".into(), &item);
            return Err(err);
        }
        if tag.contains(',') {
            // Commas separate tags in the `tag` filter.
            let mut err = validator::ValidationError::new("format").with_message("tags cannot contain commas".into());
            err.add_param("item".into(), &item);
            return Err(err);
        }
    }
    Ok(())
}

/// A document tag, as the OpenAPI document describes it (the wire value is a string).
#[derive(utoipa::ToSchema)]
#[schema(value_type = String, min_length = 1, max_length = 64, pattern = r"^[^,]*[^,\s][^,]*$")]
#[allow(dead_code)] // documentation only
pub struct Tag(String);

/// One tag of the `tag` filter: 1 to 64 characters (commas separate tags).
#[derive(utoipa::ToSchema)]
#[schema(value_type = String, min_length = 1, max_length = 64, pattern = r"\S")]
#[allow(dead_code)] // documentation only
pub struct TagFilter(String);

/// The writable fields of a document: the body of POST and PUT, and what a merge patch produces.
#[derive(Debug, Clone, Serialize, Deserialize, Validate, utoipa::ToSchema)]
#[schema(example = json!({
    "title": "Union Customs Code, consolidated text",
    "summary": "Rules and procedures for goods brought into or taken out of the customs territory of the Union.",
    "docType": "regulation",
    "jurisdiction": "eu",
    "status": "published",
    "effectiveDate": "2026-05-01",
    "tags": ["customs", "trade"]
}))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DocumentInput {
    /// 1 to 300 characters (UTF-16 code units: an emoji counts as two).
    #[validate(
        length(min = 1),
        custom(function = "title_fits"),
        custom(function = "crate::api::validation::not_blank")
    )]
    #[schema(min_length = 1, max_length = 300)]
    pub title: String,
    /// Up to 2000 characters (UTF-16 code units).
    #[validate(custom(function = "summary_fits"))]
    #[schema(max_length = 2000)]
    pub summary: Option<String>,
    /// Up to 200 000 characters.
    #[validate(length(max = 200_000))]
    #[schema(max_length = 200_000)]
    pub body: Option<String>,
    /// A short code such as `regulation` (letters, digits, `- _ . :`).
    #[validate(length(min = 1, max = 64), custom(function = "valid_code"))]
    #[schema(min_length = 1, max_length = 64, pattern = r"^[A-Za-z0-9._:-]+$")]
    pub doc_type: String,
    /// A short code such as `eu` or `us-ca`.
    #[validate(length(min = 1, max = 64), custom(function = "valid_code"))]
    #[schema(min_length = 1, max_length = 64, pattern = r"^[A-Za-z0-9._:-]+$")]
    pub jurisdiction: Option<String>,
    /// Defaults to `draft`.
    pub status: Option<Status>,
    /// ISO 8601 date from 0001-01-01 to 9999-12-31, e.g. `2026-01-31`.
    #[validate(custom(function = "valid_effective_date"))]
    pub effective_date: Option<NaiveDate>,
    /// Up to 20 tags of 1 to 64 characters; stored lower-case, duplicates removed.
    #[validate(custom(function = "valid_tags"))]
    #[schema(value_type = Option<Vec<Tag>>, max_items = 20)]
    pub tags: Option<Vec<String>>,
}

/// A JSON merge patch (RFC 7396) of a document's writable fields, as the OpenAPI document describes it: a member
/// present replaces the field, `null` removes it (`title` and `docType` cannot be removed). The handler merges the
/// patch into the current document and validates the result as a `DocumentInput`.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[allow(dead_code)] // documentation only
pub struct DocumentPatch {
    #[schema(nullable = false, min_length = 1, max_length = 300)]
    title: Option<String>,
    #[schema(max_length = 2000)]
    summary: Option<String>,
    #[schema(max_length = 200_000)]
    body: Option<String>,
    #[schema(nullable = false, min_length = 1, max_length = 64, pattern = r"^[A-Za-z0-9._:-]+$")]
    doc_type: Option<String>,
    #[schema(min_length = 1, max_length = 64, pattern = r"^[A-Za-z0-9._:-]+$")]
    jurisdiction: Option<String>,
    status: Option<Status>,
    effective_date: Option<NaiveDate>,
    #[schema(value_type = Option<Vec<Tag>>, max_items = 20)]
    tags: Option<Vec<String>>,
}

/// A document as the API shows it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DocumentView {
    pub id: Uuid,
    pub title: String,
    pub summary: Option<String>,
    pub body: Option<String>,
    pub doc_type: String,
    pub jurisdiction: Option<String>,
    pub status: Status,
    pub effective_date: Option<NaiveDate>,
    pub tags: Vec<String>,
    pub created_by: String,
    pub updated_by: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// The same strong ETag the `ETag` header carries.
    pub etag: String,
    /// In a search with `highlight=true`: where the search's words are.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub highlights: Option<Highlights>,
}

impl From<&Document> for DocumentView {
    fn from(d: &Document) -> Self {
        DocumentView {
            id: d.id,
            title: d.title.clone(),
            summary: d.summary.clone(),
            body: d.body.clone(),
            doc_type: d.doc_type.clone(),
            jurisdiction: d.jurisdiction.clone(),
            status: d.status.into(),
            effective_date: d.effective_date,
            tags: d.tags.clone(),
            created_by: d.created_by.clone(),
            updated_by: d.updated_by.clone(),
            created_at: d.created_at,
            updated_at: d.updated_at,
            etag: etag(d.version),
            highlights: None,
        }
    }
}

impl DocumentInput {
    pub(super) fn from_document(d: &Document) -> Self {
        DocumentInput {
            title: d.title.clone(),
            summary: d.summary.clone(),
            body: d.body.clone(),
            doc_type: d.doc_type.clone(),
            jurisdiction: d.jurisdiction.clone(),
            status: Some(d.status.into()),
            effective_date: d.effective_date,
            tags: Some(d.tags.clone()),
        }
    }

    /// Applies the input to `target`: every writable field, tags normalized.
    pub(super) fn apply(self, target: &mut Document) {
        let mut tags: Vec<String> = self.tags.unwrap_or_default().iter().map(|t| t.trim().to_lowercase()).collect();
        tags.sort();
        tags.dedup();
        target.title = self.title;
        target.summary = self.summary;
        target.body = self.body;
        target.doc_type = crate::store::document_code(&self.doc_type);
        target.jurisdiction = self.jurisdiction.as_deref().map(crate::store::document_code);
        target.status = self.status.unwrap_or(Status::Draft).into();
        target.effective_date = self.effective_date;
        target.tags = tags;
    }
}

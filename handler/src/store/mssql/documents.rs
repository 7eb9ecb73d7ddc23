//! The SQL Server document store: `impl DocumentStore for MssqlStore` (documents, tags, listing, idempotency keys).

use super::*;

impl ToSql for q::Arg {
    fn to_sql(&self) -> ColumnData<'_> {
        match self {
            q::Arg::Int(v) => v.to_sql(),
            q::Arg::Id(v) => v.to_sql(),
            q::Arg::Text(v) => v.to_sql(),
            q::Arg::Time(v) => v.to_sql(),
            q::Arg::Date(v) => v.to_sql(),
        }
    }
}

/// Runs an assembled statement; returns the rows of its first result set.
pub(super) async fn assembled_rows(conn: &mut MssqlClient, statement: &q::Assembled) -> Result<Vec<Row>, StoreError> {
    let params: Vec<&dyn ToSql> = statement.args.iter().map(|arg| arg as &dyn ToSql).collect();
    rows(conn, &statement.sql, &params).await
}

/// A document row without its tags (see [`load_tags`]), in the column order of `document_columns!`.
pub(super) fn document_from(row: &Row) -> Result<Document, StoreError> {
    let status = text(row, 7)?;
    Ok(Document {
        id: required(row, 0)?,
        tenant_id: required(row, 1)?,
        title: text(row, 2)?,
        summary: column::<&str>(row, 3)?.map(str::to_owned),
        body: column::<&str>(row, 4)?.map(str::to_owned),
        doc_type: text(row, 5)?,
        jurisdiction: column::<&str>(row, 6)?.map(str::to_owned),
        status: DocumentStatus::parse(&status).ok_or_else(|| corrupt("document status", &status))?,
        effective_date: column(row, 8)?,
        tags: Vec::new(),
        created_by: text(row, 9)?,
        updated_by: text(row, 10)?,
        created_at: required(row, 11)?,
        updated_at: required(row, 12)?,
        version: required(row, 13)?,
    })
}

/// Fills in the tags of `documents`, all of `tenant_id`, each set sorted (in Rust, so both stores agree).
pub(super) async fn load_tags(
    conn: &mut MssqlClient,
    tenant_id: Uuid,
    documents: &mut [Document],
) -> Result<(), StoreError> {
    for chunk in documents.chunks_mut(q::TAG_LOAD_CHUNK) {
        let ids: Vec<Uuid> = chunk.iter().map(|d| d.id).collect();
        let mut by_document: HashMap<Uuid, Vec<String>> = HashMap::new();
        for row in assembled_rows(conn, &q::tags_of_documents(tenant_id, &ids)).await? {
            by_document.entry(required(&row, 0)?).or_default().push(text(&row, 1)?);
        }
        for document in chunk {
            document.tags = by_document.remove(&document.id).unwrap_or_default();
            document.tags.sort();
        }
    }
    Ok(())
}

/// A live document of `tenant_id` with its tags.
pub(super) async fn read_document(
    conn: &mut MssqlClient,
    tenant_id: Uuid,
    id: Uuid,
) -> Result<Option<Document>, StoreError> {
    let found = rows(conn, q::GET_DOCUMENT, &[&tenant_id, &id]).await?;
    let Some(document) = found.first().map(document_from).transpose()? else { return Ok(None) };
    let mut one = [document];
    load_tags(conn, tenant_id, &mut one).await?;
    let [document] = one;
    Ok(Some(document))
}

/// The version of a live document of `tenant_id`, to tell a stale version from a missing document.
pub(super) async fn live_document_version(
    conn: &mut MssqlClient,
    tenant_id: Uuid,
    id: Uuid,
) -> Result<Option<i64>, StoreError> {
    rows(conn, q::LIVE_DOCUMENT_VERSION, &[&tenant_id, &id]).await?.first().map(|r| required(r, 0)).transpose()
}

/// Inserts the tags of `document` (duplicates written once).
pub(super) async fn insert_tags(conn: &mut MssqlClient, document: &Document) -> Result<(), StoreError> {
    let mut tags: Vec<&str> = document.tags.iter().map(String::as_str).collect();
    tags.sort_unstable();
    tags.dedup();
    for tag in tags {
        execute(conn, q::INSERT_DOCUMENT_TAG, &[&document.id, &document.tenant_id, &tag]).await?;
    }
    Ok(())
}

/// Refuses effective dates `DATE` cannot hold (tiberius would encode them as another date).
pub(super) fn check_effective_date(document: &Document) -> Result<(), StoreError> {
    match document.effective_date {
        Some(date) if !(q::FIRST_DATE..=q::LAST_DATE).contains(&date) => {
            Err(StoreError::Other(anyhow::anyhow!("effective date {date} is outside 0001-01-01..9999-12-31")))
        }
        _ => Ok(()),
    }
}

/// The cursor of a listed document in `key` order.
pub(super) fn cursor_of(document: &Document, key: DocumentSortKey) -> DocumentCursor {
    let value = match key {
        DocumentSortKey::UpdatedAt => SortValue::Time(document.updated_at),
        DocumentSortKey::Title => SortValue::Text(document.title.clone()),
        DocumentSortKey::EffectiveDate => SortValue::Date(document.effective_date.unwrap_or(NO_EFFECTIVE_DATE)),
    };
    DocumentCursor { value, id: document.id }
}

pub(super) fn idempotency_from(row: &Row) -> Result<IdempotencyRecord, StoreError> {
    let status: i16 = required(row, 4)?;
    Ok(IdempotencyRecord {
        tenant_id: required(row, 0)?,
        key: text(row, 1)?,
        operation_id: text(row, 2)?,
        request_hash: text(row, 3)?,
        status_code: u16::try_from(status).map_err(|_| corrupt("status code", &status.to_string()))?,
        response_headers: text(row, 5)?,
        response_body: required::<&[u8]>(row, 6)?.to_vec(),
        created_at: required(row, 7)?,
        expires_at: required(row, 8)?,
    })
}

#[async_trait]
impl DocumentStore for MssqlStore {
    async fn create_document(
        &self,
        document: &Document,
        idempotency: Option<&IdempotencyRecord>,
        ledger: Option<&Ledger>,
    ) -> Result<(), StoreError> {
        check_effective_date(document)?;
        in_tx!(self, Retry::No, |conn| {
            if let Some(r) = idempotency {
                let key = r.key.as_str();
                execute(conn, q::DELETE_EXPIRED_IDEMPOTENCY_KEY, &[&r.tenant_id, &key, &r.created_at]).await?;
                let status = i16::try_from(r.status_code)
                    .map_err(|_| StoreError::Other(anyhow::anyhow!("status code {} out of range", r.status_code)))?;
                let params: [&dyn ToSql; 9] = [
                    &r.tenant_id,
                    &key,
                    &r.operation_id.as_str(),
                    &r.request_hash.as_str(),
                    &status,
                    &r.response_headers.as_str(),
                    &r.response_body.as_slice(),
                    &r.created_at,
                    &r.expires_at,
                ];
                execute(conn, q::INSERT_IDEMPOTENCY, &params).await?;
            }
            let d = document;
            let params: [&dyn ToSql; 14] = [
                &d.id,
                &d.tenant_id,
                &d.title.as_str(),
                &d.summary.as_deref(),
                &d.body.as_deref(),
                &d.doc_type.as_str(),
                &d.jurisdiction.as_deref(),
                &d.status.as_str(),
                &d.effective_date,
                &d.created_by.as_str(),
                &d.updated_by.as_str(),
                &d.created_at,
                &d.updated_at,
                &d.version,
            ];
            execute(conn, q::INSERT_DOCUMENT, &params).await?;
            insert_tags(conn, d).await?;
            write_ledger(conn, ledger).await
        })
    }

    async fn get_document(&self, tenant_id: Uuid, id: Uuid) -> Result<Option<Document>, StoreError> {
        in_tx!(self, Retry::Yes, |conn| read_document(conn, tenant_id, id).await)
    }

    async fn update_document(
        &self,
        document: &Document,
        expected_version: i64,
        ledger: Option<&Ledger>,
    ) -> Result<Update<Document>, StoreError> {
        check_effective_date(document)?;
        in_tx!(self, Retry::No, |conn| {
            let d = document;
            let params: [&dyn ToSql; 12] = [
                &d.title.as_str(),
                &d.summary.as_deref(),
                &d.body.as_deref(),
                &d.doc_type.as_str(),
                &d.jurisdiction.as_deref(),
                &d.status.as_str(),
                &d.effective_date,
                &d.updated_by.as_str(),
                &d.updated_at,
                &d.tenant_id,
                &d.id,
                &expected_version,
            ];
            if execute(conn, q::UPDATE_DOCUMENT, &params).await? == 0 {
                return Ok(match live_document_version(conn, d.tenant_id, d.id).await? {
                    None => Update::NotFound,
                    Some(current_version) => Update::VersionMismatch { current_version },
                });
            }
            execute(conn, q::DELETE_DOCUMENT_TAGS, &[&d.tenant_id, &d.id]).await?;
            insert_tags(conn, d).await?;
            let updated = read_document(conn, d.tenant_id, d.id)
                .await?
                .ok_or_else(|| StoreError::Other(anyhow::anyhow!("document vanished inside its transaction")))?;
            write_ledger(conn, ledger).await?;
            Ok(Update::Updated(updated))
        })
    }

    async fn delete_document(
        &self,
        tenant_id: Uuid,
        id: Uuid,
        expected_version: i64,
        by: &str,
        now: DateTime<Utc>,
        ledger: Option<&Ledger>,
    ) -> Result<Update<()>, StoreError> {
        in_tx!(self, Retry::No, |conn| {
            let params: [&dyn ToSql; 5] = [&now, &by, &tenant_id, &id, &expected_version];
            if execute(conn, q::SOFT_DELETE_DOCUMENT, &params).await? == 1 {
                write_ledger(conn, ledger).await?;
                return Ok(Update::Updated(()));
            }
            Ok(match live_document_version(conn, tenant_id, id).await? {
                None => Update::NotFound,
                Some(current_version) => Update::VersionMismatch { current_version },
            })
        })
    }

    async fn list_documents(
        &self,
        tenant_id: Uuid,
        filter: &DocumentFilter,
        sort: DocumentSort,
        after: Option<&DocumentCursor>,
        limit: u32,
        count: bool,
    ) -> Result<DocumentPage, StoreError> {
        let limit = limit.max(1);
        let page = &q::list_documents(tenant_id, filter, sort, after, i64::from(limit) + 1)?;
        let tail = &if continues_into_undated(sort, after) {
            Some(q::undated_documents(tenant_id, filter, i64::from(limit) + 1)?)
        } else {
            None
        };
        let total = &if count { Some(q::count_documents(tenant_id, filter)?) } else { None };
        // One transaction; see docs/data-model.md on what the count and the page can see under READ COMMITTED.
        in_tx!(self, Retry::Yes, |conn| {
            let mut items =
                assembled_rows(conn, page).await?.iter().map(document_from).collect::<Result<Vec<_>, _>>()?;
            if let Some(tail) = tail.as_ref().filter(|_| items.len() <= limit as usize) {
                for row in assembled_rows(conn, tail).await? {
                    items.push(document_from(&row)?);
                }
            }
            let next = if items.len() > limit as usize {
                items.truncate(limit as usize);
                items.last().map(|d| cursor_of(d, sort.key))
            } else {
                None
            };
            load_tags(conn, tenant_id, &mut items).await?;
            let total = match total {
                Some(statement) => {
                    let n: i64 = assembled_rows(conn, statement)
                        .await?
                        .first()
                        .map(|r| required(r, 0))
                        .transpose()?
                        .unwrap_or(0);
                    Some(n as u64)
                }
                None => None,
            };
            Ok(DocumentPage { items, next, total })
        })
    }

    async fn get_idempotency(
        &self,
        tenant_id: Uuid,
        key: &str,
        now: DateTime<Utc>,
    ) -> Result<Option<IdempotencyRecord>, StoreError> {
        in_tx!(self, Retry::Yes, |conn| {
            rows(conn, q::GET_IDEMPOTENCY, &[&tenant_id, &key, &now]).await?.first().map(idempotency_from).transpose()
        })
    }
}

//! The SQLite tenant store: `impl TenantStore for SqliteStore` (tenants and API clients) and their row mappers.

use super::*;

pub(super) const TENANT_COLUMNS: &str = "id, entra_tenant_id, name, status, plan_code, created_at, updated_at, version, \
     billing_anchor_day, time_zone, window_offset_minutes";

pub(super) fn tenant_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Result<Tenant, StoreError>> {
    let (id, entra, name, status, plan_code): (String, Option<String>, String, String, String) =
        (r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?);
    let (created, updated, version): (String, String, i64) = (r.get(5)?, r.get(6)?, r.get(7)?);
    let billing = TenantBilling { anchor_day: r.get(8)?, time_zone: r.get(9)?, window_offset_minutes: r.get(10)? };
    Ok((|| {
        Ok(Tenant {
            id: parse_uuid(&id)?,
            entra_tenant_id: entra.as_deref().map(parse_uuid).transpose()?,
            name,
            status: TenantStatus::parse(&status).ok_or_else(|| corrupt("tenant status", &status))?,
            plan_code,
            created_at: parse_timestamp(&created)?,
            updated_at: parse_timestamp(&updated)?,
            version,
            billing,
        })
    })())
}

pub(super) fn read_tenant_row(conn: &Connection, id: Uuid) -> Result<Option<Tenant>, StoreError> {
    query_one(conn, &format!("SELECT {TENANT_COLUMNS} FROM tenants WHERE id = ?1"), [id.to_string()], tenant_from_row)
}

pub(super) const API_CLIENT_COLUMNS: &str = "id, tenant_id, directory_id, app_id, display_name, status, created_at, revoked_at, \
     decided_by, decided_at, version, quota_units, requests_per_minute";

/// An API client row without its roles (`roles` is empty; see [`read_api_client`]).
pub(super) fn api_client_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Result<ApiClient, StoreError>> {
    let (id, tenant, directory, app_id, name): (String, String, Option<String>, String, String) =
        (r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?);
    let (status, created, revoked): (String, String, Option<String>) = (r.get(5)?, r.get(6)?, r.get(7)?);
    let (decided_by, decided_at, version): (Option<String>, Option<String>, i64) = (r.get(8)?, r.get(9)?, r.get(10)?);
    let limits = ClientLimits { quota_units: r.get(11)?, requests_per_minute: r.get(12)? };
    Ok((|| {
        Ok(ApiClient {
            id: parse_uuid(&id)?,
            tenant_id: parse_uuid(&tenant)?,
            directory_id: directory.as_deref().map(parse_uuid).transpose()?,
            app_id,
            display_name: name,
            roles: Vec::new(),
            status: ClientStatus::parse(&status)
                .ok_or_else(|| StoreError::Other(anyhow::anyhow!("unknown client status {status:?}")))?,
            created_at: parse_timestamp(&created)?,
            revoked_at: revoked.as_deref().map(parse_timestamp).transpose()?,
            decided_by,
            decided_at: decided_at.as_deref().map(parse_timestamp).transpose()?,
            version,
            limits,
        })
    })())
}

pub(super) fn client_roles(conn: &Connection, client_id: Uuid) -> Result<Vec<String>, StoreError> {
    query_all(
        conn,
        "SELECT role FROM api_client_roles WHERE client_id = ?1 ORDER BY role",
        [client_id.to_string()],
        |r| Ok(Ok(r.get::<_, String>(0)?)),
    )
}

/// A client of `tenant_id` with its roles; a client of another tenant is `None`.
pub(super) fn read_api_client(conn: &Connection, tenant_id: Uuid, id: Uuid) -> Result<Option<ApiClient>, StoreError> {
    let sql = format!("SELECT {API_CLIENT_COLUMNS} FROM api_client_registrations WHERE tenant_id = ?1 AND id = ?2");
    let Some(mut client) = query_one(conn, &sql, [tenant_id.to_string(), id.to_string()], api_client_from_row)? else {
        return Ok(None);
    };
    client.roles = client_roles(conn, client.id)?;
    Ok(Some(client))
}

#[async_trait]
impl TenantStore for SqliteStore {
    async fn create_tenant(&self, tenant: &Tenant, ledger: Option<&Ledger>) -> Result<(), StoreError> {
        let (t, ledger) = (tenant.clone(), ledger.cloned());
        self.write(move |tx| {
            let sql =
                format!("INSERT INTO tenants ({TENANT_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)");
            tx.execute(
                &sql,
                params![
                    t.id.to_string(),
                    t.entra_tenant_id.map(|id| id.to_string()),
                    t.name,
                    t.status.as_str(),
                    t.plan_code,
                    timestamp(t.created_at),
                    timestamp(t.updated_at),
                    t.version,
                    t.billing.anchor_day,
                    t.billing.time_zone,
                    t.billing.window_offset_minutes
                ],
            )
            .map_err(classify)?;
            write_ledger(tx, ledger.as_ref())
        })
        .await
    }

    async fn get_tenant(&self, id: Uuid) -> Result<Option<Tenant>, StoreError> {
        self.read_point(|conn| {
            query_one(
                conn,
                &format!("SELECT {TENANT_COLUMNS} FROM tenants WHERE id = ?1"),
                [id.to_string()],
                tenant_from_row,
            )
        })
    }

    async fn get_tenant_by_entra_id(&self, entra_tenant_id: Uuid) -> Result<Option<Tenant>, StoreError> {
        self.read_point(|conn| {
            let sql = format!("SELECT {TENANT_COLUMNS} FROM tenants WHERE entra_tenant_id = ?1");
            query_one(conn, &sql, [entra_tenant_id.to_string()], tenant_from_row)
        })
    }

    async fn count_tenants(&self) -> Result<u64, StoreError> {
        self.read(|conn| {
            conn.query_row("SELECT count(*) FROM tenants", [], |r| r.get::<_, i64>(0))
                .map(|n| n as u64)
                .map_err(classify)
        })
        .await
    }

    async fn list_tenants(
        &self,
        after: Option<&CreatedCursor>,
        limit: u32,
    ) -> Result<Page<Tenant, CreatedCursor>, StoreError> {
        let after = after.cloned();
        let limit = limit.max(1);
        self.read(move |conn| {
            let items = match &after {
                None => query_all(
                    conn,
                    &format!("SELECT {TENANT_COLUMNS} FROM tenants ORDER BY created_at, id LIMIT ?1"),
                    params![limit + 1],
                    tenant_from_row,
                )?,
                Some(cursor) => query_all(
                    conn,
                    &format!(
                        "SELECT {TENANT_COLUMNS} FROM tenants WHERE created_at > ?1 OR (created_at = ?1 AND id > ?2)
                         ORDER BY created_at, id LIMIT ?3"
                    ),
                    params![timestamp(cursor.created_at), cursor.id.to_string(), limit + 1],
                    tenant_from_row,
                )?,
            };
            Ok(tenant_page(items, limit))
        })
        .await
    }

    async fn set_tenant_status(
        &self,
        id: Uuid,
        status: TenantStatus,
        expected_version: i64,
        now: DateTime<Utc>,
    ) -> Result<Update<Tenant>, StoreError> {
        self.write(move |tx| {
            let before = read_tenant_row(tx, id)?;
            let changed = tx
                .execute(
                    "UPDATE tenants SET status = ?1, updated_at = ?2, version = version + 1 WHERE id = ?3 AND version = ?4",
                    params![status.as_str(), timestamp(now), id.to_string(), expected_version],
                )
                .map_err(classify)?;
            let written = tenant_written(changed == 1, before, read_tenant_row(tx, id)?, now);
            if let Update::Updated((_, Some(announcement))) = &written {
                integration::insert_outbox(tx, announcement)?;
            }
            Ok(written.map(|(tenant, _)| tenant))
        })
        .await
    }

    async fn update_tenant(
        &self,
        id: Uuid,
        changes: &TenantChanges,
        expected_version: i64,
        now: DateTime<Utc>,
        ledger: Option<&Ledger>,
    ) -> Result<Update<Tenant>, StoreError> {
        let (changes, ledger) = (changes.clone(), ledger.cloned());
        self.write(move |tx| {
            let before = read_tenant_row(tx, id)?;
            let changed = tx
                .execute(
                    "UPDATE tenants SET name = coalesce(?1, name), status = coalesce(?2, status),
                         plan_code = coalesce(?3, plan_code), updated_at = ?4, version = version + 1
                     WHERE id = ?5 AND version = ?6",
                    params![
                        changes.name,
                        changes.status.map(TenantStatus::as_str),
                        changes.plan_code,
                        timestamp(now),
                        id.to_string(),
                        expected_version
                    ],
                )
                .map_err(classify)?;
            let written = tenant_written(changed == 1, before, read_tenant_row(tx, id)?, now);
            if let Update::Updated((_, announcement)) = &written {
                if let Some(announcement) = announcement {
                    integration::insert_outbox(tx, announcement)?;
                }
                write_ledger(tx, ledger.as_ref())?;
            }
            Ok(written.map(|(tenant, _)| tenant))
        })
        .await
    }

    async fn list_api_clients(
        &self,
        tenant_id: Uuid,
        status: Option<ClientStatus>,
        after: Option<&CreatedCursor>,
        limit: u32,
    ) -> Result<Page<ApiClient, CreatedCursor>, StoreError> {
        let after = after.cloned();
        let limit = limit.max(1);
        self.read(move |conn| {
            // Each client's roles come with its row (one statement, one snapshot); ix_api_client_registrations_tenant.
            let mut sql = format!(
                "SELECT {API_CLIENT_COLUMNS},
                     (SELECT group_concat(r.role, ',') FROM api_client_roles r WHERE r.client_id = c.id)
                 FROM api_client_registrations c WHERE tenant_id = ?1"
            );
            let mut values: Vec<rusqlite::types::Value> = vec![tenant_id.to_string().into()];
            if let Some(status) = status {
                values.push(status.as_str().to_owned().into());
                sql.push_str(&format!(" AND status = ?{}", values.len()));
            }
            if let Some(cursor) = &after {
                values.push(timestamp(cursor.created_at).into());
                values.push(cursor.id.to_string().into());
                let (at, id) = (values.len() - 1, values.len());
                sql.push_str(&format!(" AND (created_at > ?{at} OR (created_at = ?{at} AND id > ?{id}))"));
            }
            values.push(i64::from(limit + 1).into());
            sql.push_str(&format!(" ORDER BY created_at, id LIMIT ?{}", values.len()));
            let items = query_all(conn, &sql, rusqlite::params_from_iter(values), |r| {
                let roles: Option<String> = r.get(13)?;
                Ok(api_client_from_row(r)?.map(|client| ApiClient { roles: split_roles(roles.as_deref()), ..client }))
            })?;
            Ok(client_page(items, limit))
        })
        .await
    }

    async fn count_api_clients(&self, tenant_id: Uuid, status: Option<ClientStatus>) -> Result<u64, StoreError> {
        self.read(move |conn| {
            conn.query_row(
                "SELECT count(*) FROM api_client_registrations WHERE tenant_id = ?1 AND (?2 IS NULL OR status = ?2)",
                params![tenant_id.to_string(), status.map(ClientStatus::as_str)],
                |r| r.get::<_, i64>(0),
            )
            .map(|n| n as u64)
            .map_err(classify)
        })
        .await
    }

    async fn get_api_client(&self, tenant_id: Uuid, id: Uuid) -> Result<Option<ApiClient>, StoreError> {
        self.read_point(|conn| read_api_client(conn, tenant_id, id))
    }

    async fn revoke_api_client(
        &self,
        tenant_id: Uuid,
        id: Uuid,
        expected_version: i64,
        now: DateTime<Utc>,
        ledger: Option<&Ledger>,
    ) -> Result<Update<ApiClient>, StoreError> {
        let ledger = ledger.cloned();
        self.write(move |tx| {
            if let Err(refused) = revocation_precondition(read_api_client(tx, tenant_id, id)?, expected_version) {
                return Ok(refused.into());
            }
            tx.execute(
                "UPDATE api_client_registrations SET status = 'revoked', revoked_at = ?1, version = version + 1
                 WHERE tenant_id = ?2 AND id = ?3 AND status IN ('pending', 'active')",
                params![timestamp(now), tenant_id.to_string(), id.to_string()],
            )
            .map_err(classify)?;
            // Revoked now or before: either way the client is revoked, and the row says since when.
            write_ledger(tx, ledger.as_ref())?;
            Ok(read_api_client(tx, tenant_id, id)?.map_or(Update::NotFound, Update::Updated))
        })
        .await
    }

    async fn set_client_limits(
        &self,
        tenant_id: Uuid,
        id: Uuid,
        expected_version: i64,
        limits: &ClientLimits,
        ledger: Option<&Ledger>,
    ) -> Result<Update<ApiClient>, StoreError> {
        let (limits, ledger) = (*limits, ledger.cloned());
        self.write(move |tx| {
            if let Err(refused) = client_precondition(read_api_client(tx, tenant_id, id)?, expected_version) {
                return Ok(refused.into());
            }
            tx.execute(
                "UPDATE api_client_registrations SET quota_units = ?1, requests_per_minute = ?2, version = version + 1
                 WHERE tenant_id = ?3 AND id = ?4",
                params![limits.quota_units, limits.requests_per_minute, tenant_id.to_string(), id.to_string()],
            )
            .map_err(classify)?;
            write_ledger(tx, ledger.as_ref())?;
            Ok(read_api_client(tx, tenant_id, id)?.map_or(Update::NotFound, Update::Updated))
        })
        .await
    }

    async fn create_api_client(&self, client: &ApiClient, ledger: Option<&Ledger>) -> Result<(), StoreError> {
        let (c, ledger) = (client.clone(), ledger.cloned());
        self.write(move |tx| {
            tx.execute(
                "INSERT INTO api_client_registrations (id, tenant_id, directory_id, app_id, display_name, status,
                     created_at, revoked_at, decided_by, decided_at, version, quota_units, requests_per_minute)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)",
                params![
                    c.id.to_string(),
                    c.tenant_id.to_string(),
                    c.directory_id.map(|d| d.to_string()),
                    c.app_id,
                    c.display_name,
                    c.status.as_str(),
                    timestamp(c.created_at),
                    c.revoked_at.map(timestamp),
                    c.decided_by,
                    c.decided_at.map(timestamp),
                    c.version,
                    c.limits.quota_units,
                    c.limits.requests_per_minute
                ],
            )
            .map_err(classify)?;
            for role in &c.roles {
                tx.execute(
                    "INSERT INTO api_client_roles (client_id, role) VALUES (?1, ?2)",
                    params![c.id.to_string(), role],
                )
                .map_err(classify)?;
            }
            write_ledger(tx, ledger.as_ref())
        })
        .await
    }

    async fn api_clients_for_app(&self, directory_id: Uuid, app_id: &str) -> Result<Vec<ApiClient>, StoreError> {
        self.read_point(|conn| {
            let sql = format!(
                "SELECT {API_CLIENT_COLUMNS} FROM api_client_registrations WHERE directory_id = ?1 AND app_id = ?2 COLLATE NOCASE
                 ORDER BY created_at, id"
            );
            let mut clients = query_all(conn, &sql, params![directory_id.to_string(), app_id], api_client_from_row)?;
            for client in &mut clients {
                client.roles = client_roles(conn, client.id)?;
            }
            Ok(clients)
        })
    }

    async fn decide_api_client(
        &self,
        tenant_id: Uuid,
        id: Uuid,
        expected_version: i64,
        decision: &ClientDecision,
        ledger: Option<&Ledger>,
    ) -> Result<Update<ApiClient>, StoreError> {
        let (decision, ledger) = (decision.clone(), ledger.cloned());
        self.write(move |tx| {
            let client = match client_precondition(read_api_client(tx, tenant_id, id)?, expected_version) {
                Ok(client) => client,
                Err(refused) => return Ok(refused.into()),
            };
            check_decidable(&client)?;
            if decision.approve {
                let directory = client.directory_id.map(|d| d.to_string());
                let owner: Option<String> = tx
                    .query_row(
                        "SELECT id FROM tenants WHERE entra_tenant_id = ?1 AND id <> ?2",
                        params![directory, tenant_id.to_string()],
                        |r| r.get(0),
                    )
                    .optional()
                    .map_err(classify)?;
                let taken: Option<String> = tx
                    .query_row(
                        "SELECT id FROM api_client_registrations
                         WHERE directory_id = ?1 AND app_id = ?2 COLLATE NOCASE AND status = 'active' AND tenant_id <> ?3 LIMIT 1",
                        params![directory, client.app_id, tenant_id.to_string()],
                        |r| r.get(0),
                    )
                    .optional()
                    .map_err(classify)?;
                check_approvable(owner.is_some(), taken.is_some())?;
            }
            tx.execute(
                "UPDATE api_client_registrations SET status = ?1, decided_by = ?2, decided_at = ?3,
                     version = version + 1
                 WHERE tenant_id = ?4 AND id = ?5 AND status = 'pending'",
                params![
                    if decision.approve { "active" } else { "rejected" },
                    decision.by,
                    timestamp(decision.at),
                    tenant_id.to_string(),
                    id.to_string()
                ],
            )
            .map_err(classify)?;
            write_ledger(tx, ledger.as_ref())?;
            Ok(read_api_client(tx, tenant_id, id)?.map_or(Update::NotFound, Update::Updated))
        })
        .await
    }
}

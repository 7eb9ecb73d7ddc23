//! The SQL Server tenant store: `impl TenantStore for MssqlStore` (tenants and API clients) and their row mappers.

use super::*;

pub(crate) const INSERT_TENANT: &str =
    "INSERT INTO dbo.tenants (id, entra_tenant_id, name, status, plan_code, created_at, updated_at, version,
    billing_anchor_day, time_zone, window_offset_minutes)
VALUES (@P1, @P2, @P3, @P4, @P5, @P6, @P7, @P8, @P9, @P10, @P11)";

pub(crate) const GET_TENANT: &str =
    "SELECT id, entra_tenant_id, name, status, plan_code, created_at, updated_at, version,
    billing_anchor_day, time_zone, window_offset_minutes
FROM dbo.tenants WHERE id = @P1";

pub(crate) const GET_TENANT_BY_ENTRA_ID: &str =
    "SELECT id, entra_tenant_id, name, status, plan_code, created_at, updated_at, version,
    billing_anchor_day, time_zone, window_offset_minutes
FROM dbo.tenants WHERE entra_tenant_id = @P1";

/// First page of tenants: `@P1` is the page size plus one (to know whether another page follows).
pub(crate) const LIST_TENANTS_FIRST: &str =
    "SELECT TOP (@P1) id, entra_tenant_id, name, status, plan_code, created_at, updated_at, version,
    billing_anchor_day, time_zone, window_offset_minutes
FROM dbo.tenants ORDER BY created_at, id";

/// Next page after the cursor (`@P1` created_at, `@P2` id); index ix_tenants_created.
pub(crate) const LIST_TENANTS_AFTER: &str =
    "SELECT TOP (@P3) id, entra_tenant_id, name, status, plan_code, created_at, updated_at, version,
    billing_anchor_day, time_zone, window_offset_minutes
FROM dbo.tenants WHERE created_at > @P1 OR (created_at = @P1 AND id > @P2) ORDER BY created_at, id";

pub(crate) const SET_TENANT_STATUS: &str =
    "UPDATE dbo.tenants SET status = @P1, updated_at = @P2, version = version + 1
WHERE id = @P3 AND version = @P4";

/// The columns `api_client_from` reads, in its order.
macro_rules! api_client_columns {
    () => {
        "id, tenant_id, directory_id, app_id, display_name, status, created_at, revoked_at, decided_by, decided_at, \
         version, quota_units, requests_per_minute"
    };
}

pub(crate) const INSERT_API_CLIENT: &str =
    "INSERT INTO dbo.api_client_registrations (id, tenant_id, directory_id, app_id,
    display_name, status, created_at, revoked_at, decided_by, decided_at, version, quota_units, requests_per_minute)
VALUES (@P1, @P2, @P3, @P4, @P5, @P6, @P7, @P8, @P9, @P10, @P11, @P12, @P13)";

pub(crate) const SET_CLIENT_LIMITS: &str = "UPDATE dbo.api_client_registrations
SET quota_units = @P1, requests_per_minute = @P2, version = version + 1
WHERE tenant_id = @P3 AND id = @P4";

pub(crate) const INSERT_API_CLIENT_ROLE: &str = "INSERT INTO dbo.api_client_roles (client_id, role) VALUES (@P1, @P2)";

/// Every registration of (directory `@P1`, application `@P2`); index ix_api_client_registrations_app.
pub(crate) const API_CLIENTS_FOR_APP: &str = concat!(
    "SELECT ",
    api_client_columns!(),
    " FROM dbo.api_client_registrations WHERE directory_id = @P1 AND app_id = @P2 ORDER BY created_at, id"
);

/// Whether a tenant other than `@P2` owns the directory `@P1` (read under a range lock by an approval).
pub(crate) const DIRECTORY_OWNED_BY_OTHER: &str =
    "SELECT TOP (1) id FROM dbo.tenants WITH (UPDLOCK, HOLDLOCK) WHERE entra_tenant_id = @P1 AND id <> @P2";

/// Whether a tenant other than `@P3` holds an active registration of (directory `@P1`, application `@P2`); the
/// range lock serializes two approvals of the same pair.
pub(crate) const ACTIVE_ELSEWHERE: &str = "SELECT TOP (1) id FROM dbo.api_client_registrations WITH (UPDLOCK, HOLDLOCK)
WHERE directory_id = @P1 AND app_id = @P2 AND status = 'active' AND tenant_id <> @P3";

/// Decides a pending registration (`@P1` the new status, `@P2` by, `@P3` at, `@P4` tenant, `@P5` id).
pub(crate) const DECIDE_API_CLIENT: &str = "UPDATE dbo.api_client_registrations
SET status = @P1, decided_by = @P2, decided_at = @P3, version = version + 1
WHERE tenant_id = @P4 AND id = @P5 AND status = 'pending'";

pub(crate) const API_CLIENT_ROLES: &str = "SELECT role FROM dbo.api_client_roles WHERE client_id = @P1 ORDER BY role";

pub(crate) const UPDATE_TENANT: &str =
    "UPDATE dbo.tenants SET name = COALESCE(@P1, name), status = COALESCE(@P2, status),
    plan_code = COALESCE(@P3, plan_code), updated_at = @P4, version = version + 1
WHERE id = @P5 AND version = @P6";

/// A page of a tenant's clients (`@P1` tenant, `@P2` status or NULL for any, `@P3`/`@P4` the cursor's created_at
/// and id or NULL for the first page, `@P5` the page size plus one), each with its roles joined by commas; index
/// ix_api_client_registrations_tenant seeks the tenant, whose few rows the rest filters.
pub(crate) const LIST_API_CLIENTS: &str = concat!(
    "SELECT TOP (@P5) ",
    api_client_columns!(),
    ",
    (SELECT STRING_AGG(r.role, ',') FROM dbo.api_client_roles r WHERE r.client_id = c.id) AS roles
FROM dbo.api_client_registrations c
WHERE tenant_id = @P1 AND (@P2 IS NULL OR status = @P2)
    AND (@P3 IS NULL OR created_at > @P3 OR (created_at = @P3 AND id > @P4))
ORDER BY created_at, id"
);

/// The number of a tenant's clients (`@P1`) with status `@P2` (NULL: any).
pub(crate) const COUNT_API_CLIENTS: &str = "SELECT COUNT_BIG(*) AS n FROM dbo.api_client_registrations
WHERE tenant_id = @P1 AND (@P2 IS NULL OR status = @P2)";

/// One client of a tenant under an update lock, read by a conditional write before it checks the version.
pub(crate) const LOCK_TENANT_API_CLIENT: &str = concat!(
    "SELECT ",
    api_client_columns!(),
    " FROM dbo.api_client_registrations WITH (UPDLOCK, ROWLOCK) WHERE tenant_id = @P1 AND id = @P2"
);

/// One client of a tenant (`@P1` tenant, `@P2` id): another tenant's client is not found.
pub(crate) const GET_TENANT_API_CLIENT: &str =
    concat!("SELECT ", api_client_columns!(), " FROM dbo.api_client_registrations WHERE tenant_id = @P1 AND id = @P2");

/// Revokes a pending or active client; a revoked or rejected one is left as it is (revoking is idempotent).
pub(crate) const REVOKE_API_CLIENT: &str =
    "UPDATE dbo.api_client_registrations SET status = 'revoked', revoked_at = @P3, version = version + 1
WHERE tenant_id = @P1 AND id = @P2 AND status IN ('pending', 'active')";

/// The number of tenants.
pub(crate) const COUNT_TENANTS: &str = "SELECT COUNT_BIG(*) AS n FROM dbo.tenants";

/// Every statement of this file, for `store::tsql_check` (registered in `mssql::STATEMENTS`).
pub(crate) const STATEMENTS: &[(&str, &str)] = &[
    ("COUNT_TENANTS", COUNT_TENANTS),
    ("INSERT_TENANT", INSERT_TENANT),
    ("GET_TENANT", GET_TENANT),
    ("GET_TENANT_BY_ENTRA_ID", GET_TENANT_BY_ENTRA_ID),
    ("LIST_TENANTS_FIRST", LIST_TENANTS_FIRST),
    ("LIST_TENANTS_AFTER", LIST_TENANTS_AFTER),
    ("SET_TENANT_STATUS", SET_TENANT_STATUS),
    ("INSERT_API_CLIENT", INSERT_API_CLIENT),
    ("INSERT_API_CLIENT_ROLE", INSERT_API_CLIENT_ROLE),
    ("API_CLIENTS_FOR_APP", API_CLIENTS_FOR_APP),
    ("DIRECTORY_OWNED_BY_OTHER", DIRECTORY_OWNED_BY_OTHER),
    ("ACTIVE_ELSEWHERE", ACTIVE_ELSEWHERE),
    ("DECIDE_API_CLIENT", DECIDE_API_CLIENT),
    ("API_CLIENT_ROLES", API_CLIENT_ROLES),
    ("UPDATE_TENANT", UPDATE_TENANT),
    ("LIST_API_CLIENTS", LIST_API_CLIENTS),
    ("COUNT_API_CLIENTS", COUNT_API_CLIENTS),
    ("LOCK_TENANT_API_CLIENT", LOCK_TENANT_API_CLIENT),
    ("GET_TENANT_API_CLIENT", GET_TENANT_API_CLIENT),
    ("REVOKE_API_CLIENT", REVOKE_API_CLIENT),
    ("SET_CLIENT_LIMITS", SET_CLIENT_LIMITS),
];

pub(super) fn tenant_from(row: &Row) -> Result<Tenant, StoreError> {
    let status = text(row, 3)?;
    Ok(Tenant {
        id: required(row, 0)?,
        entra_tenant_id: column(row, 1)?,
        name: text(row, 2)?,
        status: TenantStatus::parse(&status).ok_or_else(|| corrupt("tenant status", &status))?,
        plan_code: text(row, 4)?,
        created_at: required(row, 5)?,
        updated_at: required(row, 6)?,
        version: required(row, 7)?,
        billing: TenantBilling {
            anchor_day: required(row, 8)?,
            time_zone: text(row, 9)?,
            window_offset_minutes: required(row, 10)?,
        },
    })
}

/// An API client row without its roles.
pub(super) fn api_client_from(row: &Row) -> Result<ApiClient, StoreError> {
    let status = text(row, 5)?;
    Ok(ApiClient {
        id: required(row, 0)?,
        tenant_id: required(row, 1)?,
        directory_id: column(row, 2)?,
        app_id: text(row, 3)?,
        display_name: text(row, 4)?,
        roles: Vec::new(),
        status: ClientStatus::parse(&status)
            .ok_or_else(|| StoreError::Other(anyhow::anyhow!("unknown client status {status:?}")))?,
        created_at: required(row, 6)?,
        revoked_at: column(row, 7)?,
        decided_by: column::<&str>(row, 8)?.map(str::to_owned),
        decided_at: column(row, 9)?,
        version: required(row, 10)?,
        limits: ClientLimits { quota_units: column(row, 11)?, requests_per_minute: column(row, 12)? },
    })
}

pub(super) async fn client_roles(conn: &mut MssqlClient, client_id: Uuid) -> Result<Vec<String>, StoreError> {
    rows(conn, API_CLIENT_ROLES, &[&client_id]).await?.iter().map(|r| text(r, 0)).collect()
}

/// A client of `tenant_id` with its roles; a client of another tenant is `None`.
pub(super) async fn read_api_client(
    conn: &mut MssqlClient,
    tenant_id: Uuid,
    id: Uuid,
) -> Result<Option<ApiClient>, StoreError> {
    read_api_client_with(conn, GET_TENANT_API_CLIENT, tenant_id, id).await
}

/// [`read_api_client`] holding an update lock on the row until the transaction ends.
async fn lock_api_client(conn: &mut MssqlClient, tenant_id: Uuid, id: Uuid) -> Result<Option<ApiClient>, StoreError> {
    read_api_client_with(conn, LOCK_TENANT_API_CLIENT, tenant_id, id).await
}

async fn read_api_client_with(
    conn: &mut MssqlClient,
    sql: &str,
    tenant_id: Uuid,
    id: Uuid,
) -> Result<Option<ApiClient>, StoreError> {
    let found = rows(conn, sql, &[&tenant_id, &id]).await?;
    let Some(mut client) = found.first().map(api_client_from).transpose()? else { return Ok(None) };
    client.roles = client_roles(conn, client.id).await?;
    Ok(Some(client))
}

pub(super) async fn read_tenant(conn: &mut MssqlClient, id: Uuid) -> Result<Option<Tenant>, StoreError> {
    rows(conn, GET_TENANT, &[&id]).await?.first().map(tenant_from).transpose()
}

#[async_trait]
impl TenantStore for MssqlStore {
    async fn create_tenant(&self, tenant: &Tenant, ledger: Option<&Ledger>) -> Result<(), StoreError> {
        in_tx!(self, Retry::No, |conn| {
            let t = tenant;
            let params: [&dyn ToSql; 11] = [
                &t.id,
                &t.entra_tenant_id,
                &t.name.as_str(),
                &t.status.as_str(),
                &t.plan_code.as_str(),
                &t.created_at,
                &t.updated_at,
                &t.version,
                &t.billing.anchor_day,
                &t.billing.time_zone.as_str(),
                &t.billing.window_offset_minutes,
            ];
            execute(conn, INSERT_TENANT, &params).await?;
            write_ledger(conn, ledger).await
        })
    }

    async fn get_tenant(&self, id: Uuid) -> Result<Option<Tenant>, StoreError> {
        in_tx!(self, Retry::Yes, |conn| read_tenant(conn, id).await)
    }

    async fn get_tenant_by_entra_id(&self, entra_tenant_id: Uuid) -> Result<Option<Tenant>, StoreError> {
        in_tx!(self, Retry::Yes, |conn| {
            rows(conn, GET_TENANT_BY_ENTRA_ID, &[&entra_tenant_id]).await?.first().map(tenant_from).transpose()
        })
    }

    async fn count_tenants(&self) -> Result<u64, StoreError> {
        in_tx!(self, Retry::Yes, |conn| {
            let row = rows(conn, COUNT_TENANTS, &[]).await?;
            let n: i64 = row.first().map(|r| required(r, 0)).transpose()?.unwrap_or(0);
            Ok(n as u64)
        })
    }

    async fn list_tenants(
        &self,
        after: Option<&CreatedCursor>,
        limit: u32,
    ) -> Result<Page<Tenant, CreatedCursor>, StoreError> {
        let limit = limit.max(1);
        let fetch = i64::from(limit) + 1;
        in_tx!(self, Retry::Yes, |conn| {
            let found = match after {
                None => rows(conn, LIST_TENANTS_FIRST, &[&fetch]).await?,
                Some(cursor) => rows(conn, LIST_TENANTS_AFTER, &[&cursor.created_at, &cursor.id, &fetch]).await?,
            };
            let items = found.iter().map(tenant_from).collect::<Result<Vec<_>, _>>()?;
            Ok(tenant_page(items, limit))
        })
    }

    async fn set_tenant_status(
        &self,
        id: Uuid,
        status: TenantStatus,
        expected_version: i64,
        now: DateTime<Utc>,
    ) -> Result<Update<Tenant>, StoreError> {
        in_tx!(self, Retry::No, |conn| {
            let before = read_tenant(conn, id).await?;
            let changed = execute(conn, SET_TENANT_STATUS, &[&status.as_str(), &now, &id, &expected_version]).await?;
            let written = tenant_written(changed == 1, before, read_tenant(conn, id).await?, now);
            if let Update::Updated((_, Some(announcement))) = &written {
                integration::insert_outbox(conn, announcement).await?;
            }
            Ok(written.map(|(tenant, _)| tenant))
        })
    }

    async fn update_tenant(
        &self,
        id: Uuid,
        changes: &TenantChanges,
        expected_version: i64,
        now: DateTime<Utc>,
        ledger: Option<&Ledger>,
    ) -> Result<Update<Tenant>, StoreError> {
        in_tx!(self, Retry::No, |conn| {
            let c = changes;
            let params: [&dyn ToSql; 6] = [
                &c.name.as_deref(),
                &c.status.map(TenantStatus::as_str),
                &c.plan_code.as_deref(),
                &now,
                &id,
                &expected_version,
            ];
            let before = read_tenant(conn, id).await?;
            let changed = execute(conn, UPDATE_TENANT, &params).await?;
            let written = tenant_written(changed == 1, before, read_tenant(conn, id).await?, now);
            if let Update::Updated((_, announcement)) = &written {
                if let Some(announcement) = announcement {
                    integration::insert_outbox(conn, announcement).await?;
                }
                write_ledger(conn, ledger).await?;
            }
            Ok(written.map(|(tenant, _)| tenant))
        })
    }

    async fn list_api_clients(
        &self,
        tenant_id: Uuid,
        status: Option<ClientStatus>,
        after: Option<&CreatedCursor>,
        limit: u32,
    ) -> Result<Page<ApiClient, CreatedCursor>, StoreError> {
        let limit = limit.max(1);
        let status = status.map(ClientStatus::as_str);
        let (after_at, after_id) = (after.map(|c| c.created_at), after.map(|c| c.id));
        let top = i64::from(limit) + 1;
        in_tx!(self, Retry::Yes, |conn| {
            let items = rows(conn, LIST_API_CLIENTS, &[&tenant_id, &status, &after_at, &after_id, &top])
                .await?
                .iter()
                .map(|row| {
                    let roles = split_roles(column::<&str>(row, 13)?);
                    Ok(ApiClient { roles, ..api_client_from(row)? })
                })
                .collect::<Result<Vec<_>, StoreError>>()?;
            Ok(client_page(items, limit))
        })
    }

    async fn count_api_clients(&self, tenant_id: Uuid, status: Option<ClientStatus>) -> Result<u64, StoreError> {
        let status = status.map(ClientStatus::as_str);
        in_tx!(self, Retry::Yes, |conn| {
            let n: i64 = rows(conn, COUNT_API_CLIENTS, &[&tenant_id, &status])
                .await?
                .first()
                .map(|row| required(row, 0))
                .transpose()?
                .unwrap_or(0);
            Ok(n as u64)
        })
    }

    async fn get_api_client(&self, tenant_id: Uuid, id: Uuid) -> Result<Option<ApiClient>, StoreError> {
        in_tx!(self, Retry::Yes, |conn| read_api_client(conn, tenant_id, id).await)
    }

    async fn revoke_api_client(
        &self,
        tenant_id: Uuid,
        id: Uuid,
        expected_version: i64,
        now: DateTime<Utc>,
        ledger: Option<&Ledger>,
    ) -> Result<Update<ApiClient>, StoreError> {
        // Idempotent (the version is checked under the row's update lock, only an active client changes, stored
        // ledger ids are skipped), so a transient fault may run it again.
        in_tx!(self, Retry::Yes, |conn| {
            if let Err(refused) = revocation_precondition(lock_api_client(conn, tenant_id, id).await?, expected_version)
            {
                return Ok(refused.into());
            }
            execute(conn, REVOKE_API_CLIENT, &[&tenant_id, &id, &now]).await?;
            write_ledger(conn, ledger).await?;
            Ok(read_api_client(conn, tenant_id, id).await?.map_or(Update::NotFound, Update::Updated))
        })
    }

    async fn set_client_limits(
        &self,
        tenant_id: Uuid,
        id: Uuid,
        expected_version: i64,
        limits: &ClientLimits,
        ledger: Option<&Ledger>,
    ) -> Result<Update<ApiClient>, StoreError> {
        // Not retried: a retry after a lost commit answer would find the version moved on.
        in_tx!(self, Retry::No, |conn| {
            if let Err(refused) = client_precondition(lock_api_client(conn, tenant_id, id).await?, expected_version) {
                return Ok(refused.into());
            }
            let set: [&dyn ToSql; 4] = [&limits.quota_units, &limits.requests_per_minute, &tenant_id, &id];
            execute(conn, SET_CLIENT_LIMITS, &set).await?;
            write_ledger(conn, ledger).await?;
            Ok(read_api_client(conn, tenant_id, id).await?.map_or(Update::NotFound, Update::Updated))
        })
    }

    async fn create_api_client(&self, client: &ApiClient, ledger: Option<&Ledger>) -> Result<(), StoreError> {
        in_tx!(self, Retry::No, |conn| {
            let c = client;
            let decided_by = c.decided_by.as_deref();
            let params: [&dyn ToSql; 13] = [
                &c.id,
                &c.tenant_id,
                &c.directory_id,
                &c.app_id.as_str(),
                &c.display_name.as_str(),
                &c.status.as_str(),
                &c.created_at,
                &c.revoked_at,
                &decided_by,
                &c.decided_at,
                &c.version,
                &c.limits.quota_units,
                &c.limits.requests_per_minute,
            ];
            execute(conn, INSERT_API_CLIENT, &params).await?;
            for role in &c.roles {
                execute(conn, INSERT_API_CLIENT_ROLE, &[&c.id, &role.as_str()]).await?;
            }
            write_ledger(conn, ledger).await
        })
    }

    async fn api_clients_for_app(&self, directory_id: Uuid, app_id: &str) -> Result<Vec<ApiClient>, StoreError> {
        in_tx!(self, Retry::Yes, |conn| {
            let mut clients = rows(conn, API_CLIENTS_FOR_APP, &[&directory_id, &app_id])
                .await?
                .iter()
                .map(api_client_from)
                .collect::<Result<Vec<_>, _>>()?;
            for client in &mut clients {
                client.roles = client_roles(conn, client.id).await?;
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
        // Idempotent (only a pending row changes, a decided one is a Conflict, stored ledger ids are skipped),
        // but a retry after a lost commit answer would report that Conflict: not retried.
        in_tx!(self, Retry::No, |conn| {
            let client = match client_precondition(lock_api_client(conn, tenant_id, id).await?, expected_version) {
                Ok(client) => client,
                Err(refused) => return Ok(refused.into()),
            };
            check_decidable(&client)?;
            if decision.approve {
                let app_id = client.app_id.as_str();
                let owned =
                    !rows(conn, DIRECTORY_OWNED_BY_OTHER, &[&client.directory_id, &tenant_id]).await?.is_empty();
                let taken =
                    !rows(conn, ACTIVE_ELSEWHERE, &[&client.directory_id, &app_id, &tenant_id]).await?.is_empty();
                check_approvable(owned, taken)?;
            }
            let status = if decision.approve { ClientStatus::Active } else { ClientStatus::Rejected }.as_str();
            let by = decision.by.as_str();
            execute(conn, DECIDE_API_CLIENT, &[&status, &by, &decision.at, &tenant_id, &id]).await?;
            write_ledger(conn, ledger).await?;
            Ok(read_api_client(conn, tenant_id, id).await?.map_or(Update::NotFound, Update::Updated))
        })
    }
}

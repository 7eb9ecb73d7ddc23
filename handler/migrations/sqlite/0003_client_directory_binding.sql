-- API-client registrations bound to the directory their tokens carry (mirror of
-- migrations/mssql/0003_client_directory_binding.sql; docs/security.md explains the rule, docs/data-model.md the table).
--
-- A registration is keyed by (directory, application): it applies only to tokens whose `tid` is its
-- `directory_id`. A tenant administrator's registration for the tenant's own directory is active at once; one for
-- another directory (a partner's application) is `pending` until a platform administrator approves (`active`) or
-- rejects (`rejected`) it, and `decided_by`/`decided_at` record who and when.
--
-- Existing rows were keyed by the application alone. Each is bound to its tenant's own directory, so it keeps
-- serving the tokens it was meant for and stops redirecting tokens from any other directory. A row whose tenant has
-- no directory cannot be bound: it is revoked here (directory_id NULL), and the application must be registered
-- again, naming its directory, which then needs a platform administrator's approval.

CREATE TABLE api_client_registrations (
    id           TEXT    NOT NULL PRIMARY KEY,
    tenant_id    TEXT    NOT NULL REFERENCES tenants (id),
    directory_id TEXT    NULL CHECK (directory_id IS NULL OR length(directory_id) = 36),   -- the tokens' `tid`
    app_id       TEXT    NOT NULL CHECK (length(app_id) BETWEEN 1 AND 128),                 -- `azp` / `appid`
    display_name TEXT    NOT NULL CHECK (length(display_name) BETWEEN 1 AND 200),
    status       TEXT    NOT NULL CHECK (status IN ('pending', 'active', 'rejected', 'revoked')),
    created_at   TEXT    NOT NULL,
    revoked_at   TEXT    NULL,
    decided_by   TEXT    NULL CHECK (decided_by IS NULL OR length(decided_by) BETWEEN 1 AND 300),
    decided_at   TEXT    NULL,
    version      INTEGER NOT NULL DEFAULT 1 CHECK (version >= 1),
    CHECK (directory_id IS NOT NULL OR status = 'revoked')
) STRICT;

INSERT INTO api_client_registrations
    (id, tenant_id, directory_id, app_id, display_name, status, created_at, revoked_at, decided_by, decided_at, version)
SELECT c.id, c.tenant_id, lower(t.entra_tenant_id), c.app_id, c.display_name,
       CASE WHEN t.entra_tenant_id IS NULL THEN 'revoked' ELSE c.status END,
       c.created_at,
       CASE WHEN t.entra_tenant_id IS NULL AND c.revoked_at IS NULL
            THEN strftime('%Y-%m-%dT%H:%M:%S', 'now') || '.000000Z' ELSE c.revoked_at END,
       NULL, NULL,
       CASE WHEN t.entra_tenant_id IS NULL AND c.status = 'active' THEN c.version + 1 ELSE c.version END
FROM api_clients c JOIN tenants t ON t.id = c.tenant_id;

CREATE TABLE api_client_roles_v3 (
    client_id TEXT NOT NULL REFERENCES api_client_registrations (id) ON DELETE CASCADE,
    role      TEXT NOT NULL CHECK (role IN ('Platform.Admin', 'Tenant.Admin', 'Documents.Read', 'Documents.Write', 'Usage.Read', 'Audit.Read')),
    PRIMARY KEY (client_id, role)
) STRICT;
INSERT INTO api_client_roles_v3 (client_id, role) SELECT client_id, role FROM api_client_roles;

DROP TABLE api_client_roles;
DROP TABLE api_clients;
ALTER TABLE api_client_roles_v3 RENAME TO api_client_roles;

-- A tenant holds at most one live (pending or active) registration per directory and application. Other tenants
-- may hold their own: a registration never reveals whether another tenant registered the same application.
CREATE UNIQUE INDEX ux_api_client_registrations_live ON api_client_registrations (tenant_id, directory_id, app_id)
    WHERE status IN ('pending', 'active');
-- The lookup of every request with an `azp`: the registrations of (tid, azp).
CREATE INDEX ix_api_client_registrations_app ON api_client_registrations (directory_id, app_id);
CREATE INDEX ix_api_client_registrations_tenant ON api_client_registrations (tenant_id, created_at, id);

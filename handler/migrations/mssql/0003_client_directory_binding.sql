-- API-client registrations bound to the directory their tokens carry, on SQL Server (mirror of
-- migrations/sqlite/0003_client_directory_binding.sql, which explains the rule and what happens to existing rows:
-- each is bound to its tenant's own directory; a row whose tenant has no directory is revoked).
-- A new table rather than ALTER TABLE: the whole file is one batch, and a column added in a batch cannot be
-- referenced later in the same batch, while a table created in it can.

CREATE TABLE dbo.api_client_registrations (
    id           UNIQUEIDENTIFIER NOT NULL CONSTRAINT pk_api_client_registrations PRIMARY KEY,
    tenant_id    UNIQUEIDENTIFIER NOT NULL CONSTRAINT fk_api_client_registrations_tenant REFERENCES dbo.tenants (id),
    directory_id UNIQUEIDENTIFIER NULL,
    app_id       NVARCHAR(128)    NOT NULL CONSTRAINT ck_api_client_registrations_app_id CHECK (LEN(app_id) >= 1),
    display_name NVARCHAR(200)    NOT NULL CONSTRAINT ck_api_client_registrations_name CHECK (LEN(display_name) >= 1),
    status       NVARCHAR(16)     NOT NULL CONSTRAINT ck_api_client_registrations_status
        CHECK (status IN ('pending', 'active', 'rejected', 'revoked')),
    created_at   DATETIME2(6)     NOT NULL,
    revoked_at   DATETIME2(6)     NULL,
    decided_by   NVARCHAR(300)    NULL,
    decided_at   DATETIME2(6)     NULL,
    version      BIGINT           NOT NULL CONSTRAINT df_api_client_registrations_version DEFAULT 1
        CONSTRAINT ck_api_client_registrations_version CHECK (version >= 1),
    CONSTRAINT ck_api_client_registrations_bound CHECK (directory_id IS NOT NULL OR status = 'revoked')
);

INSERT INTO dbo.api_client_registrations
    (id, tenant_id, directory_id, app_id, display_name, status, created_at, revoked_at, decided_by, decided_at, version)
SELECT c.id, c.tenant_id, t.entra_tenant_id, c.app_id, c.display_name,
       CASE WHEN t.entra_tenant_id IS NULL THEN N'revoked' ELSE c.status END,
       c.created_at,
       CASE WHEN t.entra_tenant_id IS NULL AND c.revoked_at IS NULL THEN SYSUTCDATETIME() ELSE c.revoked_at END,
       NULL, NULL,
       CASE WHEN t.entra_tenant_id IS NULL AND c.status = N'active' THEN c.version + 1 ELSE c.version END
FROM dbo.api_clients c JOIN dbo.tenants t ON t.id = c.tenant_id;

ALTER TABLE dbo.api_client_roles DROP CONSTRAINT fk_api_client_roles_client;
ALTER TABLE dbo.api_client_roles ADD CONSTRAINT fk_api_client_roles_registration
    FOREIGN KEY (client_id) REFERENCES dbo.api_client_registrations (id) ON DELETE CASCADE;
DROP TABLE dbo.api_clients;

-- At most one live (pending or active) registration per tenant, directory and application; other tenants may hold
-- their own, so a registration never reveals whether another tenant registered the same application.
CREATE UNIQUE INDEX ux_api_client_registrations_live ON dbo.api_client_registrations (tenant_id, directory_id, app_id)
    WHERE status IN ('pending', 'active');
-- The lookup of every request with an `azp`: the registrations of (tid, azp).
CREATE INDEX ix_api_client_registrations_app ON dbo.api_client_registrations (directory_id, app_id)
    INCLUDE (tenant_id, status);
CREATE INDEX ix_api_client_registrations_tenant ON dbo.api_client_registrations (tenant_id, created_at, id);

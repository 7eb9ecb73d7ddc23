-- Quota grants on SQL Server (mirror of migrations/sqlite/0006_quota_grants.sql, which explains them).

CREATE TABLE dbo.quota_grants (
    id             UNIQUEIDENTIFIER NOT NULL CONSTRAINT pk_quota_grants PRIMARY KEY,
    tenant_id      UNIQUEIDENTIFIER NOT NULL,
    period_start   DATE             NOT NULL,
    units          BIGINT           NOT NULL CONSTRAINT ck_quota_grants_units CHECK (units > 0),
    reason         NVARCHAR(500)    NOT NULL CONSTRAINT ck_quota_grants_reason CHECK (LEN(reason) >= 1),
    granted_by     NVARCHAR(200)    NOT NULL CONSTRAINT ck_quota_grants_by CHECK (LEN(granted_by) >= 1),
    granted_at     DATETIME2(6)     NOT NULL,
    expires_at     DATETIME2(6)     NOT NULL,
    ended_at       DATETIME2(6)     NULL,
    revoked_by     NVARCHAR(200)    NULL,
    returned_units BIGINT           NULL,
    version        BIGINT           NOT NULL CONSTRAINT df_quota_grants_version DEFAULT 1
        CONSTRAINT ck_quota_grants_version CHECK (version >= 1),
    CONSTRAINT fk_quota_grants_period FOREIGN KEY (tenant_id, period_start)
        REFERENCES dbo.quota_usage (tenant_id, period_start),
    CONSTRAINT ck_quota_grants_returned CHECK (returned_units IS NULL OR (returned_units >= 0 AND returned_units <= units)),
    CONSTRAINT ck_quota_grants_ended CHECK ((ended_at IS NULL AND returned_units IS NULL)
        OR (ended_at IS NOT NULL AND returned_units IS NOT NULL)),
    CONSTRAINT ck_quota_grants_revoked CHECK (revoked_by IS NULL OR ended_at IS NOT NULL)
);
CREATE INDEX ix_quota_grants_period ON dbo.quota_grants (tenant_id, period_start, granted_at, id);
CREATE INDEX ix_quota_grants_expiry ON dbo.quota_grants (expires_at) WHERE ended_at IS NULL;

ALTER TABLE dbo.quota_usage ADD granted_units BIGINT NOT NULL CONSTRAINT df_quota_usage_granted DEFAULT 0
    CONSTRAINT ck_quota_usage_granted CHECK (granted_units >= 0);
ALTER TABLE dbo.billing_statements ADD granted_units BIGINT NOT NULL CONSTRAINT df_billing_statements_granted DEFAULT 0
    CONSTRAINT ck_billing_statements_granted CHECK (granted_units >= 0);

-- Quota leases on SQL Server (mirror of migrations/sqlite/0004_quota_leases.sql, which explains them).
-- The index on the new usage_events column is created through EXEC: the whole file is one batch, and a column
-- added in a batch cannot be referenced by a statement compiled with it.

CREATE TABLE dbo.quota_leases (
    lease_id      UNIQUEIDENTIFIER NOT NULL CONSTRAINT pk_quota_leases PRIMARY KEY,
    tenant_id     UNIQUEIDENTIFIER NOT NULL,
    period_start  DATE             NOT NULL,
    holder        NVARCHAR(200)    NOT NULL CONSTRAINT ck_quota_leases_holder CHECK (LEN(holder) >= 1),
    granted_units BIGINT           NOT NULL CONSTRAINT ck_quota_leases_granted CHECK (granted_units > 0),
    first_unit    BIGINT           NOT NULL CONSTRAINT ck_quota_leases_first CHECK (first_unit >= 0),
    granted_at    DATETIME2(6)     NOT NULL,
    expires_at    DATETIME2(6)     NOT NULL,
    settled_at    DATETIME2(6)     NULL,
    spent_units   BIGINT           NULL,
    CONSTRAINT fk_quota_leases_period FOREIGN KEY (tenant_id, period_start)
        REFERENCES dbo.quota_usage (tenant_id, period_start),
    CONSTRAINT ck_quota_leases_spent CHECK (spent_units IS NULL OR (spent_units >= 0 AND spent_units <= granted_units)),
    CONSTRAINT ck_quota_leases_settled CHECK ((settled_at IS NULL AND spent_units IS NULL)
        OR (settled_at IS NOT NULL AND spent_units IS NOT NULL))
);
CREATE INDEX ix_quota_leases_open ON dbo.quota_leases (tenant_id, period_start, expires_at) WHERE settled_at IS NULL;
CREATE INDEX ix_quota_leases_expiry ON dbo.quota_leases (expires_at) WHERE settled_at IS NULL;

ALTER TABLE dbo.usage_events ADD lease_id UNIQUEIDENTIFIER NULL;
EXEC (N'CREATE INDEX ix_usage_events_lease ON dbo.usage_events (lease_id) WHERE lease_id IS NOT NULL');

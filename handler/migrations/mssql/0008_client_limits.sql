-- Client limits on SQL Server (mirror of migrations/sqlite/0008_client_limits.sql, which explains them).

ALTER TABLE dbo.api_client_registrations ADD quota_units BIGINT NULL
    CONSTRAINT ck_api_client_quota CHECK (quota_units IS NULL OR quota_units > 0);
ALTER TABLE dbo.api_client_registrations ADD requests_per_minute INT NULL
    CONSTRAINT ck_api_client_rate CHECK (requests_per_minute IS NULL OR requests_per_minute > 0);

CREATE TABLE dbo.client_quota_usage (
    client_id    UNIQUEIDENTIFIER NOT NULL
        CONSTRAINT fk_client_quota_usage_client REFERENCES dbo.api_client_registrations (id),
    period_start DATE             NOT NULL,
    tenant_id    UNIQUEIDENTIFIER NOT NULL,
    units_used   BIGINT           NOT NULL CONSTRAINT df_client_quota_used DEFAULT 0
        CONSTRAINT ck_client_quota_used CHECK (units_used >= 0),
    updated_at   DATETIME2(6)     NOT NULL,
    CONSTRAINT pk_client_quota_usage PRIMARY KEY (client_id, period_start)
);

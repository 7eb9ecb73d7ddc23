-- Billing calendars on SQL Server (mirror of migrations/sqlite/0009_billing_calendar.sql, which explains them).

ALTER TABLE dbo.tenants ADD billing_anchor_day INT NOT NULL CONSTRAINT df_tenants_anchor DEFAULT 1
    CONSTRAINT ck_tenants_anchor CHECK (billing_anchor_day BETWEEN 1 AND 28);
ALTER TABLE dbo.tenants ADD time_zone NVARCHAR(64) NOT NULL CONSTRAINT df_tenants_time_zone DEFAULT N'UTC'
    CONSTRAINT ck_tenants_time_zone CHECK (LEN(time_zone) >= 1);
ALTER TABLE dbo.tenants ADD window_offset_minutes INT NOT NULL CONSTRAINT df_tenants_window_offset DEFAULT 0
    CONSTRAINT ck_tenants_window_offset CHECK (window_offset_minutes IN (0, 15, 30, 45));
ALTER TABLE dbo.billing_statements ADD starts_at DATETIME2(6) NULL;
ALTER TABLE dbo.billing_statements ADD ends_at DATETIME2(6) NULL;

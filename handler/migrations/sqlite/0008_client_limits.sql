-- Client limits (docs/usage.md, "Client limits"; mirror: migrations/mssql/0008_client_limits.sql).
--
-- A tenant administrator may cap one registered application's share of the tenant's limits: `quota_units` of the
-- tenant's monthly quota and `requests_per_minute` of the plan's rate (NULL: no cap). A capped client's units are
-- counted per period in `client_quota_usage`, debited with one conditional UPDATE per call like the tenant's
-- counter, so concurrent calls never take it past the cap.

ALTER TABLE api_client_registrations ADD COLUMN quota_units INTEGER NULL CHECK (quota_units IS NULL OR quota_units > 0);
ALTER TABLE api_client_registrations ADD COLUMN requests_per_minute INTEGER NULL
    CHECK (requests_per_minute IS NULL OR requests_per_minute > 0);

CREATE TABLE client_quota_usage (
    client_id    TEXT    NOT NULL REFERENCES api_client_registrations (id),
    period_start TEXT    NOT NULL,
    tenant_id    TEXT    NOT NULL,
    units_used   INTEGER NOT NULL DEFAULT 0 CHECK (units_used >= 0),
    updated_at   TEXT    NOT NULL,
    PRIMARY KEY (client_id, period_start)
) STRICT;

-- Quota grants (docs/usage.md, "Grants"; mirror: migrations/mssql/0006_quota_grants.sql).
--
-- A platform administrator adds units to a tenant's period: a grant with a reason, who granted it and when it
-- expires (at the latest, the period's end). Creating it raises the period's counter row by its units in the same
-- transaction (`quota_usage.quota_units`, the limit every debit and lease grant checks), so every process sees it
-- at its next lease grant; `quota_usage.granted_units` counts the grant units inside `quota_units`, so the plan's
-- own quota is always `quota_units - granted_units`. A grant ends by expiring or by revocation; either takes back
-- the part of it the counter has not used (`returned_units`), and the used part stays counted in `granted_units`.

CREATE TABLE quota_grants (
    id             TEXT    NOT NULL PRIMARY KEY,
    tenant_id      TEXT    NOT NULL,
    period_start   TEXT    NOT NULL,
    units          INTEGER NOT NULL CHECK (units > 0),
    reason         TEXT    NOT NULL CHECK (length(reason) BETWEEN 1 AND 500),
    granted_by     TEXT    NOT NULL CHECK (length(granted_by) BETWEEN 1 AND 200),
    granted_at     TEXT    NOT NULL,
    expires_at     TEXT    NOT NULL,
    ended_at       TEXT    NULL,
    revoked_by     TEXT    NULL,
    returned_units INTEGER NULL CHECK (returned_units IS NULL OR returned_units BETWEEN 0 AND units),
    version        INTEGER NOT NULL DEFAULT 1 CHECK (version >= 1),
    FOREIGN KEY (tenant_id, period_start) REFERENCES quota_usage (tenant_id, period_start),
    CHECK ((ended_at IS NULL) = (returned_units IS NULL)),
    CHECK (revoked_by IS NULL OR ended_at IS NOT NULL)
) STRICT;
-- A period's grants, in order (the listing, the summary); the open ones by expiry (what expiring reads).
CREATE INDEX ix_quota_grants_period ON quota_grants (tenant_id, period_start, granted_at, id);
CREATE INDEX ix_quota_grants_expiry ON quota_grants (expires_at) WHERE ended_at IS NULL;

ALTER TABLE quota_usage ADD COLUMN granted_units INTEGER NOT NULL DEFAULT 0 CHECK (granted_units >= 0);
ALTER TABLE billing_statements ADD COLUMN granted_units INTEGER NOT NULL DEFAULT 0 CHECK (granted_units >= 0);

-- Quota leases (docs/usage.md, "Quota leases"; mirror: migrations/mssql/0004_quota_leases.sql).
--
-- A process takes a grant of a period's quota units in one transaction: the counter (`quota_usage.units_used`) is
-- debited by the grant and a lease row records it. Requests spend the grant in memory, and each request's usage
-- event names its lease (`usage_events.lease_id`). Settling a lease gives back to the counter what the stored
-- billable usage events naming it did not spend; a crashed holder's lease is settled the same way once it has
-- expired, so the counter always ends equal to the billable units of the period's usage events.

CREATE TABLE quota_leases (
    lease_id      TEXT    NOT NULL PRIMARY KEY,
    tenant_id     TEXT    NOT NULL,
    period_start  TEXT    NOT NULL,
    holder        TEXT    NOT NULL CHECK (length(holder) BETWEEN 1 AND 200),
    granted_units INTEGER NOT NULL CHECK (granted_units > 0),
    first_unit    INTEGER NOT NULL CHECK (first_unit >= 0),    -- the counter before the grant
    granted_at    TEXT    NOT NULL,
    expires_at    TEXT    NOT NULL,
    settled_at    TEXT    NULL,
    spent_units   INTEGER NULL CHECK (spent_units IS NULL OR spent_units BETWEEN 0 AND granted_units),
    FOREIGN KEY (tenant_id, period_start) REFERENCES quota_usage (tenant_id, period_start),
    CHECK ((settled_at IS NULL) = (spent_units IS NULL))
) STRICT;
-- The unsettled leases by expiry: what reclaiming reads.
CREATE INDEX ix_quota_leases_open ON quota_leases (tenant_id, period_start, expires_at) WHERE settled_at IS NULL;
CREATE INDEX ix_quota_leases_expiry ON quota_leases (expires_at) WHERE settled_at IS NULL;

ALTER TABLE usage_events ADD COLUMN lease_id TEXT NULL CHECK (lease_id IS NULL OR length(lease_id) = 36);
-- A settlement sums the billable units of its lease's events.
CREATE INDEX ix_usage_events_lease ON usage_events (lease_id) WHERE lease_id IS NOT NULL;

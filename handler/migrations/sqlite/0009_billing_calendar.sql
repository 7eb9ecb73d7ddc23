-- Billing calendars (docs/usage.md, "Periods"; mirror: migrations/mssql/0009_billing_calendar.sql).
--
-- A tenant's periods start on `billing_anchor_day` (1 to 28) at local midnight in `time_zone` (an IANA name);
-- the default, 1 and 'UTC', is the UTC calendar month every tenant had before. `window_offset_minutes` is the
-- minutes past the UTC hour at which the zone's local hours begin (30 for Asia/Kolkata): the tenant's hour
-- rollups start there, so its local days and periods are whole hour windows. The calendar is fixed when the
-- tenant is created: counters, leases, grants and statements are keyed by its periods.
-- A statement records the instants its period began and ended (NULL on statements written before: UTC months).

ALTER TABLE tenants ADD COLUMN billing_anchor_day INTEGER NOT NULL DEFAULT 1 CHECK (billing_anchor_day BETWEEN 1 AND 28);
ALTER TABLE tenants ADD COLUMN time_zone TEXT NOT NULL DEFAULT 'UTC' CHECK (length(time_zone) BETWEEN 1 AND 64);
ALTER TABLE tenants ADD COLUMN window_offset_minutes INTEGER NOT NULL DEFAULT 0
    CHECK (window_offset_minutes IN (0, 15, 30, 45));
ALTER TABLE billing_statements ADD COLUMN starts_at TEXT NULL;
ALTER TABLE billing_statements ADD COLUMN ends_at TEXT NULL;

-- The plan a quota period is billed on (the SQLite migration of the same version says why). Nullable: periods
-- created before it have none, and their statements use the tenant's plan as before.
ALTER TABLE dbo.quota_usage ADD plan_code NVARCHAR(64) NULL;

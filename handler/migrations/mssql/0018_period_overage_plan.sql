-- The plan whose overage price bills a period's overage after a move to `allow` that kept the period's larger
-- quota and plan (the SQLite migration of the same version says why). Nullable: null is `plan_code`'s price.
ALTER TABLE dbo.quota_usage ADD overage_plan_code NVARCHAR(64) NULL;

-- Which limit refused a request (docs/usage.md, "Refused calls"): a usage event of a 429 from the limit stage
-- names it, and the rollups count refusals by rate limit and by quota beside the errors that include them.
ALTER TABLE dbo.usage_events ADD refusal NVARCHAR(8) NULL
    CONSTRAINT ck_usage_events_refusal CHECK (refusal IN (N'rate', N'quota'));
ALTER TABLE dbo.usage_rollups ADD rate_limited BIGINT NOT NULL
    CONSTRAINT df_usage_rollups_rate_limited DEFAULT 0
    CONSTRAINT ck_usage_rollups_rate_limited CHECK (rate_limited >= 0);
ALTER TABLE dbo.usage_rollups ADD quota_refused BIGINT NOT NULL
    CONSTRAINT df_usage_rollups_quota_refused DEFAULT 0
    CONSTRAINT ck_usage_rollups_quota_refused CHECK (quota_refused >= 0);

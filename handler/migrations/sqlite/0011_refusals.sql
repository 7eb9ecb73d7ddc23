-- Which limit refused a request (docs/usage.md, "Refused calls"): a usage event of a 429 from the limit stage
-- names it, and the rollups count refusals by rate limit and by quota beside the errors that include them.
ALTER TABLE usage_events ADD COLUMN refusal TEXT NULL CHECK (refusal IS NULL OR refusal IN ('rate', 'quota'));
ALTER TABLE usage_rollups ADD COLUMN rate_limited INTEGER NOT NULL DEFAULT 0 CHECK (rate_limited >= 0);
ALTER TABLE usage_rollups ADD COLUMN quota_refused INTEGER NOT NULL DEFAULT 0 CHECK (quota_refused >= 0);

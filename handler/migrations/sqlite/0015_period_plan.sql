-- The plan a quota period is billed on: the tenant's plan when the period's counter was created, and the new plan
-- when an upgrade raised the period's quota. A downgrade applies from the next period, and so does its price: the
-- month close prices a period on this plan, not on whatever plan the tenant is on when the statement is written.
-- Periods created before this migration have none; their statements use the tenant's plan as before.
ALTER TABLE quota_usage ADD COLUMN plan_code TEXT;

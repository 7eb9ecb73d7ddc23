-- The plan whose overage price bills a period's overage when the period moved from `block` to `allow` through a
-- plan with a smaller quota: the period keeps its larger quota and the plan it is billed on (`plan_code`, its base
-- price), and the plan that allowed the overage prices it. Without it that overage was priced by the `block`
-- plan, whose overage price is never charged otherwise (usually 0): overage for free until the period ended.
-- Null: `plan_code`'s price, as for every period before this migration.
ALTER TABLE quota_usage ADD COLUMN overage_plan_code TEXT;

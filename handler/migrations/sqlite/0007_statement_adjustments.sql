-- Statement adjustments (docs/usage.md, "Adjustments"; mirror: migrations/mssql/0007_statement_adjustments.sql).
--
-- A statement is never changed once issued. Usage of its month that is rolled up after it was written (late
-- events, backfills, `meterline.usage.reported.v1`) is billed on the tenant's next statement as an adjustment line
-- that references the issued statement: the difference between the month's units as the rollups now hold them and
-- what the statement and the earlier adjustments of it billed, priced at the statement's overage unit price.

CREATE TABLE statement_adjustments (
    id                   TEXT    NOT NULL PRIMARY KEY,
    statement_id         TEXT    NOT NULL REFERENCES billing_statements (id),  -- where the line appears
    adjusts_statement_id TEXT    NOT NULL REFERENCES billing_statements (id),  -- the issued statement it corrects
    used_units_delta     INTEGER NOT NULL,
    overage_units_delta  INTEGER NOT NULL,
    amount_micros        INTEGER NOT NULL,
    created_at           TEXT    NOT NULL,
    CHECK (statement_id <> adjusts_statement_id)
) STRICT;
CREATE INDEX ix_statement_adjustments_statement ON statement_adjustments (statement_id);
CREATE INDEX ix_statement_adjustments_adjusts ON statement_adjustments (adjusts_statement_id);

-- The overage unit price a statement billed at (NULL on statements written before this migration), and the sum of
-- its adjustment lines; what the tenant owes for it is total_amount_micros + adjustment_amount_micros.
ALTER TABLE billing_statements ADD COLUMN overage_unit_price_micros INTEGER NULL
    CHECK (overage_unit_price_micros IS NULL OR overage_unit_price_micros >= 0);
ALTER TABLE billing_statements ADD COLUMN adjustment_amount_micros INTEGER NOT NULL DEFAULT 0;

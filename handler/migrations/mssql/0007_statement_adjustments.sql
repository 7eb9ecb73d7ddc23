-- Statement adjustments on SQL Server (mirror of migrations/sqlite/0007_statement_adjustments.sql, which explains
-- them).

CREATE TABLE dbo.statement_adjustments (
    id                   UNIQUEIDENTIFIER NOT NULL CONSTRAINT pk_statement_adjustments PRIMARY KEY,
    statement_id         UNIQUEIDENTIFIER NOT NULL
        CONSTRAINT fk_statement_adjustments_statement REFERENCES dbo.billing_statements (id),
    adjusts_statement_id UNIQUEIDENTIFIER NOT NULL
        CONSTRAINT fk_statement_adjustments_adjusts REFERENCES dbo.billing_statements (id),
    used_units_delta     BIGINT           NOT NULL,
    overage_units_delta  BIGINT           NOT NULL,
    amount_micros        BIGINT           NOT NULL,
    created_at           DATETIME2(6)     NOT NULL,
    CONSTRAINT ck_statement_adjustments_other CHECK (statement_id <> adjusts_statement_id)
);
CREATE INDEX ix_statement_adjustments_statement ON dbo.statement_adjustments (statement_id);
CREATE INDEX ix_statement_adjustments_adjusts ON dbo.statement_adjustments (adjusts_statement_id);

ALTER TABLE dbo.billing_statements ADD overage_unit_price_micros BIGINT NULL
    CONSTRAINT ck_billing_statements_price CHECK (overage_unit_price_micros IS NULL OR overage_unit_price_micros >= 0);
ALTER TABLE dbo.billing_statements ADD adjustment_amount_micros BIGINT NOT NULL
    CONSTRAINT df_billing_statements_adjustment DEFAULT 0;

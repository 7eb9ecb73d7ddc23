-- The Meterline data model on SQL Server / Azure SQL / Fabric SQL (mirror of migrations/sqlite/0002_data_model.sql;
-- docs/data-model.md explains each table). Times are UTC DATETIME2(6); text is NVARCHAR; ids are UNIQUEIDENTIFIER;
-- `version` is the optimistic-concurrency row version (the ETag), incremented by every update.

CREATE TABLE dbo.plans (
    code                      NVARCHAR(64)  NOT NULL CONSTRAINT pk_plans PRIMARY KEY,
    name                      NVARCHAR(200) NOT NULL,
    requests_per_minute       INT           NOT NULL CONSTRAINT ck_plans_rpm CHECK (requests_per_minute > 0),
    burst                     INT           NOT NULL CONSTRAINT ck_plans_burst CHECK (burst > 0),
    monthly_quota_units       BIGINT        NOT NULL CONSTRAINT ck_plans_quota CHECK (monthly_quota_units >= 0),
    overage_policy            NVARCHAR(8)   NOT NULL CONSTRAINT ck_plans_overage CHECK (overage_policy IN ('block', 'allow')),
    currency                  NCHAR(3)      NOT NULL,
    base_price_micros         BIGINT        NOT NULL CONSTRAINT df_plans_base DEFAULT 0 CONSTRAINT ck_plans_base CHECK (base_price_micros >= 0),
    overage_unit_price_micros BIGINT        NOT NULL CONSTRAINT df_plans_overage_price DEFAULT 0 CONSTRAINT ck_plans_overage_price CHECK (overage_unit_price_micros >= 0),
    created_at                DATETIME2(6)  NOT NULL,
    updated_at                DATETIME2(6)  NOT NULL,
    version                   BIGINT        NOT NULL CONSTRAINT df_plans_version DEFAULT 1 CONSTRAINT ck_plans_version CHECK (version >= 1),
    CONSTRAINT ck_plans_code CHECK (LEN(code) >= 1),
    CONSTRAINT ck_plans_name CHECK (LEN(name) >= 1)
);

CREATE TABLE dbo.plan_operation_costs (
    plan_code    NVARCHAR(64) NOT NULL CONSTRAINT fk_plan_costs_plan REFERENCES dbo.plans (code) ON DELETE CASCADE,
    operation_id NVARCHAR(64) NOT NULL,
    units        INT          NOT NULL CONSTRAINT ck_plan_costs_units CHECK (units >= 0),
    CONSTRAINT pk_plan_operation_costs PRIMARY KEY (plan_code, operation_id)
);

CREATE TABLE dbo.tenants (
    id              UNIQUEIDENTIFIER NOT NULL CONSTRAINT pk_tenants PRIMARY KEY,
    entra_tenant_id UNIQUEIDENTIFIER NULL,
    name            NVARCHAR(200)    NOT NULL CONSTRAINT ck_tenants_name CHECK (LEN(name) >= 1),
    status          NVARCHAR(16)     NOT NULL CONSTRAINT ck_tenants_status CHECK (status IN ('active', 'suspended', 'closed')),
    plan_code       NVARCHAR(64)     NOT NULL CONSTRAINT fk_tenants_plan REFERENCES dbo.plans (code),
    created_at      DATETIME2(6)     NOT NULL,
    updated_at      DATETIME2(6)     NOT NULL,
    version         BIGINT           NOT NULL CONSTRAINT df_tenants_version DEFAULT 1 CONSTRAINT ck_tenants_version CHECK (version >= 1)
);
CREATE UNIQUE INDEX ux_tenants_entra_tenant_id ON dbo.tenants (entra_tenant_id) WHERE entra_tenant_id IS NOT NULL;
CREATE INDEX ix_tenants_created ON dbo.tenants (created_at, id);
CREATE INDEX ix_tenants_plan ON dbo.tenants (plan_code);

CREATE TABLE dbo.api_clients (
    id           UNIQUEIDENTIFIER NOT NULL CONSTRAINT pk_api_clients PRIMARY KEY,
    tenant_id    UNIQUEIDENTIFIER NOT NULL CONSTRAINT fk_api_clients_tenant REFERENCES dbo.tenants (id),
    app_id       NVARCHAR(128)    NOT NULL CONSTRAINT ck_api_clients_app_id CHECK (LEN(app_id) >= 1),
    display_name NVARCHAR(200)    NOT NULL CONSTRAINT ck_api_clients_name CHECK (LEN(display_name) >= 1),
    status       NVARCHAR(16)     NOT NULL CONSTRAINT ck_api_clients_status CHECK (status IN ('active', 'revoked')),
    created_at   DATETIME2(6)     NOT NULL,
    revoked_at   DATETIME2(6)     NULL,
    version      BIGINT           NOT NULL CONSTRAINT df_api_clients_version DEFAULT 1 CONSTRAINT ck_api_clients_version CHECK (version >= 1)
);
CREATE UNIQUE INDEX ux_api_clients_app_id ON dbo.api_clients (app_id);
CREATE INDEX ix_api_clients_tenant ON dbo.api_clients (tenant_id, created_at, id);

CREATE TABLE dbo.api_client_roles (
    client_id UNIQUEIDENTIFIER NOT NULL CONSTRAINT fk_api_client_roles_client REFERENCES dbo.api_clients (id) ON DELETE CASCADE,
    role      NVARCHAR(32)     NOT NULL CONSTRAINT ck_api_client_roles_role
        CHECK (role IN ('Platform.Admin', 'Tenant.Admin', 'Documents.Read', 'Documents.Write', 'Usage.Read', 'Audit.Read')),
    CONSTRAINT pk_api_client_roles PRIMARY KEY (client_id, role)
);

CREATE TABLE dbo.documents (
    id             UNIQUEIDENTIFIER NOT NULL CONSTRAINT pk_documents PRIMARY KEY NONCLUSTERED,
    tenant_id      UNIQUEIDENTIFIER NOT NULL CONSTRAINT fk_documents_tenant REFERENCES dbo.tenants (id),
    title          NVARCHAR(300)    NOT NULL CONSTRAINT ck_documents_title CHECK (LEN(title) >= 1),
    summary        NVARCHAR(2000)   NULL,
    body           NVARCHAR(MAX)    NULL,
    doc_type       NVARCHAR(64)     NOT NULL CONSTRAINT ck_documents_doc_type CHECK (LEN(doc_type) >= 1),
    jurisdiction   NVARCHAR(64)     NULL,
    status         NVARCHAR(16)     NOT NULL CONSTRAINT ck_documents_status CHECK (status IN ('draft', 'published', 'archived')),
    effective_date DATE             NULL,
    created_by     NVARCHAR(128)    NOT NULL,
    updated_by     NVARCHAR(128)    NOT NULL,
    created_at     DATETIME2(6)     NOT NULL,
    updated_at     DATETIME2(6)     NOT NULL,
    deleted_at     DATETIME2(6)     NULL,
    version        BIGINT           NOT NULL CONSTRAINT df_documents_version DEFAULT 1 CONSTRAINT ck_documents_version CHECK (version >= 1)
);
-- Keyset pagination: one index per sort order, tenant first, id as the tie-breaker; live rows only.
-- Clustered by tenant, not by the random GUID: a tenant's rows sit together and inserts do not split pages.
CREATE CLUSTERED INDEX cx_documents_tenant ON dbo.documents (tenant_id, created_at, id);
CREATE INDEX ix_documents_updated ON dbo.documents (tenant_id, updated_at, id) WHERE deleted_at IS NULL;
CREATE INDEX ix_documents_title ON dbo.documents (tenant_id, title, id) WHERE deleted_at IS NULL;
CREATE INDEX ix_documents_effective ON dbo.documents (tenant_id, effective_date, id) WHERE deleted_at IS NULL;

CREATE TABLE dbo.document_tags (
    document_id UNIQUEIDENTIFIER NOT NULL CONSTRAINT fk_document_tags_document REFERENCES dbo.documents (id) ON DELETE CASCADE,
    tenant_id   UNIQUEIDENTIFIER NOT NULL,
    tag         NVARCHAR(64)     NOT NULL CONSTRAINT ck_document_tags_tag CHECK (LEN(tag) >= 1),
    CONSTRAINT pk_document_tags PRIMARY KEY (document_id, tag)
);
CREATE INDEX ix_document_tags_tag ON dbo.document_tags (tenant_id, tag, document_id);

CREATE TABLE dbo.usage_events (
    seq            BIGINT IDENTITY(1, 1) NOT NULL CONSTRAINT pk_usage_events PRIMARY KEY,
    event_id       UNIQUEIDENTIFIER NOT NULL,
    request_id     NVARCHAR(64)     NOT NULL,
    tenant_id      UNIQUEIDENTIFIER NULL CONSTRAINT fk_usage_events_tenant REFERENCES dbo.tenants (id),
    client_id      NVARCHAR(128)    NULL,
    principal_id   NVARCHAR(128)    NULL,
    operation_id   NVARCHAR(64)     NOT NULL,
    method         NVARCHAR(10)     NOT NULL,
    route_template NVARCHAR(200)    NOT NULL,
    status         SMALLINT         NOT NULL CONSTRAINT ck_usage_events_status CHECK (status BETWEEN 100 AND 599),
    units          INT              NOT NULL CONSTRAINT ck_usage_events_units CHECK (units >= 0),
    billable       BIT              NOT NULL,
    overage_units  INT              NOT NULL CONSTRAINT df_usage_events_overage DEFAULT 0,
    latency_micros BIGINT           NOT NULL CONSTRAINT ck_usage_events_latency CHECK (latency_micros >= 0),
    request_bytes  BIGINT           NOT NULL CONSTRAINT ck_usage_events_req_bytes CHECK (request_bytes >= 0),
    response_bytes BIGINT           NOT NULL CONSTRAINT ck_usage_events_res_bytes CHECK (response_bytes >= 0),
    occurred_at    DATETIME2(6)     NOT NULL,
    recorded_at    DATETIME2(6)     NOT NULL,
    CONSTRAINT ck_usage_events_overage CHECK (overage_units >= 0 AND overage_units <= units)
);
CREATE UNIQUE INDEX ux_usage_events_event_id ON dbo.usage_events (event_id);
CREATE INDEX ix_usage_events_tenant_time ON dbo.usage_events (tenant_id, occurred_at);

CREATE TABLE dbo.usage_rollups (
    tenant_id          UNIQUEIDENTIFIER NOT NULL,
    granularity        NVARCHAR(8)      NOT NULL CONSTRAINT ck_usage_rollups_granularity CHECK (granularity IN ('hour', 'day')),
    window_start       DATETIME2(0)     NOT NULL,
    operation_id       NVARCHAR(64)     NOT NULL,
    client_id          NVARCHAR(128)    NOT NULL CONSTRAINT df_usage_rollups_client DEFAULT '',
    calls              BIGINT           NOT NULL CONSTRAINT ck_usage_rollups_calls CHECK (calls >= 0),
    units              BIGINT           NOT NULL CONSTRAINT ck_usage_rollups_units CHECK (units >= 0),
    billable_units     BIGINT           NOT NULL CONSTRAINT ck_usage_rollups_billable CHECK (billable_units >= 0),
    overage_units      BIGINT           NOT NULL CONSTRAINT ck_usage_rollups_overage CHECK (overage_units >= 0),
    errors             BIGINT           NOT NULL CONSTRAINT ck_usage_rollups_errors CHECK (errors >= 0),
    latency_sum_micros BIGINT           NOT NULL CONSTRAINT ck_usage_rollups_lat_sum CHECK (latency_sum_micros >= 0),
    latency_max_micros BIGINT           NOT NULL CONSTRAINT ck_usage_rollups_lat_max CHECK (latency_max_micros >= 0),
    latency_histogram  NVARCHAR(MAX)    NOT NULL CONSTRAINT df_usage_rollups_histogram DEFAULT '[]',
    updated_at         DATETIME2(6)     NOT NULL,
    CONSTRAINT pk_usage_rollups PRIMARY KEY (tenant_id, granularity, window_start, operation_id, client_id)
);

CREATE TABLE dbo.quota_usage (
    tenant_id      UNIQUEIDENTIFIER NOT NULL CONSTRAINT fk_quota_usage_tenant REFERENCES dbo.tenants (id),
    period_start   DATE             NOT NULL,
    period_end     DATE             NOT NULL,
    quota_units    BIGINT           NOT NULL CONSTRAINT ck_quota_usage_quota CHECK (quota_units >= 0),
    overage_policy NVARCHAR(8)      NOT NULL CONSTRAINT ck_quota_usage_policy CHECK (overage_policy IN ('block', 'allow')),
    units_used     BIGINT           NOT NULL CONSTRAINT df_quota_usage_used DEFAULT 0 CONSTRAINT ck_quota_usage_used CHECK (units_used >= 0),
    overage_units  BIGINT           NOT NULL CONSTRAINT df_quota_usage_overage DEFAULT 0 CONSTRAINT ck_quota_usage_overage CHECK (overage_units >= 0),
    notified_80    BIT              NOT NULL CONSTRAINT df_quota_usage_n80 DEFAULT 0,
    notified_100   BIT              NOT NULL CONSTRAINT df_quota_usage_n100 DEFAULT 0,
    updated_at     DATETIME2(6)     NOT NULL,
    CONSTRAINT pk_quota_usage PRIMARY KEY (tenant_id, period_start)
);

CREATE TABLE dbo.rate_limit_state (
    tenant_id  UNIQUEIDENTIFIER NOT NULL,
    client_id  NVARCHAR(128)    NOT NULL,
    tat_micros BIGINT           NOT NULL,
    CONSTRAINT pk_rate_limit_state PRIMARY KEY (tenant_id, client_id)
);

CREATE TABLE dbo.billing_statements (
    id                    UNIQUEIDENTIFIER NOT NULL CONSTRAINT pk_billing_statements PRIMARY KEY,
    tenant_id             UNIQUEIDENTIFIER NOT NULL CONSTRAINT fk_billing_statements_tenant REFERENCES dbo.tenants (id),
    period_start          DATE             NOT NULL,
    period_end            DATE             NOT NULL,
    plan_code             NVARCHAR(64)     NOT NULL,
    currency              NCHAR(3)         NOT NULL,
    quota_units           BIGINT           NOT NULL CONSTRAINT ck_billing_quota CHECK (quota_units >= 0),
    used_units            BIGINT           NOT NULL CONSTRAINT ck_billing_used CHECK (used_units >= 0),
    overage_units         BIGINT           NOT NULL CONSTRAINT ck_billing_overage CHECK (overage_units >= 0),
    base_amount_micros    BIGINT           NOT NULL CONSTRAINT ck_billing_base CHECK (base_amount_micros >= 0),
    overage_amount_micros BIGINT           NOT NULL CONSTRAINT ck_billing_overage_amount CHECK (overage_amount_micros >= 0),
    total_amount_micros   BIGINT           NOT NULL,
    created_at            DATETIME2(6)     NOT NULL,
    CONSTRAINT ck_billing_total CHECK (total_amount_micros = base_amount_micros + overage_amount_micros)
);
CREATE UNIQUE INDEX ux_billing_statements_period ON dbo.billing_statements (tenant_id, period_start);

-- Append-only and hash-chained per `chain`. Where the server has ledger tables (Azure SQL, SQL Server 2022+),
-- the table is an append-only ledger table, so even a DBA cannot update or delete a row unnoticed.
DECLARE @audit_columns NVARCHAR(MAX) = N'(
    id               UNIQUEIDENTIFIER NOT NULL CONSTRAINT pk_audit_events PRIMARY KEY NONCLUSTERED,
    chain            NVARCHAR(64)     NOT NULL,
    chain_seq        BIGINT           NOT NULL CONSTRAINT ck_audit_events_seq CHECK (chain_seq >= 1),
    tenant_id        UNIQUEIDENTIFIER NULL,
    occurred_at      DATETIME2(6)     NOT NULL,
    actor_oid        NVARCHAR(128)    NULL,
    actor_app_id     NVARCHAR(128)    NULL,
    actor_tenant_id  NVARCHAR(64)     NULL,
    action           NVARCHAR(64)     NOT NULL,
    resource_type    NVARCHAR(64)     NOT NULL,
    resource_id      NVARCHAR(128)    NULL,
    outcome          NVARCHAR(16)     NOT NULL CONSTRAINT ck_audit_events_outcome CHECK (outcome IN (''succeeded'', ''denied'', ''rejected'', ''failed'')),
    request_id       NVARCHAR(64)     NULL,
    summary          NVARCHAR(2000)   NOT NULL CONSTRAINT df_audit_events_summary DEFAULT '''',
    before_hash      CHAR(64)         NULL,
    after_hash       CHAR(64)         NULL,
    limiter_decision NVARCHAR(200)    NULL,
    prev_hash        CHAR(64)         NOT NULL,
    hash             CHAR(64)         NOT NULL
)';
-- EngineEdition: 5 Azure SQL Database, 8 Azure SQL Managed Instance, 1-4 SQL Server (ledger from 2022, major 16);
-- anything else (e.g. 12, the SQL database in Microsoft Fabric) gets a normal table.
DECLARE @edition INT = CAST(SERVERPROPERTY('EngineEdition') AS INT);
DECLARE @ledger NVARCHAR(100) = CASE
    WHEN @edition IN (5, 8) THEN N' WITH (LEDGER = ON (APPEND_ONLY = ON))'
    WHEN @edition IN (1, 2, 3, 4) AND CAST(SERVERPROPERTY('ProductMajorVersion') AS INT) >= 16
        THEN N' WITH (LEDGER = ON (APPEND_ONLY = ON))'
    ELSE N''
END;
EXEC (N'CREATE TABLE dbo.audit_events ' + @audit_columns + @ledger);
CREATE UNIQUE INDEX ux_audit_events_chain_seq ON dbo.audit_events (chain, chain_seq);
CREATE INDEX ix_audit_events_tenant_time ON dbo.audit_events (tenant_id, occurred_at, id);

CREATE TABLE dbo.inbox_messages (
    source       NVARCHAR(200) NOT NULL,
    event_id     NVARCHAR(200) NOT NULL,
    event_type   NVARCHAR(200) NOT NULL,
    processed_at DATETIME2(6)  NOT NULL,
    CONSTRAINT pk_inbox_messages PRIMARY KEY (source, event_id)
);

CREATE TABLE dbo.quarantine_messages (
    id             UNIQUEIDENTIFIER NOT NULL CONSTRAINT pk_quarantine_messages PRIMARY KEY,
    received_at    DATETIME2(6)     NOT NULL,
    message_id     NVARCHAR(128)    NULL,
    delivery_count INT              NULL,
    content_type   NVARCHAR(128)    NULL,
    reason         NVARCHAR(2000)   NOT NULL,
    raw_body       NVARCHAR(MAX)    NOT NULL,
    replayed_at    DATETIME2(6)     NULL
);
CREATE INDEX ix_quarantine_received ON dbo.quarantine_messages (received_at);

CREATE TABLE dbo.outbox_messages (
    seq          BIGINT IDENTITY(1, 1) NOT NULL CONSTRAINT pk_outbox_messages PRIMARY KEY,
    id           UNIQUEIDENTIFIER NOT NULL,
    event_type   NVARCHAR(200)    NOT NULL,
    subject      NVARCHAR(200)    NULL,
    payload      NVARCHAR(MAX)    NOT NULL,
    created_at   DATETIME2(6)     NOT NULL,
    available_at DATETIME2(6)     NOT NULL,
    attempts     INT              NOT NULL CONSTRAINT df_outbox_attempts DEFAULT 0 CONSTRAINT ck_outbox_attempts CHECK (attempts >= 0),
    last_error   NVARCHAR(2000)   NULL,
    sent_at      DATETIME2(6)     NULL
);
CREATE UNIQUE INDEX ux_outbox_messages_id ON dbo.outbox_messages (id);
CREATE INDEX ix_outbox_pending ON dbo.outbox_messages (available_at, seq) WHERE sent_at IS NULL;

CREATE TABLE dbo.idempotency_keys (
    tenant_id        UNIQUEIDENTIFIER NOT NULL,
    idempotency_key  NVARCHAR(200)    NOT NULL CONSTRAINT ck_idempotency_key CHECK (LEN(idempotency_key) >= 1),
    operation_id     NVARCHAR(64)     NOT NULL,
    request_hash     CHAR(64)         NOT NULL,
    status_code      SMALLINT         NOT NULL,
    response_headers NVARCHAR(MAX)    NOT NULL,
    response_body    VARBINARY(MAX)   NOT NULL,
    created_at       DATETIME2(6)     NOT NULL,
    expires_at       DATETIME2(6)     NOT NULL,
    CONSTRAINT pk_idempotency_keys PRIMARY KEY (tenant_id, idempotency_key)
);
CREATE INDEX ix_idempotency_expires ON dbo.idempotency_keys (expires_at);

CREATE TABLE dbo.job_leases (
    name        NVARCHAR(64)  NOT NULL CONSTRAINT pk_job_leases PRIMARY KEY,
    holder      NVARCHAR(128) NOT NULL,
    acquired_at DATETIME2(6)  NOT NULL,
    expires_at  DATETIME2(6)  NOT NULL
);

CREATE TABLE dbo.job_watermarks (
    name       NVARCHAR(64) NOT NULL CONSTRAINT pk_job_watermarks PRIMARY KEY,
    position   BIGINT       NOT NULL,
    updated_at DATETIME2(6) NOT NULL
);

-- The schema after SQLite migration 19, generated from the migrations by
-- `UPDATE_SNAPSHOTS=1 cargo test -p handler --lib baseline`: do not edit.

CREATE TABLE job_runs (
    id           TEXT    NOT NULL PRIMARY KEY,           -- UUID
    job          TEXT    NOT NULL CHECK (length(job) BETWEEN 1 AND 64),
    trigger_kind TEXT    NOT NULL CHECK (trigger_kind IN ('timer', 'cli', 'schedule')),
    is_past_due  INTEGER NOT NULL CHECK (is_past_due IN (0, 1)),
    started_at   TEXT    NOT NULL,                       -- UTC, RFC 3339 with microseconds
    finished_at  TEXT    NOT NULL,
    outcome      TEXT    NOT NULL CHECK (outcome IN ('succeeded', 'failed')),
    detail       TEXT    NOT NULL DEFAULT ''
) STRICT;

CREATE INDEX ix_job_runs_job_started ON job_runs (job, started_at DESC);

CREATE TABLE plans (
    code                      TEXT    NOT NULL PRIMARY KEY CHECK (length(code) BETWEEN 1 AND 64),
    name                      TEXT    NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    requests_per_minute       INTEGER NOT NULL CHECK (requests_per_minute > 0),
    burst                     INTEGER NOT NULL CHECK (burst > 0),
    monthly_quota_units       INTEGER NOT NULL CHECK (monthly_quota_units >= 0),
    overage_policy            TEXT    NOT NULL CHECK (overage_policy IN ('block', 'allow')),
    currency                  TEXT    NOT NULL CHECK (length(currency) = 3),
    base_price_micros         INTEGER NOT NULL DEFAULT 0 CHECK (base_price_micros >= 0),
    overage_unit_price_micros INTEGER NOT NULL DEFAULT 0 CHECK (overage_unit_price_micros >= 0),
    created_at                TEXT    NOT NULL,
    updated_at                TEXT    NOT NULL,
    version                   INTEGER NOT NULL DEFAULT 1 CHECK (version >= 1)
) STRICT;

CREATE TABLE plan_operation_costs (
    plan_code    TEXT    NOT NULL REFERENCES plans (code) ON DELETE CASCADE,
    operation_id TEXT    NOT NULL CHECK (length(operation_id) BETWEEN 1 AND 64),
    units        INTEGER NOT NULL CHECK (units >= 0),
    PRIMARY KEY (plan_code, operation_id)
) STRICT;

CREATE TABLE tenants (
    id              TEXT    NOT NULL PRIMARY KEY,
    entra_tenant_id TEXT    NULL,                       -- the `tid` claim; unique when present
    name            TEXT    NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    status          TEXT    NOT NULL CHECK (status IN ('active', 'suspended', 'closed')),
    plan_code       TEXT    NOT NULL REFERENCES plans (code),
    created_at      TEXT    NOT NULL,
    updated_at      TEXT    NOT NULL,
    version         INTEGER NOT NULL DEFAULT 1 CHECK (version >= 1)
, billing_anchor_day INTEGER NOT NULL DEFAULT 1 CHECK (billing_anchor_day BETWEEN 1 AND 28), time_zone TEXT NOT NULL DEFAULT 'UTC' CHECK (length(time_zone) BETWEEN 1 AND 64), window_offset_minutes INTEGER NOT NULL DEFAULT 0
    CHECK (window_offset_minutes IN (0, 15, 30, 45))) STRICT;

CREATE UNIQUE INDEX ux_tenants_entra_tenant_id ON tenants (entra_tenant_id) WHERE entra_tenant_id IS NOT NULL;

CREATE INDEX ix_tenants_created ON tenants (created_at, id);

CREATE INDEX ix_tenants_plan ON tenants (plan_code);

CREATE TABLE documents (
    id             TEXT    NOT NULL PRIMARY KEY,
    tenant_id      TEXT    NOT NULL REFERENCES tenants (id),
    title          TEXT    NOT NULL CHECK (length(title) BETWEEN 1 AND 300),
    summary        TEXT    NULL CHECK (summary IS NULL OR length(summary) <= 2000),
    body           TEXT    NULL,
    doc_type       TEXT    NOT NULL CHECK (length(doc_type) BETWEEN 1 AND 64),
    jurisdiction   TEXT    NULL CHECK (jurisdiction IS NULL OR length(jurisdiction) BETWEEN 1 AND 64),
    status         TEXT    NOT NULL CHECK (status IN ('draft', 'published', 'archived')),
    effective_date TEXT    NULL,                        -- YYYY-MM-DD
    created_by     TEXT    NOT NULL,
    updated_by     TEXT    NOT NULL,
    created_at     TEXT    NOT NULL,
    updated_at     TEXT    NOT NULL,
    deleted_at     TEXT    NULL,                        -- soft delete
    version        INTEGER NOT NULL DEFAULT 1 CHECK (version >= 1)
) STRICT;

CREATE INDEX ix_documents_updated ON documents (tenant_id, updated_at, id) WHERE deleted_at IS NULL;

CREATE INDEX ix_documents_title ON documents (tenant_id, title, id) WHERE deleted_at IS NULL;

CREATE INDEX ix_documents_effective ON documents (tenant_id, effective_date, id) WHERE deleted_at IS NULL;

CREATE TABLE document_tags (
    document_id TEXT NOT NULL REFERENCES documents (id) ON DELETE CASCADE,
    tenant_id   TEXT NOT NULL,
    tag         TEXT NOT NULL CHECK (length(tag) BETWEEN 1 AND 64),
    PRIMARY KEY (document_id, tag)
) STRICT;

CREATE INDEX ix_document_tags_tag ON document_tags (tenant_id, tag, document_id);

CREATE TABLE usage_events (
    seq            INTEGER NOT NULL PRIMARY KEY AUTOINCREMENT,
    event_id       TEXT    NOT NULL,
    request_id     TEXT    NOT NULL,
    tenant_id      TEXT    NULL REFERENCES tenants (id),  -- NULL when the caller was never identified
    client_id      TEXT    NULL,
    principal_id   TEXT    NULL,
    operation_id   TEXT    NOT NULL,
    method         TEXT    NOT NULL,
    route_template TEXT    NOT NULL,
    status         INTEGER NOT NULL CHECK (status BETWEEN 100 AND 599),
    units          INTEGER NOT NULL CHECK (units >= 0),
    billable       INTEGER NOT NULL CHECK (billable IN (0, 1)),
    overage_units  INTEGER NOT NULL DEFAULT 0 CHECK (overage_units >= 0 AND overage_units <= units),
    latency_micros INTEGER NOT NULL CHECK (latency_micros >= 0),
    request_bytes  INTEGER NOT NULL CHECK (request_bytes >= 0),
    response_bytes INTEGER NOT NULL CHECK (response_bytes >= 0),
    occurred_at    TEXT    NOT NULL,
    recorded_at    TEXT    NOT NULL
, lease_id TEXT NULL CHECK (lease_id IS NULL OR length(lease_id) = 36), refusal TEXT NULL CHECK (refusal IS NULL OR refusal IN ('rate', 'quota'))) STRICT;

CREATE UNIQUE INDEX ux_usage_events_event_id ON usage_events (event_id);

CREATE INDEX ix_usage_events_tenant_time ON usage_events (tenant_id, occurred_at);

CREATE TABLE usage_rollups (
    tenant_id          TEXT    NOT NULL,
    granularity        TEXT    NOT NULL CHECK (granularity IN ('hour', 'day')),
    window_start       TEXT    NOT NULL,
    operation_id       TEXT    NOT NULL,
    client_id          TEXT    NOT NULL DEFAULT '',   -- '' when the caller had no client id
    calls              INTEGER NOT NULL CHECK (calls >= 0),
    units              INTEGER NOT NULL CHECK (units >= 0),
    billable_units     INTEGER NOT NULL CHECK (billable_units >= 0),
    overage_units      INTEGER NOT NULL CHECK (overage_units >= 0),
    errors             INTEGER NOT NULL CHECK (errors >= 0),
    latency_sum_micros INTEGER NOT NULL CHECK (latency_sum_micros >= 0),
    latency_max_micros INTEGER NOT NULL CHECK (latency_max_micros >= 0),
    latency_histogram  TEXT    NOT NULL DEFAULT '[]',  -- mergeable log-bucket counts, JSON array
    updated_at         TEXT    NOT NULL, rate_limited INTEGER NOT NULL DEFAULT 0 CHECK (rate_limited >= 0), quota_refused INTEGER NOT NULL DEFAULT 0 CHECK (quota_refused >= 0),
    PRIMARY KEY (tenant_id, granularity, window_start, operation_id, client_id)
) STRICT;

CREATE TABLE quota_usage (
    tenant_id       TEXT    NOT NULL REFERENCES tenants (id),
    period_start    TEXT    NOT NULL,                  -- YYYY-MM-01
    period_end      TEXT    NOT NULL,                  -- first day of the next month
    quota_units     INTEGER NOT NULL CHECK (quota_units >= 0),
    overage_policy  TEXT    NOT NULL CHECK (overage_policy IN ('block', 'allow')),
    units_used      INTEGER NOT NULL DEFAULT 0 CHECK (units_used >= 0),
    overage_units   INTEGER NOT NULL DEFAULT 0 CHECK (overage_units >= 0),
    notified_80     INTEGER NOT NULL DEFAULT 0 CHECK (notified_80 IN (0, 1)),
    notified_100    INTEGER NOT NULL DEFAULT 0 CHECK (notified_100 IN (0, 1)),
    updated_at      TEXT    NOT NULL, granted_units INTEGER NOT NULL DEFAULT 0 CHECK (granted_units >= 0), plan_code TEXT, overage_plan_code TEXT,
    PRIMARY KEY (tenant_id, period_start)
) STRICT;

CREATE TABLE rate_limit_state (
    tenant_id  TEXT    NOT NULL,
    client_id  TEXT    NOT NULL,
    tat_micros INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, client_id)
) STRICT;

CREATE TABLE billing_statements (
    id                    TEXT    NOT NULL PRIMARY KEY,
    tenant_id             TEXT    NOT NULL REFERENCES tenants (id),
    period_start          TEXT    NOT NULL,
    period_end            TEXT    NOT NULL,
    plan_code             TEXT    NOT NULL,
    currency              TEXT    NOT NULL CHECK (length(currency) = 3),
    quota_units           INTEGER NOT NULL CHECK (quota_units >= 0),
    used_units            INTEGER NOT NULL CHECK (used_units >= 0),
    overage_units         INTEGER NOT NULL CHECK (overage_units >= 0),
    base_amount_micros    INTEGER NOT NULL CHECK (base_amount_micros >= 0),
    overage_amount_micros INTEGER NOT NULL CHECK (overage_amount_micros >= 0),
    total_amount_micros   INTEGER NOT NULL CHECK (total_amount_micros = base_amount_micros + overage_amount_micros),
    created_at            TEXT    NOT NULL
, granted_units INTEGER NOT NULL DEFAULT 0 CHECK (granted_units >= 0), overage_unit_price_micros INTEGER NULL
    CHECK (overage_unit_price_micros IS NULL OR overage_unit_price_micros >= 0), adjustment_amount_micros INTEGER NOT NULL DEFAULT 0, starts_at TEXT NULL, ends_at TEXT NULL) STRICT;

CREATE UNIQUE INDEX ux_billing_statements_period ON billing_statements (tenant_id, period_start);

CREATE TABLE audit_events (
    id               TEXT    NOT NULL PRIMARY KEY,
    chain            TEXT    NOT NULL,
    chain_seq        INTEGER NOT NULL CHECK (chain_seq >= 1),
    tenant_id        TEXT    NULL,
    occurred_at      TEXT    NOT NULL,
    actor_oid        TEXT    NULL,
    actor_app_id     TEXT    NULL,
    actor_tenant_id  TEXT    NULL,
    action           TEXT    NOT NULL,
    resource_type    TEXT    NOT NULL,
    resource_id      TEXT    NULL,
    outcome          TEXT    NOT NULL CHECK (outcome IN ('succeeded', 'denied', 'rejected', 'failed')),
    request_id       TEXT    NULL,
    summary          TEXT    NOT NULL DEFAULT '',
    before_hash      TEXT    NULL,
    after_hash       TEXT    NULL,
    limiter_decision TEXT    NULL,
    prev_hash        TEXT    NOT NULL CHECK (length(prev_hash) = 64),
    hash             TEXT    NOT NULL CHECK (length(hash) = 64)
) STRICT;

CREATE UNIQUE INDEX ux_audit_events_chain_seq ON audit_events (chain, chain_seq);

CREATE INDEX ix_audit_events_tenant_time ON audit_events (tenant_id, occurred_at, id);

CREATE TABLE inbox_messages (
    source       TEXT NOT NULL,
    event_id     TEXT NOT NULL,
    event_type   TEXT NOT NULL,
    processed_at TEXT NOT NULL,
    PRIMARY KEY (source, event_id)
) STRICT;

CREATE TABLE quarantine_messages (
    id             TEXT    NOT NULL PRIMARY KEY,
    received_at    TEXT    NOT NULL,
    message_id     TEXT    NULL,
    delivery_count INTEGER NULL,
    content_type   TEXT    NULL,
    reason         TEXT    NOT NULL,
    raw_body       TEXT    NOT NULL,
    replayed_at    TEXT    NULL
, message_identity TEXT NULL, deliveries INTEGER NOT NULL DEFAULT 1 CHECK (deliveries >= 1), last_received_at TEXT NULL) STRICT;

CREATE INDEX ix_quarantine_received ON quarantine_messages (received_at);

CREATE TABLE outbox_messages (
    seq          INTEGER NOT NULL PRIMARY KEY AUTOINCREMENT,
    id           TEXT    NOT NULL,
    event_type   TEXT    NOT NULL,
    subject      TEXT    NULL,
    payload      TEXT    NOT NULL,
    created_at   TEXT    NOT NULL,
    available_at TEXT    NOT NULL,                     -- not before this time (retry backoff)
    attempts     INTEGER NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    last_error   TEXT    NULL,
    sent_at      TEXT    NULL
) STRICT;

CREATE UNIQUE INDEX ux_outbox_messages_id ON outbox_messages (id);

CREATE INDEX ix_outbox_pending ON outbox_messages (available_at, seq) WHERE sent_at IS NULL;

CREATE TABLE idempotency_keys (
    tenant_id        TEXT    NOT NULL,
    idempotency_key  TEXT    NOT NULL CHECK (length(idempotency_key) BETWEEN 1 AND 200),
    operation_id     TEXT    NOT NULL,
    request_hash     TEXT    NOT NULL CHECK (length(request_hash) = 64),
    status_code      INTEGER NOT NULL,
    response_headers TEXT    NOT NULL,                 -- JSON object
    response_body    BLOB    NOT NULL,
    created_at       TEXT    NOT NULL,
    expires_at       TEXT    NOT NULL,
    PRIMARY KEY (tenant_id, idempotency_key)
) STRICT;

CREATE INDEX ix_idempotency_expires ON idempotency_keys (expires_at);

CREATE TABLE job_leases (
    name        TEXT NOT NULL PRIMARY KEY,
    holder      TEXT NOT NULL,
    acquired_at TEXT NOT NULL,
    expires_at  TEXT NOT NULL
) STRICT;

CREATE TABLE job_watermarks (
    name       TEXT    NOT NULL PRIMARY KEY,
    position   INTEGER NOT NULL,
    updated_at TEXT    NOT NULL
) STRICT;

CREATE TABLE api_client_registrations (
    id           TEXT    NOT NULL PRIMARY KEY,
    tenant_id    TEXT    NOT NULL REFERENCES tenants (id),
    directory_id TEXT    NULL CHECK (directory_id IS NULL OR length(directory_id) = 36),   -- the tokens' `tid`
    app_id       TEXT    NOT NULL CHECK (length(app_id) BETWEEN 1 AND 128),                 -- `azp` / `appid`
    display_name TEXT    NOT NULL CHECK (length(display_name) BETWEEN 1 AND 200),
    status       TEXT    NOT NULL CHECK (status IN ('pending', 'active', 'rejected', 'revoked')),
    created_at   TEXT    NOT NULL,
    revoked_at   TEXT    NULL,
    decided_by   TEXT    NULL CHECK (decided_by IS NULL OR length(decided_by) BETWEEN 1 AND 300),
    decided_at   TEXT    NULL,
    version      INTEGER NOT NULL DEFAULT 1 CHECK (version >= 1), quota_units INTEGER NULL CHECK (quota_units IS NULL OR quota_units > 0), requests_per_minute INTEGER NULL
    CHECK (requests_per_minute IS NULL OR requests_per_minute > 0),
    CHECK (directory_id IS NOT NULL OR status = 'revoked')
) STRICT;

CREATE TABLE "api_client_roles" (
    client_id TEXT NOT NULL REFERENCES api_client_registrations (id) ON DELETE CASCADE,
    role      TEXT NOT NULL CHECK (role IN ('Platform.Admin', 'Tenant.Admin', 'Documents.Read', 'Documents.Write', 'Usage.Read', 'Audit.Read')),
    PRIMARY KEY (client_id, role)
) STRICT;

CREATE UNIQUE INDEX ux_api_client_registrations_live ON api_client_registrations (tenant_id, directory_id, app_id)
    WHERE status IN ('pending', 'active');

CREATE INDEX ix_api_client_registrations_app ON api_client_registrations (directory_id, app_id);

CREATE INDEX ix_api_client_registrations_tenant ON api_client_registrations (tenant_id, created_at, id);

CREATE TABLE quota_leases (
    lease_id      TEXT    NOT NULL PRIMARY KEY,
    tenant_id     TEXT    NOT NULL,
    period_start  TEXT    NOT NULL,
    holder        TEXT    NOT NULL CHECK (length(holder) BETWEEN 1 AND 200),
    granted_units INTEGER NOT NULL CHECK (granted_units > 0),
    first_unit    INTEGER NOT NULL CHECK (first_unit >= 0),    -- the counter before the grant
    granted_at    TEXT    NOT NULL,
    expires_at    TEXT    NOT NULL,
    settled_at    TEXT    NULL,
    spent_units   INTEGER NULL CHECK (spent_units IS NULL OR spent_units BETWEEN 0 AND granted_units),
    FOREIGN KEY (tenant_id, period_start) REFERENCES quota_usage (tenant_id, period_start),
    CHECK ((settled_at IS NULL) = (spent_units IS NULL))
) STRICT;

CREATE INDEX ix_quota_leases_open ON quota_leases (tenant_id, period_start, expires_at) WHERE settled_at IS NULL;

CREATE INDEX ix_quota_leases_expiry ON quota_leases (expires_at) WHERE settled_at IS NULL;

CREATE INDEX ix_usage_events_lease ON usage_events (lease_id) WHERE lease_id IS NOT NULL;

CREATE UNIQUE INDEX ux_quarantine_identity ON quarantine_messages (message_identity) WHERE message_identity IS NOT NULL;

CREATE TABLE quota_grants (
    id             TEXT    NOT NULL PRIMARY KEY,
    tenant_id      TEXT    NOT NULL,
    period_start   TEXT    NOT NULL,
    units          INTEGER NOT NULL CHECK (units > 0),
    reason         TEXT    NOT NULL CHECK (length(reason) BETWEEN 1 AND 500),
    granted_by     TEXT    NOT NULL CHECK (length(granted_by) BETWEEN 1 AND 200),
    granted_at     TEXT    NOT NULL,
    expires_at     TEXT    NOT NULL,
    ended_at       TEXT    NULL,
    revoked_by     TEXT    NULL,
    returned_units INTEGER NULL CHECK (returned_units IS NULL OR returned_units BETWEEN 0 AND units),
    version        INTEGER NOT NULL DEFAULT 1 CHECK (version >= 1),
    FOREIGN KEY (tenant_id, period_start) REFERENCES quota_usage (tenant_id, period_start),
    CHECK ((ended_at IS NULL) = (returned_units IS NULL)),
    CHECK (revoked_by IS NULL OR ended_at IS NOT NULL)
) STRICT;

CREATE INDEX ix_quota_grants_period ON quota_grants (tenant_id, period_start, granted_at, id);

CREATE INDEX ix_quota_grants_expiry ON quota_grants (expires_at) WHERE ended_at IS NULL;

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

CREATE TABLE client_quota_usage (
    client_id    TEXT    NOT NULL REFERENCES api_client_registrations (id),
    period_start TEXT    NOT NULL,
    tenant_id    TEXT    NOT NULL,
    units_used   INTEGER NOT NULL DEFAULT 0 CHECK (units_used >= 0),
    updated_at   TEXT    NOT NULL,
    PRIMARY KEY (client_id, period_start)
) STRICT;

CREATE TABLE "document_search_keys" (
    search_rowid INTEGER NOT NULL PRIMARY KEY AUTOINCREMENT,
    document_id  TEXT    NOT NULL UNIQUE REFERENCES documents (id) ON DELETE CASCADE,
    tenant_id    TEXT    NOT NULL
) STRICT;

CREATE VIRTUAL TABLE document_search USING fts5 (
    title, summary, body, tags,
    tokenize = 'ascii',
    prefix = '2 3'
);

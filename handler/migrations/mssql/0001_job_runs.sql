-- Every execution of a scheduled or hand-started job (mirror of migrations/sqlite/0001_job_runs.sql).
CREATE TABLE dbo.job_runs (
    id           UNIQUEIDENTIFIER NOT NULL CONSTRAINT pk_job_runs PRIMARY KEY,
    job          NVARCHAR(64)     NOT NULL CONSTRAINT ck_job_runs_job CHECK (LEN(job) >= 1),
    trigger_kind NVARCHAR(16)     NOT NULL CONSTRAINT ck_job_runs_trigger CHECK (trigger_kind IN ('timer', 'cli', 'schedule')),
    is_past_due  BIT              NOT NULL,
    started_at   DATETIME2(6)     NOT NULL,
    finished_at  DATETIME2(6)     NOT NULL,
    outcome      NVARCHAR(16)     NOT NULL CONSTRAINT ck_job_runs_outcome CHECK (outcome IN ('succeeded', 'failed')),
    detail       NVARCHAR(2000)   NOT NULL CONSTRAINT df_job_runs_detail DEFAULT ''
);

-- "Latest runs of job X": the operations query.
CREATE INDEX ix_job_runs_job_started ON dbo.job_runs (job, started_at DESC);

-- Every execution of a scheduled or hand-started job (usage rollup, outbox publisher, ...),
-- so operators can see when each job last ran, whether it was a catch-up run and how it ended.
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

-- "Latest runs of job X": the operations query.
CREATE INDEX ix_job_runs_job_started ON job_runs (job, started_at DESC);

-- The audit log (src/audit): one row per request and one per administrative or security
-- action. Both tables are partitioned by month on `ts`; the writer creates partitions
-- ahead of time and drops those past AUDIT_RETENTION_DAYS (never DELETE). The key
-- (id, ts) is fixed when the record is made, so a replayed batch never duplicates a row.

CREATE TABLE audit_requests (
    id                uuid        NOT NULL,
    ts                timestamptz NOT NULL,
    request_id        text        NOT NULL,
    user_id           uuid,
    key_id            text,
    client_addr       text        NOT NULL,
    method            text        NOT NULL,
    endpoint          text        NOT NULL,
    model             text,
    backend           text,
    stream            boolean     NOT NULL,
    status            integer     NOT NULL,
    error_type        text,
    attempts          integer     NOT NULL,
    latency_ms        double precision NOT NULL,
    ttft_ms           double precision,
    prompt_tokens     bigint,
    completion_tokens bigint,
    request_body      text,
    response_body     text,
    PRIMARY KEY (id, ts)
) PARTITION BY RANGE (ts);

CREATE INDEX audit_requests_ts ON audit_requests (ts DESC, id DESC);
CREATE INDEX audit_requests_user ON audit_requests (user_id, ts DESC);
CREATE INDEX audit_requests_key ON audit_requests (key_id, ts DESC);

CREATE TABLE audit_activity (
    id            uuid        NOT NULL,
    ts            timestamptz NOT NULL,
    action        text        NOT NULL,
    outcome       text        NOT NULL,
    actor_user_id uuid,
    actor_key_id  text,
    target        text,
    client_addr   text,
    request_id    text,
    detail        jsonb       NOT NULL DEFAULT '{}',
    PRIMARY KEY (id, ts)
) PARTITION BY RANGE (ts);

CREATE INDEX audit_activity_ts ON audit_activity (ts DESC, id DESC);
CREATE INDEX audit_activity_actor ON audit_activity (actor_user_id, ts DESC);

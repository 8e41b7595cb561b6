-- visithub schema (PostgreSQL dialect). Timestamps are epoch milliseconds, as in SQLite.

CREATE TABLE visits (
    id                  TEXT PRIMARY KEY,
    state               TEXT NOT NULL,
    display_name        TEXT NOT NULL,
    reason              TEXT NOT NULL,
    status              TEXT NOT NULL,
    created_at          BIGINT NOT NULL,
    estimated_wait_secs BIGINT,
    waited_secs         BIGINT
);
CREATE INDEX visits_waiting ON visits (status, created_at);

CREATE TABLE visit_transitions (
    id            BIGSERIAL PRIMARY KEY,
    visit_id      TEXT NOT NULL REFERENCES visits (id),
    from_status   TEXT,
    to_status     TEXT NOT NULL,
    at            BIGINT NOT NULL,
    actor_subject TEXT NOT NULL,
    actor_role    TEXT NOT NULL
);
CREATE INDEX visit_transitions_visit ON visit_transitions (visit_id, id);

CREATE TABLE idempotency_keys (
    key          TEXT PRIMARY KEY,
    request_hash TEXT NOT NULL,
    visit_id     TEXT NOT NULL REFERENCES visits (id),
    created_at   BIGINT NOT NULL
);

CREATE TABLE caregivers (
    subject    TEXT PRIMARY KEY,
    name       TEXT NOT NULL,
    kind       TEXT NOT NULL,
    states     TEXT NOT NULL,
    active     BOOLEAN NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);

CREATE TABLE state_settings (
    state    TEXT PRIMARY KEY,
    settings TEXT NOT NULL
);

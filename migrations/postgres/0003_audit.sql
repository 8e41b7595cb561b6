-- The append-only audit trail, hash-chained. Appends lock the table (EXCLUSIVE mode, which
-- still lets readers in), so ids follow the chain order.

CREATE TABLE audit_log (
    id        BIGSERIAL PRIMARY KEY,
    at        BIGINT NOT NULL,
    subject   TEXT NOT NULL,
    role      TEXT NOT NULL,
    action    TEXT NOT NULL,
    visit_id  TEXT,
    target    TEXT,
    outcome   TEXT NOT NULL,
    prev_hash TEXT NOT NULL,
    hash      TEXT NOT NULL
);
CREATE INDEX audit_log_visit ON audit_log (visit_id, id);

-- Audit records written in the same transaction as the change they describe, before they are
-- chained: a change and its record commit together or not at all, without every change taking
-- the trail's lock. Moved into audit_log (chained, in id order) right after, by whichever
-- append comes next, and at start-up for any a crash left behind.

CREATE TABLE audit_outbox (
    id       BIGSERIAL PRIMARY KEY,
    at       BIGINT NOT NULL,
    subject  TEXT NOT NULL,
    role     TEXT NOT NULL,
    action   TEXT NOT NULL,
    visit_id TEXT,
    target   TEXT,
    outcome  TEXT NOT NULL
);

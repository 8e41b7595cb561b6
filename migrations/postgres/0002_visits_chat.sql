-- Visits in progress: who claimed them, where the patient says they are; conversations.

ALTER TABLE visits ADD COLUMN provider_subject TEXT;
ALTER TABLE visits ADD COLUMN reported_state TEXT;
-- live_visits_of looks visits up by provider (SQLite scans; here the table is shared and big).
CREATE INDEX visits_provider ON visits (provider_subject) WHERE provider_subject IS NOT NULL;

CREATE TABLE chat_messages (
    visit_id       TEXT NOT NULL REFERENCES visits (id),
    seq            BIGINT NOT NULL,
    message_id     TEXT NOT NULL,
    client_id      TEXT NOT NULL,
    sender_subject TEXT NOT NULL,
    sender_role    TEXT NOT NULL,
    sender_name    TEXT NOT NULL,
    body           TEXT NOT NULL,
    sent_at        BIGINT NOT NULL,
    PRIMARY KEY (visit_id, seq),
    UNIQUE (visit_id, sender_subject, client_id)
);

CREATE TABLE chat_reads (
    visit_id  TEXT NOT NULL REFERENCES visits (id),
    subject   TEXT NOT NULL,
    up_to_seq BIGINT NOT NULL,
    PRIMARY KEY (visit_id, subject)
);

CREATE TABLE chat_members (
    visit_id  TEXT NOT NULL REFERENCES visits (id),
    subject   TEXT NOT NULL,
    name      TEXT NOT NULL,
    role      TEXT NOT NULL,
    joined_at BIGINT NOT NULL,
    PRIMARY KEY (visit_id, subject)
);
CREATE INDEX chat_members_subject ON chat_members (subject);

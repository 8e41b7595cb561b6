-- Visits in progress: who claimed them, where the patient says they are; conversations.

ALTER TABLE visits ADD COLUMN provider_subject TEXT;
ALTER TABLE visits ADD COLUMN reported_state TEXT;

CREATE TABLE chat_messages (
    visit_id       TEXT NOT NULL REFERENCES visits (id),
    seq            INTEGER NOT NULL,
    message_id     TEXT NOT NULL,
    client_id      TEXT NOT NULL,
    sender_subject TEXT NOT NULL,
    sender_role    TEXT NOT NULL,
    sender_name    TEXT NOT NULL,
    body           TEXT NOT NULL,
    sent_at        INTEGER NOT NULL,
    PRIMARY KEY (visit_id, seq),
    UNIQUE (visit_id, sender_subject, client_id)
);

CREATE TABLE chat_reads (
    visit_id  TEXT NOT NULL REFERENCES visits (id),
    subject   TEXT NOT NULL,
    up_to_seq INTEGER NOT NULL,
    PRIMARY KEY (visit_id, subject)
);

CREATE TABLE chat_members (
    visit_id  TEXT NOT NULL REFERENCES visits (id),
    subject   TEXT NOT NULL,
    name      TEXT NOT NULL,
    role      TEXT NOT NULL,
    joined_at INTEGER NOT NULL,
    PRIMARY KEY (visit_id, subject)
);
CREATE INDEX chat_members_subject ON chat_members (subject);

-- Lookups that read only what is live. A caregiver's open conversations and a provider's live
-- visits were found through every conversation or visit the person ever had, so they slowed
-- down with history (a support person joins thousands of conversations a month). Each chat
-- message took a transaction of four trips (begin, an advisory lock, the insert, commit); it
-- is one statement now, numbered by its conversation's counter.

-- Whether the member's visit is not over. The trigger keeps it on every path that ends a
-- visit, in that change's transaction; the queries still check the visit's status, so a join
-- racing the end of its visit (left marked open) is never counted.
-- Added false (no table rewrite), the memberships of visits not over (a few) set true, then
-- true for every new one: the migration touches only what is live, however long the history.
ALTER TABLE chat_members ADD COLUMN visit_open BOOLEAN NOT NULL DEFAULT FALSE;
UPDATE chat_members m SET visit_open = TRUE
    FROM visits v WHERE v.id = m.visit_id AND v.status NOT IN ('ended', 'cancelled', 'abandoned');
ALTER TABLE chat_members ALTER COLUMN visit_open SET DEFAULT TRUE;
CREATE INDEX chat_members_open ON chat_members (subject) WHERE visit_open;
DROP INDEX chat_members_subject;

CREATE FUNCTION close_memberships() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE chat_members SET visit_open = FALSE WHERE visit_id = NEW.id AND visit_open;
    RETURN NULL;
END
$$;
CREATE TRIGGER visits_close_memberships AFTER UPDATE OF status ON visits FOR EACH ROW
    WHEN (NEW.status IN ('ended', 'cancelled', 'abandoned') AND OLD.status IS DISTINCT FROM NEW.status)
    EXECUTE FUNCTION close_memberships();

-- live_visits_of: only the visits a provider holds now are in the index.
CREATE INDEX visits_live_provider ON visits (provider_subject) WHERE status IN ('claimed', 'in_visit', 'wrap_up');
DROP INDEX visits_provider;

-- The last seq given in each conversation. A row lock here orders concurrent appends to one
-- conversation, and is released with the statement's commit; an append that fails (a retry's
-- client_id seen before) rolls its increment back, so seqs stay gap-free. A conversation
-- without a row (messages stored before this migration) starts from its highest seq.
CREATE TABLE chat_counters (
    visit_id TEXT PRIMARY KEY REFERENCES visits (id),
    last_seq BIGINT NOT NULL
);

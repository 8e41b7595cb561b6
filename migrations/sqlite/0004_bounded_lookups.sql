-- A caregiver's open conversations were found through every conversation they ever joined,
-- so starting their session slowed down with history (a support person joins thousands of
-- conversations a month); only the open ones are in the index now.

-- Whether the member's visit is not over, kept by the trigger on every path that ends a
-- visit, in that change's transaction; the queries still check the visit's status.
ALTER TABLE chat_members ADD COLUMN visit_open INTEGER NOT NULL DEFAULT 1;
UPDATE chat_members SET visit_open = 0
    WHERE visit_id IN (SELECT id FROM visits WHERE status IN ('ended', 'cancelled', 'abandoned'));
CREATE INDEX chat_members_open ON chat_members (subject) WHERE visit_open;
DROP INDEX chat_members_subject;

CREATE TRIGGER visits_close_memberships AFTER UPDATE OF status ON visits
    WHEN NEW.status IN ('ended', 'cancelled', 'abandoned') AND OLD.status IS NOT NEW.status
BEGIN
    UPDATE chat_members SET visit_open = 0 WHERE visit_id = NEW.id AND visit_open;
END;

-- Search indexes, and the change outbox the query service's cache follows.

-- Prefix search on name and email, case-insensitive (LIKE 'abc%' on lower(...)).
CREATE INDEX users_tenant_name_prefix ON users (tenant_id, lower(name) text_pattern_ops);
CREATE INDEX users_tenant_email_prefix ON users (tenant_id, lower(email) text_pattern_ops);

-- Every committed change to a user, written by the trigger below in the same transaction
-- as the change itself (whoever makes it: the user service, an import, an operator's SQL).
-- The query service is told at once by NOTIFY (sent on commit) and reads this table to
-- catch up on what it missed while its listener was away.
CREATE TABLE user_changes (
    seq         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id   uuid NOT NULL,
    user_id     uuid NOT NULL,
    version     bigint NOT NULL,
    op          text NOT NULL CHECK (op IN ('insert', 'update', 'delete')),
    changed_at  timestamptz NOT NULL DEFAULT clock_timestamp()
);

CREATE INDEX user_changes_tenant_time ON user_changes (tenant_id, changed_at);

ALTER TABLE user_changes ENABLE ROW LEVEL SECURITY;
ALTER TABLE user_changes FORCE ROW LEVEL SECURITY;

CREATE POLICY tenant_isolation ON user_changes
    USING (tenant_id = NULLIF(current_setting('borough.tenant_id', true), '')::uuid)
    WITH CHECK (tenant_id = NULLIF(current_setting('borough.tenant_id', true), '')::uuid);

GRANT SELECT, INSERT, DELETE ON user_changes TO borough_app;

-- Payload: <tenant id>:<user id>:<version>:<epoch ms of the change>. The trigger runs with
-- the writer's rights and tenant setting, so RLS applies to the outbox insert as well.
CREATE FUNCTION record_user_change() RETURNS trigger
    LANGUAGE plpgsql AS $$
DECLARE
    row_ record;
    at timestamptz := clock_timestamp();
BEGIN
    IF TG_OP = 'DELETE' THEN
        row_ := OLD;
    ELSE
        row_ := NEW;
    END IF;
    -- The outbox beside the table, whatever the caller's search_path.
    EXECUTE format(
        'INSERT INTO %I.user_changes (tenant_id, user_id, version, op, changed_at)
         VALUES ($1, $2, $3, $4, $5)', TG_TABLE_SCHEMA)
    USING row_.tenant_id, row_.id, row_.version, lower(TG_OP), at;
    PERFORM pg_notify(
        'borough_user_changed',
        row_.tenant_id || ':' || row_.id || ':' || row_.version || ':'
            || floor(extract(epoch FROM at) * 1000)::bigint
    );
    -- Keep the outbox short: catch-up needs minutes, not days.
    IF random() < 0.001 THEN
        EXECUTE format(
            'DELETE FROM %I.user_changes WHERE tenant_id = $1 AND changed_at < $2',
            TG_TABLE_SCHEMA)
        USING row_.tenant_id, at - interval '1 day';
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER users_changed
    AFTER INSERT OR UPDATE OR DELETE ON users
    FOR EACH ROW EXECUTE FUNCTION record_user_change();

-- The user service's plain create (no idempotency key) as one prepared call, scoped like
-- user_by_id (0005): the tenant id a parameter, set inside; the caller's remaining
-- deadline bounds any lock wait (lock_timeout, set before the insert; an INSERT waits
-- only on a concurrent insert of the same email). One round trip, committed when the
-- statement ends, instead of BEGIN and scope, INSERT, COMMIT.
--
-- And the outbox trigger without dynamic SQL: record_user_change() named its table with
-- EXECUTE format(…), parsed and planned on every write. The schema is now written into
-- the function's body here, so its statements are planned once per connection.

DO $migration$
BEGIN
    EXECUTE format($f$
        CREATE FUNCTION %1$I.create_user(p_tenant uuid, p_id uuid, p_name text,
                                         p_email text, p_lock_timeout text)
        RETURNS TABLE (id uuid, name text, email text, version bigint,
                       created_at timestamptz, updated_at timestamptz)
        LANGUAGE plpgsql
        AS $body$
        BEGIN
            PERFORM set_config('borough.tenant_id', p_tenant::text, true),
                    set_config('lock_timeout', p_lock_timeout, true);
            RETURN QUERY
                INSERT INTO %1$I.users AS u (tenant_id, id, name, email)
                VALUES (p_tenant, p_id, p_name, p_email)
                RETURNING u.id, u.name, u.email, u.version, u.created_at, u.updated_at;
        END
        $body$;
        REVOKE ALL ON FUNCTION %1$I.create_user(uuid, uuid, text, text, text) FROM PUBLIC;
        GRANT EXECUTE ON FUNCTION %1$I.create_user(uuid, uuid, text, text, text) TO borough_app;

        CREATE OR REPLACE FUNCTION %1$I.record_user_change() RETURNS trigger
            LANGUAGE plpgsql AS $body$
        DECLARE
            row_ record;
            at timestamptz := clock_timestamp();
        BEGIN
            IF TG_OP = 'DELETE' THEN
                row_ := OLD;
            ELSE
                row_ := NEW;
            END IF;
            INSERT INTO %1$I.user_changes (tenant_id, user_id, version, op, changed_at)
            VALUES (row_.tenant_id, row_.id, row_.version, lower(TG_OP), at);
            PERFORM pg_notify(
                'borough_user_changed',
                row_.tenant_id || ':' || row_.id || ':' || row_.version || ':'
                    || floor(extract(epoch FROM at) * 1000)::bigint
            );
            -- Keep the outbox short: catch-up needs minutes, not days.
            IF random() < 0.001 THEN
                DELETE FROM %1$I.user_changes
                WHERE tenant_id = row_.tenant_id AND changed_at < at - interval '1 day';
            END IF;
            RETURN NULL;
        END
        $body$;
    $f$, current_schema());
END
$migration$;

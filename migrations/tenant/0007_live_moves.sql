-- Live tenant moves (docs/tenancy.md, "Moving a tenant").
--
-- 1. Which transaction wrote each outbox row and idempotency record (`txid`): a move
--    reads the changes committed between two snapshots of the source exactly
--    (pg_visible_in_snapshot), whatever order their transactions committed in.
-- 2. The fence: a move about to switch a tenant inserts its row in tenant_fences, under
--    an exclusive advisory lock on the tenant that every write of the tenant holds shared
--    (so the fence waits for the writes in flight, and later writes wait for the fence).
--    Every write after it fails with SQLSTATE BM001, which the user service answers by
--    reading the tenant's route again and retrying where the tenant is now.
-- 3. Rows a move copies (and a purge deletes) are not changes: with the session setting
--    borough.relocating = 'on' the trigger records nothing and checks no fence.

CREATE TABLE tenant_fences (
    tenant_id   uuid PRIMARY KEY,
    move_id     uuid NOT NULL,
    fenced_at   timestamptz NOT NULL DEFAULT now()
);

ALTER TABLE tenant_fences ENABLE ROW LEVEL SECURITY;
ALTER TABLE tenant_fences FORCE ROW LEVEL SECURITY;

CREATE POLICY tenant_isolation ON tenant_fences
    USING (tenant_id = NULLIF(current_setting('borough.tenant_id', true), '')::uuid)
    WITH CHECK (tenant_id = NULLIF(current_setting('borough.tenant_id', true), '')::uuid);

GRANT SELECT, INSERT, UPDATE, DELETE ON tenant_fences TO borough_app;

ALTER TABLE user_changes ADD COLUMN txid xid8;
CREATE INDEX user_changes_tenant_txid ON user_changes (tenant_id, txid);

ALTER TABLE idempotency_keys ADD COLUMN txid xid8;
ALTER TABLE idempotency_keys ALTER COLUMN txid SET DEFAULT pg_current_xact_id();
CREATE INDEX idempotency_keys_tenant_txid ON idempotency_keys (tenant_id, txid);

DO $migration$
BEGIN
    EXECUTE format($f$
        -- Waits while a move fences the tenant; fails once it has.
        CREATE FUNCTION %1$I.check_tenant_fence(p_tenant uuid) RETURNS void
            LANGUAGE plpgsql AS $body$
        BEGIN
            PERFORM pg_advisory_xact_lock_shared(hashtextextended('borough.move:' || p_tenant, 0));
            IF EXISTS (SELECT 1 FROM %1$I.tenant_fences f WHERE f.tenant_id = p_tenant) THEN
                RAISE EXCEPTION 'tenant %% is moving: this copy takes no more writes', p_tenant
                    USING ERRCODE = 'BM001';
            END IF;
        END
        $body$;

        CREATE OR REPLACE FUNCTION %1$I.record_user_change() RETURNS trigger
            LANGUAGE plpgsql AS $body$
        DECLARE
            row_ record;
            at timestamptz := clock_timestamp();
        BEGIN
            IF current_setting('borough.relocating', true) = 'on' THEN
                RETURN NULL;
            END IF;
            IF TG_OP = 'DELETE' THEN
                row_ := OLD;
            ELSE
                row_ := NEW;
            END IF;
            PERFORM %1$I.check_tenant_fence(row_.tenant_id);
            INSERT INTO %1$I.user_changes (tenant_id, user_id, version, op, changed_at, txid)
            VALUES (row_.tenant_id, row_.id, row_.version, lower(TG_OP), at, pg_current_xact_id());
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

        -- Idempotency records: the fence applies, and an update is stamped like an insert.
        CREATE FUNCTION %1$I.record_idempotency_write() RETURNS trigger
            LANGUAGE plpgsql AS $body$
        BEGIN
            IF current_setting('borough.relocating', true) = 'on' THEN
                RETURN NEW;
            END IF;
            PERFORM %1$I.check_tenant_fence(NEW.tenant_id);
            NEW.txid := pg_current_xact_id();
            RETURN NEW;
        END
        $body$;

        CREATE TRIGGER idempotency_keys_written
            BEFORE INSERT OR UPDATE ON %1$I.idempotency_keys
            FOR EACH ROW EXECUTE FUNCTION %1$I.record_idempotency_write();
    $f$, current_schema());
END
$migration$;

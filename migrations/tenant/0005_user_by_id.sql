-- The query service's single-user read as one prepared call: the tenant scope for
-- row-level security is a parameter, set inside the function, instead of a statement
-- parsed and planned on every read. Runs as its caller (SECURITY INVOKER, the default),
-- so row-level security applies as to any statement of the caller's. The table is named
-- with this schema (the tenant's, where this migration runs) written into the body, so
-- the function needs no search_path. The setting lasts until the end of the caller's
-- transaction: one statement, in the extended protocol's implicit transaction.

DO $migration$
BEGIN
    EXECUTE format($f$
        CREATE FUNCTION %1$I.user_by_id(p_tenant uuid, p_id uuid)
        RETURNS TABLE (id uuid, name text, email text, version bigint,
                       created_at timestamptz, updated_at timestamptz)
        LANGUAGE plpgsql
        AS $body$
        BEGIN
            PERFORM set_config('borough.tenant_id', p_tenant::text, true);
            RETURN QUERY
                SELECT u.id, u.name, u.email, u.version, u.created_at, u.updated_at
                FROM %1$I.users u
                WHERE u.tenant_id = p_tenant AND u.id = p_id;
        END
        $body$;
        REVOKE ALL ON FUNCTION %1$I.user_by_id(uuid, uuid) FROM PUBLIC;
        GRANT EXECUTE ON FUNCTION %1$I.user_by_id(uuid, uuid) TO borough_query_app;
    $f$, current_schema());
END
$migration$;

-- The query service's single-user read as one prepared call: the tenant scope for
-- row-level security is a parameter, set inside the function, instead of a statement
-- parsed and planned on every read. Runs as its caller (SECURITY INVOKER, the default),
-- so row-level security applies as to any statement of the caller's; the function pins
-- its own schema (the tenant's, where this migration runs) as its search_path. The
-- setting lasts until the end of the caller's transaction: one statement, in the
-- extended protocol's implicit transaction.

CREATE FUNCTION user_by_id(p_tenant uuid, p_id uuid)
RETURNS TABLE (id uuid, name text, email text, version bigint,
               created_at timestamptz, updated_at timestamptz)
LANGUAGE plpgsql
SET search_path FROM CURRENT
AS $$
BEGIN
    PERFORM set_config('borough.tenant_id', p_tenant::text, true);
    RETURN QUERY
        SELECT u.id, u.name, u.email, u.version, u.created_at, u.updated_at
        FROM users u
        WHERE u.tenant_id = p_tenant AND u.id = p_id;
END
$$;

REVOKE ALL ON FUNCTION user_by_id(uuid, uuid) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION user_by_id(uuid, uuid) TO borough_query_app;

-- Placement per tenant (shared tables, own schema, own database) and provisioning states.
--
-- A tenant is inserted as 'provisioning', its storage is prepared (schema or database
-- created and migrated), then it becomes 'active' together with its first API key. A
-- failure half way leaves 'provisioning_failed' with the reason; retrying the same create
-- request resumes from there. Only 'active' tenants authenticate.

ALTER TABLE control.tenants DROP CONSTRAINT tenants_placement_check;
ALTER TABLE control.tenants ADD CONSTRAINT tenants_placement_check
    CHECK (placement IN ('shared', 'schema', 'database'));

ALTER TABLE control.tenants DROP CONSTRAINT tenants_status_check;
ALTER TABLE control.tenants ADD CONSTRAINT tenants_status_check
    CHECK (status IN ('provisioning', 'provisioning_failed', 'active', 'suspended'));

ALTER TABLE control.tenants
    -- The schema holding the tenant's tables: 'public' for shared, t_<id> for schema, and
    -- the schema inside the dedicated database for database.
    ADD COLUMN schema_name text NOT NULL DEFAULT 'public'
        CHECK (schema_name ~ '^[a-z][a-z0-9_]{0,62}$'),
    -- A dedicated database on the default server (database placement without a URL).
    ADD COLUMN database_name text
        CHECK (database_name ~ '^[a-z][a-z0-9_]{0,62}$'),
    -- A dedicated database elsewhere: the operator's URL (with credentials) and an
    -- optional read-only replica. Secrets: never returned by the API, never logged.
    ADD COLUMN database_url text,
    ADD COLUMN read_url text,
    ADD COLUMN failure_reason text,
    ADD COLUMN status_changed_at timestamptz NOT NULL DEFAULT now(),
    ADD CONSTRAINT tenants_placement_storage CHECK (
        (placement = 'shared' AND schema_name = 'public' AND database_name IS NULL AND database_url IS NULL)
     OR (placement = 'schema' AND schema_name <> 'public' AND database_name IS NULL AND database_url IS NULL)
     OR (placement = 'database' AND (database_name IS NULL) <> (database_url IS NULL))
    ),
    ADD CONSTRAINT tenants_read_url_needs_database CHECK (read_url IS NULL OR placement = 'database');

-- Services cache where each tenant lives; tell them when that changes.
CREATE FUNCTION control.notify_tenant_changed() RETURNS trigger
    LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('borough_tenant_changed', COALESCE(NEW.id, OLD.id)::text);
    RETURN NULL;
END $$;

CREATE TRIGGER tenants_changed
    AFTER UPDATE OR DELETE ON control.tenants
    FOR EACH ROW EXECUTE FUNCTION control.notify_tenant_changed();

GRANT DELETE ON control.tenants TO borough_app;

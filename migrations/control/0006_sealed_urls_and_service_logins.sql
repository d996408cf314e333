-- Tenants' database URLs sealed at rest, and one database login per service.
--
-- `database_url` and `read_url` hold `enc:v1:<key id>:<base64>` (AES-256-GCM, bound to
-- the row and column; see crates/tenancy/src/secrets.rs). `borough-user migrate`, which
-- holds BOROUGH_SECRET_KEYS, seals the values stored before this migration and fills the
-- locations; new rows must be sealed (the constraint is NOT VALID only for old rows until
-- then, and validated by that same run).
--
-- The locations say where a tenant database is, without credentials: the query service
-- reads them and connects with its own login. It cannot read the URLs.

ALTER TABLE control.tenants
    ADD COLUMN database_location text,
    ADD COLUMN read_location text,
    ADD CONSTRAINT tenants_urls_sealed CHECK (
        (database_url IS NULL OR database_url LIKE 'enc:v1:%')
        AND (read_url IS NULL OR read_url LIKE 'enc:v1:%')
    ) NOT VALID;

-- The query service: tenants' routes, column by column, never their URLs nor API keys.
GRANT USAGE ON SCHEMA control TO borough_query_app;
GRANT SELECT (id, name, placement, status, schema_name, database_name, database_location,
              read_location, created_at, status_changed_at)
    ON control.tenants TO borough_query_app;

-- The config service: its schema alone. The user service (borough_app) loses it.
GRANT USAGE ON SCHEMA config TO borough_config_app;
GRANT SELECT, INSERT, UPDATE, DELETE
    ON config.entries, config.schemas, config.instances, config.namespaces
    TO borough_config_app;
GRANT SELECT, INSERT, DELETE ON config.history TO borough_config_app;
REVOKE ALL ON config.entries, config.schemas, config.instances, config.namespaces,
              config.history
    FROM borough_app;
REVOKE USAGE ON SCHEMA config FROM borough_app;

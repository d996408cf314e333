-- Bounds of the configuration center: each namespace's usage (keys, value and schema
-- bytes, history rows and bytes), which the config service keeps up to date in every
-- write's transaction, checks tenants' quotas against, and prunes history by; and how far
-- each namespace's history was pruned (`compacted_through`: a watch from before it cannot
-- be replayed and must list again).

CREATE TABLE config.namespaces (
    namespace          text PRIMARY KEY,
    -- The owning tenant of `tenant/<id>/<name>`; NULL for `platform/<service>`.
    tenant_id          uuid,
    keys               bigint NOT NULL DEFAULT 0,
    value_bytes        bigint NOT NULL DEFAULT 0,
    schema_bytes       bigint NOT NULL DEFAULT 0,
    history_rows       bigint NOT NULL DEFAULT 0,
    history_bytes      bigint NOT NULL DEFAULT 0,
    compacted_through  bigint NOT NULL DEFAULT 0
);

CREATE INDEX namespaces_tenant ON config.namespaces (tenant_id) WHERE tenant_id IS NOT NULL;

CREATE FUNCTION config.namespace_tenant(namespace text) RETURNS uuid
    LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE
        WHEN split_part(namespace, '/', 2) ~ '^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$'
         AND namespace LIKE 'tenant/%'
        THEN split_part(namespace, '/', 2)::uuid
    END
$$;

-- What is there already.
INSERT INTO config.namespaces (namespace, tenant_id, keys, value_bytes)
SELECT namespace, config.namespace_tenant(namespace), count(*), sum(octet_length(value::text))
  FROM config.entries GROUP BY namespace;

INSERT INTO config.namespaces AS n (namespace, tenant_id, schema_bytes)
SELECT namespace, config.namespace_tenant(namespace), octet_length(schema::text)
  FROM config.schemas
ON CONFLICT (namespace) DO UPDATE SET schema_bytes = EXCLUDED.schema_bytes;

INSERT INTO config.namespaces AS n (namespace, tenant_id, history_rows, history_bytes)
SELECT namespace, config.namespace_tenant(namespace), count(*),
       sum(COALESCE(octet_length(old_value::text), 0) + COALESCE(octet_length(new_value::text), 0))
  FROM config.history GROUP BY namespace
ON CONFLICT (namespace) DO UPDATE
   SET history_rows = EXCLUDED.history_rows, history_bytes = EXCLUDED.history_bytes;

DROP FUNCTION config.namespace_tenant(text);

GRANT SELECT, INSERT, UPDATE, DELETE ON config.namespaces TO borough_app;
-- Retention and purging delete history rows.
GRANT DELETE ON config.history TO borough_app;

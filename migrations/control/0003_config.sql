-- The configuration center: versioned JSON entries, their history, schemas per namespace,
-- and what each config client has applied.
--
-- Revisions are global and gap-free in commit order: every write takes the same advisory
-- lock and uses max(revision) + 1, so a watcher that has seen revision N has seen every
-- change before it.

CREATE SCHEMA IF NOT EXISTS config;

CREATE TABLE config.history (
    revision   bigint PRIMARY KEY,
    namespace  text NOT NULL,
    key        text NOT NULL,
    op         text NOT NULL CHECK (op IN ('put', 'delete', 'rollback')),
    old_value  jsonb,
    new_value  jsonb,
    actor      text NOT NULL,
    at         timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX history_key ON config.history (namespace, key, revision DESC);
CREATE INDEX history_namespace ON config.history (namespace, revision);

CREATE TABLE config.entries (
    namespace  text NOT NULL CHECK (namespace ~ '^(platform/[a-z][a-z0-9-]{0,62}|tenant/[0-9a-f-]{36}/[A-Za-z0-9_.-]{1,64})$'),
    key        text NOT NULL CHECK (key ~ '^[A-Za-z0-9_.-]{1,128}$'),
    value      jsonb NOT NULL,
    revision   bigint NOT NULL REFERENCES config.history (revision),
    updated_at timestamptz NOT NULL DEFAULT now(),
    updated_by text NOT NULL,
    PRIMARY KEY (namespace, key)
);

CREATE TABLE config.schemas (
    namespace  text PRIMARY KEY,
    schema     jsonb NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE config.instances (
    instance   text PRIMARY KEY,
    service    text NOT NULL,
    revision   bigint NOT NULL,
    last_seen  timestamptz NOT NULL DEFAULT now()
);

-- Tell every config replica that history grew (payload: the revision).
CREATE FUNCTION config.notify_change() RETURNS trigger
    LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('borough_config_changed', NEW.revision::text);
    RETURN NULL;
END $$;

CREATE TRIGGER history_appended
    AFTER INSERT ON config.history
    FOR EACH ROW EXECUTE FUNCTION config.notify_change();

GRANT USAGE ON SCHEMA config TO borough_app;
GRANT SELECT, INSERT, UPDATE, DELETE ON config.entries, config.schemas, config.instances TO borough_app;
GRANT SELECT, INSERT ON config.history TO borough_app;

-- Live tenant moves (docs/tenancy.md, "Moving a tenant"): one row per move, which the user
-- service drives phase by phase and resumes from after a restart.
--
-- The target's storage columns mirror control.tenants' (sealed URLs included, sealed for
-- the same tenant and column, so they are copied to the tenant's row verbatim at the
-- switch); the source's are kept to remove the old copy after the grace period.

CREATE TABLE control.tenant_moves (
    id                  uuid PRIMARY KEY,
    tenant_id           uuid NOT NULL REFERENCES control.tenants (id) ON DELETE CASCADE,
    phase               text NOT NULL CHECK (phase IN (
                            'preparing', 'copying', 'catching_up', 'fenced', 'switched',
                            'cleaning', 'done', 'failed', 'cancelled')),
    -- Where the tenant was when the move started.
    from_placement      text NOT NULL CHECK (from_placement IN ('shared', 'schema', 'database')),
    from_schema         text NOT NULL,
    from_database_name  text,
    from_database_url   text CHECK (from_database_url IS NULL OR from_database_url LIKE 'enc:v1:%'),
    from_read_url       text CHECK (from_read_url IS NULL OR from_read_url LIKE 'enc:v1:%'),
    from_location       text,
    from_read_location  text,
    -- Where it goes.
    to_placement        text NOT NULL CHECK (to_placement IN ('shared', 'schema', 'database')),
    to_schema           text NOT NULL,
    to_database_name    text,
    to_database_url     text CHECK (to_database_url IS NULL OR to_database_url LIKE 'enc:v1:%'),
    to_read_url         text CHECK (to_read_url IS NULL OR to_read_url LIKE 'enc:v1:%'),
    to_location         text,
    to_read_location    text,
    -- Progress, for GET and the metrics.
    rows_total          bigint NOT NULL DEFAULT 0,
    rows_copied         bigint NOT NULL DEFAULT 0,
    changes_applied     bigint NOT NULL DEFAULT 0,
    lag_changes         bigint NOT NULL DEFAULT 0,
    catch_up_rounds     integer NOT NULL DEFAULT 0,
    fence_ms            double precision,
    error               text,
    cancel_requested    boolean NOT NULL DEFAULT false,
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now(),
    switched_at         timestamptz,
    cleanup_after       timestamptz,
    finished_at         timestamptz
);

-- One move at a time per tenant (finished ones are history).
CREATE UNIQUE INDEX tenant_moves_one_active ON control.tenant_moves (tenant_id)
    WHERE phase NOT IN ('done', 'failed', 'cancelled');
CREATE INDEX tenant_moves_tenant ON control.tenant_moves (tenant_id, created_at DESC);

GRANT SELECT, INSERT, UPDATE ON control.tenant_moves TO borough_app;

-- Control plane: tenants and their API keys.
--
-- These tables are not tenant-owned: the gateway resolves an API key to its tenant before
-- any tenant is known. They live in their own schema, away from tenant data.

CREATE SCHEMA IF NOT EXISTS control;

CREATE TABLE control.tenants (
    id          uuid PRIMARY KEY,
    name        text NOT NULL UNIQUE CHECK (name ~ '^[a-z0-9]([a-z0-9-]{0,62}[a-z0-9])?$'),
    placement   text NOT NULL DEFAULT 'shared' CHECK (placement IN ('shared')),
    status      text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'suspended')),
    created_at  timestamptz NOT NULL DEFAULT now()
);

-- An API key is `bk_<prefix>_<secret>`. Only the prefix (for lookup) and a SHA-256 of the
-- whole key are stored: the key itself is shown once, when issued.
CREATE TABLE control.api_keys (
    id          uuid PRIMARY KEY,
    tenant_id   uuid NOT NULL REFERENCES control.tenants (id) ON DELETE CASCADE,
    prefix      text NOT NULL UNIQUE,
    key_hash    bytea NOT NULL CHECK (length(key_hash) = 32),
    created_at  timestamptz NOT NULL DEFAULT now(),
    revoked_at  timestamptz
);

CREATE INDEX api_keys_tenant ON control.api_keys (tenant_id);

GRANT USAGE ON SCHEMA control TO borough_app;
GRANT SELECT, INSERT, UPDATE ON control.tenants, control.api_keys TO borough_app;

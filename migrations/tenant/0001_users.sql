-- Tenant data: users.
--
-- Every tenant-owned table has a tenant_id column and FORCEd row-level security with a
-- policy on the `borough.tenant_id` setting, which the tenancy router sets with
-- SET LOCAL inside each transaction. Services connect as a member of borough_app, which
-- neither owns these tables nor bypasses RLS: a query that forgets its tenant filter
-- still sees only its own tenant's rows.

CREATE TABLE users (
    tenant_id   uuid NOT NULL,
    id          uuid NOT NULL,
    name        text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    email       text NOT NULL CHECK (length(email) BETWEEN 3 AND 254),
    version     bigint NOT NULL DEFAULT 1 CHECK (version >= 1),
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, id)
);

-- Emails are unique per tenant, whatever their case.
CREATE UNIQUE INDEX users_tenant_email ON users (tenant_id, lower(email));

ALTER TABLE users ENABLE ROW LEVEL SECURITY;
ALTER TABLE users FORCE ROW LEVEL SECURITY;

CREATE POLICY tenant_isolation ON users
    USING (tenant_id = NULLIF(current_setting('borough.tenant_id', true), '')::uuid)
    WITH CHECK (tenant_id = NULLIF(current_setting('borough.tenant_id', true), '')::uuid);

GRANT SELECT, INSERT, UPDATE, DELETE ON users TO borough_app;

-- Idempotency keys: a write that carries an `Idempotency-Key` records the key, a hash of
-- its request and its response in the same transaction as the write itself. A repeat
-- with the same key and request gets the recorded response; with another request, 422.
-- Keys expire (BOROUGH_IDEMPOTENCY_TTL, 24h by default); expired rows are replaced on
-- reuse and swept a few at a time by later keyed writes.

CREATE TABLE idempotency_keys (
    tenant_id     uuid NOT NULL,
    -- Up to 255 characters from the client, plus `#<n>` for an import's chunks.
    key           text NOT NULL CHECK (length(key) BETWEEN 1 AND 300),
    method        text NOT NULL,
    request_hash  bytea NOT NULL,
    response      bytea NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    expires_at    timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, key)
);

CREATE INDEX idempotency_keys_expiry ON idempotency_keys (tenant_id, expires_at);

ALTER TABLE idempotency_keys ENABLE ROW LEVEL SECURITY;
ALTER TABLE idempotency_keys FORCE ROW LEVEL SECURITY;

CREATE POLICY tenant_isolation ON idempotency_keys
    USING (tenant_id = NULLIF(current_setting('borough.tenant_id', true), '')::uuid)
    WITH CHECK (tenant_id = NULLIF(current_setting('borough.tenant_id', true), '')::uuid);

GRANT SELECT, INSERT, UPDATE, DELETE ON idempotency_keys TO borough_app;

"""Schemathesis hooks for `make fuzz` (loaded with SCHEMATHESIS_HOOKS=hooks)."""

import json

import schemathesis


@schemathesis.serializer("application/x-ndjson")
def ndjson(ctx, value):
    """An import body: a generated string as it is, anything else one JSON value per line."""
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode("utf-8", "replace")
    items = value if isinstance(value, list) else [value]
    return "".join(json.dumps(item) + "\n" for item in items).encode("utf-8")


@schemathesis.hook
def map_body(ctx, body):
    """A tenant database given by URL may only ever point at this machine (a closed port):
    the fuzzer must not make the platform connect anywhere else."""
    if isinstance(body, dict):
        for field in ("database_url", "read_url"):
            if isinstance(body.get(field), str):
                body[field] = "postgres://fuzz:fuzz@127.0.0.1:1/fuzz"
    return body

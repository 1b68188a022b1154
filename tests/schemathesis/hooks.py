"""Schemathesis hooks for the OpenAPI e2e test (tests/tests/e2e/openapi.rs)."""

import schemathesis

# A plugin upload (`PUT /admin/v1/plugins/{name}`) is raw bytes of `application/wasm`,
# which schemathesis has no serializer for: send them as it sends any octet stream.
schemathesis.serializer.alias("application/wasm", "application/octet-stream")

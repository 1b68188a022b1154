-- Adapters swapped in at runtime (an install, a rollback), shared by the hosts:
-- each component by its sha256, and per adapter the active version and the
-- rollback target.
CREATE TABLE adapter_components (
    sha256 text PRIMARY KEY CHECK (sha256 ~ '^[0-9a-f]{64}$'),
    wasm bytea NOT NULL
);

CREATE TABLE installed_adapters (
    name text PRIMARY KEY,
    active_sha256 text NOT NULL REFERENCES adapter_components,
    active_version text NOT NULL,
    previous_sha256 text REFERENCES adapter_components,
    previous_version text,
    -- the sha256 of the adapter's file in the plugins directory when written
    plugins_dir_sha256 text,
    updated_at timestamptz NOT NULL,
    CHECK ((previous_sha256 IS NULL) = (previous_version IS NULL))
);

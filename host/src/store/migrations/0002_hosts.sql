-- Hosts sharing this database. A host writes only while its row lives: each of
-- its write batches takes the row FOR SHARE, so deleting the row of a host whose
-- lease lapsed (any other host does, once expires_at has passed) waits for that
-- host's batch in flight and fences every later one.
CREATE TABLE hosts (
    id text PRIMARY KEY,
    started_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz NOT NULL
);

-- The host driving each execution that is not terminal. NULL, or a host that is
-- no longer in `hosts`, means any host may adopt it.
ALTER TABLE executions ADD COLUMN driver text;

-- Rate-limit buckets shared by the hosts: the moment (microseconds of the
-- database's clock) at which each key's budget is full again. Unlogged: nothing
-- here is worth keeping after a crash of the database.
CREATE UNLOGGED TABLE rate_limits (
    key text PRIMARY KEY,
    full_at bigint NOT NULL
);

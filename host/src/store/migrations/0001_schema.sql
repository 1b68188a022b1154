-- ModelRoute's schema on PostgreSQL. Identity, relations, states, times and money
-- are columns, with the constraints that guard the platform's invariants; the
-- nested parts of a record (an execution's input, attempts and output, a webhook
-- target) are kept whole in its `record` (jsonb), written from the same value as
-- its columns in the same statement.
--
-- Foreign keys are checked at commit, so a transaction may write related rows in
-- any order.

-- Server secrets (signing keys), made once by whichever host asks first.
CREATE TABLE meta (
    name text PRIMARY KEY,
    value text NOT NULL
);

CREATE TABLE organizations (
    id text PRIMARY KEY,
    name text NOT NULL,
    created_at timestamptz NOT NULL,
    file_ttl_days integer CHECK (file_ttl_days BETWEEN 1 AND 365),
    record jsonb NOT NULL
);

CREATE TABLE api_keys (
    id text PRIMARY KEY,
    organization_id text NOT NULL REFERENCES organizations DEFERRABLE INITIALLY DEFERRED,
    scope text NOT NULL CHECK (scope IN ('full', 'execution')),
    -- SHA-256 of the secret, hex: how a request finds its key
    secret_hash text NOT NULL UNIQUE,
    -- a rotated key's previous secret, accepted until its grace period ends
    previous_secret_hash text UNIQUE,
    created_at timestamptz NOT NULL,
    revoked_at timestamptz,
    expires_at timestamptz,
    record jsonb NOT NULL
);
CREATE INDEX api_keys_by_organization ON api_keys (organization_id);

-- Balances in micro-dollars. No bucket can go below zero: a hold larger than the
-- available balance is refused by the database too.
CREATE TABLE accounts (
    organization_id text PRIMARY KEY REFERENCES organizations DEFERRABLE INITIALLY DEFERRED,
    deposits bigint NOT NULL CHECK (deposits >= 0),
    available bigint NOT NULL CHECK (available >= 0),
    held bigint NOT NULL CHECK (held >= 0),
    spent bigint NOT NULL CHECK (spent >= 0)
);

-- The double-entry ledger: append only.
CREATE TABLE ledger_entries (
    id text PRIMARY KEY,
    -- UUID v7: orders an organization's entries in time
    seq uuid NOT NULL UNIQUE,
    organization_id text NOT NULL REFERENCES organizations DEFERRABLE INITIALLY DEFERRED,
    kind text NOT NULL CHECK (kind IN ('deposit', 'hold', 'settle', 'release', 'absorbed')),
    amount bigint NOT NULL CHECK (amount >= 0),
    debit text NOT NULL CHECK (debit IN (
        'external', 'available', 'held', 'spent', 'platformloss', 'providerpayable')),
    credit text NOT NULL CHECK (credit IN (
        'external', 'available', 'held', 'spent', 'platformloss', 'providerpayable')),
    execution_id text,
    memo text,
    created_at timestamptz NOT NULL,
    CHECK (debit <> credit)
);
CREATE INDEX ledger_entries_by_organization ON ledger_entries (organization_id, seq);

CREATE FUNCTION forbid_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% rows are never changed or removed', TG_TABLE_NAME
        USING ERRCODE = 'integrity_constraint_violation';
END
$$;
CREATE TRIGGER ledger_entries_are_append_only
    BEFORE UPDATE OR DELETE ON ledger_entries
    FOR EACH ROW EXECUTE FUNCTION forbid_change();

-- An execution with an idempotency key has an id derived from its organization
-- and the key: the primary key is the one claim per organization and key.
CREATE TABLE executions (
    id text PRIMARY KEY,
    organization_id text NOT NULL REFERENCES organizations DEFERRABLE INITIALLY DEFERRED,
    model text NOT NULL,
    mode text NOT NULL CHECK (mode IN ('ASYNC', 'SYNC', 'STREAMING')),
    status text NOT NULL CHECK (status IN (
        'PENDING', 'PROCESSING', 'AWAITING_WEBHOOK', 'COMPLETED', 'FAILED', 'CANCELLED', 'EXPIRED')),
    hold_amount bigint NOT NULL CHECK (hold_amount >= 0),
    cost bigint CHECK (cost >= 0),
    created_at timestamptz NOT NULL,
    expires_at timestamptz NOT NULL,
    completed_at timestamptz,
    record jsonb NOT NULL,
    CHECK ((status IN ('COMPLETED', 'FAILED', 'CANCELLED', 'EXPIRED')) = (completed_at IS NOT NULL))
);
CREATE INDEX executions_by_organization ON executions (organization_id, created_at DESC, id);
-- The dispatcher's queue: every execution that is not terminal, by deadline.
CREATE INDEX executions_active ON executions (expires_at, id)
    WHERE status NOT IN ('COMPLETED', 'FAILED', 'CANCELLED', 'EXPIRED');

-- One terminal transition: a finished execution never changes status again.
CREATE FUNCTION executions_end_once() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF OLD.status IN ('COMPLETED', 'FAILED', 'CANCELLED', 'EXPIRED')
        AND NEW.status IS DISTINCT FROM OLD.status THEN
        RAISE EXCEPTION 'execution % already ended %', OLD.id, OLD.status
            USING ERRCODE = 'integrity_constraint_violation';
    END IF;
    RETURN NEW;
END
$$;
CREATE TRIGGER executions_end_once
    BEFORE UPDATE ON executions
    FOR EACH ROW EXECUTE FUNCTION executions_end_once();

CREATE TABLE files (
    id text PRIMARY KEY,
    organization_id text NOT NULL REFERENCES organizations DEFERRABLE INITIALLY DEFERRED,
    status text NOT NULL CHECK (status IN ('AWAITING_UPLOAD', 'UPLOADED', 'READY')),
    purpose text NOT NULL,
    size_bytes bigint NOT NULL CHECK (size_bytes >= 0),
    sha256 text NOT NULL,
    -- where the bytes are in storage
    object_key text NOT NULL,
    created_at timestamptz NOT NULL,
    expires_at timestamptz NOT NULL,
    record jsonb NOT NULL
);
CREATE INDEX files_by_organization ON files (organization_id, created_at DESC, id);
-- The expiry sweeper's queue.
CREATE INDEX files_by_expiry ON files (expires_at, id);

-- Per organization: what its files use, kept in step with `files` by the host in
-- the transaction that changes them, and the operator's quota overrides.
CREATE TABLE file_usage (
    organization_id text PRIMARY KEY REFERENCES organizations DEFERRABLE INITIALLY DEFERRED,
    bytes bigint NOT NULL CHECK (bytes >= 0),
    files bigint NOT NULL CHECK (files >= 0),
    quota_bytes bigint CHECK (quota_bytes >= 0),
    quota_files bigint CHECK (quota_files >= 0)
);

-- Stored objects no record points to any more: deleted after the commit that
-- removed their record, or by the next sweep.
CREATE TABLE file_objects_unreferenced (
    object_key text PRIMARY KEY
);

-- Who did what to each file; it outlives the file.
CREATE TABLE file_audit (
    seq bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    file_id text NOT NULL,
    organization_id text NOT NULL,
    action text NOT NULL,
    actor text NOT NULL,
    address text,
    at timestamptz NOT NULL
);
CREATE INDEX file_audit_by_file ON file_audit (file_id, at, seq);

CREATE TABLE webhook_endpoints (
    id text PRIMARY KEY,
    organization_id text NOT NULL REFERENCES organizations DEFERRABLE INITIALLY DEFERRED,
    url text NOT NULL,
    is_active boolean NOT NULL,
    created_at timestamptz NOT NULL,
    record jsonb NOT NULL
);
CREATE INDEX webhook_endpoints_by_organization ON webhook_endpoints (organization_id, created_at DESC, id);

-- Each organization's default signing secret, made on first use.
CREATE TABLE webhook_signing_secrets (
    organization_id text PRIMARY KEY REFERENCES organizations DEFERRABLE INITIALLY DEFERRED,
    secret text NOT NULL
);

-- The outbox. An event keeps its exact body for byte-identical redeliveries while
-- any of its deliveries is pending.
CREATE TABLE webhook_events (
    id text PRIMARY KEY,
    organization_id text NOT NULL,
    event_type text NOT NULL,
    body text NOT NULL,
    pending integer NOT NULL CHECK (pending >= 0)
);

CREATE TABLE webhook_deliveries (
    id text PRIMARY KEY,
    event_id text NOT NULL REFERENCES webhook_events DEFERRABLE INITIALLY DEFERRED,
    organization_id text NOT NULL,
    attempts integer NOT NULL CHECK (attempts >= 0),
    next_attempt_at timestamptz NOT NULL,
    record jsonb NOT NULL
);
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (next_attempt_at, id);

-- nems on PostgreSQL, schema 1 (issue 13). Applied by core itself at start
-- (core/src/postgres/migrator.rs), inside one transaction under an advisory lock, so that
-- several cores starting together apply it once. Never edit an applied migration: add the
-- next one (the migrator refuses a database whose recorded checksum differs).
--
-- Times are Unix milliseconds (bigint), as the redb store keeps them; ids are the 128-bit
-- ids as uuid. No row holds clinical content except nems_payloads (the published bytes,
-- kept until every delivery of the event is settled) and nems_patients (demographics).

-- Registered systems (ASIDs) and MESH mailboxes: the Spine directory, each row the
-- protobuf record (nems.core.v1.SpineSystem, MeshMailbox) under its key.
CREATE TABLE nems_systems (
    asid   text PRIMARY KEY,
    record bytea NOT NULL
);

CREATE TABLE nems_mailboxes (
    mailbox_id text PRIMARY KEY,
    record     bytea NOT NULL
);

-- Subscriptions: the stored record (prost StoredSubscription, deleted ones kept with
-- deleted_ms) and the columns the operator listings use. A live duplicate is found by
-- dedup_key; creates of one key are serialised by an advisory lock.
CREATE TABLE nems_subscriptions (
    id         uuid PRIMARY KEY,
    owner_asid text NOT NULL,
    owner_ods  text NOT NULL,
    mailbox    text NOT NULL,
    created_ms bigint NOT NULL,
    end_ms     bigint NOT NULL,
    deleted_ms bigint NOT NULL DEFAULT 0,
    dedup_key  uuid NOT NULL,
    record     bytea NOT NULL
);
CREATE INDEX nems_subscriptions_by_dedup ON nems_subscriptions (dedup_key) WHERE deleted_ms = 0;
CREATE INDEX nems_subscriptions_by_owner ON nems_subscriptions (owner_ods, id);
CREATE INDEX nems_subscriptions_by_mailbox ON nems_subscriptions (mailbox, id);

-- The match indexes of live subscriptions: what matching needs (prost MatchEntry) by NHS
-- number (explicit) and by rule key RULE/CODE/EVENT (generic; byte order, so that a
-- prefix lists a rule).
CREATE TABLE nems_match_nhs (
    nhs_number bigint NOT NULL,
    id         uuid NOT NULL,
    entry      bytea NOT NULL,
    PRIMARY KEY (nhs_number, id)
);

CREATE TABLE nems_match_rule (
    rule_key text COLLATE "C" NOT NULL,
    id       uuid NOT NULL,
    entry    bytea NOT NULL,
    PRIMARY KEY (rule_key, id)
);

-- Live subscriptions per owning ASID, for the quota: the create's transaction locks the
-- owner's row, so that concurrent creates cannot pass the quota together.
CREATE TABLE nems_subscription_counts (
    owner_asid text PRIMARY KEY,
    live       bigint NOT NULL CHECK (live >= 0)
);

-- Accepted events (no payload, no patient data: prost StoredEvent, as in the redb store)
-- and their payloads, kept while a delivery of the event may still be sent.
CREATE TABLE nems_events (
    seq           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    event_id      uuid NOT NULL UNIQUE,
    accepted_ms   bigint NOT NULL,
    no_deliveries boolean NOT NULL,
    record        bytea NOT NULL
);
-- Retention of events that never had a delivery.
CREATE INDEX nems_events_without_deliveries ON nems_events (accepted_ms) WHERE no_deliveries;

CREATE TABLE nems_payloads (
    seq     bigint PRIMARY KEY REFERENCES nems_events (seq) ON DELETE CASCADE,
    payload bytea NOT NULL
);

-- The delivery ledger: one row per event and mailbox (the unique key is the "one copy per
-- mailbox" rule), each the prost StoredDelivery of the redb store plus the columns its
-- indexes need, derived from it at every save (core/src/postgres/ledger.rs). queue_at is
-- when a queued delivery is available or an in-flight lease expires (NULL once settled),
-- so an expired lease is available again without a timer; lease_owner names the core
-- holding an in-flight one. settle_kind/settle_at: retention (0 a dead letter holding its
-- payload, 1 a settled row), as the redb store's retention index.
CREATE TABLE nems_deliveries (
    delivery_id     bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    event_seq       bigint NOT NULL REFERENCES nems_events (seq) ON DELETE CASCADE,
    idx             integer NOT NULL,
    mailbox         text NOT NULL,
    state           smallint NOT NULL CHECK (state BETWEEN 1 AND 5),
    queue_at        bigint,
    lease_owner     text,
    event_code      text NOT NULL,
    last_error_code text NOT NULL,
    mesh_message_id text,
    settle_kind     smallint,
    settle_at       bigint,
    record          bytea NOT NULL,
    UNIQUE (event_seq, idx),
    UNIQUE (event_seq, mailbox)
);
CREATE INDEX nems_deliveries_queue ON nems_deliveries (mailbox, queue_at, delivery_id) WHERE queue_at IS NOT NULL;
CREATE INDEX nems_deliveries_by_state ON nems_deliveries (state, delivery_id);
CREATE INDEX nems_deliveries_by_mailbox ON nems_deliveries (mailbox, delivery_id);
CREATE INDEX nems_deliveries_by_mesh_id ON nems_deliveries (mesh_message_id) WHERE mesh_message_id IS NOT NULL;
CREATE INDEX nems_deliveries_settled ON nems_deliveries (settle_kind, settle_at, delivery_id) WHERE settle_kind IS NOT NULL;
CREATE INDEX nems_deliveries_leases ON nems_deliveries (lease_owner) WHERE state = 2;

-- Events accepted, in 16 shards: an acceptance adds one to a random shard, so that no
-- single row serialises acceptances.
CREATE TABLE nems_counters (
    shard  smallint PRIMARY KEY,
    events bigint NOT NULL
);
INSERT INTO nems_counters (shard, events) SELECT s, 0 FROM generate_series(0, 15) AS s;

-- Patient demographics (newer data wins, fact by fact: prost StoredPatient), by NHS
-- number.
CREATE TABLE nems_patients (
    nhs_number bigint PRIMARY KEY,
    record     bytea NOT NULL
);

-- Reference data sets (0 postcodes, 1 practices, 2 code map), each in two slots as in
-- the redb store: an import empties and fills the slot not in force over many
-- transactions, and its last transaction switches the set's metadata (prost RefMeta) to
-- it, so that matching never sees half a file.
CREATE TABLE nems_ref_meta (
    set_index smallint PRIMARY KEY CHECK (set_index BETWEEN 0 AND 2),
    meta      bytea NOT NULL
);

CREATE TABLE nems_ref_rows (
    set_index smallint NOT NULL,
    slot      smallint NOT NULL CHECK (slot BETWEEN 0 AND 1),
    key       text COLLATE "C" NOT NULL,
    record    bytea NOT NULL,
    PRIMARY KEY (set_index, slot, key)
);

-- The audit trail (who, what, when; never clinical content: prost AuditRecord) and the
-- aggregated refusals, each with its own retention. One sequence numbers both, so that
-- (at_ms, seq) orders and pages their merged listing.
CREATE SEQUENCE nems_audit_seq;

CREATE TABLE nems_audit (
    seq         bigint PRIMARY KEY DEFAULT nextval('nems_audit_seq'),
    at_ms       bigint NOT NULL,
    asid        text NOT NULL,
    action      text NOT NULL,
    resource_id text NOT NULL,
    record      bytea NOT NULL
);
CREATE INDEX nems_audit_by_time ON nems_audit (at_ms, seq);

CREATE TABLE nems_audit_refused (
    seq         bigint PRIMARY KEY DEFAULT nextval('nems_audit_seq'),
    at_ms       bigint NOT NULL,
    asid        text NOT NULL,
    action      text NOT NULL,
    resource_id text NOT NULL,
    record      bytea NOT NULL
);
CREATE INDEX nems_audit_refused_by_time ON nems_audit_refused (at_ms, seq);

-- The acceptance time of an event (see core/src/postgres/backend.rs): taken while holding
-- the ordering lock exclusively for an instant, so that every subscription create stamped
-- before it (holding the lock shared until its commit ends) is visible to the event's
-- matching statements. Statements of a PL/pgSQL function run in order.
CREATE FUNCTION nems_order_barrier(k bigint) RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
    t bigint;
BEGIN
    PERFORM pg_advisory_lock(k);
    -- Rounded down (creation times are rounded up): see core/src/postgres/subscriptions.rs.
    t := floor(extract(epoch FROM clock_timestamp()) * 1000)::bigint;
    PERFORM pg_advisory_unlock(k);
    RETURN t;
END
$$;

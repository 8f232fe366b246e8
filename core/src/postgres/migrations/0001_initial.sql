-- nems on PostgreSQL, schema 1 (issue 13). Applied by core itself at start
-- (core/src/postgres/migrator.rs), inside one transaction under an advisory lock, so that
-- several cores starting together apply it once. Never edit an applied migration: add the
-- next one (the migrator refuses a database whose recorded checksum differs).
--
-- Times are Unix milliseconds (bigint), as the redb store keeps them; ids are the 128-bit
-- ids as uuid. No row holds clinical content except nems_payloads (the published bytes,
-- kept until every delivery of the event is settled) and nems_patients (demographics).

-- Registered systems (ASIDs) and MESH mailboxes: the Spine directory.
CREATE TABLE nems_systems (
    asid                 text PRIMARY KEY,
    ods_codes            text[] NOT NULL,
    category_bags        text[] NOT NULL,
    publish_message_sets text[] NOT NULL,
    pds_publisher        boolean NOT NULL,
    certificate_identity text NOT NULL,
    description          text NOT NULL
);

CREATE TABLE nems_mailboxes (
    mailbox_id  text PRIMARY KEY,
    ods_code    text NOT NULL,
    description text NOT NULL
);

-- Subscriptions: the stored resource (prost SubscriptionRecord) and the columns matching
-- and the operator queries use. An explicit subscription is found by NHS number, a
-- generic one by its rule key (rule type and organisation); dedup_key makes a second
-- identical subscription a duplicate.
CREATE TABLE nems_subscriptions (
    id          uuid PRIMARY KEY,
    owner_asid  text NOT NULL,
    owner_ods   text NOT NULL,
    mailbox     text NOT NULL,
    nhs_number  bigint,
    rule_key    text,
    dedup_key   uuid NOT NULL UNIQUE,
    created_ms  bigint NOT NULL,
    record      bytea NOT NULL,
    CHECK ((nhs_number IS NULL) <> (rule_key IS NULL))
);
CREATE INDEX nems_subscriptions_by_nhs ON nems_subscriptions (nhs_number) WHERE nhs_number IS NOT NULL;
CREATE INDEX nems_subscriptions_by_rule ON nems_subscriptions (rule_key) WHERE rule_key IS NOT NULL;
CREATE INDEX nems_subscriptions_by_owner ON nems_subscriptions (owner_ods, id);
CREATE INDEX nems_subscriptions_by_mailbox ON nems_subscriptions (mailbox, id);

-- Live subscriptions per owning ASID, for the quota, counted in the create's transaction.
CREATE TABLE nems_subscription_counts (
    owner_asid text PRIMARY KEY,
    live       bigint NOT NULL CHECK (live >= 0)
);

-- Accepted events (no payload, no patient data) and their payloads.
CREATE TABLE nems_events (
    seq                   bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    event_id              uuid NOT NULL UNIQUE,
    event_code            text NOT NULL,
    message_event_type    text NOT NULL,
    publisher_asid        text NOT NULL,
    workflow_id           text NOT NULL,
    accepted_ms           bigint NOT NULL,
    payload_bytes         bigint NOT NULL,
    deliveries            integer NOT NULL,
    matched_subscriptions integer NOT NULL
);

CREATE TABLE nems_payloads (
    seq     bigint PRIMARY KEY REFERENCES nems_events (seq) ON DELETE CASCADE,
    payload bytea NOT NULL
);

-- The delivery ledger: one row per event and mailbox (the unique key is the "one copy per
-- mailbox" rule). state: 1 queued, 2 in flight, 3 delivered, 4 dead-lettered,
-- 5 suppressed (nems.core.v1.DeliveryState). A queued row is available from
-- available_ms; an in-flight one is leased to lease_owner until lease_expires_ms, after
-- which it is available again. Adapters on several cores take rows with
-- FOR UPDATE SKIP LOCKED.
CREATE TABLE nems_deliveries (
    delivery_id        bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    event_seq          bigint NOT NULL REFERENCES nems_events (seq) ON DELETE CASCADE,
    mailbox            text NOT NULL,
    local_id           text NOT NULL UNIQUE,
    partner_id         text NOT NULL,
    subscription_ids   uuid[] NOT NULL,
    state              smallint NOT NULL CHECK (state BETWEEN 1 AND 5),
    attempt            integer NOT NULL DEFAULT 0,
    failures           integer NOT NULL DEFAULT 0,
    available_ms       bigint NOT NULL,
    lease_owner        text,
    lease_expires_ms   bigint,
    retry_window_ms    bigint NOT NULL,
    redrives           integer NOT NULL DEFAULT 0,
    updated_ms         bigint NOT NULL,
    settled_ms         bigint,
    mesh_message_id    text UNIQUE,
    last_error_code    text NOT NULL DEFAULT '',
    last_error         text NOT NULL DEFAULT '',
    UNIQUE (event_seq, mailbox)
);
-- The dispatch queue: queued rows by mailbox in the order they become available.
CREATE INDEX nems_deliveries_queue ON nems_deliveries (mailbox, available_ms, delivery_id) WHERE state = 1;
-- Expired leases come back.
CREATE INDEX nems_deliveries_leases ON nems_deliveries (lease_expires_ms) WHERE state = 2;
CREATE INDEX nems_deliveries_by_state ON nems_deliveries (state, delivery_id);
CREATE INDEX nems_deliveries_by_mailbox ON nems_deliveries (mailbox, delivery_id);
-- Retention: settled rows by state and settling time.
CREATE INDEX nems_deliveries_settled ON nems_deliveries (state, settled_ms) WHERE settled_ms IS NOT NULL;

-- Patient demographics (newer data wins), by NHS number.
CREATE TABLE nems_patients (
    nhs_number bigint PRIMARY KEY,
    updated_ms bigint NOT NULL,
    record     bytea NOT NULL
);

-- Reference data sets (0 postcodes, 1 practices, 2 code map): each import writes a new
-- generation and switches the set to it in one transaction; readers see one generation.
CREATE TABLE nems_ref_sets (
    set_index   smallint PRIMARY KEY CHECK (set_index BETWEEN 0 AND 2),
    generation  bigint NOT NULL,
    rows        bigint NOT NULL,
    imported_ms bigint NOT NULL,
    meta        bytea NOT NULL
);

CREATE TABLE nems_ref_rows (
    set_index  smallint NOT NULL,
    generation bigint NOT NULL,
    key        text NOT NULL,
    record     bytea NOT NULL,
    PRIMARY KEY (set_index, generation, key)
);

-- The audit trail (who, what, when; never clinical content) and the aggregated refusals,
-- each with its own retention.
CREATE TABLE nems_audit (
    seq    bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at_ms  bigint NOT NULL,
    asid   text NOT NULL,
    action text NOT NULL,
    record bytea NOT NULL
);
CREATE INDEX nems_audit_by_time ON nems_audit (at_ms);
CREATE INDEX nems_audit_by_asid ON nems_audit (asid, seq);

CREATE TABLE nems_audit_refused (
    seq    bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at_ms  bigint NOT NULL,
    count  bigint NOT NULL,
    record bytea NOT NULL
);
CREATE INDEX nems_audit_refused_by_time ON nems_audit_refused (at_ms);

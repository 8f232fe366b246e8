-- Counters that no two open transactions share a row of (issue 13 §4: with one row per
-- shard picked at random, or one per ASID, acceptances and creates waited for each other's
-- commits). A row's shard is the server process of the connection that wrote it
-- (pg_backend_pid()): a connection runs one transaction at a time, so only a sweep folding
-- the rows of closed connections into shard 0 ever waits for it.
ALTER TABLE nems_counters ALTER COLUMN shard TYPE integer;

-- Live subscriptions per owning ASID, sharded the same way (a delete may make one shard
-- negative; the sum is the count). Creates pass the quota under an advisory lock of the
-- ASID (core/src/postgres/subscriptions.rs says why the count is exact).
CREATE TABLE nems_subscription_shards (
    owner_asid text NOT NULL,
    shard      integer NOT NULL,
    live       bigint NOT NULL,
    PRIMARY KEY (owner_asid, shard)
);
INSERT INTO nems_subscription_shards (owner_asid, shard, live)
    SELECT owner_asid, 0, live FROM nems_subscription_counts;
DROP TABLE nems_subscription_counts;

-- Starts an acceptance in one statement: the patient's lock (acceptances of one patient
-- in turn; NULL when the event is about none), the ordering barrier (see
-- nems_order_barrier and core/src/postgres/backend.rs), the event's sequence number, the
-- events counter (this connection's row), then what matching reads first, each read by a
-- statement of its own after the barrier (a volatile function's statements take fresh
-- snapshots): the reference data metadata, the patient's record and the explicit
-- subscriptions' match entries for the patient.
CREATE FUNCTION nems_accept_begin(
    order_key bigint, patient bigint,
    OUT accepted_ms bigint, OUT seq bigint,
    OUT ref_sets smallint[], OUT ref_metas bytea[],
    OUT patient_record bytea, OUT explicit_ids text[], OUT explicit_entries bytea[])
LANGUAGE plpgsql AS $$
#variable_conflict use_variable
BEGIN
    IF patient IS NOT NULL THEN
        PERFORM pg_advisory_xact_lock(patient);
    END IF;
    accepted_ms := nems_order_barrier(order_key);
    seq := nextval(pg_get_serial_sequence('nems_events', 'seq'));
    INSERT INTO nems_counters (shard, events) VALUES (pg_backend_pid(), 1)
        ON CONFLICT (shard) DO UPDATE SET events = nems_counters.events + 1;
    SELECT array_agg(m.set_index ORDER BY m.set_index), array_agg(m.meta ORDER BY m.set_index)
        INTO ref_sets, ref_metas FROM nems_ref_meta AS m;
    IF patient IS NOT NULL THEN
        SELECT p.record INTO patient_record FROM nems_patients AS p WHERE p.nhs_number = patient;
        SELECT array_agg(x.id::text ORDER BY x.id), array_agg(x.entry ORDER BY x.id)
            INTO explicit_ids, explicit_entries
            FROM nems_match_nhs AS x WHERE x.nhs_number = patient;
    END IF;
END
$$;

-- Payloads (XML or JSON, about 10 KB) compressed with lz4 rather than pglz, which took a
-- twentieth of the server's CPU under publish load.
ALTER TABLE nems_payloads ALTER COLUMN payload SET COMPRESSION lz4;

-- Starts a subscription create in one statement (core/src/postgres/subscriptions.rs says
-- why): the owner's quota lock (shared, or exclusive near the quota) and then the live
-- count; the duplicate key's lock, the ordering lock (shared), the creation time (the
-- database clock rounded up to the ms) and then a live duplicate, if any.
CREATE FUNCTION nems_create_begin(
    quota_key text, exclusive boolean, owner text, dedup_lock text, order_key bigint,
    dedup uuid,
    OUT live bigint, OUT created_ms bigint, OUT duplicate text)
LANGUAGE plpgsql AS $$
#variable_conflict use_variable
BEGIN
    IF exclusive THEN
        PERFORM pg_advisory_xact_lock(hashtextextended(quota_key, 0));
    ELSE
        PERFORM pg_advisory_xact_lock_shared(hashtextextended(quota_key, 0));
    END IF;
    SELECT coalesce(sum(s.live), 0)::bigint INTO live
        FROM nems_subscription_shards AS s WHERE s.owner_asid = owner;
    PERFORM pg_advisory_xact_lock(hashtextextended(dedup_lock, 0));
    PERFORM pg_advisory_xact_lock_shared(order_key);
    created_ms := ceil(extract(epoch FROM clock_timestamp()) * 1000)::bigint;
    SELECT x.id::text INTO duplicate FROM nems_subscriptions AS x
        WHERE x.dedup_key = dedup AND x.deleted_ms = 0
          AND (x.end_ms = 0 OR x.end_ms > created_ms)
        LIMIT 1;
END
$$;

-- Folds the counter rows of connections that are gone into shard 0 (bounded by the
-- number of connections ever opened since the last fold).
CREATE FUNCTION nems_fold_counters() RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    folded bigint;
BEGIN
    WITH gone AS (
        DELETE FROM nems_counters
        WHERE shard <> 0 AND shard NOT IN (SELECT pid FROM pg_stat_activity)
        RETURNING events
    )
    SELECT coalesce(sum(events), 0) INTO folded FROM gone;
    UPDATE nems_counters SET events = events + folded WHERE shard = 0;
    WITH gone AS (
        DELETE FROM nems_subscription_shards
        WHERE shard <> 0 AND shard NOT IN (SELECT pid FROM pg_stat_activity)
        RETURNING owner_asid, live
    )
    INSERT INTO nems_subscription_shards (owner_asid, shard, live)
        SELECT owner_asid, 0, sum(live) FROM gone GROUP BY owner_asid
    ON CONFLICT (owner_asid, shard)
        DO UPDATE SET live = nems_subscription_shards.live + EXCLUDED.live;
END
$$;

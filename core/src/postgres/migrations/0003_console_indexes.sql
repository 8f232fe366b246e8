-- Indexes for the operations console's reads (issue 12), so that its pages stay fast with
-- millions of rows:
-- * one action's audit records, newest first, read that action's rows only (as the redb
--   store's audit index by action does);
-- * per-mailbox counts by state come from an index-only scan instead of the table;
-- * each mailbox's oldest pending delivery is the first entry of its part of a partial
--   index, one probe per mailbox.
CREATE INDEX nems_audit_by_action ON nems_audit (action, at_ms, seq);
CREATE INDEX nems_audit_refused_by_action ON nems_audit_refused (action, at_ms, seq);
CREATE INDEX nems_deliveries_by_mailbox_state ON nems_deliveries (mailbox, state);
CREATE INDEX nems_deliveries_pending_by_mailbox ON nems_deliveries (mailbox, delivery_id)
    WHERE queue_at IS NOT NULL;

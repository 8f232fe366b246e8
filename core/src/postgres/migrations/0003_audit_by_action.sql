-- The operations console lists one action's audit records, newest first (issue 12): an
-- index of each audit table by action and time, so that such a listing reads that
-- action's rows only, as the redb store's audit index by action does.
CREATE INDEX nems_audit_by_action ON nems_audit (action, at_ms, seq);
CREATE INDEX nems_audit_refused_by_action ON nems_audit_refused (action, at_ms, seq);

-- The baseline snapshot's time for a window starting at %(since)s: the last snapshot of this
-- database taken at or before it, else the first after it (NULL: none at all).
SELECT coalesce(
    (SELECT max(captured_at) FROM ops.statement_snapshots
     WHERE database = current_database() AND captured_at <= %(since)s),
    (SELECT min(captured_at) FROM ops.statement_snapshots
     WHERE database = current_database() AND captured_at > %(since)s));

-- Statement fingerprints no sample kept refers to: last seen (refreshed hourly) before the
-- oldest snapshot kept, less an hour.
DELETE FROM ops.statement_fingerprints
WHERE last_seen < %(before)s::timestamptz - interval '1 hour';

-- Activity snapshots older than the retention (their samples go with them: ON DELETE CASCADE).
DELETE FROM ops.activity_snapshots WHERE taken_at < %(before)s;

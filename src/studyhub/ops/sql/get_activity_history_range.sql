-- What the activity history holds: its first and newest snapshot and how many there are.
SELECT min(taken_at) AS first_at, max(taken_at) AS last_at, count(*) AS snapshots
FROM ops.activity_snapshots;

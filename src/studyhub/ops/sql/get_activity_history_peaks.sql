-- An incident window's snapshots: how many, the first and last, and the peaks (most client
-- sessions, most active, most waiting for a lock, the oldest transaction) with when.
SELECT
    count(*)                                                        AS snapshots,
    min(taken_at)                                                   AS first_at,
    max(taken_at)                                                   AS last_at,
    max(sessions)                                                   AS peak_sessions,
    (array_agg(taken_at ORDER BY sessions DESC, taken_at))[1]       AS peak_sessions_at,
    max(active)                                                     AS peak_active,
    max(waiting)                                                    AS peak_waiting,
    (array_agg(taken_at ORDER BY waiting DESC, taken_at))[1]        AS peak_waiting_at,
    max(longest_transaction_s)                                      AS longest_transaction_s
FROM ops.activity_snapshots
WHERE taken_at BETWEEN %(from)s AND %(to)s;

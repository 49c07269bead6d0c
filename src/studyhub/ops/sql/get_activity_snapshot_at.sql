-- The newest activity snapshot taken at or before a moment (its counts).
SELECT taken_at, max_connections, sessions, active, idle, idle_in_transaction, other, waiting,
       blocked_chains, sampled, longest_transaction_s
FROM ops.activity_snapshots
WHERE taken_at <= %(at)s
ORDER BY taken_at DESC
LIMIT 1;

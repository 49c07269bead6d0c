-- The wait events sessions were seen in most over a time range (active sessions: an idle
-- one's "ClientRead" is not a wait), with how many distinct sessions.
SELECT wait_event_type, wait_event, count(*) AS samples, count(DISTINCT pid) AS sessions
FROM ops.activity_samples
WHERE taken_at BETWEEN %(from)s AND %(to)s
  AND wait_event_type IS NOT NULL AND state = 'active'
GROUP BY wait_event_type, wait_event
ORDER BY count(*) DESC, wait_event_type, wait_event
LIMIT %(limit)s;

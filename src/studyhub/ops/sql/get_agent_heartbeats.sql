-- Every agent's newest heartbeat for a profile, and its age in seconds by this server's clock.
SELECT agent, profile, host, pid, started_at, beat_at,
       extract(epoch FROM now() - beat_at)::float8 AS age_s
  FROM ops.agent_heartbeats
 WHERE profile = %(profile)s
 ORDER BY agent

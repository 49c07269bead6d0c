-- The newest heartbeat of every agent watching this profile, and its age by this server's clock
-- (the agent's clock may differ; now() is the one both sides share).
SELECT agent,
       host,
       pid,
       started_at,
       beat_at,
       extract(epoch FROM now() - beat_at)::float8 AS age_s
FROM ops.agent_heartbeats
WHERE profile = %(profile)s
ORDER BY agent;

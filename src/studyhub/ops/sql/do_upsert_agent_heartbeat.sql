-- The agent's sign of life for one profile: one row per (agent, profile), replaced each beat.
INSERT INTO ops.agent_heartbeats (agent, profile, host, pid, started_at, beat_at)
VALUES (%(agent)s, %(profile)s, %(host)s, %(pid)s, %(started_at)s, now())
ON CONFLICT (agent, profile) DO UPDATE
   SET host = EXCLUDED.host, pid = EXCLUDED.pid, started_at = EXCLUDED.started_at,
       beat_at = EXCLUDED.beat_at
RETURNING beat_at

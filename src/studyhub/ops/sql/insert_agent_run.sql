-- One finished run of one agent job (ok, failed, timeout, cancelled, missed).
INSERT INTO ops.agent_runs (agent, profile, job, started_at, finished_at, duration_s, outcome, detail)
VALUES (%(agent)s, %(profile)s, %(job)s, %(started_at)s, %(finished_at)s, %(duration_s)s,
        %(outcome)s, %(detail)s)

-- The newest run of each job of each agent on this database's profile(s), with how many of its
-- runs in the last day did not end ok.
SELECT DISTINCT ON (r.agent, r.profile, r.job)
       r.agent, r.profile, r.job, r.started_at, r.finished_at, r.duration_s, r.outcome, r.detail,
       (SELECT count(*) FROM ops.agent_runs f
         WHERE f.agent = r.agent AND f.profile = r.profile AND f.job = r.job
           AND f.outcome <> 'ok' AND f.started_at > now() - interval '1 day') AS not_ok_last_day
  FROM ops.agent_runs r
 WHERE r.profile = %(profile)s
 ORDER BY r.agent, r.profile, r.job, r.started_at DESC, r.id DESC

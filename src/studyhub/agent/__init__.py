"""``studyhub agent``: the long-running process that runs the runbook on a schedule (doctor,
history sampling, statement and size capture, backups, prune, drills), keeps the incident
history, raises alerts and serves metrics. It sits between the renderers and ``ops``: it calls
ops functions and hands their results to its hooks (alerts, metrics); the CLI starts it."""

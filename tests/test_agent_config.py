"""The ``[agent]`` table: default jobs, schedules checked by croniter, secret-looking and unknown
keys refused in one line (by the loader and by the CLI), next run times."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from studyhub.agent.config import due_now, load_agent_config, next_run, parse_agent_config
from studyhub.agent.scheduler import Slots
from studyhub.errors import ConfigError


def write(tmp_path, text: str):
    path = tmp_path / "studyhub.toml"
    path.write_text(text)
    return path


def test_defaults_give_the_reading_jobs_and_no_writing_job(tmp_path):
    cfg = load_agent_config(write(tmp_path, "[agent]\nname = 'a1'\n[agent.history]\n"
                                            "sample_every_s = 3\n"))
    assert cfg.name == "a1" and cfg.profiles == ["local"]
    assert {n: (j.kind, j.every_s) for n, j in cfg.jobs.items()} == {
        "doctor": ("doctor", 60), "sample": ("sample", 3), "prune_history": ("prune_history", 3600),
        "capture": ("capture", 300)}


def test_a_configured_job_keeps_its_default_schedule_and_a_second_backup_has_a_kind(tmp_path):
    cfg = load_agent_config(write(tmp_path, """
[agent.jobs.doctor]
timeout_s = 5
[agent.jobs.backup]
schedule = "0 3 * * *"
[agent.jobs.backup_s3]
kind = "backup"
every_s = 86400
target = "s3://bucket/prefix"
"""))
    assert (cfg.jobs["doctor"].every_s, cfg.jobs["doctor"].effective_timeout_s) == (60, 5)
    assert cfg.jobs["backup"].schedule == "0 3 * * *" and cfg.jobs["backup"].writes
    assert cfg.jobs["backup_s3"].kind == "backup" and cfg.jobs["backup_s3"].target.startswith("s3")


@pytest.mark.parametrize("text, says", [
    ('[agent.jobs.doctor]\nschedule = "61 * * * *"', "jobs.doctor.schedule: not a cron expression"),
    ('[agent.jobs.backup]\ntarget = "/x"', "jobs.backup: needs a schedule"),
    ('[agent.jobs.doctor]\nschedule = "* * * * *"\nevery_s = 5', "not both"),
    ('[agent.jobs.vacuum]\nevery_s = 5', "unknown kind 'vacuum'"),
    ('[agent]\nheartbeat_evry_s = 5', "heartbeat_evry_s: Extra inputs are not permitted"),
    ('[agent.jobs.doctor]\nevry_s = 5', "jobs.doctor.evry_s: Extra inputs"),
    ('[agent]\nprofiles = ["prod"]', "unknown profile(s) prod"),
    ('[agent.alerts.email]\npassword = "hunter2"', "[agent.alerts.email] password: secrets never"),
    ('[agent.metrics]\ntoken = "s3cr3t"', "[agent.metrics] token: secrets never"),
])
def test_bad_configuration_is_one_clear_line(tmp_path, text, says):
    with pytest.raises(ConfigError) as err:
        load_agent_config(write(tmp_path, text))
    message = str(err.value)
    assert says in message and "\n" not in message
    assert "hunter2" not in message and "s3cr3t" not in message


def test_file_references_to_secrets_are_allowed():
    # the secret's place (a 0600 file, an environment variable), not the secret
    parse_agent_config({"metrics": {"token_file": "/etc/studyhub/token"}})


def test_the_cli_refuses_a_bad_config_in_one_line_and_changes_nothing(tmp_path, cli):
    path = write(tmp_path, '[agent.jobs.doctor]\nschedule = "every minute"')
    for command in (("jobs",), ("status",), ("run", "--once")):
        r = cli("agent", *command, "--config", path)
        assert r.exit_code == 1
        assert r.stderr.strip().splitlines() == [
            "error: [agent] jobs.doctor.schedule: not a cron expression: 'every minute' "
            "(e.g. \"0 3 * * *\")"]
    assert list(tmp_path.iterdir()) == [path]  # no state directory, nothing written


def test_jobs_lists_schedules_and_next_runs(tmp_path, cli):
    path = write(tmp_path, '[agent]\nname = "x"\n[agent.jobs.backup]\nschedule = "30 2 * * *"\n')
    r = cli("agent", "jobs", "--json", "--config", path)
    assert r.exit_code == 0, r.stderr
    import json

    jobs = {j["job"]: j for j in json.loads(r.stdout)["jobs"]}
    runs = [datetime.fromisoformat(t).astimezone() for t in jobs["backup"]["next_runs"]]
    assert len(runs) == 3 and all((t.hour, t.minute) == (2, 30) for t in runs)
    assert runs == sorted(runs) and len(set(runs)) == 3
    assert jobs["doctor"]["every_s"] == 60 and jobs["backup"]["timeout_s"] == 6 * 3600


def test_next_run_and_due_now():
    cfg = parse_agent_config({"jobs": {"backup": {"schedule": "*/15 * * * *"}}})
    t = datetime(2026, 12, 2, 9, 41, 10, tzinfo=timezone.utc)
    nxt = next_run(cfg.jobs["backup"], t)
    assert nxt > t and nxt.minute % 15 == 0 and (nxt - t).total_seconds() <= 15 * 60
    assert due_now(cfg.jobs["doctor"], t)  # every_s jobs: always due for --once
    assert due_now(cfg.jobs["backup"], nxt) and not due_now(cfg.jobs["backup"], t)


class _Busy:
    alive = True


def test_slots_record_a_run_due_while_the_previous_runs_as_missed_and_do_not_stack():
    cfg = parse_agent_config({"jobs": {"doctor": {"every_s": 10}}})
    start = datetime(2026, 12, 2, 9, 0, 0, tzinfo=timezone.utc)
    slots = Slots({"doctor": cfg.jobs["doctor"]}, start)
    go, missed = slots.due(start)
    assert [s.name for s in go] == ["doctor"] and missed == []
    go[0].run = _Busy()  # still running
    later = start.replace(second=35)  # three due times passed while it ran
    go, missed = slots.due(later)
    assert go == [] and [s.name for s in missed] == ["doctor"]  # one missed, not three
    assert slots.slots["doctor"].next_due == start.replace(second=40)  # no drift, no backlog
    slots.slots["doctor"].run = None
    go, missed = slots.due(start.replace(second=40))
    assert [s.name for s in go] == ["doctor"]

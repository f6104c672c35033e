"""A restic backup run dies half way (SIGKILL, the way the OOM killer ends it); the agent
sees the backup unit fail, runs it again through RB-SERVICE-001, and the re-run leaves
a new snapshot in the repository. The incident resolves on the job's own result.

The machine provides restic-backups-clinic.service as NixOS's services.restic.backups
makes it (a oneshot configured by RESTIC_* variables in its environment) and a polkit
rule that lets the agent's user start it. The repository and password are read from the
unit, so the same code runs on the bench (tests/bench/backup/) and in vm-tests/backup.nix.
"""

from __future__ import annotations

import json
import shlex

from .common import acted_runs, config, describe, incidents_for, reset, resolved_and_settled, wait_until

UNIT = "restic-backups-clinic.service"

# The `restic backup` process of the unit, not `restic cat config` / `restic snapshots`
# of its start-up step (POSIX ERE, as pkill takes it; the path may be a store path or a
# wrapper's `.restic-wrapped`).
BACKUP_PROCESS = "^[^ ]*restic[^ ]* backup"


def restic_env(machine) -> str:
    """`VAR=value …` for restic, taken from the unit's own environment."""
    env: dict[str, str] = {}
    for word in shlex.split(machine.succeed(f"systemctl show -P Environment {UNIT}")):
        key, _, value = word.partition("=")
        env[key] = value
    if "RESTIC_REPOSITORY" not in env and "RESTIC_REPOSITORY_FILE" in env:
        env["RESTIC_REPOSITORY"] = machine.succeed(f"cat {shlex.quote(env['RESTIC_REPOSITORY_FILE'])}").strip()
    assert "RESTIC_REPOSITORY" in env and "RESTIC_PASSWORD_FILE" in env, \
        f"{UNIT} does not name its repository and password file in its environment: {env}"
    return " ".join(f"{k}={shlex.quote(env[k])}" for k in ("RESTIC_REPOSITORY", "RESTIC_PASSWORD_FILE"))


def snapshot_ids(machine, env: str) -> list[str]:
    out = machine.succeed(f"env {env} restic snapshots --json --no-lock --no-cache")
    return [s["id"] for s in json.loads(out) or []]


def scenario_backup_failure_is_rerun(machine) -> None:
    reset(machine, config(pattern=UNIT))
    # One good run first: the repository exists (the unit initialises it) and the
    # count of snapshots before the failure is known.
    machine.succeed(f"systemctl start {UNIT}")
    env = restic_env(machine)
    before = snapshot_ids(machine, env)
    assert before, f"the first run of {UNIT} made no snapshot"

    # Start the backup and kill its `restic backup` process as soon as it exists
    # (restic spends its first few hundred milliseconds deriving the repository key,
    # so the kill lands before any snapshot is written).
    machine.succeed(f"systemctl start --no-block {UNIT}")
    machine.succeed(
        "for i in $(seq 1 3000); do "
        f"pkill -KILL -f {shlex.quote(BACKUP_PROCESS)} && exit 0; sleep 0.005; "
        "done; echo 'restic backup never started' >&2; exit 1")

    incident = wait_until(lambda: resolved_and_settled(machine, UNIT), 60, f"the {UNIT} incident to be resolved")
    runs = acted_runs(incident)
    assert [r["outcome"] for r in runs] == ["success"], \
        f"one re-run of the backup, successful by its own result: {describe(incident)}"
    assert runs[0]["runbook"] == "RB-SERVICE-001", describe(incident)
    assert machine.get_unit_info(UNIT)["Result"] == "success"

    after = snapshot_ids(machine, env)
    new = [s for s in after if s not in before]
    assert len(new) == 1, f"the re-run should add exactly one snapshot: before {before}, after {after}"
    machine.succeed(f"env {env} restic check --no-cache")
    assert len(incidents_for(machine, UNIT)) == 1, "one failure, one incident"

"""A oneshot job (the shape of a nightly backup unit) fails once; the agent re-runs it,
and the run counts as a success because the job's own result is success, although the
unit is inactive afterwards as a oneshot should be."""

from __future__ import annotations

from .common import acted_runs, reset, resolved_and_settled, wait_until

UNIT = "demo-oneshot.service"
FLAG = "/run/demo-oneshot-fail"

# /run/systemd/system is writable on every systemd host (on NixOS /etc/systemd is not).
UNIT_TEXT = f"""[Unit]
Description=Demo oneshot job that fails once when {FLAG} exists
[Service]
Type=oneshot
ExecStart=/bin/sh -c 'if [ -e {FLAG} ]; then rm -f {FLAG}; echo transient failure; exit 1; fi; echo job done'
"""


def scenario_oneshot_failure_is_rerun(machine) -> None:
    machine.succeed(
        "mkdir -p /run/systemd/system",
        f"cat > /run/systemd/system/{UNIT} <<'UNIT'\n{UNIT_TEXT}UNIT",
        "systemctl daemon-reload",
    )
    reset(machine)
    machine.succeed(f"touch {FLAG}")
    machine.fail(f"systemctl start {UNIT}")

    incident = wait_until(lambda: resolved_and_settled(machine, UNIT), 30, f"the {UNIT} incident to be resolved")
    runs = acted_runs(incident)
    assert [r["outcome"] for r in runs] == ["success"], \
        f"one re-run, successful by the job's own result: {incident['runs']}"
    assert machine.get_unit_info(UNIT)["Result"] == "success"
    machine.succeed(f"rm -f /run/systemd/system/{UNIT} && systemctl daemon-reload")

"""The helper unit misbehaves or the agent goes away while it works.

A helper that hangs is stopped by systemd at its start timeout and the run is recorded
`timeout`, in the history and in the sealed evidence. An agent restarted while the
helper works records its run `interrupted`, does not start the helper a second time
for the same decision (the limits of RB-DISK-001 allow one run per hour), and the
incident resolves once the helper that was already running has freed the space."""

from __future__ import annotations

import json
import re

from .common import AGENT, describe, wait_until
from .disk_common import (CACHE, DATA, DISK_ACTED, HELPER_RESULT_DIR, RUNBOOK_DISK, data_config,
                          disk_runs, disk_scenario, exists, fill, free_disk, helper_dropin,
                          helper_starts_since, helper_unit, metric_value, metrics, needs_free_disk,
                          reset_disk, resolved_and_settled, run_evidence, run_finished, step,
                          used_ratio)

OLD = "1 hour ago"
# A distinctive duration, to find the process.
HANG = "sleep 3600"


@needs_free_disk
def scenario_disk_helper_timeout(machine) -> None:
    with disk_scenario(machine):
        cursor = reset_disk(machine, data_config(free_disk(timeout="3s", step_timeout="2s")))
        # A bare command name: systemd finds it on Debian and on NixOS alike.
        helper_dropin(machine, f"[Service]\nExecStartPre={HANG}\nTimeoutStartSec=3s\n")
        unit = helper_unit(machine, DATA)
        fill(machine, f"{CACHE}/old-blob.bin", 60, age=OLD)
        assert used_ratio(machine, DATA) > 0.9

        # systemd gives up on the start after 3 s; the agent would after 3 + 30 s.
        incident = wait_until(lambda: run_finished(machine, DATA), 50,
                              f"a finished run of {RUNBOOK_DISK} on {DATA}")
        runs = disk_runs(incident)
        assert runs[0]["outcome"] == "timeout", describe(incident)
        acted = [r for r in runs if r["outcome"] in DISK_ACTED]
        assert len(acted) == 1, f"one helper run: {describe(incident)}"

        # The helper was stopped at its timeout: systemd says so, nothing of it is left.
        info = machine.get_unit_info(unit)
        assert info["Result"] == "timeout", f"{unit}: Result={info['Result']} ActiveState={info['ActiveState']}"
        machine.wait_until_succeeds(f"! pgrep -f '^{HANG}$'", timeout=10)
        assert helper_starts_since(machine, unit, cursor) == 1
        # It never reached its ExecStart: nothing was deleted and no result was written.
        assert exists(machine, f"{CACHE}/old-blob.bin"), "the helper timed out before deleting anything"
        name = unit.removeprefix("msp-agent-free-disk@").removesuffix(".service")
        machine.fail(f"test -e {HELPER_RESULT_DIR}/{name}.json")

        body = run_evidence(machine, runs[0]["run_id"])
        assert body["outcome"] == "timeout", body
        started = step(body, "start_helper")
        assert "timeout" in json.dumps(started), f"the start_helper step does not say it timed out: {started}"
        n = metric_value(metrics(machine), "msp_agent_remediations_total", runbook=RUNBOOK_DISK, outcome="timeout")
        assert n == 1, f"msp_agent_remediations_total{{runbook={RUNBOOK_DISK},outcome=timeout}} is {n}"


def _helper_working(machine, unit: str):
    """The helper's InvocationID while it is starting (in its slow ExecStartPre)."""
    info = machine.get_unit_info(unit)
    return info["InvocationID"] if info["ActiveState"] == "activating" and info["InvocationID"] else None


@needs_free_disk
def scenario_disk_agent_restart(machine) -> None:
    limits = free_disk(max_runs=1, window="1h", min_interval="10m")
    with disk_scenario(machine):
        # SIGTERM waits 1 s for a run in flight, then the run is recorded interrupted.
        cursor = reset_disk(machine, data_config(limits, agent_extra='shutdown_grace = "1s"\n'))
        # A helper that takes 8 s before it starts freeing.
        helper_dropin(machine, "[Service]\nExecStartPre=sleep 8\n")
        unit = helper_unit(machine, DATA)
        fill(machine, f"{CACHE}/fresh.bin", 2)
        fill(machine, f"{CACHE}/old-blob.bin", 58, age=OLD)

        invocation = wait_until(lambda: _helper_working(machine, unit), 30, f"{unit} to be working")
        machine.succeed(f"systemctl restart {AGENT}")
        machine.wait_for_unit(AGENT, timeout=30)
        assert machine.get_unit_property(unit, "InvocationID") == invocation, \
            f"{unit} was started again or stopped by the agent's restart"

        incident = wait_until(lambda: resolved_and_settled(machine, DATA), 60,
                              f"the {DATA} incident to resolve after the agent came back")
        runs = disk_runs(incident)
        acted = [r for r in runs if r["outcome"] in DISK_ACTED]
        assert [r["outcome"] for r in acted] == ["interrupted"], \
            f"the run cut short by the restart is recorded interrupted and not redone: {describe(incident)}"
        # Anything else is a decision of the limits, not an action.
        assert all(r["outcome"] == "rate_limited" for r in runs if r not in acted), describe(incident)

        starts = helper_starts_since(machine, unit, cursor)
        assert starts == 1, f"{unit} was started {starts} times for one decision"
        assert machine.get_unit_property(unit, "InvocationID") == invocation
        # The one helper run did the work, once.
        name = unit.removeprefix("msp-agent-free-disk@").removesuffix(".service")
        result = json.loads(machine.succeed(f"cat {HELPER_RESULT_DIR}/{name}.json"))
        assert result["invocation_id"] == invocation, (result["invocation_id"], invocation)
        assert not exists(machine, f"{CACHE}/old-blob.bin")
        assert exists(machine, f"{CACHE}/fresh.bin")
        assert used_ratio(machine, DATA) < 0.8

        body = run_evidence(machine, acted[0]["run_id"])
        assert body["outcome"] == "interrupted", body


def scenario_disk_helper_hardening(machine) -> None:
    """The helper runs as root, so its sandbox is what limits it: `systemd-analyze
    security` rates the instance for /srv/data at 2.0 or lower, and it may not reach
    the network."""
    unit = helper_unit(machine, DATA)
    out = machine.succeed(f"systemd-analyze security --no-pager {unit} 2>&1")
    m = re.search(r"Overall exposure level for \S+: ([0-9.]+)", out)
    assert m, f"no overall exposure level in:\n{out[-2000:]}"
    exposure = float(m.group(1))
    machine.log(f"systemd-analyze security {unit}: exposure {exposure}")
    assert exposure <= 2.0, f"exposure {exposure} is above the goal of 2.0:\n{out[-3000:]}"
    props = machine.succeed(
        f"systemctl show -p PrivateNetwork -p NoNewPrivileges -p ProtectSystem -p ReadWritePaths {unit}")
    for want in ("PrivateNetwork=yes", "NoNewPrivileges=yes", "ProtectSystem=strict", DATA):
        assert want in props, f"{want} not in the helper's properties:\n{props}"

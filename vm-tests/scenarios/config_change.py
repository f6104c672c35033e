"""The configuration stops watching a unit that has an open incident: at its next start
the agent closes that incident, saying why, instead of leaving it open for ever (nothing
would observe the unit again), and does not touch the unit."""

from __future__ import annotations

from .common import AGENT, config, describe, incidents_for, reset, unit_starts_since, wait_until, write_config
from .crash_loop import escalated

UNIT = "demo-crashloop.service"


def scenario_unwatched_unit_incident_is_closed(machine) -> None:
    cursor = reset(machine, config(max_runs=1))
    machine.succeed(f"systemctl start {UNIT}")
    incident = wait_until(lambda: escalated(machine, UNIT), 60, f"the {UNIT} incident to need a human")[0]

    # The operator narrows the configuration to demo.service and restarts the agent.
    machine.succeed(f"systemctl stop {AGENT}")
    write_config(machine, config(max_runs=1, pattern="demo.service"))
    machine.succeed(f"systemctl start {AGENT}")
    machine.wait_for_unit(AGENT, timeout=30)

    def closed():
        found = incidents_for(machine, UNIT)
        return found if found and found[0]["state"] == "resolved" else None

    found = wait_until(closed, 30, f"the {UNIT} incident to be closed")
    assert len(found) == 1, [describe(i) for i in found]
    assert found[0]["id"] == incident["id"], f"the same incident is closed: {describe(found[0])}"
    assert "no longer watched" in found[0]["reason"], found[0]["reason"]
    assert len(found[0]["runs"]) == len(incident["runs"]), \
        f"closing runs nothing: {describe(incident)} -> {describe(found[0])}"
    # One start by the test and one by the single run; none after the change.
    assert unit_starts_since(machine, UNIT, cursor) == 2
    status = machine.succeed("msp-agent status")
    assert UNIT not in status, f"`msp-agent status` still lists {UNIT}:\n{status}"

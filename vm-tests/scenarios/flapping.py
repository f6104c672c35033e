"""Flap detection survives an agent restart: two kills before the restart and two after
make four state changes within the flap window, so the fourth kill's incident opens as
flapping and remediation is suppressed, exactly as without the restart."""

from __future__ import annotations

from .common import AGENT, config, describe, incidents_for, reset, wait_until

UNIT = "demo.service"
THRESHOLD = 4


def kill_and_heal(machine, n: int) -> None:
    machine.succeed(f"systemctl kill --kill-who=main -s KILL {UNIT}")

    def healed():
        found = incidents_for(machine, UNIT)
        # The run ends after its settle period, which outlasts the resolve hold: the
        # next kill must not land inside it (a change during a run is the run's own).
        return len(found) == n and found[0]["state"] == "resolved" and \
            [r["outcome"] for r in found[0].get("runs", [])] == ["success"]

    wait_until(healed, 30, f"incident {n} of {UNIT} to be healed, its run finished and resolved")


def scenario_flapping_survives_agent_restart(machine) -> None:
    reset(machine, config(flap_threshold=THRESHOLD, max_runs=10))
    # Each kill is one counted change (active -> failed); the recovery is the agent's
    # own doing and does not count.
    kill_and_heal(machine, 1)
    kill_and_heal(machine, 2)
    machine.succeed(f"systemctl restart {AGENT}")
    machine.wait_for_unit(AGENT, timeout=30)
    kill_and_heal(machine, 3)

    machine.succeed(f"systemctl kill --kill-who=main -s KILL {UNIT}")

    def suppressed():
        found = incidents_for(machine, UNIT)
        if len(found) == 4 and any(r["outcome"] == "suppressed" for r in found[0].get("runs", [])):
            return found[0]
        return None

    incident = wait_until(suppressed, 30, f"the fourth {UNIT} incident to be flapping, remediation suppressed")
    assert incident["state"] == "flapping", describe(incident)
    assert [r["outcome"] for r in incident["runs"]] == ["suppressed"], describe(incident)
    assert machine.get_unit_info(UNIT)["ActiveState"] == "failed", "a flapping unit is left alone"

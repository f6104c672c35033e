"""A crash loop in which the agent itself is restarted after its first run: the rate
limit and the open incident live in its state, so the restart changes nothing."""

from __future__ import annotations

from .common import AGENT, acted_runs, describe, incidents_for, reset, unit_starts_since, wait_until
from .crash_loop import MAX_RUNS, assert_left_alone, escalated


def scenario_crash_loop_survives_agent_restart(machine) -> None:
    cursor = reset(machine)
    unit = "demo-crashloop.service"

    machine.succeed(f"systemctl start {unit}")

    def first_run():
        found = incidents_for(machine, unit)
        return found if found and acted_runs(found[0]) else None

    wait_until(first_run, 30, f"the first restart of {unit}")
    machine.succeed(f"systemctl restart {AGENT}")
    machine.wait_for_unit(AGENT, timeout=30)

    found = wait_until(lambda: escalated(machine, unit), 60, f"the {unit} incident to need a human")
    assert len(found) == 1, f"the restarted agent opened a second incident: {[describe(i) for i in found]}"
    open_now = incidents_for(machine, unit, all=False)
    assert len(open_now) == 1, f"one open incident for {unit}; got {[describe(i) for i in open_now]}"
    incident = found[0]
    runs = acted_runs(incident)
    assert 1 <= len(runs) <= MAX_RUNS, f"at most {MAX_RUNS} runs across the agent restart: {describe(incident)}"
    starts = unit_starts_since(machine, unit, cursor)
    assert starts <= 1 + MAX_RUNS, f"{unit} started {starts} times, at most {1 + MAX_RUNS} allowed"

    assert_left_alone(machine, unit, incident, cursor, starts)

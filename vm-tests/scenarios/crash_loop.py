"""A service that keeps crashing: the agent tries max_runs times, then calls a human
and leaves the unit alone."""

from __future__ import annotations

import time

from .common import acted_runs, describe, incidents_for, reset, unit_starts_since, wait_until

MAX_RUNS = 3
QUIET = 8  # seconds after escalation in which nothing more may happen


def escalated(machine, unit: str):
    found = incidents_for(machine, unit)
    return found if found and found[0]["state"] == "needs_human" else None


def assert_left_alone(machine, unit: str, incident: dict, cursor: str, starts: int) -> None:
    """After escalation: no new run, no new start, the incident still waits for a human."""
    runs_before = len(incident.get("runs", []))
    time.sleep(QUIET)
    found = incidents_for(machine, unit)
    assert len(found) == 1, f"one incident for {unit}; got {[describe(i) for i in found]}"
    after = found[0]
    assert after["state"] == "needs_human", f"{QUIET} s after escalation: {describe(after)}"
    assert len(after.get("runs", [])) == runs_before, \
        f"runs recorded after escalation: {describe(incident)} -> {describe(after)}"
    assert unit_starts_since(machine, unit, cursor) == starts, \
        f"{unit} was started again after escalation"
    assert machine.get_unit_info(unit)["ActiveState"] == "failed"


def scenario_crash_loop_escalates(machine) -> None:
    cursor = reset(machine)
    unit = "demo-crashloop.service"

    machine.succeed(f"systemctl start {unit}")

    found = wait_until(lambda: escalated(machine, unit), 60, f"the {unit} incident to need a human")
    assert len(found) == 1, f"a crash loop is one incident; got {[describe(i) for i in found]}"
    incident = found[0]
    runs = acted_runs(incident)
    assert len(runs) == MAX_RUNS, f"expected exactly {MAX_RUNS} runs: {describe(incident)}"
    assert all(r["outcome"] == "failed" for r in runs), describe(incident)
    # One start by the test, one per run.
    starts = unit_starts_since(machine, unit, cursor)
    assert starts == 1 + MAX_RUNS, f"{unit} started {starts} times, expected {1 + MAX_RUNS}"

    assert_left_alone(machine, unit, incident, cursor, starts)

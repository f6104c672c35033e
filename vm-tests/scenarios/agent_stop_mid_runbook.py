"""The agent is stopped in the middle of a runbook: SIGTERM lets the run finish and
records it; SIGKILL leaves it to the next start, which records it as interrupted and
does not restart the unit again when it is already healthy."""

from __future__ import annotations

from .common import AGENT, config, incidents_for, reset, unit_starts_since, wait_until


def _running_run(machine, unit: str):
    found = incidents_for(machine, unit)
    if found and any(r["outcome"] == "running" for r in found[0].get("runs", [])):
        return found[0]
    return None


def _settled(machine, unit: str):
    found = incidents_for(machine, unit)
    if found and found[0]["state"] == "resolved" and all(
            r["outcome"] != "running" for r in found[0].get("runs", [])):
        return found[0]
    return None


def scenario_sigterm_finishes_runbook_in_flight(machine) -> None:
    reset(machine, config(settle="5s"))
    machine.succeed("systemctl kill --kill-who=main -s KILL demo.service")
    wait_until(lambda: _running_run(machine, "demo.service"), 20, "a run of RB-SERVICE-001 in flight")

    machine.succeed(f"systemctl stop {AGENT}")  # SIGTERM; the unit's stop timeout is longer than settle
    found = incidents_for(machine, "demo.service")
    runs = found[0]["runs"]
    assert len(runs) == 1 and runs[0]["outcome"] == "success", \
        f"the run in flight should have finished and been recorded before the agent exited: {runs}"

    machine.succeed(f"systemctl start {AGENT}")
    incident = wait_until(lambda: _settled(machine, "demo.service"), 30, "the incident to resolve after the restart")
    assert len(incident["runs"]) == 1, f"a finished run must not be repeated: {incident['runs']}"


def scenario_sigkill_mid_runbook_not_done_twice(machine) -> None:
    cursor = reset(machine, config(settle="5s"))
    machine.succeed("systemctl kill --kill-who=main -s KILL demo.service")
    wait_until(lambda: _running_run(machine, "demo.service"), 20, "a run of RB-SERVICE-001 in flight")
    # The restart job is done within milliseconds; the run is now in its settle period.
    machine.wait_for_unit("demo.service", timeout=10)

    machine.succeed(f"systemctl kill --kill-who=main -s KILL {AGENT}")
    machine.wait_until_succeeds(f"systemctl is-active {AGENT}", timeout=30)  # Restart=on-failure

    incident = wait_until(lambda: _settled(machine, "demo.service"), 40,
                          "the incident to resolve after the agent came back")
    outcomes = [r["outcome"] for r in incident["runs"]]
    assert outcomes == ["interrupted"], \
        f"the run cut short by SIGKILL is recorded as interrupted and not redone: {outcomes}"
    starts = unit_starts_since(machine, "demo.service", cursor)
    assert starts == 1, f"demo.service was started {starts} times after the kill; once is the fix, more is work done twice"

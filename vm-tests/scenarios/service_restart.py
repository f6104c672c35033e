"""A service is killed; the agent restarts it and closes the incident."""

from __future__ import annotations

from .common import (CHECK_UNIT_FAILED, RUNBOOK_RESTART, acted_runs, describe, incidents_for,
                     journal_entries, reset, wait_until)


def scenario_service_restart(machine) -> None:
    reset(machine)
    before = machine.get_unit_info("demo.service")["InvocationID"]

    # Only the main process (the unit has no other): on a cgroup v1 host systemd's walk
    # of the unit's cgroup for other processes can fail with EIO while the killed
    # process exits, and the kill would be reported as failed although it happened.
    machine.succeed("systemctl kill --kill-who=main -s KILL demo.service")

    def finished():
        found = incidents_for(machine, "demo.service")
        if not found or found[0]["state"] != "resolved":
            return None
        # The incident may resolve before the run has finished its settle period.
        return found if all(r["outcome"] != "running" for r in found[0].get("runs", [])) else None

    found = wait_until(finished, 30, "the demo.service incident to be resolved and its run finished")
    assert len(found) == 1, f"one kill, one incident; got {[describe(i) for i in found]}"
    incident = found[0]
    assert incident["check"] == CHECK_UNIT_FAILED, describe(incident)
    assert incident["resolved_at"], f"resolved without resolved_at: {incident}"
    runs = acted_runs(incident)
    assert len(runs) == 1, f"one restart expected: {describe(incident)}"
    assert runs[0]["runbook"] == RUNBOOK_RESTART and runs[0]["outcome"] == "success", describe(incident)

    # The unit runs again, in a new invocation, and it was the agent, not systemd, that
    # restarted it (Restart=no keeps systemd's own counter at zero).
    machine.wait_for_unit("demo.service", timeout=10)
    info = machine.get_unit_info("demo.service")
    assert info["InvocationID"] != before, "demo.service was not restarted"
    assert info["NRestarts"] == "0", f"systemd restarted demo.service itself (NRestarts={info['NRestarts']})"

    # The incident ID is the correlation ID in the agent's journal.
    entries = journal_entries(machine, INCIDENT_ID=str(incident["id"]))
    assert entries, f"`journalctl INCIDENT_ID={incident['id']}` shows nothing"
    assert any(e.get("RUNBOOK") == RUNBOOK_RESTART for e in entries), \
        f"no journal entry of incident {incident['id']} carries RUNBOOK={RUNBOOK_RESTART}"
    assert any(e.get("UNIT") == "demo.service" for e in entries), \
        f"no journal entry of incident {incident['id']} carries UNIT=demo.service"

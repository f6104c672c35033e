"""Two ways an operator holds the agent back: a silence stops remediation of a unit for
a while (the incident still opens, the hold-back is recorded), and dry-run mode records
what would have been done without doing it."""

from __future__ import annotations

import time

from .common import AGENT, config, incidents_for, reset, wait_until


def scenario_silence_stops_remediation(machine) -> None:
    reset(machine)
    out = machine.succeed("msp-agent silence demo.service --for 1h --reason 'maintenance window'")
    assert "demo.service" in out, out
    machine.succeed("systemctl kill --kill-who=main -s KILL demo.service")

    def suppressed():
        found = incidents_for(machine, "demo.service")
        if found and any(r["outcome"] == "suppressed" for r in found[0].get("runs", [])):
            return found[0]
        return None

    incident = wait_until(suppressed, 20, "the silenced remediation to be recorded")
    time.sleep(3)
    incident = incidents_for(machine, "demo.service")[0]
    assert [r["outcome"] for r in incident["runs"]] == ["suppressed"], \
        f"a silenced unit must not be restarted: {incident['runs']}"
    assert incident["state"] == "firing", incident
    machine.fail("systemctl is-active demo.service")
    machine.succeed("systemctl start demo.service")


def scenario_dry_run_records_without_acting(machine) -> None:
    text = config().replace('[agent]\n', '[agent]\ndry_run = true\n')
    reset(machine, text)
    machine.succeed("systemctl kill --kill-who=main -s KILL demo.service")

    def recorded():
        found = incidents_for(machine, "demo.service")
        if found and any(r["outcome"] == "dry_run" for r in found[0].get("runs", [])):
            return found[0]
        return None

    wait_until(recorded, 20, "a dry-run record of RB-SERVICE-001")
    machine.fail("systemctl is-active demo.service")
    status = machine.succeed("msp-agent status")
    assert "dry run:     true" in status, status
    machine.succeed(f"systemctl stop {AGENT}", "systemctl start demo.service")

"""The system bus goes away under the agent: it notices, reconnects, re-reads the
units it watches, and still heals a unit killed afterwards."""

from __future__ import annotations

import json

from .common import AGENT, acted_runs, incidents_for, journal_entries, reset, wait_until


def _bus(machine) -> str:
    status = json.loads(machine.succeed("msp-agent status --json"))
    return status["agent"].get("bus", "")


def scenario_bus_restart_survived(machine) -> None:
    cursor = reset(machine)
    wait_until(lambda: _bus(machine) == "connected", 15, "the agent to report the bus connected")

    machine.succeed("systemctl restart dbus.service")
    machine.wait_for_unit("dbus.service", timeout=30)

    def gap_logged():
        return [e for e in journal_entries(machine, cursor, SYSLOG_IDENTIFIER="msp-agent")
                if "lost the system bus" in str(e.get("MESSAGE", ""))]

    wait_until(gap_logged, 30, "the agent to log the lost bus")
    machine.require_unit_state(AGENT, "active")
    # The heartbeat rewrites the status every few seconds: wait for the reconnect.
    wait_until(lambda: _bus(machine) == "connected", 30, "the agent to reconnect to the bus")

    machine.succeed("systemctl kill --kill-who=main -s KILL demo.service")

    def healed():
        found = incidents_for(machine, "demo.service")
        if found and found[0]["state"] == "resolved" and any(
                r["outcome"] == "success" for r in acted_runs(found[0])):
            return found
        return None

    wait_until(healed, 30, "demo.service to be healed after the bus came back")

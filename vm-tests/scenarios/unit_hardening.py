"""The agent's unit is hardened: `systemd-analyze security` rates its exposure at 2.0
or lower, and the daemon runs as its own unprivileged user."""

from __future__ import annotations

import re

from .common import AGENT, reset


def scenario_unit_hardening(machine) -> None:
    reset(machine)
    out = machine.succeed(f"systemd-analyze security --no-pager {AGENT} 2>&1")
    m = re.search(r"Overall exposure level for \S+: ([0-9.]+)", out)
    assert m, f"no overall exposure level in:\n{out[-2000:]}"
    exposure = float(m.group(1))
    machine.log(f"systemd-analyze security {AGENT}: exposure {exposure}")
    assert exposure <= 2.0, f"exposure {exposure} is above the goal of 2.0:\n{out[-3000:]}"
    pid = machine.succeed(f"systemctl show -p MainPID --value {AGENT}").strip()
    user = machine.succeed(f"ps -o user= -p {pid}").strip()
    assert user == "msp-agent", f"the agent runs as {user!r}, not as msp-agent"

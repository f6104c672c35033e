"""The polkit rule installed for the agent lets its user restart the units the config
may remediate and nothing else."""

from __future__ import annotations

from .common import reset

BUSCTL = ("setpriv --reuid=msp-agent --regid=msp-agent --init-groups "
          "busctl call org.freedesktop.systemd1 /org/freedesktop/systemd1 "
          "org.freedesktop.systemd1.Manager {method} ss {unit} replace 2>&1")


def scenario_polkit_rule_scopes_restarts(machine) -> None:
    reset(machine)
    before = machine.get_unit_info("demo.service")["InvocationID"]

    status, out = machine.execute(BUSCTL.format(method="RestartUnit", unit="demo.service"))
    assert status == 0, f"the agent's user may not restart demo.service: {out}"
    machine.wait_for_unit("demo.service", timeout=10)
    assert machine.get_unit_info("demo.service")["InvocationID"] != before

    machine.succeed("systemctl start unwatched.service")
    for method, unit in (("RestartUnit", "unwatched.service"),
                         ("StopUnit", "demo.service")):
        status, out = machine.execute(BUSCTL.format(method=method, unit=unit))
        assert status != 0, f"the agent's user may {method} {unit}"
        assert "Interactive authentication required" in out, f"{method} {unit}: {out}"

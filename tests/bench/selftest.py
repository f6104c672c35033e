#!/usr/bin/env python3
"""Checks the bench itself, without the agent: the container boots, the demo units
behave as the scenarios assume, and polkit in the container scopes an unprivileged
user's D-Bus calls the way the agent's rule relies on.

Run as root: python3 tests/bench/selftest.py   (about 10 s once the root is cached)
Ends with a line "N passed, M failed"; exits non-zero if anything failed.
"""

from __future__ import annotations

import sys
import time
import traceback
from pathlib import Path

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench  # noqa: E402
from nspawn_driver import subtest  # noqa: E402

# Written for this check only; the agent prints its own with `msp-agent polkit-rule`.
TEST_RULE = """\
polkit.addRule(function(action, subject) {
    if (action.id == "org.freedesktop.systemd1.manage-units" &&
        subject.user == "msp-agent" &&
        action.lookup("unit") == "demo.service" &&
        (action.lookup("verb") == "restart" || action.lookup("verb") == "start")) {
        return polkit.Result.YES;
    }
});
"""


def check_boot(machine):
    state = machine.succeed("systemctl is-system-running").strip()
    assert state == "running", f"system state {state}"
    for tool in ("busctl", "journalctl", "sqlite3", "python3", "restic", "setpriv", "pgrep", "ss"):
        machine.succeed(f"command -v {tool}")
    machine.succeed("test -d /var/log/journal")
    for mount, size in (("/srv/data", 64), ("/srv/archive", 16)):
        out = machine.succeed(f"findmnt -n -b -o FSTYPE,SIZE {mount}").split()
        assert out == ["tmpfs", str(size << 20)], f"{mount}: {out}"


def check_demo_units(machine):
    machine.wait_for_unit("demo.service", timeout=10)
    machine.succeed("systemctl kill -s KILL demo.service")
    machine.wait_until_succeeds("systemctl is-failed demo.service", timeout=10)
    info = machine.get_unit_info("demo.service")
    assert info["Result"] == "signal", info["Result"]
    assert info["NRestarts"] == "0", "systemd restarted demo.service itself"
    machine.succeed("systemctl start demo.service")

    machine.succeed("systemctl start demo-crashloop.service")
    machine.wait_until_succeeds("systemctl is-failed demo-crashloop.service", timeout=10)
    assert machine.get_unit_info("demo-crashloop.service")["Result"] == "exit-code"
    machine.succeed("systemctl reset-failed demo-crashloop.service")


def check_polkit_scopes_restarts(machine):
    bench.create_agent_user(machine)
    machine.write_file(bench.POLKIT_RULE_PATH, TEST_RULE)
    before = machine.get_unit_property("demo.service", "InvocationID")
    # polkitd reads new rules asynchronously: wait for the allowed call to go through.
    deadline = time.monotonic() + 15
    while True:
        status, out = bench.busctl_as_agent(machine, "RestartUnit", "demo.service")
        if status == 0:
            break
        assert time.monotonic() < deadline, f"RestartUnit demo.service as msp-agent refused: {out}"
        time.sleep(0.3)
    machine.wait_for_unit("demo.service", timeout=10)
    after = machine.get_unit_property("demo.service", "InvocationID")
    assert before != after, "demo.service was not restarted"

    for method, unit in (("RestartUnit", "unwatched.service"), ("StopUnit", "demo.service"),
                         ("StartUnit", "demo-crashloop.service")):
        status, out = bench.busctl_as_agent(machine, method, unit)
        assert status != 0, f"{method} {unit} as msp-agent was allowed"
        assert "Interactive authentication required" in out, out
    machine.succeed(f"rm -f {bench.POLKIT_RULE_PATH}")


def main() -> int:
    passed = failed = 0
    machine = bench.boot("msp-selftest")
    bench.install_demo_units(machine)
    for check in (check_boot, check_demo_units, check_polkit_scopes_restarts):
        try:
            with subtest(check.__name__):
                check(machine)
            print(f"PASS {check.__name__}", flush=True)
            passed += 1
        except Exception:
            traceback.print_exc()
            print(f"FAIL {check.__name__}", flush=True)
            failed += 1
    machine.shutdown()
    print(f"{passed} passed, {failed} failed", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Runs the shared scenarios (vm-tests/scenarios/) against the agent on the nspawn bench.

Boots one container from the cached Debian root (tests/bench/rootfs.sh builds it the
first time), installs the agent built from this repository, the demo units and the
polkit rule, then runs each scenario in turn and prints PASS or FAIL for each. The last
line is always "N passed, M failed"; the exit status is non-zero if any failed.

Usage (as root):
  python3 tests/bench/run-scenarios.py                 # all scenarios
  python3 tests/bench/run-scenarios.py crash_loop      # those whose name contains a word
  python3 tests/bench/run-scenarios.py --build         # cargo build --release first
  python3 tests/bench/run-scenarios.py --keep          # leave the container up on failure
Environment: MSP_AGENT_BIN (the binary to test, default target/release/msp-agent),
MSP_AGENT_UNIT_FILE (default dist/systemd/msp-agent.service).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.dont_write_bytecode = True  # no __pycache__ in the source tree
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent.parent / "vm-tests"))

import bench  # noqa: E402
import scenarios  # noqa: E402
from nspawn_driver import subtest  # noqa: E402
from scenarios import common  # noqa: E402


def dump_agent_state(machine) -> None:
    """What a reader of a failed CI log needs: the agent's status and recent journal."""
    for cmd in ("systemctl status --no-pager msp-agent.service demo.service demo-crashloop.service",
                "msp-agent incidents --all 2>&1",
                "journalctl -q --no-pager -n 60 -u msp-agent.service"):
        try:
            _, out = machine.execute(cmd + " 2>&1", timeout=30)
            print(f"--- {cmd}\n{out.rstrip()}", flush=True)
        except Exception as e:  # the machine itself may be what failed
            print(f"--- {cmd}: {e}", flush=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("only", nargs="*", help="run only scenarios whose name contains one of these")
    ap.add_argument("--build", action="store_true", help="cargo build --release before testing")
    ap.add_argument("--keep", action="store_true", help="leave the container running after a failure")
    args = ap.parse_args()

    selected = [s for s in scenarios.ALL if not args.only or any(w in s.__name__ for w in args.only)]
    if not selected:
        print(f"no scenario matches {args.only}", flush=True)
        print("0 passed, 1 failed", flush=True)
        return 1

    started = time.monotonic()
    if args.build:
        subprocess.run(["cargo", "build", "--release", "--locked"], cwd=bench.REPO, check=True)

    passed = failed = 0
    machine = None
    try:
        machine = bench.boot("msp-scenarios", persistent=args.keep)
        bench.install_demo_units(machine)
        bench.install_agent(machine, common.config())
    except Exception:
        traceback.print_exc()
        print("FAIL bench setup (no scenario ran)", flush=True)
        if machine is not None and not args.keep:
            machine.shutdown()
        print(f"0 passed, {len(selected)} failed", flush=True)
        return 1

    for scenario in selected:
        name = scenario.__name__.removeprefix("scenario_")
        t0 = time.monotonic()
        try:
            with subtest(name):
                scenario(machine)
            passed += 1
            print(f"PASS {name} ({time.monotonic() - t0:.1f} s)", flush=True)
        except Exception:
            failed += 1
            traceback.print_exc()
            dump_agent_state(machine)
            print(f"FAIL {name} ({time.monotonic() - t0:.1f} s)", flush=True)

    if failed and args.keep:
        print(f"container left running: nsenter -t {machine.init_pid} -a bash "
              f"(remove with: kill -KILL {machine.init_pid}; rm -rf {machine.run_dir})", flush=True)
    else:
        machine.shutdown()
    print(f"total {time.monotonic() - started:.0f} s", flush=True)
    print(f"{passed} passed, {failed} failed", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

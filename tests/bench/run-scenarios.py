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
MSP_AGENT_UNIT_FILE (default dist/systemd/msp-agent.service),
MSP_AGENT_EXPECT_FREE_DISK (1 or 0: whether the binary must have RB-DISK-001; default:
whether src/main.rs declares the `free-disk` command).

Disk scenarios that need RB-DISK-001 (`msp-agent free-disk`) run whenever the binary has
it. A binary without it has them reported NOT RUN; they count as failed when the binary
should have had them (the source declares the command), so a stale or incomplete build
cannot pass.
"""

from __future__ import annotations

import argparse
import os
import re
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
from scenarios import common, disk_common  # noqa: E402


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


def free_disk_expected() -> bool:
    """Whether the binary under test should have `msp-agent free-disk`: as
    MSP_AGENT_EXPECT_FREE_DISK says, else whether this tree's CLI declares it."""
    flag = os.environ.get("MSP_AGENT_EXPECT_FREE_DISK")
    if flag is not None:
        return flag not in ("", "0", "no", "false")
    try:
        main_rs = (bench.REPO / "src" / "main.rs").read_text()
    except OSError:
        return False
    return re.search(r"\bFreeDisk\b|\"free-disk\"", main_rs) is not None


S3_BUCKET = "msp-bench-evidence"


def provide_s3_bucket(machine) -> bool:
    """With a loopback S3 server (tests/s3/ceph.sh, MSP_AGENT_S3_ENDPOINT and AWS_* set),
    create an Object Lock bucket and describe it to the machine the way the NixOS module
    does: an [evidence.s3] table in /etc/msp-agent/rendered.toml. Returns False without one."""
    endpoint = os.environ.get("MSP_AGENT_S3_ENDPOINT")
    key, secret = os.environ.get("AWS_ACCESS_KEY_ID"), os.environ.get("AWS_SECRET_ACCESS_KEY")
    if not (endpoint and key and secret):
        return False
    region = os.environ.get("AWS_REGION", "us-east-1")
    r = subprocess.run(
        ["curl", "-sS", "-o", "/dev/stderr", "-w", "%{http_code}", "-X", "PUT",
         "--aws-sigv4", f"aws:amz:{region}:s3", "--user", f"{key}:{secret}",
         "-H", "x-amz-content-sha256: UNSIGNED-PAYLOAD",
         "-H", "x-amz-bucket-object-lock-enabled: true", f"{endpoint}/{S3_BUCKET}"],
        capture_output=True, text=True)
    if r.stdout.strip() not in ("200", "409"):  # 409: it exists already (ours)
        raise RuntimeError(f"cannot create bucket {S3_BUCKET} at {endpoint}: HTTP {r.stdout} {r.stderr}")
    machine.write_file("/etc/msp-agent/s3-credentials",
                       f"[default]\naws_access_key_id = {key}\naws_secret_access_key = {secret}\n", mode=0o640)
    machine.succeed("chgrp msp-agent /etc/msp-agent/s3-credentials")
    machine.write_file("/etc/msp-agent/rendered.toml",
                       f"[evidence.s3]\nbucket = \"{S3_BUCKET}\"\nendpoint = \"{endpoint}\"\n"
                       f"region = \"{region}\"\npath_style = true\n"
                       f"credentials_file = \"/etc/msp-agent/s3-credentials\"\n")
    return True


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
    not_run_failed = 0  # scenarios the binary should have run and could not
    machine = None
    try:
        machine = bench.boot("msp-scenarios", persistent=args.keep)
        bench.install_demo_units(machine)
        bench.install_backup(machine)
        # The polkit rule comes from this config: the demo units and the backup, and,
        # when the binary has RB-DISK-001, the helper of /srv/data.
        patterns = ["demo*.service", "restic-backups-*.service"]
        bench.install_agent(machine, common.config(pattern=patterns))
        if bench.has_free_disk(machine):
            bench.write_config(machine, common.config(pattern=patterns, extra=disk_common.MACHINE_DISKS))
            bench.install_polkit_rule(machine)
        else:
            expected = free_disk_expected()
            dropped = [f for f in selected if getattr(f, "needs_free_disk", False)]
            selected = [f for f in selected if f not in dropped]
            for f in dropped:
                name = f.__name__.removeprefix("scenario_")
                print(f"NOT RUN {name}: `msp-agent free-disk --help` fails, the binary has no RB-DISK-001"
                      + ("; this tree declares it, so it counts as failed" if expected else ""), flush=True)
            if expected:
                not_run_failed = len(dropped)
        if not provide_s3_bucket(machine):
            dropped = [f.__name__ for f in selected if "s3" in f.__name__]
            selected = [f for f in selected if "s3" not in f.__name__]
            for name in dropped:
                print(f"NOT RUN {name}: no S3 server (eval \"$(bash tests/s3/ceph.sh up)\" first)", flush=True)
    except Exception:
        traceback.print_exc()
        print("FAIL bench setup (no scenario ran)", flush=True)
        if machine is not None and not args.keep:
            machine.shutdown()
        print(f"0 passed, {len(selected)} failed", flush=True)
        return 1

    failed += not_run_failed
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

"""The lab behind lab/lab.sh: one long-lived container with the agent installed.

It reuses the bench (tests/bench/): the same cached Debian root, the same driver, the
same install step and demo units. Unlike a bench run, the container stays up between
commands until `down`; its root, console log and PIDs live under /var/tmp/msp-agent-lab.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.dont_write_bytecode = True  # no __pycache__ in the source tree
sys.path.insert(0, str(REPO / "tests" / "bench"))

import bench  # noqa: E402
from nspawn_driver import Machine, MachineError  # noqa: E402

LAB_DIR = Path(os.environ.get("MSP_AGENT_LAB", "/var/tmp/msp-agent-lab"))
NAME = "msp-lab"

# Timings a person can watch: a restart a few seconds after a break, and a second break
# soon after shows the rate limit at work.
LAB_CONFIG = """\
# The lab's config: edit with `lab/lab.sh shell`, then `systemctl restart msp-agent`.
[agent]
state_dir = "/var/lib/msp-agent"

[[watch.units]]
pattern = "demo*.service"
remediate = true

[incidents]
resolve_hold = "2s"

[runbooks.service_restart]
job_timeout = "30s"
settle = "3s"
max_runs = 3
window = "30m"
min_interval = "10s"

[limits]
global_per_hour = 20
"""

# With RB-DISK-001 in the binary: /srv/data (a 64 MB tmpfs) is watched every 2 s and
# freed 5 s after it crosses a threshold, of files older than 30 min in /srv/data/cache;
# like the service restarts, 3 runs per 30 minutes at least 10 s apart.
LAB_DISK_AGENT = 'disk_interval = "2s"\n'
LAB_DISKS = """
[[watch.disks]]
path = "/srv/data"
remediate = true
hold = "5s"

[[watch.disks.clean]]
path = "/srv/data/cache"
older_than = "30m"

[runbooks.free_disk]
max_runs = 3
window = "30m"
min_interval = "10s"
"""

DISK = "/srv/data"
FILL_TO = 0.99


def lab_config(disks: bool) -> str:
    if not disks:
        return LAB_CONFIG
    head, sep, rest = LAB_CONFIG.partition('state_dir = "/var/lib/msp-agent"\n')
    return head + sep + LAB_DISK_AGENT + rest + LAB_DISKS

USAGE = """\
usage: lab/lab.sh COMMAND

  up                       boot the lab and start the agent (builds what is missing)
  break service UNIT       kill UNIT with SIGKILL (try demo.service)
  break crashloop          start demo-crashloop.service, which always fails
  break disk               fill /srv/data to 99 % with an hour-old file in /srv/data/cache
  status                   msp-agent status
  incidents [ARGS]         msp-agent incidents --all [ARGS], e.g. --json
  journal [INCIDENT_ID]    the agent's journal lines for one incident (or its last 50 lines)
  shell [CMD...]           a root shell (or one command) inside the lab
  reset                    forget the agent's state, restart the demo units and the agent
  down                     stop the lab and delete it
"""

NEXT_STEPS = """\
The lab is up: the agent watches demo*.service and restarts what fails.

  lab/lab.sh break service demo.service   # kill it; the agent restarts it in seconds
  lab/lab.sh incidents                     # what it saw and did
  lab/lab.sh journal <INCIDENT_ID>         # its journal lines for one incident
  lab/lab.sh break crashloop               # a unit that keeps failing: 3 tries, then a human
  lab/lab.sh break disk                    # fill /srv/data; RB-DISK-001 frees it
  lab/lab.sh status                        # the agent's own view
  lab/lab.sh shell                         # look around (systemctl, journalctl, sqlite3)
  lab/lab.sh reset                         # start over;  lab/lab.sh down  # remove the lab
"""


def attach() -> Machine:
    try:
        return Machine.attach(LAB_DIR, name=NAME)
    except MachineError:
        sys.exit("the lab is not up: run lab/lab.sh up")


def inside(machine: Machine, command: str) -> int:
    """Run a command inside with its output on our terminal; returns its status."""
    return subprocess.run(machine.interactive_argv(["bash", "-c", command])).returncode


def ensure_agent_binary() -> Path:
    binary = bench.agent_binary()
    if binary.is_file():
        return binary
    if "MSP_AGENT_BIN" in os.environ:
        sys.exit(f"MSP_AGENT_BIN={binary} does not exist")
    print(f"{binary} is missing: building the agent (cargo build --release)", flush=True)
    try:
        subprocess.run(["cargo", "build", "--release"], cwd=REPO, check=True)
    except (OSError, subprocess.CalledProcessError) as e:
        sys.exit(f"could not build the agent ({e}); build it with `cargo build --release` and retry")
    return binary


def start_agent(machine: Machine) -> None:
    machine.succeed("systemctl start msp-agent.service")
    machine.wait_for_unit("msp-agent.service", timeout=30)


def up() -> int:
    try:
        Machine.attach(LAB_DIR, name=NAME)
        print("the lab is already up (lab/lab.sh down removes it)")
        print(NEXT_STEPS)
        return 0
    except MachineError:
        pass
    binary = ensure_agent_binary()
    machine = Machine(name=NAME, run_dir=LAB_DIR, persistent=True)
    try:
        machine.shutdown()  # whatever a previous lab left behind (e.g. after a host reboot)
        machine.start()
        bench.install_demo_units(machine)
        bench.install_agent(machine, LAB_CONFIG, binary=binary)
        if bench.has_free_disk(machine):
            bench.write_config(machine, lab_config(disks=True))
            bench.install_polkit_rule(machine)
        start_agent(machine)
    except Exception as e:
        machine.shutdown()
        sys.exit(f"lab/lab.sh up failed: {e}")
    print(NEXT_STEPS)
    return 0


def down() -> int:
    machine = Machine(name=NAME, run_dir=LAB_DIR, persistent=True)
    try:
        machine = Machine.attach(LAB_DIR, name=NAME)
    except MachineError:
        pass
    machine.shutdown()
    print("the lab is down")
    return 0


def reset() -> int:
    machine = attach()
    machine.succeed(
        "systemctl stop msp-agent.service demo-crashloop.service",
        "systemctl reset-failed msp-agent.service demo.service demo-crashloop.service || true",
        "rm -rf /var/lib/msp-agent",
        f"find {DISK} -mindepth 1 -delete",
        "systemctl restart demo.service",
    )
    start_agent(machine)
    print(f"agent state cleared, {DISK} emptied; demo.service and the agent restarted")
    return 0


def break_disk(machine: Machine) -> int:
    """Fill /srv/data to 99 % with one file, an hour old, in /srv/data/cache."""
    bsize, blocks, free, avail = map(int, machine.succeed(f"stat -f -c '%S %b %f %a' {DISK}").split())
    used = blocks - free
    # used / (used + available), as the agent computes it.
    need = int(FILL_TO * (used + avail) + 1) - used
    if need <= 0:
        print(f"{DISK} is already at {used / (used + avail):.0%}")
        return 0
    chunk = 64 << 10
    count = min(-(-need * bsize // chunk), avail * bsize // chunk)
    name = f"{DISK}/cache/lab-fill-{int(time.time())}.bin"
    machine.succeed(
        f"mkdir -p {DISK}/cache",
        f"dd if=/dev/zero of={name}.tmp bs={chunk} count={count} status=none",
        f"touch -d '1 hour ago' {name}.tmp && mv {name}.tmp {name}")
    status = inside(machine, f"df -h {DISK}")
    if bench.has_free_disk(machine):
        print(f"{name} written; the agent frees it in a few seconds: watch lab/lab.sh incidents")
    else:
        print(f"{name} written; this agent has no RB-DISK-001 (msp-agent free-disk): the incident "
              f"opens and stays. Free it by hand: lab/lab.sh shell rm {name}")
    return status


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("help", "-h", "--help"):
        print(USAGE)
        return 0 if argv else 2
    cmd, rest = argv[0], argv[1:]
    if cmd == "up":
        return up()
    if cmd == "down":
        return down()
    if cmd == "reset":
        return reset()
    if cmd == "break":
        machine = attach()
        if rest[:1] == ["service"] and len(rest) == 2:
            unit = rest[1]
            status = inside(machine, f"systemctl kill -s KILL {shlex.quote(unit)}")
            if status == 0:
                print(f"killed {unit}; watch: lab/lab.sh incidents")
            return status
        if rest == ["disk"]:
            return break_disk(machine)
        if rest == ["crashloop"]:
            status = inside(machine, "systemctl start demo-crashloop.service")
            print("demo-crashloop.service started; it fails every time: watch lab/lab.sh incidents")
            return status
        print(USAGE)
        return 2
    if cmd == "status":
        return inside(attach(), "msp-agent status " + shlex.join(rest))
    if cmd == "incidents":
        return inside(attach(), "msp-agent incidents --all " + shlex.join(rest))
    if cmd == "journal":
        machine = attach()
        if rest:
            return inside(machine, f"journalctl --no-pager INCIDENT_ID={shlex.quote(rest[0])}")
        return inside(machine, "journalctl --no-pager -n 50 -u msp-agent.service")
    if cmd == "shell":
        machine = attach()
        argv_inside = ["bash", "-c", " ".join(rest)] if rest else ["bash", "-l"]
        os.execvp("nsenter", machine.interactive_argv(argv_inside))
    print(USAGE)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

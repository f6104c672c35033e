"""What every user of the bench does after booting a container: install the agent.

The scenario runner, the lab and the detection benchmark all boot a Machine
(nspawn_driver.py) and then put the same things in it, the way a Debian host would get
them from a package:

  * the agent binary built from this repository, as /usr/local/bin/msp-agent (and a
    /usr/bin symlink, whichever path the unit file names);
  * its system user, from dist/sysusers.d/msp-agent.conf when the repository has one;
  * the unit file dist/systemd/msp-agent.service, and RB-DISK-001's helper template
    dist/systemd/msp-agent-free-disk@.service with its ExecStart on the installed binary;
  * a config file at /etc/msp-agent/config.toml;
  * the polkit rule printed by `msp-agent polkit-rule --config ...`;
  * the demo units from tests/bench/units/;
  * a restic backup like the one services.restic.backups makes on NixOS
    (tests/bench/backup/): its unit, password file and the data it backs up.

The agent is never started here: each caller decides when.
"""

from __future__ import annotations

import os
import re
import shlex
from pathlib import Path
from typing import Optional

from nspawn_driver import Machine

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
UNITS_DIR = HERE / "units"
BACKUP_DIR = HERE / "backup"

CONFIG_PATH = "/etc/msp-agent/config.toml"
BINARY_PATH = "/usr/local/bin/msp-agent"
HELPER_UNIT = "msp-agent-free-disk@.service"
POLKIT_RULE_PATH = "/etc/polkit-1/rules.d/50-msp-agent.rules"
AGENT_USER = "msp-agent"


class BenchError(Exception):
    """Something the bench needs from the repository is missing."""


def agent_binary() -> Path:
    """The agent to test: $MSP_AGENT_BIN, else the release build of this repository."""
    if os.environ.get("MSP_AGENT_BIN"):
        return Path(os.environ["MSP_AGENT_BIN"])
    target = Path(os.environ.get("CARGO_TARGET_DIR", REPO / "target"))
    if not target.is_absolute():
        target = REPO / target
    return target / "release" / "msp-agent"


def unit_file() -> Path:
    """The agent's unit file; $MSP_AGENT_UNIT_FILE tests another one."""
    return Path(os.environ.get("MSP_AGENT_UNIT_FILE", REPO / "dist" / "systemd" / "msp-agent.service"))


def helper_unit_file() -> Path:
    """RB-DISK-001's privileged helper, a template unit started per mount."""
    return REPO / "dist" / "systemd" / HELPER_UNIT


def helper_unit_text(path: Path) -> str:
    """The helper unit as installed: its ExecStart runs the binary where the bench puts it."""
    text = path.read_text()
    fixed, n = re.subn(r"^(ExecStart=[-+!@:]*)\S*/msp-agent(?=\s)", rf"\g<1>{BINARY_PATH}", text, flags=re.M)
    if n != 1:
        raise BenchError(f"{path}: expected one ExecStart= running .../msp-agent, found {n}")
    return fixed


def has_free_disk(machine: Machine) -> bool:
    """Whether the installed binary has the `free-disk` helper command (RB-DISK-001)."""
    status, _ = machine.execute(f"{BINARY_PATH} free-disk --help >/dev/null 2>&1")
    return status == 0


def sysusers_file() -> Path:
    return REPO / "dist" / "sysusers.d" / "msp-agent.conf"


def install_demo_units(machine: Machine, names: Optional[list[str]] = None) -> None:
    """Copy tests/bench/units/*.service in and start demo.service."""
    for path in sorted(UNITS_DIR.glob("*.service")):
        if names is None or path.name in names:
            machine.copy_from_host(str(path), f"/etc/systemd/system/{path.name}")
    machine.succeed("systemctl daemon-reload")
    if names is None or "demo.service" in names:
        machine.succeed("systemctl enable --now demo.service")


def install_backup(machine: Machine) -> None:
    """restic-backups-clinic.service with its password file and data; not run yet (the
    first run initialises the repository, as `initialize = true` does on NixOS)."""
    for path in sorted(BACKUP_DIR.glob("*.service")):
        machine.copy_from_host(str(path), f"/etc/systemd/system/{path.name}")
    machine.succeed(
        "install -d -m 0700 /etc/restic /var/backup",
        "test -s /etc/restic/clinic-password || "
        "(head -c 24 /dev/urandom | base64 > /etc/restic/clinic-password)",
        "chmod 0600 /etc/restic/clinic-password",
        "install -d -m 0755 /var/lib/clinic",
        "echo 'appointments and invoices' > /var/lib/clinic/records.txt",
        "systemctl daemon-reload",
    )


def write_config(machine: Machine, config: str) -> None:
    machine.succeed(f"mkdir -p /etc/msp-agent && rm -f {CONFIG_PATH}")
    machine.write_file(CONFIG_PATH, config)


def create_agent_user(machine: Machine) -> None:
    sysusers = sysusers_file()
    if sysusers.exists():
        machine.copy_from_host(str(sysusers), "/usr/lib/sysusers.d/msp-agent.conf")
        machine.succeed("systemd-sysusers /usr/lib/sysusers.d/msp-agent.conf")
    else:
        # What a package without a sysusers file would do. The journal group lets the
        # agent read the system journal without being root.
        machine.succeed(
            f"id {AGENT_USER} >/dev/null 2>&1 || useradd --system --user-group --no-create-home "
            f"--home-dir /var/lib/msp-agent --shell /usr/sbin/nologin {AGENT_USER}",
            f"usermod -a -G systemd-journal {AGENT_USER}",
        )


def install_polkit_rule(machine: Machine) -> str:
    """Install the rule the agent prints for the installed config; returns its text."""
    status, out = machine.execute(f"msp-agent polkit-rule --config {CONFIG_PATH} 2>&1")
    if status != 0:
        raise BenchError(f"`msp-agent polkit-rule --config {CONFIG_PATH}` failed ({status}):\n{out}")
    machine.write_file(POLKIT_RULE_PATH, out)
    return out


def install_agent(machine: Machine, config: str, binary: Optional[Path] = None) -> None:
    """Binary, user, units (the agent's and the disk helper's), config and polkit rule;
    the agent is left stopped."""
    binary = binary or agent_binary()
    if not binary.is_file():
        raise BenchError(
            f"agent binary {binary} not found: build it with `cargo build --release` "
            "or point MSP_AGENT_BIN at one")
    unit = unit_file()
    if not unit.is_file():
        raise BenchError(f"unit file {unit} not found (the repository ships it as dist/systemd/msp-agent.service)")

    machine.copy_from_host(str(binary), BINARY_PATH)
    machine.succeed(f"chmod 0755 {BINARY_PATH} && ln -sf {BINARY_PATH} /usr/bin/msp-agent")
    create_agent_user(machine)
    machine.copy_from_host(str(unit), "/etc/systemd/system/msp-agent.service")
    helper = helper_unit_file()
    if helper.is_file():
        machine.write_file(f"/etc/systemd/system/{HELPER_UNIT}", helper_unit_text(helper))
    write_config(machine, config)
    install_polkit_rule(machine)
    machine.succeed("systemctl daemon-reload")


def busctl_as_agent(machine: Machine, method: str, unit: str) -> tuple[int, str]:
    """Call a systemd Manager method on a unit as the agent's user: (status, output)."""
    return machine.execute(
        f"setpriv --reuid={AGENT_USER} --regid={AGENT_USER} --init-groups "
        f"busctl call org.freedesktop.systemd1 /org/freedesktop/systemd1 "
        f"org.freedesktop.systemd1.Manager {method} ss {shlex.quote(unit)} replace 2>&1")


def boot(name: str = "msp-bench", **kwargs) -> Machine:
    machine = Machine(name=name, **kwargs)
    machine.start()
    return machine

"""What the disk scenarios share: the mounts, their config, filling them, and reading
what RB-DISK-001 did from the incidents, the sealed evidence, the helper unit, the
metrics and the file system.

The machine gives two small file systems (on the bench: tmpfs mounts made by
systemd-nspawn; in a VM: tmpfs file systems of the node):
  * /srv/data (64 MiB), the mount the agent may free (`remediate = true`), with a
    clean entry for /srv/data/cache;
  * /srv/archive (16 MiB), a mount the agent only watches.
Like everything in this package, only the driver's vocabulary, the agent's CLI,
systemctl and journalctl are used.
"""

from __future__ import annotations

import base64
import contextlib
import json
import re
import shlex
from typing import Any, Callable, Iterator, Optional

from .common import (ACTED, AGENT, STATE_DIR, config, incidents_for, journal_entries, reset,
                     wait_until)

DATA = "/srv/data"
CACHE = f"{DATA}/cache"
ARCHIVE = "/srv/archive"
MOUNTS = (DATA, ARCHIVE)

RUNBOOK_DISK = "RB-DISK-001"
CHECK_DISK_SPACE = "disk_space"
HELPER_TEMPLATE = "msp-agent-free-disk@.service"
# Runtime drop-ins for every instance of the helper; removed after each scenario.
HELPER_DROPIN_DIR = f"/run/systemd/system/{HELPER_TEMPLATE}.d"
HELPER_RESULT_DIR = "/run/msp-agent-free-disk"
SPOOL = f"{STATE_DIR}/evidence/spool"
METRICS_PORT = 9465

# Runs of RB-DISK-001 in which the helper was started.
DISK_ACTED = ACTED | {"partial", "timeout"}

# systemd's "unit starting" journal message (SD_MESSAGE_UNIT_STARTING): one per start
# attempt of a unit, whatever its outcome.
MESSAGE_UNIT_STARTING = "7d4958e842da4a758f6c1cdc7b36dcc5"

# The steps every helper run records, in this order, around the helper's own.
RUN_STEPS = ("measure_before", "start_helper", "clean_path", "verify_below_threshold")


def needs_free_disk(scenario: Callable) -> Callable:
    """Marks a scenario that needs RB-DISK-001 in the binary (`msp-agent free-disk`).
    A runner may skip it for a binary without it, saying so; never for one with it."""
    scenario.needs_free_disk = True
    return scenario


# -- configuration ---------------------------------------------------------------------


def toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    return json.dumps(str(v))


def watch_disk(path: str, remediate: Optional[bool] = None, hold: str = "2s",
               clean: tuple[tuple[str, str], ...] = (), **keys: Any) -> str:
    """One [[watch.disks]] entry; `clean` is (path, older_than) pairs; other keys
    (thresholds) as given. `remediate` left out is not written at all."""
    lines = ["[[watch.disks]]", f"path = {toml_value(path)}"]
    if remediate is not None:
        lines.append(f"remediate = {toml_value(remediate)}")
    lines.append(f"hold = {toml_value(hold)}")
    lines += [f"{k} = {toml_value(v)}" for k, v in keys.items()]
    text = "\n".join(lines) + "\n"
    for cpath, older_than in clean:
        text += f"\n[[watch.disks.clean]]\npath = {toml_value(cpath)}\nolder_than = {toml_value(older_than)}\n"
    return text


def free_disk(**keys: Any) -> str:
    """The [runbooks.free_disk] table with the given keys."""
    return "[runbooks.free_disk]\n" + "".join(f"{k} = {toml_value(v)}\n" for k, v in keys.items())


# The mount the machine's polkit rule is made for: a runner installs the agent with
# this entry (besides the demo units), so the rule lets the agent's user start
# msp-agent-free-disk@srv-data.service and no other instance.
MACHINE_DISKS = watch_disk(DATA, remediate=True, clean=((CACHE, "30m"),))


def disk_config(*tables: str, agent_extra: str = "", **kwargs: Any) -> str:
    """The scenario config with disks sampled every second and the given tables."""
    return config(agent_extra='disk_interval = "1s"\n' + agent_extra,
                  extra="\n".join(t.strip("\n") + "\n" for t in tables), **kwargs)


def data_config(*tables: str, **kwargs: Any) -> str:
    """/srv/data watched, remediable, /srv/data/cache cleaned of files older than 30 min."""
    return disk_config(MACHINE_DISKS, *tables, **kwargs)


# -- the machine -----------------------------------------------------------------------


def helper_unit(machine, mount: str) -> str:
    """The helper instance for a mount, named as systemd escapes the path."""
    escaped = machine.succeed(f"systemd-escape --path {shlex.quote(mount)}").strip()
    return f"msp-agent-free-disk@{escaped}.service"


def empty_mounts(machine) -> None:
    machine.succeed(*(f"find {m} -mindepth 1 -delete" for m in MOUNTS))


def clear_helper(machine) -> None:
    """No drop-in, no helper instance active or failed, no result file left over."""
    machine.succeed(
        f"rm -rf {HELPER_DROPIN_DIR}",
        "systemctl daemon-reload",
        "systemctl stop 'msp-agent-free-disk@*.service' || true",
        "systemctl reset-failed 'msp-agent-free-disk@*.service' || true",
        f"rm -f {HELPER_RESULT_DIR}/*.json",
    )


def helper_dropin(machine, text: str, name: str = "50-scenario.conf") -> None:
    """A runtime drop-in for every helper instance (slow or hanging helpers)."""
    machine.succeed(f"mkdir -p {HELPER_DROPIN_DIR}")
    machine.write_file(f"{HELPER_DROPIN_DIR}/{name}", text)
    machine.succeed("systemctl daemon-reload")


def reset_disk(machine, text: str) -> str:
    """Stop the agent, put the helper and the mounts back to empty, then reset with the
    given config (common.reset: state forgotten, agent started). Returns a cursor."""
    machine.succeed(f"systemctl stop {AGENT}")
    clear_helper(machine)
    empty_mounts(machine)
    return reset(machine, text)


@contextlib.contextmanager
def disk_scenario(machine) -> Iterator[None]:
    """Whatever the outcome, leave empty mounts and a plain helper unit behind (the
    agent is left as it is, for a failure's report; the next scenario resets it)."""
    try:
        yield
    finally:
        clear_helper(machine)
        empty_mounts(machine)
        machine.succeed("rm -f /var/tmp/msp-disk-*")


def fill(machine, path: str, mib: int, age: Optional[str] = None) -> None:
    """A file of `mib` MiB at path (of real pages: zeros written, not a sparse file).
    With `age` (e.g. "1 hour ago") its mtime is set back before it appears at path, so
    the agent never sees it young."""
    q = shlex.quote(path)
    tmp = shlex.quote(f"{path}.filling")
    touch = f" && touch -d {shlex.quote(age)} {tmp}" if age else ""
    machine.succeed(f"mkdir -p \"$(dirname {q})\" && dd if=/dev/zero of={tmp} bs=1M count={mib} status=none"
                    f"{touch} && mv -f {tmp} {q}")


def used_ratio(machine, mount: str) -> float:
    """used / (used + available to unprivileged users), as the agent computes it."""
    blocks, free, avail = map(int, machine.succeed(f"stat -f -c '%b %f %a' {shlex.quote(mount)}").split())
    used = blocks - free
    return used / (used + avail) if used + avail else 0.0


def exists(machine, path: str) -> bool:
    return machine.execute(f"test -e {shlex.quote(path)} || test -L {shlex.quote(path)}")[0] == 0


def helper_starts_since(machine, unit: str, cursor: str) -> int:
    """How many times systemd began starting the unit after the cursor."""
    return len(journal_entries(machine, cursor, _PID="1", UNIT=unit, MESSAGE_ID=MESSAGE_UNIT_STARTING))


def as_agent_user(machine, method: str, unit: str) -> tuple[int, str]:
    """A systemd Manager call on a unit as the agent's user, over D-Bus (polkit decides)."""
    return machine.execute(
        "setpriv --reuid=msp-agent --regid=msp-agent --init-groups "
        "busctl call org.freedesktop.systemd1 /org/freedesktop/systemd1 "
        f"org.freedesktop.systemd1.Manager {method} ss {shlex.quote(unit)} replace 2>&1")


# -- what the agent recorded -----------------------------------------------------------


def disk_incidents(machine, mount: str) -> list[dict[str, Any]]:
    return [i for i in incidents_for(machine, mount) if i.get("check") == CHECK_DISK_SPACE]


def disk_runs(incident: dict[str, Any]) -> list[dict[str, Any]]:
    return [r for r in incident.get("runs", []) if r.get("runbook") == RUNBOOK_DISK]


def acted_disk_runs(incident: dict[str, Any]) -> list[dict[str, Any]]:
    return [r for r in disk_runs(incident) if r.get("outcome") in DISK_ACTED]


def incident_opened(machine, mount: str) -> Optional[dict[str, Any]]:
    found = disk_incidents(machine, mount)
    return found[0] if found else None


def incident_where(machine, mount: str, pred: Callable[[dict[str, Any]], bool]) -> Optional[dict[str, Any]]:
    """The newest disk_space incident of the mount if pred holds for it; for wait_until."""
    found = disk_incidents(machine, mount)
    return found[0] if found and pred(found[0]) else None


def run_finished(machine, mount: str) -> Optional[dict[str, Any]]:
    """The newest incident once it has a run of RB-DISK-001 and none is still running."""
    return incident_where(machine, mount, lambda i: bool(disk_runs(i)) and all(
        r["outcome"] != "running" for r in disk_runs(i)))


def resolved_and_settled(machine, mount: str) -> Optional[dict[str, Any]]:
    return incident_where(machine, mount, lambda i: i["state"] == "resolved" and all(
        r["outcome"] != "running" for r in i.get("runs", [])))


def status_json(machine) -> dict[str, Any]:
    return json.loads(machine.succeed("msp-agent status --json"))


def evidence_bundles(machine) -> list[dict[str, Any]]:
    """Every sealed bundle in the local spool, in sequence order (the segment format of
    docs/evidence.md: a magic line, then `<seq> <json len> <sig len>\\n`, JSON, signature)."""
    out = machine.succeed(
        f"for f in $(ls {SPOOL}/*/*.seg 2>/dev/null | sort); do base64 -w0 \"$f\"; echo; done")
    magic = b"msp-agent-spool/1\n"
    bundles = []
    for line in out.split():
        data = base64.b64decode(line)
        assert data.startswith(magic), "a spool segment without the segment header"
        rest = data[len(magic):]
        while rest:
            header, _, rest = rest.partition(b"\n")
            _seq, jl, sl = map(int, header.split(b" "))
            bundles.append(json.loads(rest[:jl]))
            rest = rest[jl + sl:]
    return sorted(bundles, key=lambda b: b["seq"])


def sealed(machine) -> bool:
    return status_json(machine).get("evidence_events_pending") == 0


def run_evidence(machine, run_id: str, timeout: float = 20) -> dict[str, Any]:
    """The body of the newest sealed runbook_run bundle of a run, once all is sealed."""
    wait_until(lambda: sealed(machine), timeout, "every recorded event to be sealed as evidence")
    found = [b["body"] for b in evidence_bundles(machine)
             if b["body"].get("kind") == "runbook_run" and b["body"].get("run_id") == run_id]
    assert found, f"no runbook_run bundle for run {run_id} in {SPOOL}"
    return found[-1]


def step_names(body: dict[str, Any]) -> list[str]:
    return [s.get("name") for s in body.get("steps", [])]


def step(body: dict[str, Any], name: str) -> dict[str, Any]:
    for s in body.get("steps", []):
        if s.get("name") == name:
            return s
    raise AssertionError(f"run {body.get('run_id')} has no step {name!r}: {step_names(body)}")


def in_order(names: list[str], wanted: tuple[str, ...]) -> bool:
    """Whether `wanted` appear in `names` in this order (other steps may come between)."""
    it = iter(names)
    return all(w in it for w in wanted)


def metrics(machine) -> str:
    """The agent's /metrics, fetched with bash alone (no HTTP client needed inside)."""
    return machine.succeed(
        f"exec 3<>/dev/tcp/127.0.0.1/{METRICS_PORT} && "
        "printf 'GET /metrics HTTP/1.0\\r\\nHost: 127.0.0.1\\r\\n\\r\\n' >&3 && cat <&3")


def metric_value(text: str, name: str, **labels: str) -> Optional[float]:
    """The sample of `name` whose labels include the given ones; None if absent."""
    for line in text.splitlines():
        m = re.match(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)", line)
        if not m or m.group(1) != name:
            continue
        have = dict(re.findall(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"', m.group(2) or ""))
        if all(have.get(k) == v for k, v in labels.items()):
            return float(m.group(3))
    return None

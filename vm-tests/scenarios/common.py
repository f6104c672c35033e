"""What the scenarios share: the test config, resetting the agent, reading its record.

Everything goes through the agent's CLI, systemctl and journalctl, as an operator
would; nothing here knows whether the machine is a container or a VM.
"""

from __future__ import annotations

import json
import shlex
import time
from typing import Any, Callable, Optional, TypeVar

CONFIG_PATH = "/etc/msp-agent/config.toml"
STATE_DIR = "/var/lib/msp-agent"
AGENT = "msp-agent.service"
RUNBOOK_RESTART = "RB-SERVICE-001"
CHECK_UNIT_FAILED = "unit_failed"

# Outcomes of a run in which the runbook really acted on the unit. A rate-limited or
# dry-run entry records a decision, not an action.
ACTED = {"running", "success", "failed", "interrupted"}

# systemd's "unit started" journal message (SD_MESSAGE_UNIT_STARTED).
MESSAGE_UNIT_STARTED = "39f53479d3a045ac8e11786248231fbf"

T = TypeVar("T")


def config(
    max_runs: int = 3,
    settle: str = "2s",
    min_interval: str = "1s",
    window: str = "10m",
    pattern: str | list[str] = "demo*.service",
    global_per_hour: int = 100,
    flap_threshold: int = 100,
    agent_extra: str = "",
    extra: str = "",
) -> str:
    """Short timings so a scenario takes seconds; flapping out of the way so the
    rate limit is what stops a crash loop. Every pattern is watched with remediation.

    `agent_extra` adds lines to [agent] (e.g. `disk_interval = "1s"`), `extra` adds
    tables at the end (e.g. [[watch.disks]]); left out, the text is what it always was."""
    patterns = [pattern] if isinstance(pattern, str) else pattern
    watch = "".join(f'[[watch.units]]\npattern = "{p}"\nremediate = true\n\n' for p in patterns)
    if agent_extra and not agent_extra.endswith("\n"):
        agent_extra += "\n"
    if extra:
        extra = "\n" + extra.strip("\n") + "\n"
    return f"""\
[agent]
state_dir = "{STATE_DIR}"
{agent_extra}
{watch}
[incidents]
flap_window = "10m"
flap_threshold = {flap_threshold}
resolve_hold = "1s"

[runbooks.service_restart]
job_timeout = "20s"
settle = "{settle}"
max_runs = {max_runs}
window = "{window}"
min_interval = "{min_interval}"

[limits]
global_per_hour = {global_per_hour}
{extra}"""


def write_config(machine, text: str, path: str = CONFIG_PATH) -> None:
    # On NixOS the file is a link into the store: replace the link, not its target.
    if not text.endswith("\n"):
        text += "\n"
    machine.succeed(
        f"mkdir -p $(dirname {path}) && rm -f {path} && cat > {path} <<'MSP_AGENT_CONFIG'\n"
        f"{text}MSP_AGENT_CONFIG\nchmod 0644 {path}")


def journal_cursor(machine) -> str:
    """The cursor of the newest journal entry: later checks look only after it."""
    out = machine.succeed("journalctl -q --no-pager -n 1 -o json")
    return json.loads(out.strip().splitlines()[-1])["__CURSOR"]


def reset(machine, text: Optional[str] = None) -> str:
    """Stop the agent, forget its state, put the demo units back, write the config,
    start the agent. Returns a journal cursor taken once all that is done."""
    machine.succeed(
        f"systemctl stop {AGENT} demo-crashloop.service",
        f"systemctl reset-failed {AGENT} demo.service demo-crashloop.service || true",
        f"rm -rf {STATE_DIR}",
        "systemctl start demo.service",
    )
    write_config(machine, text if text is not None else config())
    machine.succeed(f"systemctl start {AGENT}")
    machine.wait_for_unit(AGENT, timeout=30)
    machine.wait_for_unit("demo.service", timeout=10)
    return journal_cursor(machine)


def incidents(machine, all: bool = True) -> list[dict[str, Any]]:
    out = machine.succeed("msp-agent incidents --json" + (" --all" if all else ""))
    data = json.loads(out)
    assert isinstance(data, list), f"`msp-agent incidents --json` printed {type(data).__name__}, not a list"
    return data


def incidents_for(machine, target: str, all: bool = True) -> list[dict[str, Any]]:
    return [i for i in incidents(machine, all=all) if i.get("target") == target]


def resolved_and_settled(machine, target: str) -> Optional[dict[str, Any]]:
    """The newest incident of the target once it is resolved and none of its runs is
    still running (a run ends after its settle period, which can outlast the resolve
    hold); else None. For wait_until."""
    found = incidents_for(machine, target)
    if found and found[0]["state"] == "resolved" and all(
            r["outcome"] != "running" for r in found[0].get("runs", [])):
        return found[0]
    return None


def acted_runs(incident: dict[str, Any]) -> list[dict[str, Any]]:
    return [r for r in incident.get("runs", []) if r.get("outcome") in ACTED]


def wait_until(fn: Callable[[], Optional[T]], timeout: float, what: str, interval: float = 0.5) -> T:
    """Poll fn until it returns something truthy; fail naming `what` and the last value."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        last = fn()
        if last:
            return last
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}; last seen: {last!r}")
        time.sleep(interval)


def journal_entries(machine, cursor: Optional[str] = None, **fields: str) -> list[dict[str, Any]]:
    """Journal entries (JSON objects) after the cursor whose fields equal the given values.

    After a cursor the filtering is done here, not by journalctl: systemd 252 given
    --after-cursor and matches skips the first matching entry when the cursor entry
    itself does not match."""
    if cursor:
        out = machine.succeed(f"journalctl -q --no-pager -o json --after-cursor={shlex.quote(cursor)}")
    else:
        terms = " ".join(shlex.quote(f"{k}={v}") for k, v in fields.items())
        out = machine.succeed(f"journalctl -q --no-pager -o json {terms}")
    entries = [json.loads(line) for line in out.splitlines() if line.strip()]
    return [e for e in entries if all(e.get(k) == v for k, v in fields.items())]


def unit_starts_since(machine, unit: str, cursor: str) -> int:
    """How many times systemd reported the unit started after the cursor."""
    return len(journal_entries(machine, cursor, _PID="1", UNIT=unit, MESSAGE_ID=MESSAGE_UNIT_STARTED))


def describe(incident: dict[str, Any]) -> str:
    runs = ", ".join(f"{r.get('run_id')}:{r.get('outcome')}" for r in incident.get("runs", []))
    return f"incident {incident.get('id')} {incident.get('target')} {incident.get('state')} runs=[{runs}]"

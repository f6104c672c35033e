#!/usr/bin/env python3
"""How fast the agent notices a failed unit and brings it back, and what it costs idle.

Runs on the nspawn bench (tests/bench/): boots a container, installs the agent built from
this repository, and measures on a real systemd:

1. Detection and repair, beside a reference. Each of N rounds kills with SIGKILL first
   demo.service (Restart=no, healed by the agent) and waits until the agent has resolved
   the new incident, then restart-reference.service (benches/units/: the same service
   with systemd's own Restart=on-failure, which the agent does not watch) and waits until
   systemd has restarted it. It reads:
     detection latency  = incidents.opened_at_us - incidents.detected_at_us
                          (systemd's StateChangeTimestamp of the failure; the moment the
                          kill was issued when the agent recorded none)
     time to restored   = the unit's ActiveEnterTimestamp after the restart - the failure
                          time: that detected_at_us for demo.service, the unit's
                          ActiveExitTimestamp (the same moment of systemd's) for the
                          reference
     time to resolved   = incidents.resolved_at_us - that failure time (includes the settle
                          period the runbook waits to see the unit stay up)
   and prints the median and p99 of each, in milliseconds, and the agent's time to
   restored minus the reference's against the goal (within 100 ms).
2. Idle cost. 200 running units (bench-NNN.service, `sleep infinity`) matched by a glob
   in the config; the agent is left alone for 60 s; prints its resident memory (VmRSS,
   VmHWM) and CPU use over the interval (utime + stime from /proc/<pid>/stat) against
   the goals (CPU <= 0.1 % with 200 units, RSS < 15 MiB). Measured twice: first with
   the disk watcher off (`[watch] disks = []`), then on as by default (every real mount
   every 10 s), so its cost is printed beside the figures.

Prints figures; never asserts on them. Needs root. Usage:
  python3 benches/bench-detection.py [--kills 50] [--units 200] [--idle 60] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.dont_write_bytecode = True  # no __pycache__ in the source tree
sys.path.insert(0, str(REPO / "tests" / "bench"))

import bench  # noqa: E402
from nspawn_driver import CommandFailed  # noqa: E402

STATE_DB = "/var/lib/msp-agent/state.db"
AGENT = "msp-agent.service"
DEMO = "demo.service"
REFERENCE = "restart-reference.service"
REFERENCE_FILE = REPO / "benches" / "units" / REFERENCE

# The goals the figures are printed against (never asserted).
GOAL_RESTORED_DIFF_MS = 100.0  # the agent's time to restored minus systemd's own restart
GOAL_IDLE_CPU_PERCENT = 0.1  # with GOAL_IDLE_UNITS watched units
GOAL_IDLE_UNITS = 200
GOAL_RSS_MIB = 15.0  # strictly below


def config(patterns: list[tuple[str, bool]], disks: bool = True) -> str:
    """Limits out of the way: every kill must be remediated, however fast they come.
    The disk watcher is on as by default (every real mount, every 10 s) unless `disks`
    is false (`[watch] disks = []`)."""
    rules = "" if disks else "[watch]\ndisks = []\n\n"
    rules += "".join(
        f'[[watch.units]]\npattern = "{p}"\nremediate = {"true" if r else "false"}\n\n' for p, r in patterns)
    return f"""\
[agent]
state_dir = "/var/lib/msp-agent"

{rules}[incidents]
flap_window = "10m"
flap_threshold = 100000
resolve_hold = "0s"

[runbooks.service_restart]
job_timeout = "20s"
settle = "1s"
max_runs = 100000
window = "1h"
min_interval = "0s"

[limits]
global_per_hour = 100000
"""


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[rank - 1]


def now_us(machine) -> int:
    return int(machine.succeed("date +%s%6N").strip())


def unit_timestamp_us(machine, unit: str, prop: str) -> int:
    """A unit's timestamp property in microseconds of the realtime clock."""
    path = "/org/freedesktop/systemd1/unit/" + "".join(
        c if c.isalnum() else f"_{ord(c):02x}" for c in unit)
    out = machine.succeed(
        f"busctl get-property org.freedesktop.systemd1 {path} org.freedesktop.systemd1.Unit {prop}")
    return int(out.split()[1])  # "t 1700000000123456"


def unit_props(machine, unit: str, *props: str) -> dict[str, str]:
    out = machine.succeed(f"systemctl show {unit} " + " ".join(f"-p {p}" for p in props))
    return dict(line.partition("=")[::2] for line in out.splitlines() if "=" in line)


def install_reference(machine) -> None:
    """The reference unit, installed by the benchmark only (not one of the bench's demo
    units, which every scenario container gets)."""
    machine.copy_from_host(str(REFERENCE_FILE), f"/etc/systemd/system/{REFERENCE}")
    machine.succeed("systemctl daemon-reload", f"systemctl start {REFERENCE}")


def kill_reference(machine, timeout: float) -> float:
    """Kill the reference unit and wait for systemd to restart it: time to restored, ms."""
    machine.wait_for_unit(REFERENCE, timeout=timeout)
    before = int(unit_props(machine, REFERENCE, "NRestarts")["NRestarts"])
    machine.succeed(f"systemctl kill --kill-who=main -s KILL {REFERENCE}")
    deadline = time.monotonic() + timeout
    while True:
        p = unit_props(machine, REFERENCE, "ActiveState", "SubState", "NRestarts")
        if p["ActiveState"] == "active" and int(p["NRestarts"]) > before:
            break
        if time.monotonic() > deadline:
            raise SystemExit(f"{REFERENCE} not restarted by systemd after {timeout:.0f} s (last seen: {p})")
        time.sleep(0.05)
    failed_at = unit_timestamp_us(machine, REFERENCE, "ActiveExitTimestamp")
    active_at = unit_timestamp_us(machine, REFERENCE, "ActiveEnterTimestamp")
    return (active_at - failed_at) / 1000


def latest_incident(machine, target: str) -> dict | None:
    sql = ("SELECT id, state, opened_at_us, detected_at_us, resolved_at_us FROM incidents "
           f"WHERE target = '{target}' ORDER BY opened_at_us DESC LIMIT 1")
    status, out = machine.execute(f'sqlite3 -readonly -json {STATE_DB} "{sql}" 2>/dev/null')
    if status != 0 or not out.strip():
        return None  # no database yet, or busy for a moment: ask again
    rows = json.loads(out)
    return rows[0] if rows else None


def restart_agent_fresh(machine, text: str) -> None:
    machine.succeed(f"systemctl stop {AGENT}", "rm -rf /var/lib/msp-agent")
    bench.write_config(machine, text)
    bench.install_polkit_rule(machine)
    machine.succeed(f"systemctl reset-failed {AGENT} || true", f"systemctl start {AGENT}")
    machine.wait_for_unit(AGENT, timeout=30)


def measure_detection(machine, kills: int, timeout: float = 30) -> dict:
    restart_agent_fresh(machine, config([(DEMO, True)]))
    detect, restored, resolved, reference = [], [], [], []
    exit_vs_detected = []  # demo.service: |ActiveExitTimestamp - detected_at_us|, ms
    missing_detected_at = 0
    seen = set()
    reference_restarts0 = int(unit_props(machine, REFERENCE, "NRestarts")["NRestarts"])
    for i in range(kills):
        machine.wait_for_unit("demo.service", timeout=timeout)
        previous = latest_incident(machine, "demo.service")
        if previous:
            seen.add(previous["id"])
        killed_at = now_us(machine)
        machine.succeed("systemctl kill --kill-who=main -s KILL demo.service")

        deadline = time.monotonic() + timeout
        while True:
            inc = latest_incident(machine, "demo.service")
            if inc and inc["id"] not in seen and inc["state"] == "resolved":
                break
            if time.monotonic() > deadline:
                raise SystemExit(f"kill {i + 1}: no resolved incident for demo.service after {timeout:.0f} s "
                                 f"(last seen: {inc})")
            time.sleep(0.05)
        seen.add(inc["id"])

        failed_at = inc["detected_at_us"]
        if not failed_at:
            missing_detected_at += 1
            failed_at = killed_at
        active_at = unit_timestamp_us(machine, "demo.service", "ActiveEnterTimestamp")
        if inc["detected_at_us"]:
            exited_at = unit_timestamp_us(machine, DEMO, "ActiveExitTimestamp")
            exit_vs_detected.append(abs(exited_at - inc["detected_at_us"]) / 1000)
        detect.append((inc["opened_at_us"] - failed_at) / 1000)
        restored.append((active_at - failed_at) / 1000)
        if inc["resolved_at_us"]:
            resolved.append((inc["resolved_at_us"] - failed_at) / 1000)

        reference.append(kill_reference(machine, timeout))
        print(f"  kill {i + 1:3}/{kills}: agent detected {detect[-1]:7.1f} ms, restored {restored[-1]:7.1f} ms;"
              f"  reference restored {reference[-1]:7.1f} ms", flush=True)

    # Each unit was brought back by whom it should have been: the reference by systemd
    # alone (no incident, one systemd restart per kill), demo.service by the agent alone.
    agent_touched_reference = latest_incident(machine, REFERENCE) is not None
    reference_restarts = int(unit_props(machine, REFERENCE, "NRestarts")["NRestarts"]) - reference_restarts0
    demo_restarts = int(unit_props(machine, DEMO, "NRestarts")["NRestarts"])
    return {"kills": kills, "missing_detected_at": missing_detected_at,
            "detection_ms": detect, "restored_ms": restored, "resolved_ms": resolved,
            "reference_restored_ms": reference,
            "failure_time_max_disagreement_ms": max(exit_vs_detected, default=None),
            "reference_incident": agent_touched_reference,
            "reference_systemd_restarts": reference_restarts,
            "demo_systemd_restarts": demo_restarts}


def proc_status(machine, pid: int) -> dict[str, str]:
    out = machine.succeed(f"cat /proc/{pid}/status")
    return {k: v.strip() for k, _, v in (line.partition(":") for line in out.splitlines())}


def cpu_ticks(machine, pid: int) -> int:
    stat = machine.succeed(f"cat /proc/{pid}/stat")
    fields = stat[stat.rindex(")") + 2:].split()
    return int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15)


def measure_idle(machine, units: int, idle: float, disks: bool = True) -> dict:
    machine.succeed(
        f"for i in $(seq -f %03g 0 {units - 1}); do printf '%s\\n' '[Unit]' "
        "'Description=Idle unit for the agent to watch' '[Service]' 'ExecStart=/bin/sleep infinity' "
        "> /etc/systemd/system/bench-$i.service; done",
        "systemctl daemon-reload",
        f"systemctl start $(seq -f 'bench-%03g.service' 0 {units - 1})",
    )
    running = int(machine.succeed("systemctl list-units --state=running --no-legend --plain 'bench-*.service' | wc -l"))
    restart_agent_fresh(machine, config([(DEMO, True), ("bench-*.service", False)], disks=disks))
    pid = int(machine.get_unit_property(AGENT, "MainPID"))
    hz = int(machine.succeed("getconf CLK_TCK"))
    time.sleep(2)  # let start-up work (initial state of every unit) finish
    t0, ticks0 = time.monotonic(), cpu_ticks(machine, pid)
    time.sleep(idle)
    t1, ticks1 = time.monotonic(), cpu_ticks(machine, pid)
    status = proc_status(machine, pid)
    assert int(machine.get_unit_property(AGENT, "MainPID")) == pid, "the agent restarted during the idle interval"
    agent = json.loads(machine.succeed("msp-agent status --json"))["agent"]
    return {
        "mounts": [m["mount"] for m in agent.get("mounts", [])],
        "units": running,
        "idle_s": t1 - t0,
        "cpu_percent": (ticks1 - ticks0) / hz / (t1 - t0) * 100,
        "rss_kib": int(status["VmRSS"].split()[0]),
        "hwm_kib": int(status["VmHWM"].split()[0]),
        "threads": int(status["Threads"]),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kills", type=int, default=50,
                    help="how many times to kill demo.service and the reference unit each (0 skips)")
    ap.add_argument("--units", type=int, default=200, help="idle units to watch")
    ap.add_argument("--idle", type=float, default=60, help="seconds to leave the agent idle (0 skips)")
    ap.add_argument("--json", type=Path, help="also write the figures to this file")
    args = ap.parse_args()

    machine = bench.boot("msp-bench-detect")
    bench.install_demo_units(machine, [DEMO])
    install_reference(machine)
    bench.install_agent(machine, config([(DEMO, True)]))
    version = machine.execute("msp-agent --version 2>&1")[1].strip()
    results: dict = {"agent": version}
    print(f"agent: {version or 'unknown version'}", flush=True)

    if args.kills > 0:
        print(f"detection: killing {DEMO} and {REFERENCE} {args.kills} times each", flush=True)
        d = measure_detection(machine, args.kills)
        results["detection"] = d
    if args.idle > 0:
        print(f"idle: {args.units} units, {args.idle:.0f} s, disk watcher off, then on", flush=True)
        results["idle_without_disks"] = measure_idle(machine, args.units, args.idle, disks=False)
        results["idle"] = measure_idle(machine, args.units, args.idle)
    machine.shutdown()

    print()
    if "detection" in results:
        d = results["detection"]
        n = d["kills"]
        print(f"detection and repair, {n} SIGKILLs of each unit:")
        ref = d["reference_restored_ms"]

        def line(values: list[float], label: str) -> None:
            if values:
                print(f"  {label:44}  median {statistics.median(values):8.1f} ms   "
                      f"p99 {percentile(values, 99):8.1f} ms   (n={len(values)})")

        line(d["detection_ms"], "detection latency, agent")
        line(d["restored_ms"], "time to restored, agent")
        line(ref, "time to restored, systemd Restart=on-failure")
        diff = {"median": statistics.median(d["restored_ms"]) - statistics.median(ref),
                "p99": percentile(d["restored_ms"], 99) - percentile(ref, 99)}
        verdict = {k: "met" if v <= GOAL_RESTORED_DIFF_MS else "missed" for k, v in diff.items()}
        print(f"  {'time to restored, agent - systemd':44}  median {diff['median']:+8.1f} ms   "
              f"p99 {diff['p99']:+8.1f} ms   goal within {GOAL_RESTORED_DIFF_MS:.0f} ms: "
              f"median {verdict['median']}, p99 {verdict['p99']}")
        line(d["resolved_ms"], "time to resolved, agent")
        results["goals"] = {"restored_diff_ms": GOAL_RESTORED_DIFF_MS, "restored_diff": diff,
                            "restored_diff_verdict": verdict}
        if d["missing_detected_at"]:
            print(f"  ({d['missing_detected_at']} incidents had no detected_at_us: measured from the kill)")
        if d["failure_time_max_disagreement_ms"] is not None:
            print(f"  (failure times: the agent's detected_at_us and systemd's ActiveExitTimestamp of "
                  f"{DEMO} differ by at most {d['failure_time_max_disagreement_ms']:.1f} ms)")
        if d["reference_incident"] or d["reference_systemd_restarts"] != n or d["demo_systemd_restarts"]:
            print(f"  WARNING: the comparison is not clean: agent incident for {REFERENCE}: "
                  f"{d['reference_incident']}, its systemd restarts {d['reference_systemd_restarts']} "
                  f"(expected {n}), systemd restarts of {DEMO} {d['demo_systemd_restarts']} (expected 0)")
        else:
            print(f"  (checked: {REFERENCE} restarted by systemd {n} times and never by the agent; "
                  f"{DEMO} only by the agent)")
    if "idle" in results:
        i = results["idle"]
        cpu_ok = i["cpu_percent"] <= GOAL_IDLE_CPU_PERCENT
        rss_ok = i["rss_kib"] / 1024 < GOAL_RSS_MIB
        off = results["idle_without_disks"]
        print(f"idle, {i['units']} watched units, {i['idle_s']:.0f} s ({i['threads']} threads), "
              f"disk watcher on: {len(i['mounts'])} mount(s) ({', '.join(i['mounts'])}) every 10 s:")
        note = "" if i["units"] == GOAL_IDLE_UNITS else f" (measured with {i['units']} units)"
        print(f"  {'CPU':4} {i['cpu_percent']:6.2f} %     goal <= {GOAL_IDLE_CPU_PERCENT} % with "
              f"{GOAL_IDLE_UNITS} units: {'met' if cpu_ok else 'missed'}{note}")
        print(f"  {'RSS':4} {i['rss_kib'] / 1024:6.1f} MiB   goal < {GOAL_RSS_MIB:.0f} MiB: "
              f"{'met' if rss_ok else 'missed'} (peak {i['hwm_kib'] / 1024:.1f} MiB)")
        print(f"  the same with the disk watcher off ([watch] disks = []): CPU {off['cpu_percent']:.2f} %, "
              f"RSS {off['rss_kib'] / 1024:.1f} MiB; the watcher's cost: CPU "
              f"{i['cpu_percent'] - off['cpu_percent']:+.2f} points, RSS "
              f"{(i['rss_kib'] - off['rss_kib']) / 1024:+.1f} MiB")
        results.setdefault("goals", {}).update({
            "idle_cpu_percent": GOAL_IDLE_CPU_PERCENT, "idle_units": GOAL_IDLE_UNITS, "rss_mib": GOAL_RSS_MIB,
            "idle_cpu_verdict": "met" if cpu_ok else "missed", "rss_verdict": "met" if rss_ok else "missed"})
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (CommandFailed, bench.BenchError) as e:
        sys.exit(f"bench-detection: {e}")

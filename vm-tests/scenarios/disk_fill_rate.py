"""/srv/data grows steadily while still far below its thresholds.

The fill rate is fitted over the samples of the last hour once they span five minutes;
at about 2 KiB/s into 28 MiB of free space the mount would be full in about four hours,
under the 24 h warning and over the 2 h critical line. A disk_fill_rate incident opens
as a warning, with the prediction in its observation and in the metrics; there is no
disk_space incident and no run (a prediction alone deletes nothing)."""

from __future__ import annotations

from .common import AGENT, describe, incidents_for, wait_until
from .disk_common import (DATA, RUNBOOK_DISK, data_config, disk_scenario, fill, metric_value, metrics,
                          needs_free_disk, reset_disk, status_json, used_ratio)

CHECK_FILL_RATE = "disk_fill_rate"
GROW_UNIT = "msp-disk-grow.service"
# The fit needs five minutes of samples (FILL_MIN_SPAN), then the hold.
OPEN_WITHIN_S = 420


def _fill_rate_incident(machine):
    found = [i for i in incidents_for(machine, DATA) if i.get("check") == CHECK_FILL_RATE]
    return found[0] if found else None


def _status_mount(machine, level: str):
    mounts = {m["mount"]: m for m in status_json(machine)["agent"].get("mounts", [])}
    m = mounts.get(DATA)
    return m if m and m.get("level") == level else None


@needs_free_disk
def scenario_disk_fill_rate_warns(machine) -> None:
    with disk_scenario(machine):
        try:
            reset_disk(machine, data_config())
            # The fill history lives in the agent's memory: fill while it is stopped,
            # so the fit sees only the steady growth that follows.
            machine.succeed(f"systemctl stop {AGENT}")
            fill(machine, f"{DATA}/base.bin", 36)
            machine.succeed(f"systemctl start {AGENT}")
            machine.wait_for_unit(AGENT, timeout=30)
            machine.succeed(
                f"systemd-run --unit={GROW_UNIT} --property=Type=exec sh -c "
                f"'mkdir -p {DATA}/grow; i=0; while [ $i -lt 600 ]; do "
                f"dd if=/dev/zero of={DATA}/grow/$i bs=4k count=1 status=none; "
                f"i=$((i+1)); sleep 2; done'")
            start = used_ratio(machine, DATA)
            assert 0.5 < start < 0.7, f"{DATA} starts at {start:.3f}: past the floor, under the levels"

            incident = wait_until(lambda: _fill_rate_incident(machine), OPEN_WITHIN_S,
                                  f"a {CHECK_FILL_RATE} incident on {DATA}")
            assert incident["severity"] == "warning", describe(incident)
            assert incident["state"] == "firing", describe(incident)
            assert not incident.get("runs"), f"a prediction alone runs nothing: {describe(incident)}"
            others = [i for i in incidents_for(machine, DATA) if i.get("check") != CHECK_FILL_RATE]
            assert not others, f"no other incident on {DATA}: {[describe(i) for i in others]}"
            now = used_ratio(machine, DATA)
            assert now < 0.8, f"{DATA} at {now:.3f}: the warning came from the rate, not the level"

            text = metrics(machine)
            ttf = metric_value(text, "msp_agent_disk_seconds_to_full", mount=DATA)
            assert ttf is not None, f"no msp_agent_disk_seconds_to_full for {DATA}"
            assert 2 * 3600 < ttf < 24 * 3600, f"predicted {ttf:.0f} s to full"
            # the status row is rewritten at the heartbeat (5 s)
            mount = wait_until(lambda: _status_mount(machine, "warning"), 15,
                               f"msp-agent status to show {DATA} at warning")
            assert mount["seconds_to_full"] > 2 * 3600, mount
            runs = [r for i in incidents_for(machine, DATA) for r in i.get("runs", [])
                    if r.get("runbook") == RUNBOOK_DISK]
            assert not runs, runs
        finally:
            machine.execute(f"systemctl stop {GROW_UNIT}; systemctl reset-failed {GROW_UNIT}")

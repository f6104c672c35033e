"""What RB-DISK-001 must refuse.

A clean path outside its mount is refused by check-config and by the service, naming the
file, the line and the key; the running agent is not touched by the file changing under
it. A mount without `remediate = true` fills up: the incident opens and stays firing,
the helper is never started for it, and the polkit rule does not let the agent's user
start that helper instance."""

from __future__ import annotations

import time

from .common import AGENT, CONFIG_PATH, describe, journal_cursor, journal_entries, reset, wait_until, write_config
from .config_typo import names_line
from .disk_common import (ARCHIVE, CHECK_DISK_SPACE, DATA, acted_disk_runs, as_agent_user, data_config,
                          disk_config, disk_incidents, disk_scenario, exists, fill, helper_starts_since,
                          helper_unit, incident_opened, metric_value, metrics, needs_free_disk, reset_disk,
                          used_ratio, watch_disk)

OUTSIDE = "/var/lib/msp-agent"
KEY = "watch.disks[0].clean[0].path"
QUIET = 8  # seconds in which nothing may be done about the full archive


def _line_of(text: str, line_text: str) -> int:
    return next(n for n, line in enumerate(text.splitlines(), 1) if line == line_text)


def _check_config(machine) -> tuple[int, str]:
    return machine.execute(f"msp-agent check-config {CONFIG_PATH} 2>&1")


@needs_free_disk
def scenario_disk_bad_entry(machine) -> None:
    with disk_scenario(machine):
        reset_disk(machine, data_config())
        running = machine.get_unit_info(AGENT)["InvocationID"]

        bad = disk_config(watch_disk(DATA, remediate=True, clean=((OUTSIDE, "30m"),)))
        line = _line_of(bad, f'path = "{OUTSIDE}"')
        write_config(machine, bad)
        status, out = _check_config(machine)
        assert status == 78, f"check-config exited {status} on a clean path outside the mount:\n{out}"
        assert KEY in out, f"check-config does not name the key {KEY}:\n{out}"
        assert "config.toml" in out, f"check-config does not name the file:\n{out}"
        assert names_line(out, line), f"check-config does not name line {line}:\n{out}"
        assert "outside the mount" in out, f"check-config does not say why:\n{out}"

        # Other entries the interface refuses, each by its key.
        for text, key, not_key in (
            # Not normalised: `..` could lead out of the mount.
            (disk_config(watch_disk(DATA, remediate=True, clean=((f"{DATA}/../etc", "30m"),))), KEY, None),
            # A clean list on a mount the agent may not free.
            (disk_config(watch_disk(DATA, clean=((f"{DATA}/cache", "30m"),))), "watch.disks[0].clean",
             "watch.disks[0].clean["),
        ):
            write_config(machine, text)
            status, out = _check_config(machine)
            assert status == 78 and key in out and not (not_key and not_key in out), \
                f"check-config exited {status} without naming {key}:\n{text}\n{out}"
        write_config(machine, bad)

        # The agent running on the good file is not disturbed by the bad one.
        time.sleep(2)
        info = machine.get_unit_info(AGENT)
        assert info["ActiveState"] == "active" and info["InvocationID"] == running, \
            f"{AGENT} changed under a bad file: {info['ActiveState']} {info['InvocationID']}"

        # A restart does not come up on it, and does not loop trying.
        cursor = journal_cursor(machine)
        status, out = machine.execute(f"timeout 60 systemctl restart {AGENT} 2>&1")
        assert status != 0, f"the agent restarted on a clean path outside its mount:\n{out}"
        wait_until(lambda: machine.get_unit_info(AGENT)["ActiveState"] in ("failed", "inactive"), 15,
                   f"{AGENT} to give up on the bad config instead of restarting")
        assert machine.get_unit_info(AGENT)["ExecMainStatus"] == "78"
        logged = "\n".join(str(e.get("MESSAGE", "")) for e in journal_entries(machine, cursor)
                           if AGENT in (e.get("_SYSTEMD_UNIT"), e.get("UNIT")))
        assert KEY in logged, f"the journal of {AGENT} does not name {KEY}:\n{logged}"

    # Leave a working agent behind.
    reset(machine)


def scenario_disk_not_remediable(machine) -> None:
    with disk_scenario(machine):
        # remediate left out: false.
        cursor = reset_disk(machine, disk_config(watch_disk(ARCHIVE)))
        unit = helper_unit(machine, ARCHIVE)
        # Even an old file in a cache directory is not the agent's to delete here.
        fill(machine, f"{ARCHIVE}/cache/old.bin", 15, age="1 hour ago")
        assert used_ratio(machine, ARCHIVE) > 0.9

        incident = wait_until(lambda: incident_opened(machine, ARCHIVE), 30,
                              f"a {CHECK_DISK_SPACE} incident on {ARCHIVE}")
        time.sleep(QUIET)
        found = disk_incidents(machine, ARCHIVE)
        assert len(found) == 1 and found[0]["id"] == incident["id"], [describe(i) for i in found]
        assert found[0]["state"] == "firing", f"a mount nobody may free stays firing: {describe(found[0])}"
        assert not acted_disk_runs(found[0]), f"something ran for {ARCHIVE}: {describe(found[0])}"
        assert helper_starts_since(machine, unit, cursor) == 0, f"{unit} was started"
        assert machine.get_unit_info(unit)["ActiveState"] == "inactive"
        assert exists(machine, f"{ARCHIVE}/cache/old.bin")
        ratio = metric_value(metrics(machine), "msp_agent_disk_used_ratio", mount=ARCHIVE)
        assert ratio is not None and ratio > 0.9, f"msp_agent_disk_used_ratio{{mount={ARCHIVE}}} is {ratio}"

        # Neither the installed rule nor one made from this config lets the agent's
        # user start the helper for this mount.
        for method in ("StartUnit", "RestartUnit"):
            status, out = as_agent_user(machine, method, unit)
            assert status != 0, f"the agent's user may {method} {unit}"
            assert "Interactive authentication required" in out, f"{method} {unit}: {out}"
        rule = machine.succeed(f"msp-agent polkit-rule --config {CONFIG_PATH}")
        assert unit not in rule, f"the polkit rule for this config names {unit}:\n{rule}"
        assert machine.get_unit_info(unit)["ActiveState"] == "inactive"

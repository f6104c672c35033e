"""A typo in the config is refused with the file, the line and the key, both by
check-config and by the service, which does not come up on it."""

from __future__ import annotations

import re

from .common import (AGENT, CONFIG_PATH, config, journal_cursor, journal_entries, reset, wait_until,
                     write_config)

TYPO = "remediat"


def typo_config() -> tuple[str, int]:
    """The scenario config with `remediate` misspelt; returns it and the typo's line."""
    text = config().replace("remediate = true", f"{TYPO} = true", 1)
    line = next(n for n, l in enumerate(text.splitlines(), 1) if l.startswith(f"{TYPO} "))
    return text, line


def names_line(message: str, line: int) -> bool:
    return re.search(rf"(line {line}\b|:{line}:)", message) is not None


def scenario_config_typo_refused(machine) -> None:
    reset(machine)
    machine.succeed(f"systemctl stop {AGENT}")
    text, line = typo_config()
    write_config(machine, text)

    status, out = machine.execute(f"msp-agent check-config {CONFIG_PATH} 2>&1")
    assert status != 0, f"check-config accepted `{TYPO}`:\n{out}"
    assert TYPO in out, f"check-config does not name the key `{TYPO}`:\n{out}"
    assert CONFIG_PATH in out or "config.toml" in out, f"check-config does not name the file:\n{out}"
    assert names_line(out, line), f"check-config does not name line {line}:\n{out}"

    cursor = journal_cursor(machine)
    entered_before = machine.get_unit_info(AGENT)["ActiveEnterTimestampMonotonic"]
    status, out = machine.execute(f"timeout 60 systemctl start {AGENT} 2>&1")
    assert status != 0, f"the agent started with `{TYPO}` in its config"

    def gave_up():
        info = machine.get_unit_info(AGENT)
        return info["ActiveState"] in ("failed", "inactive")

    # Restarting does not fix a config: the unit must stop trying, not loop in auto-restart.
    wait_until(gave_up, 15, f"{AGENT} to give up on the bad config instead of restarting")
    entered_after = machine.get_unit_info(AGENT)["ActiveEnterTimestampMonotonic"]
    assert entered_after == entered_before, f"{AGENT} was active with a bad config"
    logged = "\n".join(str(e.get("MESSAGE", "")) for e in journal_entries(machine, cursor)
                       if AGENT in (e.get("_SYSTEMD_UNIT"), e.get("UNIT")))
    assert TYPO in logged, f"the journal of {AGENT} does not name `{TYPO}`:\n{logged}"

    # Leave a working agent behind.
    reset(machine)

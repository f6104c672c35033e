"""System-test scenarios shared by the nspawn bench and the NixOS VM tests.

Each scenario is a plain function taking `machine` and using only the NixOS test
driver's vocabulary (succeed, fail, execute, wait_until_succeeds, wait_for_unit,
get_unit_info), so the same code runs in a container on a Debian host
(tests/bench/run-scenarios.py) and in a NixOS VM (vm-tests/).

What a machine must provide before a scenario runs:
  * the agent installed as msp-agent.service, reading /etc/msp-agent/config.toml, with
    `msp-agent` on PATH and the polkit rule for units matching `demo*.service`;
  * demo.service (long-running, Restart=no), demo-crashloop.service (fails about 0.5 s
    after each start, Restart=no) and unwatched.service (long-running, not matched by
    the config), all with StartLimitIntervalSec=0; see tests/bench/units/;
  * restic-backups-clinic.service, a restic backup as NixOS's services.restic.backups
    makes it (a oneshot naming its repository and password file in RESTIC_* variables
    of its environment), which the polkit rule lets the agent's user start; see
    tests/bench/backup/ and vm-tests/backup.nix;
  * sqlite3, journalctl, busctl, setpriv, pkill, restic;
  * for the disk scenarios (disk_*.py): two small file systems of their own, /srv/data
    (64 MiB) and /srv/archive (16 MiB), empty; the helper unit msp-agent-free-disk@.service
    installed; and, when the agent has RB-DISK-001, the polkit rule made for a config
    that watches /srv/data with `remediate = true` (disk_common.MACHINE_DISKS). Those
    marked with disk_common.needs_free_disk need `msp-agent free-disk` in the binary.
Each scenario resets the agent's state and config itself, so they run in any order.
"""

from .agent_stop_mid_runbook import (scenario_sigkill_mid_runbook_not_done_twice,
                                     scenario_sigterm_finishes_runbook_in_flight)
from .backup_rerun import scenario_backup_failure_is_rerun
from .bus_restart import scenario_bus_restart_survived
from .config_change import scenario_unwatched_unit_incident_is_closed
from .config_typo import scenario_config_typo_refused
from .crash_loop import scenario_crash_loop_escalates
from .evidence_s3_outage import scenario_evidence_s3_outage_then_catch_up
from .evidence_local import scenario_evidence_sealed_and_verifiable
from .crash_loop_agent_restart import scenario_crash_loop_survives_agent_restart
from .disk_fill import scenario_disk_fill_is_freed, scenario_disk_nothing_to_free
from .disk_fill_rate import scenario_disk_fill_rate_warns
from .disk_helper import (scenario_disk_agent_restart, scenario_disk_helper_hardening,
                          scenario_disk_helper_timeout)
from .disk_refusals import scenario_disk_bad_entry, scenario_disk_not_remediable
from .flapping import scenario_flapping_survives_agent_restart
from .oneshot_rerun import scenario_oneshot_failure_is_rerun
from .polkit_rule import scenario_polkit_rule_scopes_restarts
from .silence_and_dry_run import scenario_dry_run_records_without_acting, scenario_silence_stops_remediation
from .unit_hardening import scenario_unit_hardening
from .service_restart import scenario_service_restart

ALL = [
    scenario_service_restart,
    scenario_crash_loop_escalates,
    scenario_crash_loop_survives_agent_restart,
    scenario_config_typo_refused,
    scenario_unwatched_unit_incident_is_closed,
    scenario_polkit_rule_scopes_restarts,
    scenario_evidence_sealed_and_verifiable,
    scenario_bus_restart_survived,
    scenario_sigterm_finishes_runbook_in_flight,
    scenario_sigkill_mid_runbook_not_done_twice,
    scenario_oneshot_failure_is_rerun,
    scenario_flapping_survives_agent_restart,
    scenario_unit_hardening,
    scenario_silence_stops_remediation,
    scenario_dry_run_records_without_acting,
    scenario_evidence_s3_outage_then_catch_up,
    scenario_backup_failure_is_rerun,
    scenario_disk_fill_is_freed,
    scenario_disk_nothing_to_free,
    scenario_disk_helper_timeout,
    scenario_disk_agent_restart,
    scenario_disk_bad_entry,
    scenario_disk_not_remediable,
    scenario_disk_helper_hardening,
    # last: five minutes of steady growth before the fit may predict
    scenario_disk_fill_rate_warns,
]

__all__ = [f.__name__ for f in ALL] + ["ALL"]

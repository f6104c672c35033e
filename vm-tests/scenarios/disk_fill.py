"""/srv/data fills past 90 %.

With an hour-old file in its cache: a disk_space incident opens, RB-DISK-001 starts the
helper once, which deletes old files below /srv/data/cache and nothing else (not fresh
files, not files outside the cache, not what a symlink points at), the verification sees
the mount below its clearing threshold, and the incident resolves.

With only fresh files: the run is `partial` and a human is called at once."""

from __future__ import annotations

import json
import time

from .common import describe, wait_until
from .disk_common import (CACHE, CHECK_DISK_SPACE, DATA, HELPER_RESULT_DIR, RUN_STEPS, RUNBOOK_DISK,
                          acted_disk_runs, data_config, disk_incidents, disk_runs, disk_scenario, exists,
                          fill, free_disk, helper_starts_since, helper_unit, in_order, incident_opened,
                          incident_where, metric_value, metrics, needs_free_disk, reset_disk,
                          resolved_and_settled, run_evidence, step, step_names, used_ratio)

OLD = "1 hour ago"
# Outside the mount, old: the helper could delete it if it followed a link (its
# sandbox may write /var/tmp).
OUTSIDE_TARGET = "/var/tmp/msp-disk-link-target"


@needs_free_disk
def scenario_disk_fill_is_freed(machine) -> None:
    with disk_scenario(machine):
        cursor = reset_disk(machine, data_config())
        unit = helper_unit(machine, DATA)

        # What must survive, written first: a fresh file in the cache, an old file
        # outside it, and two old files reachable only through symlinks in the cache.
        fill(machine, f"{CACHE}/fresh.bin", 4)
        fill(machine, f"{DATA}/keep/outside.bin", 2, age=OLD)
        fill(machine, f"{DATA}/keep/link-target.bin", 1, age=OLD)
        fill(machine, OUTSIDE_TARGET, 1, age=OLD)
        machine.succeed(
            f"ln -s {DATA}/keep/link-target.bin {CACHE}/link-in-mount",
            f"ln -s {OUTSIDE_TARGET} {CACHE}/link-out-of-mount",
            f"touch -h -d '{OLD}' {CACHE}/link-in-mount {CACHE}/link-out-of-mount")
        # What may go: an old file deeper in the cache, then the big one.
        fill(machine, f"{CACHE}/nested/old.log", 1, age=OLD)
        fill(machine, f"{CACHE}/old-blob.bin", 54, age=OLD)
        before = used_ratio(machine, DATA)
        assert before > 0.9, f"{DATA} filled to {before:.3f} only"

        incident = wait_until(lambda: incident_opened(machine, DATA), 30,
                              f"a {CHECK_DISK_SPACE} incident on {DATA}")
        assert incident["check"] == CHECK_DISK_SPACE, describe(incident)

        incident = wait_until(lambda: resolved_and_settled(machine, DATA), 60,
                              f"the {DATA} incident to resolve with its run finished")
        found = disk_incidents(machine, DATA)
        assert len(found) == 1, f"one fill, one incident: {[describe(i) for i in found]}"
        runs = acted_disk_runs(incident)
        assert len(runs) == 1, f"one run of {RUNBOOK_DISK} expected: {describe(incident)}"
        assert runs[0]["outcome"] == "success", describe(incident)
        starts = helper_starts_since(machine, unit, cursor)
        assert starts == 1, f"{unit} was started {starts} times for one decision"

        # The sealed evidence of the run: its steps and what they freed.
        body = run_evidence(machine, runs[0]["run_id"])
        assert body["outcome"] == "success", body
        names = step_names(body)
        assert in_order(names, RUN_STEPS), f"steps {names}, expected {RUN_STEPS} in this order"
        clean = step(body, "clean_path")
        assert clean["result"] == "ok", clean
        assert clean["detail"].get("bytes_freed", 0) > 0, f"clean_path freed nothing: {clean}"
        verify = step(body, "verify_below_threshold")
        vd = verify["detail"]
        assert vd.get("bytes_freed", 0) >= 54 << 20, f"the old files were not counted as freed: {verify}"
        assert vd["used_ratio_after"] < 0.8 <= vd["used_ratio_before"], verify
        started = step(body, "start_helper")

        # The helper's own result, where the agent read it, from the invocation it names.
        name = unit.removeprefix("msp-agent-free-disk@").removesuffix(".service")
        result_path = f"{HELPER_RESULT_DIR}/{name}.json"
        owner = machine.succeed(f"stat -c '%U %a' {result_path}").split()
        assert owner == ["root", "644"], f"{result_path} is {owner}, not root's and 0644"
        result = json.loads(machine.succeed(f"cat {result_path}"))
        invocation = machine.get_unit_property(unit, "InvocationID")
        assert result["invocation_id"] == invocation, (result["invocation_id"], invocation)
        assert invocation in json.dumps(started), f"start_helper does not name invocation {invocation}: {started}"
        assert result["bytes_freed"] > 0 and result["mount"] == DATA, result

        # The file system: old files in the cache are gone, everything else is there.
        for gone in (f"{CACHE}/old-blob.bin", f"{CACHE}/nested/old.log"):
            assert not exists(machine, gone), f"{gone} is older than 30 min and in the cache: not deleted"
        for kept in (f"{CACHE}/fresh.bin", f"{DATA}/keep/outside.bin", f"{DATA}/keep/link-target.bin",
                     OUTSIDE_TARGET):
            assert exists(machine, kept), f"{kept} was deleted"
        for link in (f"{CACHE}/link-in-mount", f"{CACHE}/link-out-of-mount"):
            # Only regular files are deleted, and a link is never followed.
            machine.succeed(f"test -L {link}")
        after = used_ratio(machine, DATA)
        assert after < 0.8, f"{DATA} still at {after:.3f}"

        # What an operator sees: the metrics and the status.
        text = metrics(machine)
        ok = metric_value(text, "msp_agent_remediations_total", runbook=RUNBOOK_DISK, outcome="success")
        assert ok == 1, f"msp_agent_remediations_total{{runbook={RUNBOOK_DISK},outcome=success}} is {ok}"
        ratio = metric_value(text, "msp_agent_disk_used_ratio", mount=DATA)
        assert ratio is not None and ratio < 0.8, f"msp_agent_disk_used_ratio{{mount={DATA}}} is {ratio}"
        status = machine.succeed("msp-agent status")
        assert DATA in status, f"`msp-agent status` does not list {DATA}:\n{status}"


QUIET = 8  # seconds after escalation in which nothing more may happen


@needs_free_disk
def scenario_disk_nothing_to_free(machine) -> None:
    """Only fresh files on /srv/data: the one run frees nothing and ends `partial`, the
    incident goes to a human at once (not through the rate limit, which would allow
    more runs here), and nothing runs again."""
    limits = free_disk(max_runs=3, window="10m", min_interval="1s")
    with disk_scenario(machine):
        cursor = reset_disk(machine, data_config(limits))
        unit = helper_unit(machine, DATA)
        fill(machine, f"{CACHE}/fresh-1.bin", 40)
        fill(machine, f"{CACHE}/fresh-2.bin", 20)
        assert used_ratio(machine, DATA) > 0.9

        incident = wait_until(lambda: incident_where(machine, DATA, lambda i: i["state"] == "needs_human"),
                              60, f"the {DATA} incident to need a human")
        runs = disk_runs(incident)
        assert [r["outcome"] for r in runs] == ["partial"], \
            f"one run, partial, and no rate-limit entry before the escalation: {describe(incident)}"

        body = run_evidence(machine, runs[0]["run_id"])
        assert body["outcome"] == "partial", body
        assert in_order(step_names(body), RUN_STEPS), step_names(body)
        assert step(body, "clean_path")["detail"].get("bytes_freed") == 0, step(body, "clean_path")
        vd = step(body, "verify_below_threshold")["detail"]
        assert vd["used_ratio_after"] > 0.9, f"the mount is still full: {vd}"

        time.sleep(QUIET)
        after = disk_incidents(machine, DATA)
        assert len(after) == 1 and after[0]["id"] == incident["id"], [describe(i) for i in after]
        assert after[0]["state"] == "needs_human", describe(after[0])
        assert len(after[0]["runs"]) == len(incident["runs"]), \
            f"runs recorded after escalation: {describe(incident)} -> {describe(after[0])}"
        starts = helper_starts_since(machine, unit, cursor)
        assert starts == 1, f"{unit} was started {starts} times; once, then a human"
        for kept in (f"{CACHE}/fresh-1.bin", f"{CACHE}/fresh-2.bin"):
            assert exists(machine, kept), f"{kept} is fresh and was deleted"
        partial = metric_value(metrics(machine), "msp_agent_remediations_total",
                               runbook=RUNBOOK_DISK, outcome="partial")
        assert partial == 1, f"msp_agent_remediations_total{{runbook={RUNBOOK_DISK},outcome=partial}} is {partial}"

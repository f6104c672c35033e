# RB-DISK-001 on NixOS: the agent watches /srv/data (a 64 MiB tmpfs) with
# remediate = true and may clean /srv/data/cache (vm-tests/common.nix,
# diskAgent). First what only a NixOS host can show: the module's helper unit
# msp-agent-free-disk@srv-data.service as systemd scores it, the polkit rule
# allowing the agent to restart exactly that instance, the helper's result
# file after a run in its real sandbox. Then the mount is filled with an old
# file: the incident opens, RB-DISK-001 frees it through the helper, the run's
# outcome is success, the incident resolves, and the run (with the helper's
# steps) is sealed as evidence. Then the shared scenarios of the "disk" group
# (vm-tests/scenarios/disk_*.py).
#
# In the flake's `checks` once vm-tests/scenarios/ has a disk scenario
# (vm-tests/groups.nix): without one, run_scenarios fails by design.
{ pkgs, vmTests }:

let
  inherit (vmTests) disk;
  helper = "msp-agent-free-disk@srv-data.service";
in
pkgs.testers.runNixOSTest {
  name = "msp-agent-disk";

  nodes.agent = {
    imports = [
      vmTests.agentNode
      vmTests.diskAgent
    ];
  };

  testScript = ''
    ${vmTests.preamble}
    import json
    import re
    import time

    MOUNT = "${disk.mount}"
    CACHE = "${disk.cache}"
    HELPER = "${helper}"
    RESULT = f"/run/msp-agent-free-disk/{HELPER.split('@', 1)[1].rsplit('.', 1)[0]}.json"
    AS_AGENT = ("setpriv --reuid=msp-agent --regid=msp-agent --init-groups "
                "busctl call org.freedesktop.systemd1 /org/freedesktop/systemd1 "
                "org.freedesktop.systemd1.Manager {method} ss {unit} replace 2>&1")
    SPOOL = "/var/lib/msp-agent/evidence/spool"


    def wait_for(fn, timeout, what):
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            last = fn()
            if last:
                return last
            time.sleep(1)
        raise Exception(f"timed out after {timeout} s waiting for {what}; last seen: {last!r}")


    def disk_incident():
        found = [i for i in json.loads(agent.succeed("msp-agent incidents --all --json"))
                 if i["target"] == MOUNT and i["check"] == "disk_space"]
        return found[0] if found else None


    start_all()
    agent.wait_for_unit("msp-agent.service")
    agent.wait_for_unit("local-fs.target")

    with subtest("the mount is a small file system of its own"):
        agent.succeed(f"findmnt -n -o FSTYPE {MOUNT} | grep -qx tmpfs", f"test -d {CACHE}",
                      "findmnt -n -o FSTYPE ${disk.archive} | grep -qx tmpfs")

    with subtest("the helper unit is a template the module made, never started at boot"):
        agent.succeed(f"systemctl cat {HELPER}")
        state = agent.succeed(f"systemctl show -p ActiveState --value {HELPER}").strip()
        assert state == "inactive", state

    with subtest("systemd scores the helper's sandbox at most 2.0"):
        out = agent.succeed(f"systemd-analyze security --no-pager {HELPER}")
        level = re.search(r"exposure level for \S+: ([0-9.]+)", out)
        assert level, out
        print(f"exposure of {HELPER}: {level.group(1)}")
        assert float(level.group(1)) <= 2.0, out

    with subtest("the agent's user may restart exactly this helper instance"):
        for unit in ("msp-agent-free-disk@var.service", "msp-agent-free-disk@-.service"):
            status, out = agent.execute(AS_AGENT.format(method="StartUnit", unit=unit))
            assert status != 0 and "Interactive authentication required" in out, f"{unit}: {out}"
        status, out = agent.execute(AS_AGENT.format(method="StopUnit", unit=HELPER))
        assert status != 0 and "Interactive authentication required" in out, out
        status, out = agent.execute(AS_AGENT.format(method="RestartUnit", unit=HELPER))
        assert status == 0, out

    with subtest("a helper run in its sandbox leaves a root-owned result with its invocation ID"):
        agent.wait_until_succeeds(f"systemctl show -p SubState --value {HELPER} | grep -qx exited", timeout=60)
        result = agent.succeed(f"systemctl show -p Result --value {HELPER}").strip()
        assert result == "success", result
        owner, mode = agent.succeed(f"stat -c '%U %a' {RESULT}").split()
        assert (owner, mode) == ("root", "644"), (owner, mode)
        invocation = agent.succeed(f"systemctl show -p InvocationID --value {HELPER}").strip()
        doc = json.loads(agent.succeed(f"cat {RESULT}"))
        assert doc["invocation_id"] == invocation and doc["mount"] == MOUNT, doc

    with subtest("a full mount is freed by RB-DISK-001 and the incident resolves"):
        agent.succeed(
            f"dd if=/dev/zero of={CACHE}/old.bin bs=1M count=52 status=none",
            f"touch -d '3 days ago' {CACHE}/old.bin",
            f"dd if=/dev/zero of={CACHE}/young.bin bs=1M count=1 status=none",
            f"mkdir -p {MOUNT}/keep",
            f"dd if=/dev/zero of={MOUNT}/keep/old.bin bs=1M count=1 status=none",
            f"touch -d '3 days ago' {MOUNT}/keep/old.bin",
        )
        incident = wait_for(disk_incident, 60, f"a disk_space incident on {MOUNT}")

        def resolved():
            i = disk_incident()
            if i and i["state"] == "resolved" and i["runs"] and all(r["outcome"] != "running" for r in i["runs"]):
                return i
            return None

        incident = wait_for(resolved, 180, f"the disk_space incident on {MOUNT} to resolve")
        runs = [r for r in incident["runs"] if r["runbook"] == "RB-DISK-001"]
        assert [r["outcome"] for r in runs] == ["success"], incident
        agent.fail(f"test -e {CACHE}/old.bin")
        agent.succeed(f"test -e {CACHE}/young.bin", f"test -e {MOUNT}/keep/old.bin")

    with subtest("msp-agent status lists the mount"):
        status = agent.succeed("msp-agent status")
        assert MOUNT in status, status

    with subtest("the run's evidence holds the helper's steps and is sealed"):
        run_id = runs[0]["run_id"]
        steps = json.loads(agent.succeed(
            f"sqlite3 /var/lib/msp-agent/state.db \"SELECT steps_json FROM runbook_runs WHERE run_id = '{run_id}'\""))
        names = [s["name"] for s in steps]
        for name in ("measure_before", "start_helper", "clean_path", "verify_below_threshold"):
            assert name in names, names
        start = next(s for s in steps if s["name"] == "start_helper")
        invocation = agent.succeed(f"systemctl show -p InvocationID --value {HELPER}").strip()
        assert invocation in json.dumps(start["detail"]), start
        clean = next(s for s in steps if s["name"] == "clean_path")
        assert clean["result"] == "ok" and clean["detail"].get("files_deleted") == 1, clean
        agent.wait_until_succeeds(f"cat {SPOOL}/*/*.seg | grep -a -q '{run_id}'", timeout=30)
        lines = agent.succeed("msp-agent pubkey --config /etc/msp-agent/config.toml").strip().splitlines()
        agent.succeed(f"echo {json.dumps(lines[1])} > /root/allowed_signers")
        agent.succeed(f"msp-agent verify {SPOOL} --pubkey /root/allowed_signers")

    run_scenarios(agent, "disk")
  '';
}

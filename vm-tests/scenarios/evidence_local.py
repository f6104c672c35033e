"""Every incident transition and runbook run is sealed into the local evidence spool,
signed and chained; `msp-agent verify` accepts the spool and refuses it once a byte
of it is changed."""

from __future__ import annotations

import json

from .common import CONFIG_PATH, STATE_DIR, incidents_for, reset, wait_until

SPOOL = f"{STATE_DIR}/evidence/spool"


def _sealed(machine) -> bool:
    status = json.loads(machine.succeed("msp-agent status --json"))
    return status.get("evidence_events_pending") == 0


def scenario_evidence_sealed_and_verifiable(machine) -> None:
    reset(machine)
    machine.succeed("systemctl kill --kill-who=main -s KILL demo.service")

    def resolved():
        found = incidents_for(machine, "demo.service")
        if found and found[0]["state"] == "resolved" and all(
                r["outcome"] != "running" for r in found[0].get("runs", [])):
            return found[0]
        return None

    incident = wait_until(resolved, 30, "the demo.service incident to be resolved")
    wait_until(lambda: _sealed(machine), 15, "every recorded event to be sealed as evidence")

    # The trusted key, as the operator hands it to the auditor.
    out = machine.succeed(f"msp-agent pubkey --config {CONFIG_PATH}")
    lines = out.strip().splitlines()
    assert len(lines) == 2 and lines[0].startswith("ssh-ed25519 "), f"pubkey printed {out!r}"
    machine.succeed(f"echo {json.dumps(lines[1])} > /root/allowed_signers")

    report = machine.succeed(f"msp-agent verify {SPOOL} --pubkey /root/allowed_signers 2>&1")
    # Opening, restart run, resolution: at least three bundles name the incident.
    named = machine.succeed(f"grep -rl --binary-files=text {incident['id']} {SPOOL} | wc -l")
    assert int(named.strip()) >= 1, f"no spool segment names incident {incident['id']}"
    count = machine.succeed(
        f"cat {SPOOL}/*/*.seg | grep -a -o '\"incident_id\":\"{incident['id']}\"' | wc -l")
    assert int(count.strip()) >= 3, (
        f"expected the opening, the run and the resolution of {incident['id']} in evidence; "
        f"found {count.strip()} mentions\n{report}")

    # Tampering: one changed byte in a bundle of this incident fails verification.
    machine.succeed(
        f"seg=$(grep -l -a '{incident['id']}' {SPOOL}/*/*.seg | sort | tail -n 1); "
        "python3 - \"$seg\" <<'PY'\n"
        "import sys\n"
        "p = sys.argv[1]\n"
        "b = bytearray(open(p, 'rb').read())\n"
        "i = b.find(b'\"incident_id\":\"INC-')\n"
        "assert i >= 0, 'no incident_id field to alter'\n"
        "i += len('\"incident_id\":\"INC-')\n"
        "b[i] = ord('X') if b[i] != ord('X') else ord('Y')\n"
        "open(p, 'wb').write(bytes(b))\n"
        "PY")
    status, out = machine.execute(f"msp-agent verify {SPOOL} --pubkey /root/allowed_signers 2>&1")
    assert status != 0, f"verify accepted a tampered spool:\n{out}"
    assert "FAILED" in out or "signature" in out or "hash" in out, f"verify's message names no failure:\n{out}"

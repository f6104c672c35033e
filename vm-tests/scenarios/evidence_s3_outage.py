"""Evidence goes to an S3 bucket with Object Lock; the bucket becomes unreachable for a
while; incidents keep being recorded into the local spool; once it is back the spool
drains, and `msp-agent verify s3://…` finds every bundle signed, chained and locked.

The machine provides the bucket: /etc/msp-agent/rendered.toml carries an
`[evidence.s3]` table (the NixOS module keeps the file it rendered there; the nspawn
bench writes one for its loopback Ceph). The outage is a TCP forwarder inside the
machine, between the agent and the bucket, that the scenario stops and starts."""

from __future__ import annotations

import json
import time
import tomllib
from urllib.parse import urlparse

from .common import config, incidents_for, reset, wait_until

FORWARD_PORT = 17480
FORWARD_UNIT = "msp-s3-forward"
FORWARDER = r"""
import socket, sys, threading
lport, host, port = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
srv = socket.socket()
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("127.0.0.1", lport))
srv.listen(64)
def pipe(a, b):
    try:
        while True:
            d = a.recv(65536)
            if not d:
                break
            b.sendall(d)
    except OSError:
        pass
    finally:
        for s in (a, b):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
while True:
    c, _ = srv.accept()
    try:
        u = socket.create_connection((host, port), timeout=5)
        u.settimeout(None)
    except OSError:
        c.close()
        continue
    threading.Thread(target=pipe, args=(c, u), daemon=True).start()
    threading.Thread(target=pipe, args=(u, c), daemon=True).start()
"""


def _evidence(machine) -> dict:
    status = json.loads(machine.succeed("msp-agent status --json"))
    raw = status["agent"].get("evidence")
    return json.loads(raw) if raw else {}


def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    return json.dumps(str(v))


def scenario_evidence_s3_outage_then_catch_up(machine) -> None:
    rendered = tomllib.loads(machine.succeed("cat /etc/msp-agent/rendered.toml"))
    s3 = rendered.get("evidence", {}).get("s3")
    assert s3 and s3.get("endpoint"), "the machine provides no [evidence.s3] bucket in /etc/msp-agent/rendered.toml"
    real = urlparse(s3["endpoint"])
    creds = s3.get("credentials_file") or "/run/credentials/msp-agent.service/s3-credentials"

    machine.succeed(
        f"systemctl stop {FORWARD_UNIT} 2>/dev/null; systemctl reset-failed {FORWARD_UNIT} 2>/dev/null; true",
        f"cat > /root/s3-forward.py <<'PY'\n{FORWARDER}PY",
    )
    start_forwarder = (f"systemd-run --unit={FORWARD_UNIT} python3 /root/s3-forward.py "
                       f"{FORWARD_PORT} {real.hostname} {real.port or 80}")
    machine.succeed(start_forwarder)

    prefix = f"outage-{int(time.time())}"
    table = dict(s3, endpoint=f"http://127.0.0.1:{FORWARD_PORT}", prefix=prefix, retention_days=1,
                 path_style=True, retry_max="2s", request_timeout="5s")
    text = config() + "\n[evidence.s3]\n" + "".join(f"{k} = {_toml_value(v)}\n" for k, v in table.items())
    reset(machine, text)
    wait_until(lambda: _evidence(machine).get("worm") == "enabled", 60,
               "the agent to see Object Lock enabled on the bucket")
    wait_until(lambda: _evidence(machine).get("spool_depth") == 0, 60, "the first bundles to reach the bucket")

    # S3 goes away; two incidents happen meanwhile.
    machine.succeed(f"systemctl stop {FORWARD_UNIT}")
    for _ in range(2):
        before = len(incidents_for(machine, "demo.service"))
        machine.succeed("systemctl kill --kill-who=main -s KILL demo.service")
        wait_until(lambda: len(incidents_for(machine, "demo.service")) > before
                   and incidents_for(machine, "demo.service")[0]["state"] == "resolved"
                   and all(r["outcome"] != "running" for r in incidents_for(machine, "demo.service")[0]["runs"]),
                   40, "the incident to be healed while S3 is down")
    stuck = wait_until(lambda: (e := _evidence(machine)) and e.get("spool_depth", 0) >= 6 and e, 30,
                       "the bundles of both incidents to wait in the spool")
    assert stuck["upload_failures"] > 0 or stuck["worm"] == "unreachable", f"the outage went unnoticed: {stuck}"

    # S3 is back: the spool drains, in order, and the bucket verifies.
    machine.succeed(start_forwarder)
    wait_until(lambda: _evidence(machine).get("spool_depth") == 0, 90, "the spool to drain into the bucket")
    signers = machine.succeed("msp-agent pubkey --config /etc/msp-agent/config.toml").strip().splitlines()[-1]
    machine.succeed(f"echo {json.dumps(signers)} > /root/allowed_signers_s3")
    out = machine.succeed(
        f"msp-agent verify s3://{s3['bucket']}/{prefix} --pubkey /root/allowed_signers_s3"
        f" --endpoint {s3['endpoint']} --path-style --region {s3.get('region', 'us-east-1')}"
        f" --credentials-file {creds} 2>&1")
    machine.log(out.strip().splitlines()[-1] if out.strip() else "verify printed nothing")
    machine.succeed(f"systemctl stop {FORWARD_UNIT}")

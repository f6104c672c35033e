# Evidence into a MinIO bucket created with Object Lock (`mc mb --with-lock`):
# the agent gets its S3 credentials as a systemd credential. With the config
# the module rendered, a killed demo.service makes an incident whose bundles
# reach the bucket, locked; `msp-agent verify` checks them there (signatures,
# chain, retention) and the auditor's `ssh-keygen -Y verify` checks each one
# fetched with mc. Then the shared evidence scenarios run.
#
# In the flake's `checks` once vm-tests/scenarios/ has an evidence scenario
# (vm-tests/groups.nix): without one, run_scenarios fails by design.
{ pkgs, vmTests }:

let
  inherit (vmTests) s3;
in
pkgs.testers.runNixOSTest {
  name = "msp-agent-evidence";

  nodes.s3 = vmTests.s3Node;
  nodes.agent = {
    imports = [
      vmTests.agentNode
      vmTests.evidenceAgent
    ];
  };

  testScript = ''
    ${vmTests.preamble}
    import shlex

    BUCKET_PREFIX = "${s3.bucket}/agent"

    # The bucket exists, with Object Lock, before the agent checks it at start.
    s3.start()
    s3.wait_for_unit("evidence-bucket.service")

    with subtest("the evidence bucket has Object Lock enabled, and the check can tell"):
        s3.succeed(
            "HOME=/root mc alias set local http://127.0.0.1:${toString s3.port} ${s3.user} ${s3.password}",
            "HOME=/root mc retention info --default local/${s3.bucket}",
            "HOME=/root mc mb local/no-lock",
        )
        s3.fail("HOME=/root mc retention info --default local/no-lock")

    agent.start()
    agent.wait_for_unit("msp-agent.service")

    with subtest("the S3 credentials reach the agent as a credential, not through its config"):
        name = "s3-credentials"
        agent.succeed(f"cmp /run/credentials/msp-agent.service/{name} /etc/msp-agent-secrets/{name}")
        mode = agent.succeed(f"stat -c %a /run/credentials/msp-agent.service/{name}").strip()
        assert mode.endswith("00"), f"{name} is readable beyond its owner (mode {mode})"
        agent.fail("grep -E 'aws_|PRIVATE KEY|${s3.password}|/etc/msp-agent-secrets' /etc/msp-agent/config.toml")

    with subtest("an incident's bundles reach the locked bucket and verify there"):
        agent.wait_for_unit("demo.service")
        agent.succeed("systemctl kill --kill-who=main -s KILL demo.service")
        agent.wait_until_succeeds(
            "msp-agent incidents --json --all"
            " | jq -e 'map(select(.target == \"demo.service\" and .state == \"resolved\")) | length >= 1'",
            timeout=120,
        )
        # Opening, restart run, resolution: at least three bundles.
        s3.wait_until_succeeds(
            f"test $(HOME=/root mc ls --recursive local/{BUCKET_PREFIX}/ | grep -c '[.]json$') -ge 3",
            timeout=120,
        )
        signers = agent.succeed("msp-agent pubkey --config /etc/msp-agent/config.toml").strip().splitlines()[-1]
        agent.succeed(f"echo {shlex.quote(signers)} > /root/allowed_signers")
        agent.succeed(
            f"msp-agent verify s3://{BUCKET_PREFIX} --pubkey /root/allowed_signers"
            " --endpoint http://s3:${toString s3.port} --path-style"
            " --credentials-file /etc/msp-agent-secrets/s3-credentials"
        )
        # The auditor's way: the objects fetched with a standard client, each
        # signature checked with ssh-keygen, the retention read from the bucket.
        s3.succeed(
            f"echo {shlex.quote(signers)} > /root/allowed_signers",
            f"HOME=/root mc cp --recursive local/{BUCKET_PREFIX}/ /root/evidence/",
        )
        principal = signers.split()[0]
        count = s3.succeed(
            "n=0; for f in $(find /root/evidence -name '*.json'); do"
            f" ssh-keygen -Y verify -f /root/allowed_signers -I {shlex.quote(principal)} -n msp-agent-evidence"
            ' -s "''${f%.json}.sig" < "$f" > /dev/null || exit 1; n=$((n + 1)); done; echo $n'
        )
        assert int(count.strip()) >= 3, f"ssh-keygen checked {count.strip()} bundles"
        key = s3.succeed(f"HOME=/root mc ls --recursive local/{BUCKET_PREFIX}/ | grep -o '[^ ]*[.]json$' | head -n 1").strip()
        retention = s3.succeed(f"HOME=/root mc retention info local/{BUCKET_PREFIX}/{key}")
        assert "COMPLIANCE" in retention.upper(), retention

    run_scenarios(agent, "evidence")
  '';
}

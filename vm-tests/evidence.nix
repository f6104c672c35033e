# Evidence into a MinIO bucket created with Object Lock (`mc mb --with-lock`):
# the agent gets its signing key and S3 credentials as systemd credentials,
# then the shared evidence scenarios run (bundles uploaded, checked with
# `msp-agent verify` and with `ssh-keygen -Y verify`, S3 down and back, a
# tampered bundle refused).
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

    with subtest("secrets reach the agent as credentials, not through its config"):
        for name in ("signing-key", "s3-credentials"):
            agent.succeed(f"cmp /run/credentials/msp-agent.service/{name} /etc/msp-agent-secrets/{name}")
            mode = agent.succeed(f"stat -c %a /run/credentials/msp-agent.service/{name}").strip()
            assert mode.endswith("00"), f"{name} is readable beyond its owner (mode {mode})"
        agent.fail("grep -E 'aws_|PRIVATE KEY|${s3.password}|/etc/msp-agent-secrets' /etc/msp-agent/config.toml")

    run_scenarios(agent, "evidence")
  '';
}

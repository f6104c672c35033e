# One NixOS host with the module and the bench's demo units. First what only a
# NixOS host can show (the sandbox as systemd scores it, the module's polkit
# rule), then every shared scenario of the "remediation" group
# (vm-tests/groups.nix): a killed service restarted and resolved, a crash loop
# escalated, the same across an agent restart, a config typo refused, the
# polkit scope, the system bus restarted, the agent stopped mid-runbook.
{ pkgs, vmTests }:

pkgs.testers.runNixOSTest {
  name = "msp-agent-remediation";

  nodes.agent = vmTests.agentNode;

  testScript = ''
    ${vmTests.preamble}
    import re

    AS_AGENT = ("setpriv --reuid=msp-agent --regid=msp-agent --init-groups "
                "busctl call org.freedesktop.systemd1 /org/freedesktop/systemd1 "
                "org.freedesktop.systemd1.Manager {method} ss {unit} replace 2>&1")

    start_all()
    agent.wait_for_unit("msp-agent.service")

    with subtest("systemd scores the sandbox of msp-agent.service at most 2.0"):
        out = agent.succeed("systemd-analyze security --no-pager msp-agent.service")
        level = re.search(r"exposure level for msp-agent\.service: ([0-9.]+)", out)
        assert level, out
        assert float(level.group(1)) <= 2.0, out

    with subtest("the agent's user cannot start units outside its configuration"):
        for unit in ("nscd.service", "systemd-journald.service", "msp-agent.service"):
            status, out = agent.execute(AS_AGENT.format(method="StartUnit", unit=unit))
            assert status != 0, f"the agent's user may start {unit}"
            assert "Interactive authentication required" in out, f"{unit}: {out}"

    run_scenarios(agent, "remediation")
  '';
}

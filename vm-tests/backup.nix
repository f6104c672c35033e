# The agent next to a restic backup made by services.restic.backups, into a
# repository on the same host. The module must discover the backup on its
# own, watch its unit with remediation in the agent's config and let the
# agent's user start it; then the shared backup scenarios run
# (vm-tests/scenarios/backup_rerun.py: a backup run killed half way is run
# again by RB-SERVICE-001 and leaves a new snapshot).
{ pkgs, vmTests }:

let
  repository = "/var/backup/restic";
  # A test password; a real one stays out of the store.
  passwordFile = pkgs.writeText "restic-password" "msp-test-restic-password";
in
pkgs.testers.runNixOSTest {
  name = "msp-agent-backup";

  nodes.agent =
    { options, pkgs, ... }:
    let
      # repository and passwordFile moved into settings.RESTIC_* after 25.05;
      # the test reads which spelling this nixpkgs has.
      newSpelling = (options.services.restic.backups.type.getSubOptions [ ]) ? settings;
    in
    {
      imports = [ vmTests.agentNode ];

      services.restic.backups.clinic =
        {
          paths = [ "/var/lib/clinic" ];
          initialize = true;
        }
        // (
          if newSpelling then
            {
              settings = {
                RESTIC_REPOSITORY = repository;
                RESTIC_PASSWORD_FILE = "${passwordFile}";
              };
            }
          else
            {
              inherit repository;
              passwordFile = "${passwordFile}";
            }
        );

      systemd.tmpfiles.rules = [
        "d /var/lib/clinic 0755 root root -"
        "f /var/lib/clinic/records.txt 0644 root root - appointments and invoices"
      ];
      environment.systemPackages = [ pkgs.restic ];
    };

  testScript = ''
    ${vmTests.preamble}
    import tomllib

    AS_AGENT = ("setpriv --reuid=msp-agent --regid=msp-agent --init-groups "
                "busctl call org.freedesktop.systemd1 /org/freedesktop/systemd1 "
                "org.freedesktop.systemd1.Manager {method} ss {unit} replace 2>&1")
    RESTIC = "restic -r ${repository} -p ${passwordFile}"

    start_all()
    agent.wait_for_unit("msp-agent.service")

    with subtest("the module found the backup and watches its unit, with remediation"):
        config = tomllib.loads(agent.succeed("cat /etc/msp-agent/config.toml"))
        units = config["watch"]["units"]
        entry = {"pattern": "restic-backups-clinic.service", "remediate": True, "expect_active": False}
        assert units[0] == entry, units
        assert units[-1]["pattern"] == "*", units
        agent.succeed("msp-agent check-config /etc/msp-agent/config.toml")

    with subtest("the agent's user may start the backup unit, and do nothing else to it"):
        status, out = agent.execute(AS_AGENT.format(method="StartUnit", unit="restic-backups-clinic.service"))
        assert status == 0, out
        agent.wait_until_succeeds(f"{RESTIC} snapshots --json | jq -e 'length == 1'", timeout=120)
        status, out = agent.execute(AS_AGENT.format(method="StopUnit", unit="restic-backups-clinic.service"))
        assert status != 0 and "Interactive authentication required" in out, out

    run_scenarios(agent, "backup")
  '';
}

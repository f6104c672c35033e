# What the NixOS VM tests share: the agent's node, the S3 node, the bench's
# demo units, and the scenarios of vm-tests/scenarios/ as an importable Python
# package. The scenarios are the same code the nspawn bench runs
# (tests/bench/run-scenarios.py); the VM tests only provide NixOS machines that
# offer what vm-tests/scenarios/__init__.py asks for.
{ pkgs, module }:

let
  inherit (pkgs) lib;
  vmGroups = import ./groups.nix { inherit lib; };

  # Demo units of the bench, unchanged except for the absolute paths of the
  # programs they run, which NixOS does not have under /bin.
  benchUnits = ../tests/bench/units;
  demoUnit =
    name:
    let
      text = builtins.replaceStrings [ "/bin/sleep" "/bin/sh" ] [
        "${pkgs.coreutils}/bin/sleep"
        "${pkgs.runtimeShell}"
      ] (builtins.readFile (benchUnits + "/${name}"));
    in
    {
      inherit text;
      wantedBy = lib.optional (lib.hasInfix "WantedBy=multi-user.target" text) "multi-user.target";
    };
  demoUnitNames = lib.filter (lib.hasSuffix ".service") (lib.attrNames (builtins.readDir benchUnits));

  s3 = {
    user = "msp-test-admin";
    password = "msp-test-secret-1";
    bucket = "msp-evidence";
    port = 9000;
  };

  # The mount the disk test fills: a size-limited tmpfs, as the bench gives
  # its container from the host side.
  disk = {
    mount = "/srv/data";
    cache = "/srv/data/cache";
    sizeMiB = 64;
    # watched only, never freed: the disk scenarios' second mount
    archive = "/srv/archive";
    archiveSizeMiB = 16;
  };
in
rec {
  inherit s3 disk;

  # `import scenarios` works once this directory is on sys.path.
  scenarioRoot = pkgs.linkFarm "msp-agent-scenarios" [
    {
      name = "scenarios";
      path = ./scenarios;
    }
  ];

  # The first lines of every testScript. Which scenarios a test runs is chosen
  # by a word in the name of their file (./groups.nix, which flake.nix also
  # reads to wire only the tests that have scenarios), so a scenario added to
  # scenarios.ALL runs in the VM test that has the machines it needs without a
  # change here:
  #   backup            -> vm-backup (restic)
  #   evidence, s3, spool, tamper, verify -> vm-evidence (MinIO)
  #   disk              -> vm-disk (a small mount RB-DISK-001 may free)
  #   anything else     -> vm-remediation
  preamble = ''
    import sys

    sys.path.insert(0, "${scenarioRoot}")
    import scenarios  # type: ignore

    # (group, words) in matching order, from vm-tests/groups.nix.
    GROUPS = ${builtins.toJSON (map (g: [ g.name g.words ]) vmGroups.groups)}


    def scenarios_of(group):
        """The shared scenarios that belong to one VM test (see vm-tests/groups.nix)."""
        def group_of(scenario):
            module = scenario.__module__.rsplit(".", 1)[-1]
            # A scenario defined in the package's __init__.py: its own name.
            name = scenario.__name__ if module in ("scenarios", "__init__") else module
            for group_name, words in GROUPS:
                if any(word in name for word in words):
                    return group_name
            return "remediation"
        return [s for s in scenarios.ALL if group_of(s) == group]


    def run_scenarios(machine, group, required=True):
        selected = scenarios_of(group)
        if required and not selected:
            raise Exception(f"vm-tests/scenarios has no scenario for {group!r} yet (files named for {dict(GROUPS).get(group, 'none of the other groups')})")
        for scenario in selected:
            with subtest(scenario.__name__):
                scenario(machine)
  '';

  # The host the agent runs on, with what the scenarios expect: the module,
  # the demo units, a config remediating demo*.service (which puts that
  # pattern into the polkit rule), sqlite3, journalctl, busctl, setpriv,
  # ssh-keygen, python3.
  agentNode =
    { config, pkgs, ... }:
    {
      imports = [ module ];

      # The scenarios replace /etc/msp-agent/config.toml with their own; the
      # file the module rendered stays here, for a scenario that needs its
      # [evidence] table or its [[watch.units]] entries of the discovered
      # backups.
      environment.etc."msp-agent/rendered.toml".source =
        config.environment.etc."msp-agent/config.toml".source;

      services.msp-agent = {
        enable = true;
        settings = {
          watch.units = [
            {
              pattern = "demo*.service";
              remediate = true;
            }
            { pattern = "*"; }
          ];
        };
      };

      systemd.units = lib.genAttrs demoUnitNames demoUnit;

      # python3: the evidence scenario alters a spool byte with it.
      environment.systemPackages = [
        pkgs.sqlite
        pkgs.jq
        pkgs.util-linux
        pkgs.openssh
        pkgs.python3
      ];

      virtualisation.memorySize = 1024;
    };

  # MinIO with the evidence bucket created with Object Lock (`mc mb
  # --with-lock`) once the server answers. Test credentials only: in a real
  # deployment nothing secret goes into the store.
  s3Node =
    { pkgs, ... }:
    {
      services.minio = {
        enable = true;
        rootCredentialsFile = pkgs.writeText "minio-root-credentials" ''
          MINIO_ROOT_USER=${s3.user}
          MINIO_ROOT_PASSWORD=${s3.password}
        '';
      };
      networking.firewall.allowedTCPPorts = [ s3.port ];
      # ssh-keygen: the auditor's check of the bundles fetched from the bucket.
      environment.systemPackages = [
        pkgs.minio-client
        pkgs.openssh
      ];

      systemd.services.evidence-bucket = {
        description = "Evidence bucket with Object Lock";
        wantedBy = [ "multi-user.target" ];
        after = [ "minio.service" ];
        requires = [ "minio.service" ];
        path = [ pkgs.minio-client ];
        environment.HOME = "/run/evidence-bucket";
        serviceConfig = {
          Type = "oneshot";
          RemainAfterExit = true;
          RuntimeDirectory = "evidence-bucket";
        };
        script = ''
          for _ in $(seq 60); do
            mc alias set local http://127.0.0.1:${toString s3.port} ${s3.user} ${s3.password} && break
            sleep 1
          done
          mc mb --ignore-existing --with-lock local/${s3.bucket}
        '';
      };
    };

  # A mount of its own for RB-DISK-001: /srv/data, a 64 MiB tmpfs, watched with
  # remediate = true, low thresholds and short holds so a scenario takes
  # seconds; the agent may clean files older than a day in /srv/data/cache.
  # The module makes msp-agent-free-disk@srv-data.service and lets the agent
  # restart exactly that instance.
  diskAgent =
    { ... }:
    {
      virtualisation.fileSystems.${disk.mount} = {
        device = "tmpfs";
        fsType = "tmpfs";
        options = [
          "size=${toString disk.sizeMiB}m"
          "mode=0755"
        ];
      };
      virtualisation.fileSystems.${disk.archive} = {
        device = "tmpfs";
        fsType = "tmpfs";
        options = [
          "size=${toString disk.archiveSizeMiB}m"
          "mode=0755"
        ];
      };
      systemd.tmpfiles.rules = [ "d ${disk.cache} 0755 root root -" ];

      services.msp-agent.settings = {
        agent.disk_interval = "1s";
        incidents.resolve_hold = "2s";
        watch.disks = [
          {
            path = disk.mount;
            remediate = true;
            warn_above = 0.5;
            warn_clear = 0.3;
            critical_above = 0.8;
            critical_clear = 0.4;
            hold = "2s";
            clean = [
              {
                path = disk.cache;
                older_than = "1d";
              }
            ];
          }
        ];
        runbooks.free_disk = {
          timeout = "2m";
          step_timeout = "30s";
          min_interval = "1s";
        };
      };
    };

  # The agent's side of the evidence pipeline: its S3 credentials written at
  # boot (outside the store) and handed over by the module as the systemd
  # credential `s3-credentials`. The signing key is the one the agent generates
  # in its state directory: the shared scenarios read it with
  # `msp-agent pubkey --config`, which from a shell cannot see a key handed
  # over as the credential `signing-key` (that path is checked by
  # tests/nix/module.nix, not here).
  evidenceAgent =
    { ... }:
    {
      systemd.services.msp-agent-test-secrets = {
        description = "Test secrets of msp-agent";
        wantedBy = [ "multi-user.target" ];
        before = [ "msp-agent.service" ];
        requiredBy = [ "msp-agent.service" ];
        serviceConfig = {
          Type = "oneshot";
          RemainAfterExit = true;
        };
        script = ''
          install -d -m 0700 /etc/msp-agent-secrets
          umask 077
          printf '[default]\naws_access_key_id = %s\naws_secret_access_key = %s\n' \
            ${s3.user} ${s3.password} > /etc/msp-agent-secrets/s3-credentials
        '';
      };

      services.msp-agent = {
        evidence.s3.credentialsFile = "/etc/msp-agent-secrets/s3-credentials";
        settings.evidence.s3 = {
          inherit (s3) bucket;
          prefix = "agent";
          endpoint = "http://s3:${toString s3.port}";
          path_style = true;
          retention_days = 1;
        };
      };
    };
}

# services.msp-agent: the host agent that heals routine failures (a crashed
# unit, a failed backup unit) within rate limits and proves it with signed
# evidence.
#
# What this module owns: the static service user, the config file rendered from
# `settings` (RFC 42), the secrets (handed over as systemd credentials, never
# written to the Nix store), the polkit rule that lets the agent's user start or
# restart exactly the units its configuration remediates, the sandbox
# (./unit.nix, shared with the plain unit files in dist/systemd/), and the
# root helper unit msp-agent-free-disk@.service of RB-DISK-001 when a watched
# mount has remediate = true. It discovers services.restic.backups on its own
# and watches their units like any other.
# docs/nixos.md is the guide; docs/config.md the file format.
#
# The agent refuses unknown keys, so the module renders only tables the agent
# reads; `checkConfig` proves it at build time. Each table is declared in its
# own file under ./settings/ (listed in ./settings/default.nix) with the one
# generator of ./sections.nix, which builds `settings` from them; a table's file
# may also bring its own options and assertions (metrics: listenAddress, port,
# openFirewall; evidence: the secrets).
{
  config,
  lib,
  pkgs,
  ...
}:

let
  inherit (lib)
    literalExpression
    mkEnableOption
    mkIf
    mkOption
    mkPackageOption
    mkRemovedOptionModule
    types
    ;

  cfg = config.services.msp-agent;
  helpers = import ./lib.nix { inherit lib; };
  sections = import ./sections.nix { inherit lib; };
  settingsSections = sections.load (import ./settings);
  unit = import ./unit.nix;
  settingsFormat = pkgs.formats.toml { };

  user = unit.service.User;
  unitName = "msp-agent.service";
  configPath = "/etc/msp-agent/config.toml";
  backupUnit = name: "restic-backups-${name}.service";

  # services.restic.backups.<name> makes restic-backups-<name>.service, a
  # oneshot (backup, then forget/prune/check when configured) started by a
  # timer. Only the unit name is read here: it has not changed between
  # releases, the option names have.
  #
  # Each discovered backup becomes an ordinary watched unit: a failed run opens
  # an incident and, with backups.restic.remediate, RB-SERVICE-001 starts it
  # again within the rate limits. The entries come before the user's own, so a
  # catch-all pattern of the user (first match wins) does not shadow them; a
  # user entry naming the unit exactly replaces the discovered one.
  resticBackups = if cfg.backups.restic.discover then config.services.restic.backups else { };
  userUnits = cfg.settings.watch.units;
  userNames = map (u: u.pattern) (lib.filter (u: !helpers.isGlob u.pattern) userUnits);
  backupUnits = map (name: {
    pattern = backupUnit name;
    remediate = cfg.backups.restic.remediate;
    expect_active = false;
  }) (lib.filter (name: !(lib.elem (backupUnit name) userNames)) (lib.attrNames resticBackups));

  # The one list of watched units: the rendered [[watch.units]], the polkit
  # rule and the assertions all read it.
  watchUnits = backupUnits ++ userUnits;

  # What the module adds to the user's settings: the keys the sections derive
  # from the module's options ([metrics] listen) and the watched units. Where
  # both set a key the module's value wins (setting metrics.listen by hand is
  # refused by ./settings/metrics.nix).
  derivedSettings = lib.recursiveUpdate (sections.derived cfg settingsSections) {
    watch.units = watchUnits;
  };
  renderedSettings = sections.stripNulls (lib.recursiveUpdate cfg.settings derivedSettings);

  generatedConfig = settingsFormat.generate "msp-agent.toml" renderedSettings;
  configFile =
    if cfg.checkConfig then
      pkgs.runCommand "msp-agent-checked.toml" { nativeBuildInputs = [ cfg.package ]; } ''
        msp-agent check-config ${generatedConfig}
        cp ${generatedConfig} $out
      ''
    else
      generatedConfig;

  # Units the agent may start or restart through polkit: the remediated
  # entries of the rendered [[watch.units]], names as names, globs as patterns.
  remediated = lib.filter (u: u.remediate) watchUnits;
  polkitNames = lib.unique (map (u: u.pattern) (lib.filter (u: !helpers.isGlob u.pattern) remediated));
  polkitPatterns = lib.unique (map (u: u.pattern) (lib.filter (u: helpers.isGlob u.pattern) remediated));

  # RB-DISK-001: the mounts with remediate = true of the rendered
  # [[watch.disks]], each freed by its instance of the helper template
  # (systemd-escape --path of the mount). The helper unit, the polkit rule and
  # the file all read this one list. A path the instance name cannot be made
  # from is refused by an assertion of ./settings/watch-disks.nix.
  watchDisks = if cfg.settings.watch.disks == null then [ ] else cfg.settings.watch.disks;
  remediableDisks = lib.filter (
    d: d.remediate && helpers.unprintableChars d.path == [ ]
  ) watchDisks;
  freeDiskUnits = lib.unique (map (d: helpers.freeDiskUnit d.path) remediableDisks);
  freeDisk = cfg.settings.runbooks.free_disk;
  # The helper bounds its own run by `timeout`; systemd stops it a minute later.
  freeDiskTimeout = helpers.systemdSpan (
    helpers.durationSeconds (if freeDisk.timeout == null then "10m" else freeDisk.timeout) + 60
  );
  nixGc = freeDisk.nix_gc_older_than != null;
  # Names a glob is tried against to tell whether it reaches the helper.
  helperSamples = [
    (helpers.freeDiskUnit "/")
    (helpers.freeDiskUnit "/srv/data")
  ]
  ++ freeDiskUnits;

  stateDir = cfg.settings.agent.state_dir;
  stateDirName = lib.removePrefix "/var/lib/" stateDir;

in
{
  imports = [
    (mkRemovedOptionModule [ "services" "msp-agent" "backups" "restic" "maxAge" ]
      "The agent has no backup watcher yet: backup freshness (RPO) comes with it. A failed backup unit already opens an incident."
    )
    (mkRemovedOptionModule [ "services" "msp-agent" "backups" "restic" "unlockStale" ]
      "Clearing a stale restic lock comes with the backup runbook; today a failed backup unit is started again by RB-SERVICE-001."
    )
    (mkRemovedOptionModule [ "services" "msp-agent" "runbooks" "freeDisk" ]
      "RB-DISK-001 is configured in the agent's file: settings.watch.disks (remediate = true and the clean paths of each mount) and settings.runbooks.free_disk (journal vacuum, tmpfiles, Nix garbage collection, timeouts, limits); the module makes the helper unit msp-agent-free-disk@.service from them."
    )
  ]
  ++ sections.modules settingsSections;

  options.services.msp-agent = {
    enable = mkEnableOption "msp-agent, the host agent that heals routine failures and proves it with signed evidence";

    package = mkPackageOption pkgs "msp-agent" { };

    settings = mkOption {
      default = { };
      description = ''
        Configuration of the agent, rendered to TOML (see docs/config.md for
        every key). Keys not declared here are passed through as written.
        Secrets do not belong here: use
        {option}`services.msp-agent.evidence.signingKeyFile` and
        {option}`services.msp-agent.evidence.s3.credentialsFile`.
      '';
      example = literalExpression ''
        {
          watch.units = [
            { pattern = "nginx.service"; remediate = true; expect_active = true; }
            { pattern = "*"; }
          ];
          evidence.s3 = {
            bucket = "msp-evidence";
            prefix = "clinic-01";
            endpoint = "https://s3.eu-central-1.amazonaws.com";
            region = "eu-central-1";
          };
        }
      '';
      type = types.submodule {
        freeformType = settingsFormat.type;
        options = sections.settingsOptions settingsFormat.type settingsSections;
      };
    };

    checkConfig = mkOption {
      type = types.bool;
      default = true;
      description = ''
        Check the rendered file with `msp-agent check-config` when the system
        is built, so a wrong key fails the build, not the service.
      '';
    };

    backups.restic = {
      discover = mkOption {
        type = types.bool;
        default = true;
        description = ''
          Watch the unit `restic-backups-<name>.service` of every backup of
          {option}`services.restic.backups`: a failed run opens an incident.
        '';
      };
      remediate = mkOption {
        type = types.bool;
        default = true;
        description = ''
          Start a failed backup unit again (RB-SERVICE-001, within the rate
          limits of `settings.runbooks.service_restart` and `settings.limits`);
          the unit joins the polkit rule.
        '';
      };
    };

    grafana = {
      provisionDashboard = mkOption {
        type = types.bool;
        default = false;
        description = "Provision the project's Grafana dashboard into {option}`services.grafana`.";
      };
      dashboardPath = mkOption {
        type = types.path;
        default = "${cfg.package}/share/msp-agent/grafana";
        defaultText = literalExpression ''"''${config.services.msp-agent.package}/share/msp-agent/grafana"'';
        description = "Directory of dashboard JSON files given to Grafana's file provider.";
      };
    };
  };

  config = mkIf cfg.enable {
    assertions = [
      {
        assertion = !cfg.grafana.provisionDashboard || config.services.grafana.enable;
        message = "services.msp-agent.grafana.provisionDashboard = true needs services.grafana.enable = true on this host.";
      }
      {
        assertion = config.security.polkit.enable;
        message = "services.msp-agent remediates through polkit: security.polkit.enable must stay true (set settings.agent.dry_run = true to run without remediation).";
      }
    ]
    ++ lib.concatMap (
      u:
      let
        bad = helpers.invalidChars u.pattern;
        isGlob = helpers.isGlob u.pattern;
        reached =
          helpers.protectedMatches u.pattern
          ++ lib.optional (
            isGlob && lib.any (helpers.globMatches u.pattern) helperSamples
          ) "${helpers.freeDiskTemplate}*.service";
      in
      [
        {
          assertion = bad == [ ];
          message = "services.msp-agent.settings.watch.units: pattern \"${u.pattern}\" contains ${lib.concatMapStringsSep ", " (c: "\"${c}\"") bad}, which no unit name can contain.";
        }
        {
          assertion = !(u.remediate && reached != [ ]);
          message = "services.msp-agent.settings.watch.units: pattern \"${u.pattern}\" has remediate = true and would let the agent restart ${lib.concatStringsSep ", " reached}; use a narrower pattern, or name such a unit explicitly.";
        }
        {
          assertion = !(u.remediate && u.pattern == unitName);
          message = "services.msp-agent.settings.watch.units: the agent cannot remediate its own unit (${unitName}); systemd restarts it (Restart=on-failure, WatchdogSec=).";
        }
        {
          assertion = !(u.remediate && !isGlob && lib.hasPrefix helpers.freeDiskTemplate u.pattern);
          message = "services.msp-agent.settings.watch.units: \"${u.pattern}\" is a free-disk helper unit, which only RB-DISK-001 starts; set remediate = true on the mount's entry in settings.watch.disks instead.";
        }
      ]
    ) watchUnits;

    users.users.${user} = {
      isSystemUser = true;
      group = unit.service.Group;
      description = "msp-agent host agent";
    };
    users.groups.${unit.service.Group} = { };

    environment.systemPackages = [ cfg.package ];
    # The CLI (msp-agent status, incidents, verify) reads the same file.
    environment.etc."msp-agent/config.toml".source = configFile;

    security.polkit.enable = lib.mkDefault true;
    security.polkit.extraConfig = helpers.polkitRule {
      inherit user;
      names = polkitNames ++ freeDiskUnits;
      patterns = polkitPatterns;
    };

    systemd.services.msp-agent = {
      description = "msp-agent: heals routine failures and records signed evidence";
      wantedBy = [ "multi-user.target" ];
      wants = [ "network-online.target" ];
      after = [ "network-online.target" ];
      # journalctl for following the journal.
      path = [ config.systemd.package ];
      # The agent reads /etc/msp-agent/config.toml, like the CLI and like the
      # unit of other distributions; a new file restarts it.
      restartTriggers = [ configFile ];
      serviceConfig =
        unit.service
        // unit.sandbox
        // {
          ExecStart = "${cfg.package}/bin/msp-agent run --config ${configPath}";
          StateDirectory = stateDirName;
        };
    };

    # RB-DISK-001's privileged half, one instance per mount with remediate =
    # true (msp-agent-free-disk@srv-data.service frees /srv/data). Started only
    # by the agent (polkit: restart of exactly those instances), never at boot
    # or by a switch; it reads which paths to clean from the same file as the
    # agent, root-owned in /etc.
    systemd.services."${helpers.freeDiskTemplate}" = mkIf (freeDiskUnits != [ ]) {
      description = "msp-agent: free disk space on %f (RB-DISK-001)";
      after = [
        "local-fs.target"
        "systemd-journald.service"
      ];
      restartIfChanged = false;
      # journalctl and systemd-tmpfiles; nix-collect-garbage for the Nix step.
      path = [ config.systemd.package ] ++ lib.optional nixGc config.nix.package;
      # Garbage collection goes through the Nix daemon, which owns the store.
      environment = lib.optionalAttrs nixGc { NIX_REMOTE = "daemon"; };
      serviceConfig =
        unit.freeDisk.service
        // unit.freeDisk.sandbox
        // {
          ExecStart = "${cfg.package}/bin/msp-agent free-disk --config ${configPath} %i";
          TimeoutStartSec = freeDiskTimeout;
          # The daemon's socket (AF_UNIX is allowed already) and the profiles
          # whose old generations nix-collect-garbage deletes.
          ReadWritePaths =
            unit.freeDisk.sandbox.ReadWritePaths
            ++ lib.optionals nixGc [
              "-/nix/var/nix/daemon-socket"
              "-/nix/var/nix/profiles"
            ];
        };
    };

    services.grafana.provision = mkIf cfg.grafana.provisionDashboard {
      enable = true;
      dashboards.settings.providers = [
        {
          name = "msp-agent";
          options.path = cfg.grafana.dashboardPath;
        }
      ];
    };
  };
}

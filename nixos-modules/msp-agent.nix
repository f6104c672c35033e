# services.msp-agent: the host agent that heals routine failures (a crashed
# unit, a failed backup unit) within rate limits and proves it with signed
# evidence.
#
# What this module owns: the static service user, the config file rendered from
# `settings` (RFC 42), the secrets (handed over as systemd credentials, never
# written to the Nix store), the polkit rule that lets the agent's user start or
# restart exactly the units its configuration remediates, and the sandbox
# (./unit.nix, shared with the plain unit file in dist/systemd/). It discovers
# services.restic.backups on its own and watches their units like any other.
# docs/nixos.md is the guide; docs/config.md the file format.
#
# The agent refuses unknown keys, so the module renders only sections the agent
# reads: [agent], [[watch.units]], [incidents], [runbooks.service_restart],
# [limits], [metrics] and [evidence]; `checkConfig` proves it at build time.
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
    optional
    types
    ;

  cfg = config.services.msp-agent;
  helpers = import ./lib.nix { inherit lib; };
  unit = import ./unit.nix;
  settingsFormat = pkgs.formats.toml { };

  user = unit.service.User;
  unitName = "msp-agent.service";
  configPath = "/etc/msp-agent/config.toml";
  backupUnit = name: "restic-backups-${name}.service";

  # A file that must stay out of the world-readable store: an absolute path as a
  # string (a path literal such as ./key would be copied into the store).
  secretFile = types.nullOr (
    types.pathWith {
      inStore = false;
      absolute = true;
    }
  );

  # TOML has no null: an unset option is left out of the file, and so is a
  # table left empty by that.
  stripNulls =
    v:
    if builtins.isAttrs v then
      lib.filterAttrs (_: x: x != { }) (lib.mapAttrs (_: stripNulls) (lib.filterAttrs (_: x: x != null) v))
    else if builtins.isList v then
      map stripNulls (lib.filter (x: x != null) v)
    else
      v;

  listen =
    if lib.hasInfix ":" cfg.listenAddress then
      "[${cfg.listenAddress}]:${toString cfg.port}"
    else
      "${cfg.listenAddress}:${toString cfg.port}";
  isLoopback = cfg.listenAddress == "::1" || lib.hasPrefix "127." cfg.listenAddress;
  # The agent parses `listen` as a socket address: an IP literal, no host name.
  isIPLiteral =
    a:
    builtins.match "[0-9]{1,3}([.][0-9]{1,3}){3}" a != null
    || (lib.hasInfix ":" a && builtins.match "[0-9a-fA-F:.]+" a != null);

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

  # What the module adds to the user's settings; where both set a key the
  # module's value wins (setting metrics.listen by hand is refused below). The
  # secrets are not named in the file: the agent looks for the credentials
  # `signing-key` and `s3-credentials` in $CREDENTIALS_DIRECTORY when
  # evidence.key_file and evidence.s3.credentials_file are unset.
  derivedSettings = {
    metrics.listen = listen;
    watch.units = watchUnits;
  };
  renderedSettings = stripNulls (lib.recursiveUpdate cfg.settings derivedSettings);

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

  stateDir = cfg.settings.agent.state_dir;
  stateDirName = lib.removePrefix "/var/lib/" stateDir;

  watchUnitType = types.submodule {
    freeformType = settingsFormat.type;
    options = {
      pattern = mkOption {
        type = types.str;
        example = "demo*.service";
        description = "Unit name or glob pattern (`*`, `?`, `[...]`). The first matching entry wins.";
      };
      remediate = mkOption {
        type = types.bool;
        default = false;
        description = ''
          Restart the unit when it fails (runbook RB-SERVICE-001). The module
          adds the unit, or the pattern, to the polkit rule.
        '';
      };
      expect_active = mkOption {
        type = types.bool;
        default = false;
        description = "Also open an incident when the unit is inactive without having failed.";
      };
    };
  };

  # Only the bucket is required; an option left null is left out of the file
  # and the agent's default applies (docs/evidence.md).
  s3Type = types.submodule {
    freeformType = settingsFormat.type;
    options = {
      bucket = mkOption {
        type = types.str;
        description = "Bucket with Object Lock enabled; the agent checks this at start.";
      };
      prefix = mkOption {
        type = types.nullOr types.str;
        default = null;
        example = "clinic-01";
        description = "Key prefix of this host's bundles, without leading or trailing slash (agent default: the bucket's root).";
      };
      endpoint = mkOption {
        type = types.nullOr types.str;
        default = null;
        example = "http://minio.internal:9000";
        description = "Endpoint URL of a server other than AWS.";
      };
      region = mkOption {
        type = types.nullOr types.str;
        default = null;
        example = "eu-central-1";
        description = "Region of the bucket (agent default: us-east-1).";
      };
      path_style = mkOption {
        type = types.nullOr types.bool;
        default = null;
        description = "Path-style addressing, as MinIO and Ceph usually need (agent default: false).";
      };
      retention_days = mkOption {
        type = types.nullOr types.ints.positive;
        default = null;
        description = "COMPLIANCE retention of each bundle, in days (agent default: 2190, six years).";
      };
      credentials_file = mkOption {
        type = types.nullOr types.str;
        default = null;
        description = ''
          Leave unset and use
          {option}`services.msp-agent.evidence.s3.credentialsFile`, which
          hands the file over as the credential `s3-credentials`.
        '';
      };
    };
  };
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
      "The free-disk helper unit comes with the agent's disk runbook, which does not exist yet."
    )
  ];

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
        options = {
          agent = mkOption {
            default = { };
            description = "The `[agent]` table.";
            type = types.submodule {
              freeformType = settingsFormat.type;
              options = {
                state_dir = mkOption {
                  type = types.str;
                  default = "/var/lib/msp-agent";
                  description = ''
                    SQLite history, rate-limit memory, evidence spool and, unless
                    a signing key is given, the generated key. Must be below
                    /var/lib: it becomes the unit's StateDirectory=.
                  '';
                };
                dry_run = mkOption {
                  type = types.bool;
                  default = false;
                  description = "Record what would be done, do nothing.";
                };
                hostname = mkOption {
                  type = types.nullOr types.str;
                  default = null;
                  description = "Host name in evidence and metrics; null for the kernel's.";
                };
              };
            };
          };
          watch = mkOption {
            default = { };
            description = "The `[watch]` table.";
            type = types.submodule {
              freeformType = settingsFormat.type;
              options.units = mkOption {
                type = types.listOf watchUnitType;
                # The agent's embedded default: every unit, remediate nothing.
                default = [ { pattern = "*"; } ];
                defaultText = literalExpression ''[ { pattern = "*"; } ]'';
                description = ''
                  Watched units, names or glob patterns; the first match wins.
                  Setting this replaces the default, so end the list with
                  `{ pattern = "*"; }` to keep watching every other unit. The
                  module puts one entry per discovered restic backup before
                  these (see {option}`services.msp-agent.backups.restic.discover`);
                  an entry here that names such a unit exactly replaces it.
                '';
              };
            };
          };
          evidence = mkOption {
            default = { };
            description = "The `[evidence]` table.";
            type = types.submodule {
              freeformType = settingsFormat.type;
              options = {
                key_file = mkOption {
                  type = types.nullOr types.str;
                  default = null;
                  description = ''
                    Leave unset and use
                    {option}`services.msp-agent.evidence.signingKeyFile`, which
                    hands the key over as the credential `signing-key`.
                  '';
                };
                spool_max_bytes = mkOption {
                  type = types.nullOr types.ints.positive;
                  default = null;
                  example = 536870912;
                  description = "Upper bound of the local evidence spool, in bytes (agent default: 1 GiB).";
                };
                s3 = mkOption {
                  type = types.nullOr s3Type;
                  default = null;
                  description = "Where bundles go after the local spool; null keeps them local.";
                };
              };
            };
          };
        };
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

    listenAddress = mkOption {
      type = types.str;
      default = "127.0.0.1";
      example = "::";
      description = ''
        IP address of the Prometheus metrics endpoint (`GET /metrics`), an
        IPv4 or IPv6 literal: the agent takes no host name here.
      '';
    };

    port = mkOption {
      type = types.port;
      default = 9465;
      description = "Port of the Prometheus metrics endpoint (the agent's own default).";
    };

    openFirewall = mkOption {
      type = types.bool;
      default = false;
      description = "Open {option}`services.msp-agent.port` in the firewall, for a Prometheus on another host.";
    };

    evidence = {
      signingKeyFile = mkOption {
        type = secretFile;
        default = null;
        example = "/run/keys/msp-agent-signing-key";
        description = ''
          Ed25519 signing key (OpenSSH private key format), read by systemd and
          handed to the agent as the credential `signing-key`. Null: the agent
          generates a key in its state directory on first start
          (`msp-agent pubkey` prints the public half).
        '';
      };
      s3.credentialsFile = mkOption {
        type = secretFile;
        default = null;
        example = "/run/keys/msp-agent-s3";
        description = ''
          AWS-style credentials file (`aws_access_key_id`,
          `aws_secret_access_key`) for the evidence bucket, handed to the agent
          as the credential `s3-credentials`.
        '';
      };
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
        assertion = lib.hasPrefix "/var/lib/" stateDir && stateDirName != "";
        message = ''services.msp-agent.settings.agent.state_dir = "${stateDir}": it must be below /var/lib/, because the sandbox (ProtectSystem=strict) only lets the agent write its StateDirectory=.'';
      }
      {
        assertion = cfg.settings.evidence.key_file == null || cfg.evidence.signingKeyFile == null;
        message = "services.msp-agent: both settings.evidence.key_file and evidence.signingKeyFile are set; keep evidence.signingKeyFile, which hands the key over as a systemd credential.";
      }
      {
        assertion =
          cfg.settings.evidence.s3 == null
          || (cfg.settings.evidence.s3.credentials_file or null) == null
          || cfg.evidence.s3.credentialsFile == null;
        message = "services.msp-agent: both settings.evidence.s3.credentials_file and evidence.s3.credentialsFile are set; keep evidence.s3.credentialsFile, which hands the file over as a systemd credential.";
      }
      {
        assertion = cfg.evidence.s3.credentialsFile == null || cfg.settings.evidence.s3 != null;
        message = "services.msp-agent.evidence.s3.credentialsFile is set but settings.evidence.s3 (the bucket) is not; set the bucket or drop the credentials.";
      }
      {
        assertion = !(cfg.settings ? metrics && cfg.settings.metrics ? listen);
        message = "services.msp-agent.settings.metrics.listen is set by the module; use services.msp-agent.listenAddress and .port, which the firewall option follows.";
      }
      {
        assertion = isIPLiteral cfg.listenAddress;
        message = "services.msp-agent.listenAddress = \"${cfg.listenAddress}\" is not an IP address; the agent listens on an IPv4 or IPv6 literal such as \"127.0.0.1\" or \"::\".";
      }
      {
        assertion = !(cfg.openFirewall && isLoopback);
        message = "services.msp-agent.openFirewall = true, but listenAddress = \"${cfg.listenAddress}\" is a loopback address: nothing outside this host could reach it. Set listenAddress (for example \"0.0.0.0\") or leave the firewall closed.";
      }
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
        reached = helpers.protectedMatches u.pattern;
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
      ]
    ) watchUnits;

    warnings =
      optional (cfg.settings.evidence.s3 != null && cfg.evidence.s3.credentialsFile == null
        && (cfg.settings.evidence.s3.credentials_file or null) == null
      ) "services.msp-agent: settings.evidence.s3 is set without evidence.s3.credentialsFile; the agent falls back to the AWS default credential chain (instance role).";

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
      names = polkitNames;
      patterns = polkitPatterns;
    };

    networking.firewall.allowedTCPPorts = mkIf cfg.openFirewall [ cfg.port ];

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
          LoadCredential =
            optional (cfg.evidence.signingKeyFile != null) "signing-key:${cfg.evidence.signingKeyFile}"
            ++ optional (
              cfg.evidence.s3.credentialsFile != null
            ) "s3-credentials:${cfg.evidence.s3.credentialsFile}";
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

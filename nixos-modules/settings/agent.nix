# [agent]: where the agent keeps its state, and how it runs.
{
  mkSection,
  mkKey,
  mkOption,
  types,
  duration,
  ...
}:

mkSection {
  path = [ "agent" ];
  description = "Where the agent keeps its state, and how it runs.";
  keys = {
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
    reconcile_interval = mkKey {
      type = duration;
      agentDefault = "60s";
      description = "Interval of the full re-read of the watched units, which repairs any lost signal";
    };
    shutdown_grace = mkKey {
      type = duration;
      agentDefault = "30s";
      description = "How long SIGTERM waits for a runbook in flight";
    };
    disk_interval = mkKey {
      type = duration;
      agentDefault = "10s";
      description = "How often the watched mounts are sampled (statvfs)";
    };
  };

  module =
    { config, lib, ... }:
    let
      cfg = config.services.msp-agent;
      stateDir = cfg.settings.agent.state_dir;
    in
    {
      config = lib.mkIf cfg.enable {
        assertions = [
          {
            assertion = lib.hasPrefix "/var/lib/" stateDir && lib.removePrefix "/var/lib/" stateDir != "";
            message = ''services.msp-agent.settings.agent.state_dir = "${stateDir}": it must be below /var/lib/, because the sandbox (ProtectSystem=strict) only lets the agent write its StateDirectory=.'';
          }
        ];
      };
    };
}

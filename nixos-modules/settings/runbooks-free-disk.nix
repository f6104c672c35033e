# [runbooks.free_disk]: RB-DISK-001, which frees a mount with remediate = true
# through the root helper unit msp-agent-free-disk@<escaped mount>.service
# (../msp-agent.nix makes it, with TimeoutStartSec= from `timeout`).
{
  mkSection,
  mkKey,
  types,
  duration,
  ...
}:

mkSection {
  path = [
    "runbooks"
    "free_disk"
  ];
  description = "RB-DISK-001, which frees a mount with `remediate = true` in `watch.disks`, and its own rate limits.";
  keys = {
    timeout = mkKey {
      type = duration;
      agentDefault = "10m";
      description = ''
        The whole helper run; the agent waits this plus 30 s for the job,
        and the helper unit's TimeoutStartSec= is this plus 1 min
      '';
    };
    step_timeout = mkKey {
      type = duration;
      agentDefault = "2m";
      description = "Each step of the helper";
    };
    journal_vacuum_size = mkKey {
      type = types.strMatching "([0-9]+([.][0-9]+)?[BKMGTPE]?)?";
      example = "1G";
      agentDefault = ''"500M"'';
      description = ''`journalctl --vacuum-size=` when the journal is on the mount; `""` turns the journal step off'';
    };
    journal_vacuum_time = mkKey {
      type = duration;
      example = "30d";
      description = "`journalctl --vacuum-time=` as well; unset: no time limit.";
    };
    tmpfiles_clean = mkKey {
      type = types.bool;
      agentDefault = "true";
      description = "Run `systemd-tmpfiles --clean` when /tmp or /var/tmp is on the mount";
    };
    nix_gc_older_than = mkKey {
      type = types.strMatching "[0-9]+d";
      example = "14d";
      description = ''
        `nix-collect-garbage --delete-older-than` this many days (Nix takes
        only days, "14d") when /nix/store is on the mount; unset: no Nix
        step. Setting it lets the helper unit reach the Nix daemon and the
        system profiles.
      '';
    };
    max_runs = mkKey {
      type = types.ints.positive;
      agentDefault = "1";
      description = "Runs per mount within `window`";
    };
    window = mkKey {
      type = duration;
      agentDefault = "1h";
      description = "Window of `max_runs`";
    };
    min_interval = mkKey {
      type = duration;
      agentDefault = "10m";
      description = "Least time between two runs on the same mount";
    };
  };
}

# [[watch.disks]]: the watched mounts, their thresholds, and which of them
# RB-DISK-001 may free (remediate = true, with the paths it may clean in
# ./watch-disks-clean.nix). Unset, the agent watches every real mount with the
# default thresholds and frees none. The free-disk helper unit and the polkit
# rule are made from this list (../msp-agent.nix).
{
  mkSection,
  mkKey,
  mkOption,
  types,
  duration,
  literalExpression,
  ...
}:

let
  ratio =
    types.addCheck types.number (x: x > 0 && x <= 1)
    // {
      description = "ratio in (0, 1] (0.9 is 90 %)";
    };
  floor =
    types.addCheck types.number (x: x >= 0 && x < 1)
    // {
      description = "ratio in [0, 1) (0.5 is 50 %)";
    };
  level =
    what: agentDefault: description:
    mkKey {
      type = ratio;
      inherit agentDefault;
      description = "${description} (${what})";
    };
in
mkSection {
  path = [
    "watch"
    "disks"
  ];
  kind = "tableArray";
  description = ''
    Watched mounts (mount points, one entry each). Unset: every real mount
    with the default thresholds, none freed; `[ ]` watches no disk. A
    threshold left null takes the agent's default. With `remediate = true`
    RB-DISK-001 may free the mount through the helper unit
    `msp-agent-free-disk@<escaped mount>.service`, which the polkit rule
    then lets the agent start.
  '';
  example = literalExpression ''
    [
      { path = "/"; }
      {
        path = "/srv/data";
        remediate = true;
        warn_above = 0.85;
        clean = [ { path = "/srv/data/cache"; glob = "*.tmp"; older_than = "7d"; } ];
      }
    ]
  '';
  keys = {
    path = mkOption {
      type = types.str;
      example = "/var/lib/postgresql";
      description = "The mount point: absolute, no trailing slash, no `.` or `..` component.";
    };
    remediate = mkOption {
      type = types.bool;
      default = false;
      description = ''
        Let RB-DISK-001 free this mount (journal vacuum and
        `systemd-tmpfiles --clean` where they live on it, Nix garbage
        collection when `runbooks.free_disk.nix_gc_older_than` is set and
        the store is on it, and the `clean` paths). The module adds the
        helper unit's instance for this mount to the polkit rule.
      '';
    };
    warn_above = level "space" "0.90" "Used ratio above which the warning level fires";
    warn_clear = level "space" "0.80" "Used ratio below which the warning level clears";
    critical_above = level "space" "0.98" "Used ratio above which the critical level fires";
    critical_clear = level "space" "0.90" "Used ratio below which the critical level clears";
    inodes_warn_above = level "inodes" "0.90" "Inode ratio above which the warning level fires";
    inodes_warn_clear = level "inodes" "0.80" "Inode ratio below which the warning level clears";
    inodes_critical_above = level "inodes" "0.98" "Inode ratio above which the critical level fires";
    inodes_critical_clear = level "inodes" "0.90" "Inode ratio below which the critical level clears";
    hold = mkKey {
      type = duration;
      agentDefault = "1m";
      description = "How long a level must hold before it fires";
    };
    fill_floor = mkKey {
      type = floor;
      agentDefault = "0.5";
      description = "`disk_fill_rate` stays quiet below this used ratio";
    };
    fill_warn_within = mkKey {
      type = duration;
      agentDefault = "24h";
      description = "Predicted time to full below which `disk_fill_rate` warns";
    };
    fill_critical_within = mkKey {
      type = duration;
      agentDefault = "2h";
      description = "Predicted time to full below which `disk_fill_rate` is critical; shorter than `fill_warn_within`";
    };
  };

  module =
    { config, lib, ... }:
    let
      cfg = config.services.msp-agent;
      helpers = import ../lib.nix { inherit lib; };
      disks = lib.imap0 (i: d: d // { index = i; }) (
        if cfg.settings.watch.disks == null then [ ] else cfg.settings.watch.disks
      );
      at = d: "services.msp-agent.settings.watch.disks.${toString d.index}";
      # Absolute, no "//", no trailing "/" (but "/"), no "." or ".." component:
      # what the agent accepts and what systemd-escape --path gives back.
      normalised =
        p:
        p == "/"
        || (
          builtins.match "(/[^/]+)+" p != null
          && !(lib.any (c: c == "." || c == "..") (lib.splitString "/" p))
        );
      inside = mount: p: p == mount || lib.hasPrefix (if mount == "/" then "/" else mount + "/") p;
      cleanOf = d: if d.clean or null == null then [ ] else d.clean;
    in
    {
      config = lib.mkIf cfg.enable {
        assertions = lib.concatMap (
          d:
          [
            {
              assertion = normalised d.path;
              message = ''${at d}.path = "${d.path}" is not a mount point such as "/" or "/var/lib/postgresql" (absolute, no trailing slash, no "." or ".." component).'';
            }
            {
              assertion = !d.remediate || helpers.unprintableChars d.path == [ ];
              message = ''${at d}.path = "${d.path}": the helper unit's instance name can only be made from printable ASCII; free this mount through a path without other characters, or set remediate = false.'';
            }
            {
              assertion = d.remediate || cleanOf d == [ ];
              message = ''${at d}.clean is set but remediate is not: only a mount with remediate = true is freed, so set remediate = true or drop clean.'';
            }
          ]
          ++ lib.imap0 (j: c: {
            assertion = !normalised d.path || (normalised c.path && inside d.path c.path);
            message = ''${at d}.clean.${toString j}.path = "${c.path}" is outside the mount "${d.path}" (or not a normalised absolute path); RB-DISK-001 only cleans inside the mount it frees.'';
          }) (cleanOf d)
        ) disks;
      };
    };
}

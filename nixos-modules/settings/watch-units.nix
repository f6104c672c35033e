# [[watch.units]]: the watched units, first match wins. The module puts the
# discovered restic backups before these (msp-agent.nix), and the polkit rule
# is made from the same list.
{
  mkSection,
  mkOption,
  types,
  literalExpression,
  ...
}:

mkSection {
  path = [
    "watch"
    "units"
  ];
  kind = "tableArray";
  description = ''
    Watched units, names or glob patterns; the first match wins.
    Setting this replaces the default, so end the list with
    `{ pattern = "*"; }` to keep watching every other unit. The
    module puts one entry per discovered restic backup before
    these (see {option}`services.msp-agent.backups.restic.discover`);
    an entry here that names such a unit exactly replaces it.
  '';
  # The agent's embedded default: every unit, remediate nothing.
  default = [ { pattern = "*"; } ];
  defaultText = literalExpression ''[ { pattern = "*"; } ]'';
  keys = {
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
}

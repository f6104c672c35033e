# [[watch.disks.clean]]: inside one [[watch.disks]] entry with remediate = true,
# a directory RB-DISK-001 may clean: regular files below it whose name matches
# `glob` and whose mtime is older than `older_than` (never following a
# symlink, never leaving the mount).
{
  mkSection,
  mkKey,
  mkOption,
  types,
  duration,
  ...
}:

mkSection {
  path = [
    "watch"
    "disks"
    "clean"
  ];
  kind = "tableArray";
  description = ''
    Directories of this mount that RB-DISK-001 may clean; only on an entry
    with `remediate = true`.
  '';
  keys = {
    path = mkOption {
      type = types.str;
      example = "/srv/data/cache";
      description = "Absolute, normalised path: the mount itself or inside it.";
    };
    glob = mkKey {
      type = types.str;
      example = "*.log";
      agentDefault = ''"*"'';
      description = "Glob matched against file names in the tree below `path`";
    };
    older_than = mkOption {
      type = duration;
      example = "7d";
      description = "Only files whose mtime is older than this are deleted.";
    };
  };
}

# Which VM test runs which shared scenario, and which VM tests have any.
#
# A scenario belongs to the first group with a word in the name of its file in
# vm-tests/scenarios/ (a scenario defined in __init__.py itself: in the name of
# its function); a scenario of no group belongs to "remediation". The same
# rule serves two readers, so they cannot disagree:
#   * flake.nix puts a VM test into `checks` only when its group has a
#     scenario file: a test whose scenarios do not exist yet would fail by
#     construction;
#   * vm-tests/common.nix hands the groups to the testScript, which runs the
#     scenarios of its own group.
# "disk" is vm-disk (vm-tests/disk.nix), in `checks` once a scenario file
# named for it (vm-tests/scenarios/disk_*.py) exists.
{ lib }:

rec {
  # In matching order.
  groups = [
    {
      name = "backup";
      words = [ "backup" ];
    }
    {
      name = "evidence";
      words = [
        "evidence"
        "s3"
        "spool"
        "tamper"
        "verify"
      ];
    }
    {
      name = "disk";
      words = [ "disk" ];
    }
  ];

  groupOf =
    name:
    let
      hit = lib.findFirst (g: lib.any (w: lib.hasInfix w name) g.words) null groups;
    in
    if hit == null then "remediation" else hit.name;

  # The scenario files among a directory's file names: Python modules other
  # than the package's __init__.py and the shared helpers.
  scenarioFiles = lib.filter (
    f: lib.hasSuffix ".py" f && !(lib.elem f [ "__init__.py" "common.py" ])
  );

  # The groups that have at least one scenario file, sorted.
  groupsWithScenarios =
    fileNames: lib.sort lib.lessThan (lib.unique (map groupOf (scenarioFiles fileNames)));

  # The same for a directory (vm-tests/scenarios).
  groupsIn = dir: groupsWithScenarios (lib.attrNames (builtins.readDir dir));
}

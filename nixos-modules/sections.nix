# The generator of services.msp-agent.settings: each table of the agent's
# TOML file is declared once, in its own file under ./settings/ (listed in
# ./settings/default.nix), as a call of `mkSection`; `settingsOptions` builds
# the nested option tree of `settings` from those declarations. The model is
# nixpkgs' prometheus exporters (one function for the options, one file per
# exporter).
#
# A section file is a function of the arguments below and returns one
# `mkSection { ... }`:
#
#   # ./settings/journal.nix
#   { mkSection, mkKey, types, duration, ... }:
#   mkSection {
#     path = [ "journal" ];
#     description = "Following the journal.";
#     keys.max_lag = mkKey {
#       type = duration;
#       agentDefault = "30s";
#       description = "How far the reader may fall behind";
#     };
#   }
#
# Kinds of section:
#   "table"          [a.b], always present (default { }); unset keys are left out,
#                    and so is a table left empty by that.
#   "optionalTable"  [a.b], null (not rendered) until set, e.g. [evidence.s3].
#   "tableArray"     [[a.b]], a list of tables: the `default` list, or null (not
#                    rendered) until set when there is no default.
#   "map"            [a.b] mapping free names to `valueType`, null until set.
# Every table also takes keys it does not declare (freeformType), passed
# through as written. A section's parents need no file of their own: [watch]
# of [[watch.units]] is made as a plain table. A section below a "tableArray"
# belongs to each of its entries: [[watch.disks.clean]] is the list `clean`
# of every [[watch.disks]] entry. Only a "map" holds no sections. A section may bring `module`, a
# NixOS module imported by msp-agent.nix (its own top-level options,
# assertions, unit settings), and `derive`, a function of
# config.services.msp-agent returning keys the module writes into the table
# itself (they win over `settings`).
#
# No pkgs here: the sections, and the modules they bring, are read while the
# module system is still collecting imports.
{ lib }:

let
  inherit (lib) mkOption types;

  dotted = lib.concatStringsSep ".";
  kinds = [
    "table"
    "optionalTable"
    "tableArray"
    "map"
  ];

  # A duration as the agent reads it (humantime): "30s", "5m", "1h 30m".
  duration = types.strMatching "([0-9]+ *[a-zA-Z]+ *)+" // {
    description = ''duration string such as "30s", "5m" or "1h 30m"'';
  };

  # One key whose default is the agent's own: left null, it is not written
  # and the agent's default applies; `agentDefault` names that default in the
  # description. Further attributes go to mkOption as they are.
  mkKey =
    {
      type,
      description,
      agentDefault ? null,
      ...
    }@args:
    mkOption (
      {
        type = types.nullOr type;
        default = null;
        description =
          if agentDefault == null then description else "${description} (agent default: ${agentDefault}).";
      }
      // removeAttrs args [
        "type"
        "description"
        "agentDefault"
      ]
    );

  # One table of the file; see the header for the arguments.
  mkSection =
    {
      path,
      description,
      kind ? "table",
      keys ? { },
      default ? null,
      defaultText ? null,
      example ? null,
      valueType ? types.str,
      module ? { },
      derive ? null,
    }:
    if !(lib.elem kind kinds) then
      throw "msp-agent settings section [${dotted path}]: unknown kind \"${kind}\" (one of ${lib.concatStringsSep ", " kinds})"
    else if path == [ ] then
      throw "msp-agent settings section: empty path"
    else
      {
        inherit
          path
          description
          kind
          keys
          default
          defaultText
          example
          valueType
          module
          derive
          ;
      };

  # The arguments a section file is called with.
  sectionArgs = {
    inherit
      lib
      mkKey
      mkSection
      duration
      ;
    inherit (lib) types mkOption literalExpression;
  };
in
{
  inherit
    duration
    mkKey
    mkSection
    sectionArgs
    ;

  # The sections of a list of files (./settings/default.nix).
  load = files: map (file: import file sectionArgs) files;

  # The options of the `settings` submodule: one option per top-level table,
  # each section's option at its path, children inside their parent's table.
  settingsOptions =
    freeformType: sections:
    let
      tableOf =
        options:
        types.submodule {
          inherit freeformType options;
        };
      withExample = section: lib.optionalAttrs (section.example != null) { inherit (section) example; };

      optionFor =
        path: section: children:
        let
          name = dotted path;
          clash = lib.attrNames (lib.intersectAttrs children (if section == null then { } else section.keys));
        in
        if clash != [ ] then
          throw "msp-agent settings section [${name}]: key and table both named ${lib.concatStringsSep ", " clash}"
        else if section == null then
          mkOption {
            default = { };
            description = "The `[${name}]` table.";
            type = tableOf children;
          }
        else if section.kind == "table" then
          mkOption (
            {
              default = { };
              description = "The `[${name}]` table. ${section.description}";
              type = tableOf (section.keys // children);
            }
            // withExample section
          )
        else if section.kind == "optionalTable" then
          mkOption (
            {
              default = null;
              description = "The `[${name}]` table, written only when set. ${section.description}";
              type = types.nullOr (tableOf (section.keys // children));
            }
            // withExample section
          )
        else if section.kind == "tableArray" then
          mkOption (
            {
              inherit (section) default;
              description =
                "The `[[${name}]]` tables"
                + lib.optionalString (section.default == null) ", written only when set"
                + ". ${section.description}";
              type =
                if section.default == null then
                  types.nullOr (types.listOf (tableOf (section.keys // children)))
                else
                  types.listOf (tableOf (section.keys // children));
            }
            // lib.optionalAttrs (section.defaultText != null) { inherit (section) defaultText; }
            // withExample section
          )
        else if children != { } then
          throw "msp-agent settings section [${name}] (${section.kind}) cannot hold the tables ${lib.concatStringsSep ", " (lib.attrNames children)}"
        else
          mkOption (
            {
              default = null;
              description = "The `[${name}]` table, written only when set. ${section.description}";
              type = types.nullOr (types.attrsOf section.valueType);
            }
            // withExample section
          );

      optionsAt =
        prefix:
        let
          n = lib.length prefix;
          below = lib.filter (s: lib.length s.path > n && lib.take n s.path == prefix) sections;
          names = lib.unique (map (s: lib.elemAt s.path n) below);
        in
        lib.genAttrs names (
          name:
          let
            path = prefix ++ [ name ];
          in
          optionFor path (lib.findFirst (s: s.path == path) null sections) (optionsAt path)
        );

      paths = map (s: dotted s.path) sections;
      duplicates = lib.unique (lib.filter (p: lib.count (q: q == p) paths > 1) paths);
    in
    if duplicates != [ ] then
      throw "msp-agent settings: more than one section declares [${lib.concatStringsSep "], [" duplicates}]"
    else
      optionsAt [ ];

  # The NixOS modules the sections bring.
  modules = sections: map (s: s.module) sections;

  # What the sections derive from the module's options, as one attribute set
  # of tables.
  derived =
    cfg: sections:
    lib.foldl' lib.recursiveUpdate { } (
      map (s: lib.setAttrByPath s.path (s.derive cfg)) (lib.filter (s: s.derive != null) sections)
    );

  # TOML has no null: an unset key is left out of the file, and so is a table
  # left empty by that.
  stripNulls =
    let
      strip =
        v:
        if builtins.isAttrs v then
          lib.filterAttrs (_: x: x != { }) (lib.mapAttrs (_: strip) (lib.filterAttrs (_: x: x != null) v))
        else if builtins.isList v then
          map strip (lib.filter (x: x != null) v)
        else
          v;
    in
    strip;
}

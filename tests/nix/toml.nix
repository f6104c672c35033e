# A small TOML writer for the module-logic check. The real pkgs.formats.toml
# renders through remarshal (a build step); here the file has to exist at
# evaluation time, so the stub pkgs renders it with this instead. Like
# remarshal it fails on null, which TOML cannot express.
{ lib }:

let
  bareKey = k: builtins.match "[A-Za-z0-9_-]+" k != null;
  key = k: if bareKey k then k else builtins.toJSON k;
  dotted = path: lib.concatMapStringsSep "." key path;

  isTable = builtins.isAttrs;
  isTableArray = v: builtins.isList v && v != [ ] && lib.all builtins.isAttrs v;

  inline =
    path: v:
    if v == null then
      throw "TOML cannot express null (at ${dotted path})"
    else if builtins.isBool v then
      lib.boolToString v
    else if builtins.isInt v || builtins.isFloat v then
      toString v
    else if builtins.isString v || builtins.isPath v then
      builtins.toJSON (toString v)
    else if builtins.isList v then
      "[" + lib.concatMapStringsSep ", " (inline path) v + "]"
    else if builtins.isAttrs v then
      "{ "
      + lib.concatStringsSep ", " (lib.mapAttrsToList (k: x: "${key k} = ${inline (path ++ [ k ]) x}") v)
      + " }"
    else
      throw "TOML: unsupported value at ${dotted path}";

  # A table that holds only other tables needs no header of its own.
  header =
    path: attrs:
    let
      children = lib.filter (v: isTable v || isTableArray v) (lib.attrValues attrs);
    in
    if attrs != { } && lib.length children == lib.length (lib.attrValues attrs) then
      ""
    else
      "\n[${dotted path}]\n";

  table =
    path: attrs:
    let
      scalars = lib.filterAttrs (_: v: !(isTable v) && !(isTableArray v)) attrs;
      tables = lib.filterAttrs (_: isTable) attrs;
      arrays = lib.filterAttrs (_: isTableArray) attrs;
      body = lib.concatStrings (lib.mapAttrsToList (k: v: "${key k} = ${inline (path ++ [ k ]) v}\n") scalars);
    in
    body
    + lib.concatStrings (lib.mapAttrsToList (k: v: header (path ++ [ k ]) v + table (path ++ [ k ]) v) tables)
    + lib.concatStrings (
      lib.mapAttrsToList (
        k: vs: lib.concatMapStrings (v: "\n[[${dotted (path ++ [ k ])}]]\n" + table (path ++ [ k ]) v) vs
      ) arrays
    );
in
{
  toTOML = value: lib.removePrefix "\n" (table [ ] value);
}

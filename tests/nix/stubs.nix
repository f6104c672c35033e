# Minimal stand-ins for the parts of NixOS and nixpkgs the msp-agent module
# touches, so the module can be evaluated with nothing but nixpkgs' lib.
#
# Each declaration mirrors the real option's type (read from nixpkgs: the
# systemd unit options merge lists by concatenation and other values only when
# equal; security.polkit.extraConfig is `lines`; environment.etc.<name>.source a
# path; services.restic.backups an attrsOf submodule whose option names changed
# between releases, hence freeform here). pkgs.formats.toml keeps the real value
# type (no null) and renders with ./toml.nix instead of remarshal.
{ lib }:

let
  inherit (lib) mkOption types;
  toml = import ./toml.nix { inherit lib; };

  fakePackage =
    name:
    let
      self = {
        type = "derivation";
        inherit name;
        pname = name;
        outPath = "/nix/store/00000000000000000000000000000000-${name}";
        out = self;
        meta.mainProgram = name;
      };
    in
    self;

  # nixos/lib/systemd-unit-options.nix
  unitOption = lib.mkOptionType {
    name = "systemd option";
    merge =
      loc: defs:
      let
        defs' = lib.filterOverrides defs;
      in
      if lib.any (def: lib.isList def.value) defs' then
        lib.concatMap (def: lib.toList def.value) defs'
      else
        lib.mergeEqualOption loc defs';
  };

  strList = mkOption {
    type = types.listOf types.str;
    default = [ ];
  };

  serviceType = types.submodule {
    options = {
      description = mkOption {
        type = types.str;
        default = "";
      };
      wantedBy = strList;
      wants = strList;
      after = strList;
      before = strList;
      requires = strList;
      requiredBy = strList;
      path = mkOption {
        type = types.listOf types.package;
        default = [ ];
      };
      environment = mkOption {
        type = types.attrsOf (
          types.nullOr (
            types.oneOf [
              types.str
              types.path
              types.package
            ]
          )
        );
        default = { };
      };
      serviceConfig = mkOption {
        type = types.attrsOf unitOption;
        default = { };
      };
      unitConfig = mkOption {
        type = types.attrsOf unitOption;
        default = { };
      };
      restartTriggers = mkOption {
        type = types.listOf types.unspecified;
        default = [ ];
      };
      restartIfChanged = mkOption {
        type = types.bool;
        default = true;
      };
      script = mkOption {
        type = types.lines;
        default = "";
      };
    };
  };

  freeform = types.submodule { freeformType = types.attrsOf types.anything; };
in
{
  inherit fakePackage;

  pkgs = {
    formats.toml =
      { }:
      {
        # pkgs/pkgs-lib/formats.nix
        type =
          let
            valueType =
              types.oneOf [
                types.bool
                types.int
                types.float
                types.str
                types.path
                (types.attrsOf valueType)
                (types.listOf valueType)
              ]
              // {
                description = "TOML value";
              };
          in
          valueType;
        generate = name: value: builtins.toFile name (toml.toTOML value);
      };
    # A build step; here its "output" is its string inputs and its script, so
    # a check can read what would run.
    runCommand =
      name: env: script:
      builtins.toFile name (
        lib.concatStrings (lib.mapAttrsToList (k: v: lib.optionalString (builtins.isString v) "${k}: ${v}\n") env)
        + script
      );
    restic = fakePackage "restic";
    msp-agent = fakePackage "msp-agent";

    # For the VM test files: runNixOSTest hands back its argument, so the
    # nodes and the testScript can be inspected.
    inherit lib;
    testers.runNixOSTest = test: test;
    writeText = name: text: builtins.toFile name text;
    linkFarm = name: _entries: "/nix/store/00000000000000000000000000000000-${name}";
    runtimeShell = "/nix/store/00000000000000000000000000000000-bash/bin/bash";
    coreutils = fakePackage "coreutils";
    sqlite = fakePackage "sqlite";
    jq = fakePackage "jq";
    util-linux = fakePackage "util-linux";
    openssh = fakePackage "openssh";
    python3 = fakePackage "python3";
    minio-client = fakePackage "minio-client";
  };

  # What the VM test nodes set besides the module's options.
  vmOptions = {
    options = {
      systemd.units = mkOption {
        type = types.attrsOf (
          types.submodule {
            options.text = mkOption { type = types.str; };
            options.wantedBy = strList;
          }
        );
        default = { };
      };
      systemd.tmpfiles.rules = strList;
      virtualisation.memorySize = mkOption {
        type = types.int;
        default = 1024;
      };
      virtualisation.fileSystems = mkOption {
        type = types.attrsOf freeform;
        default = { };
      };
      services.minio = mkOption {
        type = freeform;
        default = { };
      };
    };
  };

  # services.restic.backups as the RFC 42 rework declares it: settings.RESTIC_*.
  resticSettings = {
    options.services.restic.backups = mkOption {
      type = types.attrsOf (
        types.submodule {
          options.settings = mkOption {
            type = types.attrsOf types.anything;
            default = { };
          };
        }
      );
    };
  };

  nixosOptions = {
    options = {
      assertions = mkOption {
        type = types.listOf types.unspecified;
        default = [ ];
      };
      warnings = mkOption {
        type = types.listOf types.str;
        default = [ ];
      };
      users.users = mkOption {
        type = types.attrsOf freeform;
        default = { };
      };
      users.groups = mkOption {
        type = types.attrsOf freeform;
        default = { };
      };
      environment.systemPackages = mkOption {
        type = types.listOf types.package;
        default = [ ];
      };
      environment.etc = mkOption {
        type = types.attrsOf (
          types.submodule {
            options.source = mkOption { type = types.path; };
          }
        );
        default = { };
      };
      security.polkit.enable = mkOption {
        type = types.bool;
        default = false;
      };
      security.polkit.extraConfig = mkOption {
        type = types.lines;
        default = "";
      };
      networking.firewall.allowedTCPPorts = mkOption {
        type = types.listOf types.port;
        default = [ ];
      };
      systemd.package = mkOption {
        type = types.package;
        default = fakePackage "systemd";
      };
      nix.package = mkOption {
        type = types.package;
        default = fakePackage "nix";
      };
      systemd.services = mkOption {
        type = types.attrsOf serviceType;
        default = { };
      };
      services.restic.backups = mkOption {
        type = types.attrsOf freeform;
        default = { };
      };
      services.grafana.enable = mkOption {
        type = types.bool;
        default = false;
      };
      services.grafana.provision = mkOption {
        type = freeform;
        default = { };
      };
    };
  };
}

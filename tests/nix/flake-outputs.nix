# flake.nix's outputs function called with a stand-in nixpkgs (nixpkgs.lib plus
# the stub packages of ./stubs.nix, where buildRustPackage hands back its
# arguments): the outputs exist with the right names, the package's source
# holds what cargo needs and nothing else, and nixosModules.default brings the
# flake's own package. tests/nix/check.sh runs this beside ./module.nix.
{
  nixpkgsLib,
  root ? ../..,
}:

let
  lib = import (nixpkgsLib + "/lib");
  stubs = import ./stubs.nix { inherit lib; };
  flake = import (root + "/flake.nix");
  systems = [
    "x86_64-linux"
    "aarch64-linux"
  ];

  pkgsFor =
    system:
    let
      pkgs = stubs.pkgs // {
        stdenv.hostPlatform.system = system;
        callPackage = f: args: f (builtins.intersectAttrs (builtins.functionArgs f) pkgs // args);
        rustPlatform.buildRustPackage =
          attrs:
          let
            drv = attrs // {
              type = "derivation";
              name = "${attrs.pname}-${attrs.version}";
              outPath = "/nix/store/00000000000000000000000000000000-${attrs.pname}-${attrs.version}";
              nativeBuildInputs = attrs.nativeBuildInputs or [ ];
              overrideAttrs = f: drv // f drv;
            };
          in
          drv;
        mkShell = attrs: attrs // { type = "derivation"; };
        cmake = stubs.fakePackage "cmake";
        clippy = stubs.fakePackage "clippy";
        rustfmt = stubs.fakePackage "rustfmt";
        rust-analyzer = stubs.fakePackage "rust-analyzer";
        python3 = stubs.fakePackage "python3";
        nixfmt = stubs.fakePackage "nixfmt";
        nixfmt-tree = stubs.fakePackage "nixfmt-tree";
      };
    in
    pkgs;

  nixpkgs = {
    outPath = nixpkgsLib;
    inherit lib;
    legacyPackages = lib.genAttrs systems pkgsFor;
  };
  self = flake.outputs { inherit self nixpkgs; } // {
    outPath = root;
  };

  x86 = "x86_64-linux";
  pkg = self.packages.${x86}.default;
  srcFiles =
    let
      walk =
        dir: prefix:
        lib.concatLists (
          lib.mapAttrsToList (
            name: type:
            if type == "directory" then walk (dir + "/${name}") "${prefix}${name}/" else [ "${prefix}${name}" ]
          ) (builtins.readDir dir)
        );
    in
    walk pkg.src "";

  moduleConfig =
    (lib.evalModules {
      modules = [
        stubs.nixosOptions
        self.nixosModules.default
        {
          services.msp-agent.enable = true;
          services.msp-agent.checkConfig = false;
        }
      ];
      specialArgs.pkgs = pkgsFor x86;
    }).config;

  # lib.fileset needs builtins.readFileType (Nix 2.14); an older Nix, such as
  # Debian 12's 2.8, skips the checks of the package's source.
  canReadSource = builtins ? readFileType;
  checkSource =
    name: actual: expected:
    if canReadSource then
      check name actual expected
    else
      {
        inherit name;
        ok = true;
        skip = "lib.fileset needs Nix >= 2.14 (builtins.readFileType); this is ${builtins.nixVersion}";
        detail = "";
      };

  check =
    name: actual: expected:
    let
      r = builtins.tryEval (builtins.deepSeq actual actual);
    in
    {
      inherit name;
      ok = r.success && r.value == expected;
      detail =
        if r.success then
          "expected ${builtins.toJSON expected}, got ${builtins.toJSON r.value}"
        else
          "evaluation failed";
    };
  cargoToml = builtins.fromTOML (builtins.readFile (root + "/Cargo.toml"));

  # The VM tests wired into checks: those whose group has a scenario file.
  vmGroups = import (root + "/vm-tests/groups.nix") { inherit lib; };
  wiredGroups = vmGroups.groupsIn (root + "/vm-tests/scenarios");
  vmNodes = {
    vm-remediation = [ "agent" ];
    vm-backup = [ "agent" ];
    vm-evidence = [
      "agent"
      "s3"
    ];
    vm-disk = [ "agent" ];
  };
in
{
  # The checks of x86_64-linux by name: check.sh compares them for this tree
  # and for a copy with a disk scenario file.
  checkNames = lib.attrNames self.checks.${x86};

  results = [
    (check "flake: outputs" (lib.attrNames self) [
      "checks"
      "devShells"
      "formatter"
      "nixosModules"
      "outPath"
      "overlays"
      "packages"
    ])
    (check "flake: packages, checks and dev shells for both Linux systems" (map (
      o: lib.attrNames self.${o}
    ) [ "packages" "checks" "devShells" "formatter" ]) (lib.genList (_: lib.sort lib.lessThan systems) 4))
    (check "flake: packages" (lib.attrNames self.packages.${x86}) [
      "default"
      "msp-agent"
    ])
    (check "flake: checks are the package, clippy, fmt, module-logic and the VM tests that have scenarios" (lib.attrNames self.checks.${x86}) (
      lib.sort lib.lessThan (
        [
          "clippy"
          "fmt"
          "module-logic"
          "package"
        ]
        ++ map (g: "vm-${g}") (lib.filter (g: vmNodes ? "vm-${g}") wiredGroups)
      )
    ))
    (check "flake: vm-remediation is wired (vm-tests/scenarios has its scenarios)" (self.checks.${x86} ? vm-remediation) true)
    (check "vm-tests/groups.nix: a VM test is wired only when a scenario file of its group exists" (map vmGroups.groupsWithScenarios [
      [
        "__init__.py"
        "common.py"
        "service_restart.py"
        "config_typo.py"
      ]
      [
        "__init__.py"
        "service_restart.py"
        "backup_rerun.py"
        "s3_outage.py"
        "disk_fill.py"
        "tampered_bundle.py"
        "README.md"
      ]
      [
        "__init__.py"
        "common.py"
        "evidence_upload.py"
      ]
    ]) [
      [ "remediation" ]
      [
        "backup"
        "disk"
        "evidence"
        "remediation"
      ]
      [ "evidence" ]
    ])
    (check "flake: nixosModules" (lib.attrNames self.nixosModules) [
      "default"
      "msp-agent"
    ])
    (check "flake: package from Cargo.toml and Cargo.lock, sandbox-only tests skipped" {
      inherit (pkg) pname version checkFlags;
      lock = pkg.cargoLock.lockFile == root + "/Cargo.lock";
      checkInputs = map (p: p.name) pkg.nativeCheckInputs;
    } {
      checkInputs = [ "openssh" ];
      pname = "msp-agent";
      inherit (cargoToml.package) version;
      checkFlags = [
        "--skip=system_"
        "--skip=s3_"
      ];
      lock = true;
    })
    (checkSource "flake: the package's source is what cargo reads" (lib.filter (
      f:
      !(lib.elem f [
        "Cargo.toml"
        "Cargo.lock"
      ])
      && !(lib.hasPrefix "src/" f)
      && !(lib.hasPrefix "tests/" f)
      && !(lib.hasPrefix "dist/" f)
      && !(lib.hasPrefix "docs/" f)
      && !(lib.hasPrefix "benches/" f)
      && !(lib.hasPrefix "examples/" f)
      && f != "build.rs"
    ) srcFiles) [ ])
    (checkSource "flake: the bench and the Nix checks are not part of the package's source" (lib.filter (
      f: lib.hasPrefix "tests/bench/" f || lib.hasPrefix "tests/nix/" f
    ) srcFiles) [ ])
    (checkSource "flake: the source holds the crate's entry points" (lib.all (f: lib.elem f srcFiles) [
      "Cargo.toml"
      "Cargo.lock"
      "src/main.rs"
      "src/lib.rs"
    ]) true)
    (check "flake: overlay adds pkgs.msp-agent" ((self.overlays.default (pkgsFor x86) { }).msp-agent.pname)
      "msp-agent"
    )
    (check "flake: nixosModules.default runs the flake's own package"
      moduleConfig.systemd.services.msp-agent.serviceConfig.ExecStart
      "${pkg}/bin/msp-agent run --config /etc/msp-agent/config.toml"
    )
    (checkSource "flake: clippy and fmt are derivations that deny warnings" {
      clippy = lib.hasInfix "cargo clippy --offline --frozen --all-targets -- -D warnings" self.checks.${x86}.clippy.buildPhase;
      fmt = lib.hasInfix "rustfmt --check --edition ${cargoToml.package.edition}" (
        builtins.readFile self.checks.${x86}.fmt
      );
    } {
      clippy = true;
      fmt = true;
    })
    (check "flake: the module-logic check passes against this lib" (
      let
        report = builtins.readFile self.checks.${x86}.module-logic;
      in
      lib.hasInfix "ok    minimal: config file" report && !(lib.hasInfix "\nFAIL  " report)
    ) true)
    (check "flake: vm-tests/disk.nix is a NixOS test of the agent node, wired or not" (
      let
        t = import (root + "/vm-tests/disk.nix") {
          pkgs = pkgsFor x86;
          vmTests = import (root + "/vm-tests/common.nix") {
            pkgs = pkgsFor x86;
            module = self.nixosModules.default;
          };
        };
      in
      {
        inherit (t) name;
        nodes = lib.attrNames t.nodes;
        runsDiskScenarios = lib.hasInfix ''run_scenarios(agent, "disk")'' t.testScript;
      }
    ) {
      name = "msp-agent-disk";
      nodes = [ "agent" ];
      runsDiskScenarios = true;
    })
    (check "flake: the wired VM tests are NixOS tests with their nodes" (lib.mapAttrs (_: t: lib.attrNames t.nodes) (
      lib.filterAttrs (n: _: lib.hasPrefix "vm-" n) self.checks.${x86}
    )) (lib.filterAttrs (n: _: self.checks.${x86} ? ${n}) vmNodes))
  ];
}

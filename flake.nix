{
  description = "msp-agent: keeps NixOS servers healthy and proves it with signed evidence";

  # nixos-25.11 ships rustc 1.91, the crate's rust-version.
  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-25.11";

  outputs =
    { self, nixpkgs }:
    let
      inherit (nixpkgs) lib;
      systems = [
        "x86_64-linux"
        "aarch64-linux"
      ];
      forAllSystems = f: lib.genAttrs systems (system: f nixpkgs.legacyPackages.${system});
      cargoToml = builtins.fromTOML (builtins.readFile ./Cargo.toml);

      # Only what cargo and the tests read (docs/: the evidence tests run the
      # auditor's steps of docs/evidence.md verbatim); editing the bench, the
      # VM tests or the Nix files does not rebuild the agent.
      src = lib.fileset.toSource {
        root = ./.;
        fileset = lib.fileset.unions (
          [
            ./Cargo.toml
            ./Cargo.lock
            ./src
            (lib.fileset.difference (lib.fileset.maybeMissing ./tests) (
              lib.fileset.unions [
                (lib.fileset.maybeMissing ./tests/bench)
                (lib.fileset.maybeMissing ./tests/nix)
                (lib.fileset.maybeMissing ./tests/run.sh)
              ]
            ))
          ]
          ++ map lib.fileset.maybeMissing [
            ./build.rs
            ./benches
            ./examples
            ./dist
            ./docs
          ]
        );
      };

      package =
        {
          lib,
          rustPlatform,
          cmake,
          openssh,
        }:
        rustPlatform.buildRustPackage {
          pname = cargoToml.package.name;
          inherit (cargoToml.package) version;
          inherit src;
          cargoLock.lockFile = ./Cargo.lock;

          # rusqlite bundles SQLite and aws-lc-sys builds AWS-LC, both with the C
          # compiler of stdenv; aws-lc-sys falls back to CMake where its own
          # build does not apply. No OpenSSL (rustls), no pkg-config.
          nativeBuildInputs = [ cmake ];
          dontUseCmakeConfigure = true;

          # Tests that need a real systemd, D-Bus or S3 server are named system_*
          # and s3_* (and skip themselves without MSP_AGENT_SYSTEM_TESTS or
          # MSP_AGENT_S3_ENDPOINT); the sandbox has none of these.
          checkFlags = [
            "--skip=system_"
            "--skip=s3_"
          ];
          # The evidence tests check signatures with the real ssh-keygen.
          nativeCheckInputs = [ openssh ];

          postInstall = ''
            if [ -d dist/grafana ]; then
              install -Dm644 -t $out/share/msp-agent/grafana dist/grafana/*.json
            fi
          '';

          meta = {
            inherit (cargoToml.package) description;
            license = lib.licenses.asl20;
            mainProgram = "msp-agent";
            platforms = lib.platforms.linux;
          };
        };
    in
    {
      overlays.default = final: _prev: { msp-agent = final.callPackage package { }; };

      packages = forAllSystems (pkgs: rec {
        msp-agent = pkgs.callPackage package { };
        default = msp-agent;
      });

      nixosModules.msp-agent =
        { lib, pkgs, ... }:
        {
          imports = [ ./nixos-modules/msp-agent.nix ];
          services.msp-agent.package = lib.mkDefault self.packages.${pkgs.stdenv.hostPlatform.system}.default;
        };
      nixosModules.default = self.nixosModules.msp-agent;

      devShells = forAllSystems (pkgs: {
        default = pkgs.mkShell {
          inputsFrom = [ self.packages.${pkgs.stdenv.hostPlatform.system}.default ];
          packages = with pkgs; [
            clippy
            rustfmt
            rust-analyzer
            sqlite
            restic
            jq
            python3
            nixfmt
          ];
        };
      });

      formatter = forAllSystems (pkgs: pkgs.nixfmt-tree);

      checks = forAllSystems (
        pkgs:
        let
          system = pkgs.stdenv.hostPlatform.system;
          agent = self.packages.${system}.default;
          vmTests = import ./vm-tests/common.nix {
            inherit pkgs;
            module = self.nixosModules.default;
          };
          # A VM test joins the checks once vm-tests/scenarios/ has a scenario
          # of its group (vm-tests/groups.nix); until then it would fail by
          # construction. The files stay evaluated by module-logic either way.
          vmTestFiles = {
            remediation = ./vm-tests/remediation.nix;
            backup = ./vm-tests/backup.nix;
            evidence = ./vm-tests/evidence.nix;
            disk = ./vm-tests/disk.nix;
          };
          vmGroups = (import ./vm-tests/groups.nix { inherit lib; }).groupsIn ./vm-tests/scenarios;
          vmChecks = lib.mapAttrs' (
            group: file: lib.nameValuePair "vm-${group}" (import file { inherit pkgs vmTests; })
          ) (lib.filterAttrs (group: _: lib.elem group vmGroups) vmTestFiles);
          moduleLogic = import ./tests/nix/module.nix {
            nixpkgsLib = nixpkgs.outPath;
            distUnit =
              if builtins.pathExists ./dist/systemd/msp-agent.service then
                builtins.readFile ./dist/systemd/msp-agent.service
              else
                null;
            distFreeDiskUnit =
              if builtins.pathExists (./dist/systemd + "/msp-agent-free-disk@.service") then
                builtins.readFile (./dist/systemd + "/msp-agent-free-disk@.service")
              else
                null;
          };
        in
        vmChecks
        // {
          package = agent;

          clippy = agent.overrideAttrs (old: {
            pname = "msp-agent-clippy";
            nativeBuildInputs = old.nativeBuildInputs ++ [ pkgs.clippy ];
            buildPhase = ''
              runHook preBuild
              cargo clippy --offline --frozen --all-targets -- -D warnings
              runHook postBuild
            '';
            doCheck = false;
            installPhase = "mkdir -p $out";
            dontFixup = true;
          });

          # rustfmt on the files themselves: `cargo fmt` would ask cargo to resolve
          # the dependencies, which the sandbox cannot fetch.
          fmt = pkgs.runCommand "msp-agent-fmt" { nativeBuildInputs = [ pkgs.rustfmt ]; } ''
            cd ${src}
            find . -name '*.rs' -print0 | xargs -0 rustfmt --check --edition ${cargoToml.package.edition}
            touch $out
          '';

          # tests/nix/module.nix against this nixpkgs' own lib (check.sh runs the
          # same cases against a copy of nixpkgs.lib where Nix cannot build).
          module-logic = pkgs.runCommand "msp-agent-module-logic" {
            report = lib.concatMapStrings (
              r: (if r.ok then "ok    " else "FAIL  ") + r.name + lib.optionalString (!r.ok) ": ${r.detail}" + "\n"
            ) moduleLogic.results;
            passAsFile = [ "report" ];
          } ''
            cat "$reportPath"
            if grep -q '^FAIL' "$reportPath"; then exit 1; fi
            cp "$reportPath" $out
          '';
        }
      );
    };
}

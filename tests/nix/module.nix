# The msp-agent NixOS module evaluated with nixpkgs' lib.evalModules against
# the stubs in ./stubs.nix: one case per behaviour, each a configuration and
# what must come out of it (rendered config file, ExecStart, credentials,
# polkit rule, sandbox, assertions). Every rendered config file is handed
# back too (`configs`), so check.sh can run `msp-agent check-config` on each.
# tests/nix/check.sh runs this with
#   nix-instantiate --eval --strict --json tests/nix/module.nix --arg nixpkgsLib PATH
# and prints one line per result.
{
  nixpkgsLib,
  root ? ../..,
  # Text of dist/systemd/msp-agent.service, when it exists.
  distUnit ? null,
  # Text of dist/systemd/msp-agent-free-disk@.service, when it exists.
  distFreeDiskUnit ? null,
}:

let
  lib = import (nixpkgsLib + "/lib");
  stubs = import ./stubs.nix { inherit lib; };
  unit = import (root + "/nixos-modules/unit.nix");
  helpers = import (root + "/nixos-modules/lib.nix") { inherit lib; };

  eval =
    settings:
    (lib.evalModules {
      modules = [
        stubs.nixosOptions
        (root + "/nixos-modules/msp-agent.nix")
        settings
      ];
      specialArgs.pkgs = stubs.pkgs;
    }).config;

  # The parts of a configuration the module writes, forced completely: a type
  # error only shows when its value is forced.
  forced =
    c:
    builtins.deepSeq {
      inherit (c)
        assertions
        warnings
        users
        environment
        security
        networking
        systemd
        ;
      grafana = c.services.grafana;
    } c;

  enabled = extra: {
    imports = [ extra ];
    services.msp-agent = {
      enable = true;
      # The checked variant is its own case; here the file is the plain render.
      checkConfig = lib.mkDefault false;
    };
  };

  agentService = c: c.systemd.services.msp-agent.serviceConfig;
  configText = c: builtins.readFile c.environment.etc."msp-agent/config.toml".source;
  failedAssertions = c: map (a: a.message) (lib.filter (a: !a.assertion) c.assertions);

  show = v: builtins.toJSON v;

  # One result: the value computed from a configuration against what it must be.
  check =
    name: actual: expected:
    let
      r = builtins.tryEval (builtins.deepSeq actual actual);
    in
    if !r.success then
      {
        inherit name;
        ok = false;
        detail = "evaluation failed (run the case by hand to see the error)";
      }
    else
      {
        inherit name;
        ok = r.value == expected;
        detail = "expected ${show expected}, got ${show r.value}";
      };

  # A contradictory setting: evaluation succeeds and exactly one assertion
  # fails, with a message that names the problem.
  refused =
    name: settings: fragment:
    let
      r = builtins.tryEval (
        let
          m = failedAssertions (forced (eval (enabled settings)));
        in
        builtins.deepSeq m m
      );
    in
    {
      inherit name;
      ok = r.success && lib.length r.value == 1 && lib.hasInfix fragment (lib.head r.value);
      detail =
        if r.success then
          "expected one failed assertion containing ${show fragment}, got ${show r.value}"
        else
          "evaluation failed";
    };

  # A value the option types must reject at evaluation time.
  rejected =
    name: settings:
    let
      r = builtins.tryEval (forced (eval (enabled settings)));
    in
    {
      inherit name;
      ok = !r.success;
      detail = "expected a type error, but the configuration evaluated";
    };

  # --- the configurations -------------------------------------------------

  minimal = forced (eval (enabled { }));

  full = forced (
    eval (enabled {
      services.msp-agent = {
        settings = {
          agent.hostname = "clinic-01";
          watch.units = [
            {
              pattern = "demo*.service";
              remediate = true;
            }
            {
              pattern = "nginx.service";
              remediate = true;
              expect_active = true;
            }
            { pattern = "*"; }
          ];
          incidents.flap_threshold = 6;
          runbooks.service_restart.job_timeout = "30m";
          limits.global_per_hour = 10;
          evidence.spool_max_bytes = 536870912;
          evidence.s3 = {
            bucket = "msp-evidence";
            prefix = "clinic-01";
            endpoint = "http://s3:9000";
            region = "eu-central-1";
            path_style = true;
            retention_days = 2190;
          };
        };
        evidence.signingKeyFile = "/run/keys/msp-signing-key";
        evidence.s3.credentialsFile = "/run/keys/msp-s3";
        listenAddress = "0.0.0.0";
        openFirewall = true;
      };
      # One backup in the newer settings.RESTIC_* spelling, one in the older
      # one: only the names matter to the module.
      services.restic.backups = {
        local = {
          user = "root";
          settings = {
            RESTIC_REPOSITORY = "/var/backup/local";
            RESTIC_PASSWORD_FILE = "/run/keys/restic-local";
            RESTIC_CACHE_DIR = "/var/cache/restic-backups-local";
            RESTIC_REPOSITORY_FILE = null;
          };
        };
        legacy = {
          repository = "/var/backup/legacy";
          passwordFile = "/run/keys/restic-legacy";
          user = "backup";
          environmentFile = "/run/keys/restic-legacy.env";
        };
      };
    })
  );

  disabled = eval { services.msp-agent.enable = false; };

  # --- expected values ----------------------------------------------------

  minimalConfig = ''
    [agent]
    dry_run = false
    state_dir = "/var/lib/msp-agent"

    [metrics]
    listen = "127.0.0.1:9465"

    [[watch.units]]
    expect_active = false
    pattern = "*"
    remediate = false
  '';

  fullConfig = ''
    [agent]
    dry_run = false
    hostname = "clinic-01"
    state_dir = "/var/lib/msp-agent"

    [evidence]
    spool_max_bytes = 536870912

    [evidence.s3]
    bucket = "msp-evidence"
    endpoint = "http://s3:9000"
    path_style = true
    prefix = "clinic-01"
    region = "eu-central-1"
    retention_days = 2190

    [incidents]
    flap_threshold = 6

    [limits]
    global_per_hour = 10

    [metrics]
    listen = "0.0.0.0:9465"

    [runbooks.service_restart]
    job_timeout = "30m"

    [[watch.units]]
    expect_active = false
    pattern = "restic-backups-legacy.service"
    remediate = true

    [[watch.units]]
    expect_active = false
    pattern = "restic-backups-local.service"
    remediate = true

    [[watch.units]]
    expect_active = false
    pattern = "demo*.service"
    remediate = true

    [[watch.units]]
    expect_active = true
    pattern = "nginx.service"
    remediate = true

    [[watch.units]]
    expect_active = false
    pattern = "*"
    remediate = false
  '';

  expectedRule =
    names: patterns:
    helpers.polkitRule {
      user = "msp-agent";
      inherit names patterns;
    };

  # --- the plain unit file of other distributions -------------------------

  # "Key=Value" lines of the [Service] section, grouped by key in file order.
  parseService =
    text:
    let
      lines = lib.splitString "\n" text;
      step =
        acc: line:
        let
          l = lib.trim line;
          section = builtins.match "[[]([A-Za-z]+)[]]" l;
          kv = builtins.match "([A-Za-z]+)=(.*)" l;
        in
        if section != null then
          acc // { section = lib.head section; }
        else if acc.section == "Service" && kv != null then
          acc
          // {
            keys = acc.keys // {
              ${lib.elemAt kv 0} = (acc.keys.${lib.elemAt kv 0} or [ ]) ++ [ (lib.elemAt kv 1) ];
            };
          }
        else
          acc;
    in
    (lib.foldl' step {
      section = "";
      keys = { };
    } lines).keys;

  # Same meaning, same value: yes/true/on/1 are one boolean, and a list of
  # lines is compared as the set of its (possibly ~negated) entries.
  normalize =
    values:
    let
      boolean =
        v:
        if lib.elem v [ "yes" "true" "on" "1" ] then
          "yes"
        else if lib.elem v [ "no" "false" "off" "0" ] then
          "no"
        else
          v;
      entries =
        v:
        let
          words = lib.filter (w: w != "") (lib.splitString " " v);
          negated = words != [ ] && lib.hasPrefix "~" (lib.head words);
        in
        if words == [ ] then
          [ "" ]
        else
          map (w: (if negated then "~" else "") + lib.removePrefix "~" w) words;
    in
    lib.sort lib.lessThan (lib.unique (lib.concatMap entries (map boolean values)));

  nixValues = v: map (x: if builtins.isBool x then lib.boolToString x else toString x) (lib.toList v);

  # Keys the two files set differently by design: the path of the binary and of
  # the config, and where secrets come from.
  perHost = [
    "ExecStart"
    "ExecStartPre"
    "ExecReload"
    "LoadCredential"
    "LoadCredentialEncrypted"
    "SetCredential"
    "Environment"
    "EnvironmentFile"
    "ConfigurationDirectory"
    "ConfigurationDirectoryMode"
  ];

  shared = unit.service // unit.sandbox;

  # A plain unit against the keys unit.nix holds for it.
  distAgrees =
    file: text: keys: extraPerHost:
    if text == null then
      [ ]
    else
      let
        dist = parseService text;
      in
      lib.mapAttrsToList (
        key: value:
        check "${file} agrees on ${key}" (normalize (dist.${key} or [ "(unset)" ])) (
          normalize (nixValues value)
        )
      ) keys
      ++ [
        (check "${file} sets nothing the module lacks" (lib.filter (
          k: !(keys ? ${k}) && !(lib.elem k (perHost ++ extraPerHost))
        ) (lib.attrNames dist)) [ ])
      ];

  distChecks =
    distAgrees "dist/systemd/msp-agent.service" distUnit shared [ ]
    # TimeoutStartSec= follows [runbooks.free_disk] timeout in the module.
    ++ distAgrees "dist/systemd/msp-agent-free-disk@.service" distFreeDiskUnit (
      unit.freeDisk.service // unit.freeDisk.sandbox
    ) [ "TimeoutStartSec" ];

  # [Service] of the NixOS unit, as NixOS renders it, for systemd-analyze.
  renderService =
    c: renderUnit c.systemd.services.msp-agent;
  renderUnit =
    s:
    let
      line = k: v: "${k}=${if builtins.isBool v then lib.boolToString v else toString v}\n";
    in
    "[Unit]\nDescription=${s.description}\n\n[Service]\n"
    + lib.concatStrings (lib.mapAttrsToList (k: v: lib.concatMapStrings (line k) (lib.toList v)) s.serviceConfig);

  # The rule of the full configuration run in a JavaScript engine (duktape,
  # as in polkitd) with polkit's Result values: who may do what to which unit.
  polkitCases = [
    [ "msp-agent" "demo-crash.service" "restart" "yes" ]
    [ "msp-agent" "demo-crash.service" "start" "yes" ]
    [ "msp-agent" "demo-crash.service" "stop" "not handled" ]
    [ "msp-agent" "nginx.service" "restart" "yes" ]
    [ "msp-agent" "nginx.service.d" "restart" "not handled" ]
    [ "msp-agent" "xdemo.service" "restart" "not handled" ]
    [ "msp-agent" "demo.socket" "restart" "not handled" ]
    [ "msp-agent" "restic-backups-local.service" "start" "yes" ]
    [ "msp-agent" "restic-backups-legacy.service" "restart" "yes" ]
    [ "msp-agent" "restic-backups-local.service" "stop" "not handled" ]
    [ "msp-agent" "restic-backups-other.service" "start" "not handled" ]
    [ "msp-agent" "sshd.service" "restart" "not handled" ]
    [ "msp-agent" "dbus.service" "restart" "not handled" ]
    [ "msp-agent" "msp-agent.service" "restart" "not handled" ]
    [ "alice" "demo-crash.service" "restart" "not handled" ]
    [ "root" "nginx.service" "start" "not handled" ]
  ];
  # The rule of the disks case: exactly the helper instances of the mounts
  # with remediate = true.
  diskPolkitCases = [
    [ "msp-agent" "msp-agent-free-disk@srv-data.service" "restart" "yes" ]
    [ "msp-agent" "msp-agent-free-disk@srv-data.service" "start" "yes" ]
    [ "msp-agent" "msp-agent-free-disk@-.service" "restart" "yes" ]
    [ "msp-agent" "msp-agent-free-disk@srv-data.service" "stop" "not handled" ]
    [ "msp-agent" "msp-agent-free-disk@var.service" "restart" "not handled" ]
    [ "msp-agent" "msp-agent-free-disk@srv.service" "restart" "not handled" ]
    [ "msp-agent" "msp-agent-free-disk@srv-data-x.service" "restart" "not handled" ]
    [ "msp-agent" "msp-agent-free-disk@.service" "restart" "not handled" ]
    [ "msp-agent" "msp-agent-free-disk@srv\\x2dother.service" "restart" "not handled" ]
    [ "msp-agent" "msp-agent-free-disk@srv-my\\x2ddata.service" "restart" "yes" ]
    [ "msp-agent" "msp-agent-free-disk@srv-my-data.service" "restart" "not handled" ]
    [ "alice" "msp-agent-free-disk@srv-data.service" "restart" "not handled" ]
  ];
  polkitScript = rule: cases: ''
    (function () {
    var polkit = {
      Result: { NO: "no", YES: "yes", AUTH_SELF: "auth_self", AUTH_SELF_KEEP: "auth_self_keep",
                AUTH_ADMIN: "auth_admin", AUTH_ADMIN_KEEP: "auth_admin_keep", NOT_HANDLED: null },
      rules: [],
      addRule: function (f) { this.rules.push(f); },
      addAdminRule: function (f) {},
      log: function (m) {}
    };
    ${rule}
    function decide(id, user, unit, verb) {
      var action = { id: id, lookup: function (k) { return k == "unit" ? unit : (k == "verb" ? verb : undefined); } };
      var subject = { user: user, local: true, active: true };
      for (var i = 0; i < polkit.rules.length; i++) {
        var r = polkit.rules[i](action, subject);
        if (r !== null && r !== undefined) { return r; }
      }
      return "not handled";
    }
    var cases = ${builtins.toJSON cases};
    var lines = [];
    for (var i = 0; i < cases.length; i++) {
      var c = cases[i];
      var got = decide("org.freedesktop.systemd1.manage-units", c[0], c[1], c[2]);
      lines.push((got == c[3] ? "ok" : "FAIL") + "\tpolkit rule: " + c[0] + " " + c[2] + " " + c[1] + " -> " + c[3] + (got == c[3] ? "" : " (got " + got + ")"));
    }
    var other = decide("org.freedesktop.login1.reboot", "msp-agent", "demo-crash.service", "restart");
    lines.push((other == "not handled" ? "ok" : "FAIL") + "\tpolkit rule: other actions are left alone");
    var say = typeof print == "function" ? print : console.log;
    say(lines.join("\n"));
    })();
  '';

  # --- the VM tests' own Nix, evaluated with the same stubs ----------------

  vmTests = import (root + "/vm-tests/common.nix") {
    inherit (stubs) pkgs;
    module = root + "/nixos-modules/msp-agent.nix";
  };
  vmTest = name: import (root + "/vm-tests/${name}.nix") { inherit (stubs) pkgs; inherit vmTests; };
  vm = {
    remediation = vmTest "remediation";
    backup = vmTest "backup";
    evidence = vmTest "evidence";
    disk = vmTest "disk";
  };
  evalNode =
    extra: node:
    forced (
      (lib.evalModules {
        modules = [
          stubs.nixosOptions
          stubs.vmOptions
          node
        ]
        ++ extra;
        specialArgs.pkgs = stubs.pkgs;
      }).config
    );
  # The checked config is a build step; on an agent node the plain render is read.
  plainRender = { services.msp-agent.checkConfig = lib.mkForce false; };
  vmAgent = evalNode [ plainRender ] vm.remediation.nodes.agent;
  vmBackupOlder = evalNode [ plainRender ] vm.backup.nodes.agent;
  vmBackup2511 = evalNode [
    plainRender
    stubs.resticSettings
  ] vm.backup.nodes.agent;
  vmEvidence = evalNode [ plainRender ] vm.evidence.nodes.agent;
  vmS3 = evalNode [ ] vm.evidence.nodes.s3;
  vmDisk = evalNode [ plainRender ] vm.disk.nodes.agent;

  vmChecks = [
    (check "vm agent node: module assertions hold" (failedAssertions vmAgent) [ ])
    (check "vm agent node: the bench's demo units, with NixOS paths" (lib.mapAttrs (_: u: {
      nixosPaths = !(lib.hasInfix " /bin/" u.text) && !(lib.hasInfix "=/bin/" u.text);
      inherit (u) wantedBy;
    }) vmAgent.systemd.units) {
      "demo.service" = {
        nixosPaths = true;
        wantedBy = [ "multi-user.target" ];
      };
      "demo-crashloop.service" = {
        nixosPaths = true;
        wantedBy = [ ];
      };
      "unwatched.service" = {
        nixosPaths = true;
        wantedBy = [ "multi-user.target" ];
      };
    })
    (check "vm agent node: polkit rule covers demo*.service as the scenarios expect" (lib.hasInfix ''new RegExp("^demo.*\\.service$")''
      vmAgent.security.polkit.extraConfig
    ) true)
    (check "vm agent node: the rendered config stays readable when a scenario replaces config.toml"
      vmAgent.environment.etc."msp-agent/rendered.toml".source
      vmAgent.environment.etc."msp-agent/config.toml".source
    )
    (check "vm evidence node: S3 endpoint is the s3 node, S3 credentials as a credential" {
      endpoint = lib.hasInfix ''endpoint = "http://s3:9000"'' (configText vmEvidence);
      inherit (agentService vmEvidence) LoadCredential;
      secretsFirst = vmEvidence.systemd.services.msp-agent-test-secrets.before;
    } {
      endpoint = true;
      LoadCredential = [ "s3-credentials:/etc/msp-agent-secrets/s3-credentials" ];
      secretsFirst = [ "msp-agent.service" ];
    })
    (check "vm evidence node: module assertions hold" (failedAssertions vmEvidence) [ ])
    (check "vm disk node: module assertions hold" (failedAssertions vmDisk) [ ])
    (check "vm disk node: /srv/data is a 64 MiB tmpfs with its cache directory" {
      fs = vmDisk.virtualisation.fileSystems."/srv/data";
      inherit (vmDisk.systemd.tmpfiles) rules;
    } {
      fs = {
        device = "tmpfs";
        fsType = "tmpfs";
        options = [
          "size=64m"
          "mode=0755"
        ];
      };
      rules = [ "d /srv/data/cache 0755 root root -" ];
    })
    (check "vm disk node: the mount is freed through its helper, which the agent may restart" {
      disks = (builtins.fromTOML (configText vmDisk)).watch.disks;
      helper = vmDisk.systemd.services ? "msp-agent-free-disk@";
      rule = lib.hasInfix ''"msp-agent-free-disk@srv-data.service"'' vmDisk.security.polkit.extraConfig;
      timeout = vmDisk.systemd.services."msp-agent-free-disk@".serviceConfig.TimeoutStartSec;
    } {
      disks = [
        {
          path = "/srv/data";
          remediate = true;
          warn_above = 0.5;
          warn_clear = 0.3;
          critical_above = 0.8;
          critical_clear = 0.4;
          hold = "2s";
          clean = [
            {
              path = "/srv/data/cache";
              older_than = "1d";
            }
          ];
        }
      ];
      helper = true;
      rule = true;
      timeout = "3min";
    })
    (check "vm s3 node: the bucket is made with Object Lock" (lib.hasInfix "mc mb --ignore-existing --with-lock local/msp-evidence"
      vmS3.systemd.services.evidence-bucket.script
    ) true)
  ]
  ++ lib.concatMap
    (
      { label, c }:
      [
        (check "vm backup node (${label}): the backup is watched first, with remediation" (lib.take 1 (
          lib.filter (l: lib.hasPrefix "pattern = " l) (lib.splitString "\n" (configText c))
        )) [ ''pattern = "restic-backups-clinic.service"'' ])
        (check "vm backup node (${label}): the agent's user may start the backup unit" (lib.hasInfix
          ''"restic-backups-clinic.service"''
          c.security.polkit.extraConfig
        ) true)
        (check "vm backup node (${label}): module assertions hold" (failedAssertions c) [ ])
      ]
    )
    [
      {
        label = "repository and passwordFile";
        c = vmBackupOlder;
      }
      {
        label = "settings.RESTIC_*";
        c = vmBackup2511;
      }
    ];

  # The smaller cases, each a configuration whose rendered file is also checked.
  cases = lib.mapAttrs (_: settings: forced (eval (enabled settings))) {
    ipv6 = {
      services.msp-agent.listenAddress = "::";
      services.msp-agent.openFirewall = true;
    };
    backupsNotRemediated = {
      services.msp-agent.backups.restic.remediate = false;
      services.restic.backups.local.repository = "/var/backup";
    };
    discoveryOff = {
      services.msp-agent.backups.restic.discover = false;
      services.restic.backups.local.repository = "/var/backup";
    };
    explicitBackup = {
      services.restic.backups.local.repository = "/var/backup";
      services.restic.backups.other.repository = "/var/backup-other";
      services.msp-agent.settings.watch.units = [
        { pattern = "restic-backups-local.service"; }
        { pattern = "*"; }
      ];
    };
    backupGlob = {
      services.restic.backups.local.repository = "/var/backup";
      services.msp-agent.settings.watch.units = [ { pattern = "restic-*"; } ];
    };
    grafana = {
      services.grafana.enable = true;
      services.msp-agent.grafana.provisionDashboard = true;
    };
    dryRun.services.msp-agent.settings.agent.dry_run = true;
    # Keys that were free-form before they were declared, with values the
    # agent accepts, and one key still undeclared (passed through).
    typedKeys.services.msp-agent.settings = {
      agent.reconcile_interval = "30s";
      agent.shutdown_grace = "1m";
      incidents = {
        flap_window = "15m";
        resolve_hold = "20s";
        crash_loop_restarts = 4;
        crash_loop_window = "10m";
      };
      runbooks.service_restart = {
        settle = "5s";
        max_runs = 2;
        window = "1h";
        min_interval = "10m";
      };
      evidence = {
        spool_alarm_percent = 90;
        keep_uploaded_bytes = 1048576;
        s3 = {
          bucket = "b";
          request_timeout = "30s";
        };
      };
    };
    s3DefaultChain.services.msp-agent.settings.evidence.s3.bucket = "b";

    # RB-DISK-001: / and two data mounts freed, one mount only watched, every
    # key of [runbooks.free_disk] but the Nix step.
    disks.services.msp-agent.settings = {
      agent.disk_interval = "5s";
      watch.disks = [
        {
          path = "/";
          remediate = true;
        }
        {
          path = "/srv/data";
          remediate = true;
          warn_above = 0.85;
          warn_clear = 0.75;
          critical_above = 0.95;
          critical_clear = 0.9;
          inodes_warn_above = 0.8;
          inodes_warn_clear = 0.7;
          inodes_critical_above = 0.9;
          inodes_critical_clear = 0.85;
          hold = "30s";
          fill_floor = 0.6;
          fill_warn_within = "12h";
          fill_critical_within = "1h";
          clean = [
            {
              path = "/srv/data/cache";
              older_than = "7d";
            }
            {
              path = "/srv/data/tmp";
              glob = "*.tmp";
              older_than = "2h";
            }
          ];
        }
        {
          path = "/srv/my-data";
          remediate = true;
          clean = [
            {
              path = "/srv/my-data";
              glob = "*.log";
              older_than = "30d";
            }
          ];
        }
        { path = "/var"; }
      ];
      runbooks.free_disk = {
        timeout = "20m";
        step_timeout = "3m";
        journal_vacuum_size = "1G";
        journal_vacuum_time = "30d";
        tmpfiles_clean = false;
        max_runs = 2;
        window = "2h";
        min_interval = "15m";
      };
    };
    # Nix garbage collection on, the default timeout.
    disksNixGc.services.msp-agent.settings = {
      watch.disks = [
        {
          path = "/";
          remediate = true;
        }
      ];
      runbooks.free_disk.nix_gc_older_than = "14d";
    };
    disksOddTimeout.services.msp-agent.settings = {
      watch.disks = [
        {
          path = "/srv/data";
          remediate = true;
        }
      ];
      runbooks.free_disk.timeout = "90s";
    };
    # Watched only: no helper, no rule.
    disksWatched.services.msp-agent.settings.watch.disks = [
      { path = "/"; }
      {
        path = "/srv/data";
        critical_above = 0.99;
      }
    ];
    disksNone.services.msp-agent.settings.watch.disks = [ ];
  };

  # systemd-escape --path of these is held against escapePath by check.sh.
  escapePaths = [
    "/"
    "/srv/data"
    "/srv/my-data"
    "/var/lib/postgresql"
    "/.hidden/a b"
    "/mnt/x\\y"
    "/a:b_c.d/e+f"
    "/data/2024"
  ];

  disksConfig = ''
    [agent]
    disk_interval = "5s"
    dry_run = false
    state_dir = "/var/lib/msp-agent"

    [metrics]
    listen = "127.0.0.1:9465"

    [runbooks.free_disk]
    journal_vacuum_size = "1G"
    journal_vacuum_time = "30d"
    max_runs = 2
    min_interval = "15m"
    step_timeout = "3m"
    timeout = "20m"
    tmpfiles_clean = false
    window = "2h"

    [[watch.disks]]
    path = "/"
    remediate = true

    [[watch.disks]]
    critical_above = 0.950000
    critical_clear = 0.900000
    fill_critical_within = "1h"
    fill_floor = 0.600000
    fill_warn_within = "12h"
    hold = "30s"
    inodes_critical_above = 0.900000
    inodes_critical_clear = 0.850000
    inodes_warn_above = 0.800000
    inodes_warn_clear = 0.700000
    path = "/srv/data"
    remediate = true
    warn_above = 0.850000
    warn_clear = 0.750000

    [[watch.disks.clean]]
    older_than = "7d"
    path = "/srv/data/cache"

    [[watch.disks.clean]]
    glob = "*.tmp"
    older_than = "2h"
    path = "/srv/data/tmp"

    [[watch.disks]]
    path = "/srv/my-data"
    remediate = true

    [[watch.disks.clean]]
    glob = "*.log"
    older_than = "30d"
    path = "/srv/my-data"

    [[watch.disks]]
    path = "/var"
    remediate = false

    [[watch.units]]
    expect_active = false
    pattern = "*"
    remediate = false
  '';

  helperOf = c: c.systemd.services."msp-agent-free-disk@";
  helperService = c: (helperOf c).serviceConfig;
  baseReadWrite = [
    "%f"
    "-/var/log/journal"
    "-/tmp"
    "-/var/tmp"
  ];

  diskChecks = [
    (check "disks: config file" (configText cases.disks) disksConfig)
    (check "disks: the file reads back as the agent's keys" (
      let
        t = builtins.fromTOML (configText cases.disks);
      in
      {
        paths = map (d: d.path) t.watch.disks;
        remediate = map (d: d.remediate) t.watch.disks;
        clean = map (d: map (c: c.path) (d.clean or [ ])) t.watch.disks;
        inherit (t.runbooks) free_disk;
      }
    ) {
      paths = [
        "/"
        "/srv/data"
        "/srv/my-data"
        "/var"
      ];
      remediate = [
        true
        true
        true
        false
      ];
      clean = [
        [ ]
        [
          "/srv/data/cache"
          "/srv/data/tmp"
        ]
        [ "/srv/my-data" ]
        [ ]
      ];
      free_disk = {
        timeout = "20m";
        step_timeout = "3m";
        journal_vacuum_size = "1G";
        journal_vacuum_time = "30d";
        tmpfiles_clean = false;
        max_runs = 2;
        window = "2h";
        min_interval = "15m";
      };
    })
    (check "disks: no assertion fails" (failedAssertions cases.disks) [ ])
    (check "disks: the helper template runs the package's free-disk on the instance" (helperService cases.disks).ExecStart
      "${stubs.pkgs.msp-agent}/bin/msp-agent free-disk --config /etc/msp-agent/config.toml %i"
    )
    (check "disks: TimeoutStartSec is the timeout plus 1 min" (helperService cases.disks).TimeoutStartSec "21min")
    (check "disks: without nix_gc_older_than, the sandbox of unit.nix and no Nix" {
      inherit (helperService cases.disks) ReadWritePaths;
      inherit (helperOf cases.disks) environment;
      path = map (p: p.name) (helperOf cases.disks).path;
    } {
      ReadWritePaths = baseReadWrite;
      environment = { };
      path = [ "systemd" ];
    })
    (check "disks: the helper's sandbox and service settings are unit.nix, unchanged" (lib.filterAttrs (
      k: _: unit.freeDisk.sandbox ? ${k} || unit.freeDisk.service ? ${k}
    ) (helperService cases.disks)) (unit.freeDisk.service // unit.freeDisk.sandbox))
    (check "disks: the helper is a template started only by the agent" {
      inherit (helperOf cases.disks) wantedBy restartIfChanged after;
      templates = lib.filter (n: n != "msp-agent") (lib.attrNames cases.disks.systemd.services);
    } {
      wantedBy = [ ];
      restartIfChanged = false;
      after = [
        "local-fs.target"
        "systemd-journald.service"
      ];
      templates = [ "msp-agent-free-disk@" ];
    })
    (check "disks: the rule names the instances of the remediable mounts, escaped" (lib.filter (lib.hasPrefix "msp-agent-free-disk@") (
      builtins.fromJSON (lib.head (builtins.match ".*var names = ([^;]*);.*" cases.disks.security.polkit.extraConfig))
    )) [
      "msp-agent-free-disk@-.service"
      "msp-agent-free-disk@srv-data.service"
      "msp-agent-free-disk@srv-my\\x2ddata.service"
    ])
    (check "disks: nix_gc_older_than reaches the Nix daemon and the profiles, nothing else" {
      inherit (helperService cases.disksNixGc) ReadWritePaths RestrictAddressFamilies PrivateNetwork;
      inherit (helperOf cases.disksNixGc) environment;
      path = map (p: p.name) (helperOf cases.disksNixGc).path;
      rendered = (builtins.fromTOML (configText cases.disksNixGc)).runbooks.free_disk;
    } {
      ReadWritePaths = baseReadWrite ++ [
        "-/nix/var/nix/daemon-socket"
        "-/nix/var/nix/profiles"
      ];
      RestrictAddressFamilies = "AF_UNIX";
      PrivateNetwork = true;
      environment.NIX_REMOTE = "daemon";
      path = [
        "systemd"
        "nix"
      ];
      rendered.nix_gc_older_than = "14d";
    })
    (check "disks: TimeoutStartSec is 11min with the default timeout" (helperService cases.disksNixGc).TimeoutStartSec "11min")
    (check "disks: TimeoutStartSec in seconds when the timeout is not whole minutes" (helperService cases.disksOddTimeout).TimeoutStartSec "150s")
    (check "disks: only watched, no helper unit and no instance in the rule" {
      helper = cases.disksWatched.systemd.services ? "msp-agent-free-disk@";
      rule = lib.hasInfix "msp-agent-free-disk" cases.disksWatched.security.polkit.extraConfig;
      remediate = map (d: d.remediate) (builtins.fromTOML (configText cases.disksWatched)).watch.disks;
    } {
      helper = false;
      rule = false;
      remediate = [
        false
        false
      ];
    })
    (check "disks: [ ] is written as watching no disk" (lib.hasInfix "[watch]\ndisks = []\n" (configText cases.disksNone)) true)
    (check "disks: unset, no [[watch.disks]], no [runbooks.free_disk], no helper" {
      text = lib.hasInfix "disk" (configText minimal);
      helper = minimal.systemd.services ? "msp-agent-free-disk@";
    } {
      text = false;
      helper = false;
    })
    (check "disks: escapePath of the polkit names is systemd-escape --path" (map helpers.freeDiskUnit [
      "/"
      "/srv/data"
      "/srv/my-data"
      "/.cache"
    ]) [
      "msp-agent-free-disk@-.service"
      "msp-agent-free-disk@srv-data.service"
      "msp-agent-free-disk@srv-my\\x2ddata.service"
      "msp-agent-free-disk@\\x2ecache.service"
    ])
    (check "durations: humantime units in whole seconds" (map helpers.durationSeconds [
      "10m"
      "1h 30m"
      "1h30m"
      "90s"
      "1500ms"
      "2d"
      "1w"
    ]) [
      600
      5400
      5400
      90
      2
      172800
      604800
    ])

    (refused "disks: clean on a mount without remediate" {
      services.msp-agent.settings.watch.disks = [
        {
          path = "/srv/data";
          clean = [
            {
              path = "/srv/data/cache";
              older_than = "1d";
            }
          ];
        }
      ];
    } "watch.disks.0.clean is set but remediate is not")
    (refused "disks: a clean path outside the mount" {
      services.msp-agent.settings.watch.disks = [
        {
          path = "/srv/data";
          remediate = true;
          clean = [
            {
              path = "/srv/database/cache";
              older_than = "1d";
            }
          ];
        }
      ];
    } "is outside the mount \"/srv/data\"")
    (refused "disks: a clean path with a .. component" {
      services.msp-agent.settings.watch.disks = [
        {
          path = "/srv/data";
          remediate = true;
          clean = [
            {
              path = "/srv/data/../etc";
              older_than = "1d";
            }
          ];
        }
      ];
    } "is outside the mount")
    (refused "disks: a mount path with a trailing slash" {
      services.msp-agent.settings.watch.disks = [ { path = "/srv/data/"; } ];
    } "is not a mount point")
    (refused "disks: a remediated glob that reaches the helper units" {
      services.msp-agent.settings.watch.units = [
        {
          pattern = "msp-agent-free-*";
          remediate = true;
        }
      ];
    } "would let the agent restart msp-agent-free-disk@*.service")
    (refused "disks: a helper unit named in watch.units with remediate" {
      services.msp-agent.settings.watch.units = [
        {
          pattern = "msp-agent-free-disk@srv-data.service";
          remediate = true;
        }
      ];
    } "only RB-DISK-001 starts")
    (rejected "disks: a threshold that is not a ratio" {
      services.msp-agent.settings.watch.disks = [
        {
          path = "/";
          warn_above = 1.5;
        }
      ];
    })
    (rejected "disks: nix_gc_older_than in weeks (Nix takes days only)" {
      services.msp-agent.settings.runbooks.free_disk.nix_gc_older_than = "2w";
    })
    (rejected "disks: a journal size journalctl does not read" {
      services.msp-agent.settings.runbooks.free_disk.journal_vacuum_size = "lots";
    })
    (rejected "disks: a clean entry without older_than" {
      services.msp-agent.settings.watch.disks = [
        {
          path = "/";
          remediate = true;
          clean = [ { path = "/var/cache"; } ];
        }
      ];
    })
  ];

  # [remediation]: every check the agent has, with each kind of answer.
  remediation = forced (
    eval (enabled {
      services.msp-agent.settings.remediation = {
        unit_failed = "RB-SERVICE-001";
        crash_loop = "escalate";
      };
    })
  );

  # The generator on its own: a module with sections the agent does not have
  # yet, each declared the way a file of nixos-modules/settings/ declares it.
  sections = import (root + "/nixos-modules/sections.nix") { inherit lib; };
  futureSections = map (f: f sections.sectionArgs) [
    (
      { mkSection, mkKey, mkOption, types, ... }:
      mkSection {
        path = [ "watch" "disks" ];
        kind = "tableArray";
        description = "Watched file systems.";
        keys = {
          path = mkOption { type = types.str; };
          min_free_percent = mkKey {
            type = types.ints.between 0 100;
            agentDefault = "10";
            description = "Free space below which an incident opens";
          };
        };
      }
    )
    (
      { mkSection, mkKey, duration, ... }:
      mkSection {
        path = [ "journal" ];
        description = "Following the journal.";
        keys.max_lag = mkKey {
          type = duration;
          description = "How far the reader may fall behind.";
        };
      }
    )
    (
      { mkSection, mkKey, types, ... }:
      mkSection {
        path = [ "runbooks" "free_disk" ];
        description = "RB-DISK-001.";
        keys.vacuum_journal = mkKey {
          type = types.bool;
          description = "Vacuum the journal.";
        };
      }
    )
  ];
  tomlType = (stubs.pkgs.formats.toml { }).type;
  settingsWith =
    list: settings:
    let
      c =
        (lib.evalModules {
          modules = [
            {
              options.settings = lib.mkOption {
                type = lib.types.submodule {
                  freeformType = tomlType;
                  options = sections.settingsOptions tomlType list;
                };
                default = { };
              };
            }
            { inherit settings; }
          ];
        }).config;
    in
    sections.stripNulls c.settings;
  generatorThrows =
    list:
    !(builtins.tryEval (builtins.deepSeq (settingsWith list { }) null)).success;

  generatorChecks = [
    (check "sections: one file per table in nixos-modules/settings/, each path once" (map (s: lib.concatStringsSep "." s.path) (
      sections.load (import (root + "/nixos-modules/settings"))
    )) [
      "agent"
      "watch.units"
      "watch.disks"
      "watch.disks.clean"
      "incidents"
      "runbooks.service_restart"
      "runbooks.free_disk"
      "limits"
      "remediation"
      "metrics"
      "evidence"
      "evidence.s3"
    ])
    (check "sections: a new tableArray, table and nested table are one declaration each" (settingsWith futureSections {
      watch.disks = [
        { path = "/"; }
        {
          path = "/var";
          min_free_percent = 5;
        }
      ];
      journal.max_lag = "1m";
      runbooks.free_disk = { };
      runbooks.free_disk.extra = "passed through";
    }) {
      watch.disks = [
        { path = "/"; }
        {
          path = "/var";
          min_free_percent = 5;
        }
      ];
      journal.max_lag = "1m";
      runbooks.free_disk.extra = "passed through";
    })
    (check "sections: unset, nothing is rendered" (settingsWith futureSections { }) { })
    (check "sections: the same path declared twice is refused" (generatorThrows (
      futureSections ++ [ (lib.last futureSections) ]
    )) true)
    (check "sections: an unknown kind is refused" (
      !(builtins.tryEval (builtins.deepSeq (sections.mkSection {
        path = [ "x" ];
        description = "";
        kind = "list";
      }) null)).success
    ) true)
    (check "sections: a tableArray inside a tableArray belongs to each entry" (settingsWith (
      futureSections
      ++ [
        (sections.mkSection {
          path = [ "watch" "disks" "inner" ];
          kind = "tableArray";
          description = "";
          keys.age = sections.mkKey {
            type = lib.types.str;
            description = "";
          };
        })
      ]
    ) {
      watch.disks = [
        { path = "/"; }
        {
          path = "/srv";
          inner = [
            { age = "1d"; }
            { other = 1; }
          ];
        }
      ];
    }) {
      watch.disks = [
        { path = "/"; }
        {
          path = "/srv";
          inner = [
            { age = "1d"; }
            { other = 1; }
          ];
        }
      ];
    })
    (check "sections: a table inside a map is refused" (generatorThrows (
      futureSections
      ++ [
        (sections.mkSection {
          path = [ "names" ];
          kind = "map";
          description = "";
        })
        (sections.mkSection {
          path = [ "names" "inner" ];
          description = "";
        })
      ]
    )) true)
    (check "remediation: unset, no [remediation] table in the minimal file" (lib.hasInfix "remediation" (configText minimal)) false)
    (check "remediation: rendered as a table of strings when set" (builtins.fromTOML (configText remediation)).remediation {
      unit_failed = "RB-SERVICE-001";
      crash_loop = "escalate";
    })
    (check "remediation: no assertion fails" (failedAssertions remediation) [ ])
    (rejected "remediation: a value that is not a string" {
      services.msp-agent.settings.remediation.unit_failed = 1;
    })
    (rejected "a duration without a unit" {
      services.msp-agent.settings.incidents.flap_window = "600";
    })
    (rejected "a count that is not a number" {
      services.msp-agent.settings.runbooks.service_restart.max_runs = "3";
    })
    (rejected "spool_alarm_percent above 100" {
      services.msp-agent.settings.evidence.spool_alarm_percent = 120;
    })
    (check "typed keys render as set" (lib.filterAttrs (k: _: lib.elem k [ "incidents" "runbooks" ]) (
      builtins.fromTOML (configText cases.typedKeys)
    )) {
      incidents = {
        flap_window = "15m";
        resolve_hold = "20s";
        crash_loop_restarts = 4;
        crash_loop_window = "10m";
      };
      runbooks.service_restart = {
        settle = "5s";
        max_runs = 2;
        window = "1h";
        min_interval = "10m";
      };
    })
  ];

  # The keys the agent accepts, each as a path ("[]" for an array of tables):
  # src/config.rs (deny_unknown_fields everywhere), `[metrics] listen`, and
  # EvidenceConfig / S3Config of the evidence code.
  agentKeys =
    map (k: "agent.${k}") [
      "state_dir"
      "dry_run"
      "hostname"
      "reconcile_interval"
      "shutdown_grace"
      "disk_interval"
    ]
    ++ map (k: "watch.units[].${k}") [
      "pattern"
      "remediate"
      "expect_active"
    ]
    # `[watch] disks = []`: no disk watched.
    ++ [ "watch.disks" ]
    ++ map (k: "watch.disks[].${k}") [
      "path"
      "remediate"
      "warn_above"
      "warn_clear"
      "critical_above"
      "critical_clear"
      "inodes_warn_above"
      "inodes_warn_clear"
      "inodes_critical_above"
      "inodes_critical_clear"
      "hold"
      "fill_floor"
      "fill_warn_within"
      "fill_critical_within"
    ]
    ++ map (k: "watch.disks[].clean[].${k}") [
      "path"
      "glob"
      "older_than"
    ]
    ++ map (k: "runbooks.free_disk.${k}") [
      "timeout"
      "step_timeout"
      "journal_vacuum_size"
      "journal_vacuum_time"
      "tmpfiles_clean"
      "nix_gc_older_than"
      "max_runs"
      "window"
      "min_interval"
    ]
    ++ map (k: "incidents.${k}") [
      "flap_window"
      "flap_threshold"
      "resolve_hold"
      "crash_loop_restarts"
      "crash_loop_window"
    ]
    ++ map (k: "runbooks.service_restart.${k}") [
      "job_timeout"
      "settle"
      "max_runs"
      "window"
      "min_interval"
    ]
    ++ [
      "limits.global_per_hour"
      "metrics.listen"
      "remediation.unit_failed"
      "remediation.crash_loop"
      "remediation.disk_space"
      "remediation.disk_inodes"
      "remediation.disk_fill_rate"
    ]
    ++ map (k: "evidence.${k}") [
      "key_file"
      "spool_max_bytes"
      "spool_alarm_percent"
      "keep_uploaded_bytes"
    ]
    ++ map (k: "evidence.s3.${k}") [
      "bucket"
      "prefix"
      "endpoint"
      "region"
      "path_style"
      "retention_days"
      "credentials_file"
      "retry_max"
      "request_timeout"
    ];
  keyPaths =
    path: v:
    if builtins.isAttrs v then
      lib.concatLists (lib.mapAttrsToList (k: x: keyPaths (path ++ [ k ]) x) v)
    else if builtins.isList v && v != [ ] && lib.all builtins.isAttrs v then
      lib.concatMap (keyPaths (lib.init path ++ [ "${lib.last path}[]" ])) v
    else
      [ (lib.concatStringsSep "." path) ];

  # The file is the output of a build step here, not TOML.
  checked = forced (eval (enabled { services.msp-agent.checkConfig = true; }));

  # Every rendered config file, for `msp-agent check-config` in check.sh.
  configs = {
    minimal = configText minimal;
    full = configText full;
    vm-agent = configText vmAgent;
    vm-backup = configText vmBackupOlder;
    vm-backup-restic-settings = configText vmBackup2511;
    vm-evidence = configText vmEvidence;
    remediation = configText remediation;
    vm-disk = configText vmDisk;
  }
  // lib.mapAttrs (_: configText) cases;
in
{
  vmScripts = lib.mapAttrs (_: t: t.testScript) vm;
  polkitTest =
    polkitScript full.security.polkit.extraConfig polkitCases
    + polkitScript cases.disks.security.polkit.extraConfig diskPolkitCases;
  serviceUnit = renderService full;
  # The helper of the disks case as a unit file of the instance for /srv/data.
  freeDiskUnit = renderUnit cases.disks.systemd.services."msp-agent-free-disk@";
  # Mount points and their instance names, for check.sh to hold against
  # `systemd-escape --path`.
  escapeCases = lib.genAttrs escapePaths helpers.escapePath;
  minimalConfig = configText minimal;
  fullConfig = configText full;
  inherit configs;
  # The testScripts' first lines, and the groups vm-tests/groups.nix finds in
  # vm-tests/scenarios: check.sh runs the first against the second.
  vmPreamble = vmTests.preamble;
  vmScenarioRoot = vmTests.scenarioRoot;
  vmWiredGroups = (import (root + "/vm-tests/groups.nix") { inherit lib; }).groupsIn (root + "/vm-tests/scenarios");
  polkitRule = full.security.polkit.extraConfig;

  results = [
    # Rendering.
    (check "minimal: config file" (configText minimal) minimalConfig)
    (check "minimal: ExecStart runs the package on /etc/msp-agent/config.toml" {
      inherit (agentService minimal) ExecStart;
      # A bad file makes `run` exit 78, which RestartPreventExitStatus= honours.
      hasExecStartPre = (agentService minimal) ? ExecStartPre;
    } {
      ExecStart = "${stubs.pkgs.msp-agent}/bin/msp-agent run --config /etc/msp-agent/config.toml";
      hasExecStartPre = false;
    })
    (check "minimal: a new config file restarts the agent" minimal.systemd.services.msp-agent.restartTriggers [
      minimal.environment.etc."msp-agent/config.toml".source
    ])
    (check "minimal: no credentials without secrets" (agentService minimal).LoadCredential [ ])
    (check "minimal: no assertion fails" (failedAssertions minimal) [ ])
    (check "minimal: no warning" minimal.warnings [ ])
    (check "minimal: static system user" {
      inherit (minimal.users.users.msp-agent) isSystemUser group;
    } {
      isSystemUser = true;
      group = "msp-agent";
    })
    (check "minimal: polkit enabled; rule allows nothing" {
      inherit (minimal.security.polkit) enable extraConfig;
    } {
      enable = true;
      extraConfig = expectedRule [ ] [ ];
    })
    (check "minimal: firewall stays closed" minimal.networking.firewall.allowedTCPPorts [ ])
    (check "minimal: CLI on PATH" (map (p: p.name) minimal.environment.systemPackages) [ "msp-agent" ])
    (check "minimal: journalctl on the service's PATH" (map (p: p.name)
      minimal.systemd.services.msp-agent.path
    ) [ "systemd" ])
    (check "minimal: started at boot after the network" {
      inherit (minimal.systemd.services.msp-agent) wantedBy wants after;
    } {
      wantedBy = [ "multi-user.target" ];
      wants = [ "network-online.target" ];
      after = [ "network-online.target" ];
    })
    (check "minimal: sandbox is unit.nix, unchanged" (lib.filterAttrs (
      k: _: unit.sandbox ? ${k}
    ) (agentService minimal)) unit.sandbox)
    (check "minimal: service settings are unit.nix, unchanged" (lib.filterAttrs (
      k: _: unit.service ? ${k}
    ) (agentService minimal)) unit.service)
    (check "minimal: key sandbox values" {
      inherit (agentService minimal)
        ProtectSystem
        PrivateUsers
        CapabilityBoundingSet
        AmbientCapabilities
        SystemCallFilter
        RestrictAddressFamilies
        UMask
        ;
    } {
      ProtectSystem = "strict";
      PrivateUsers = true;
      CapabilityBoundingSet = "";
      AmbientCapabilities = "";
      SystemCallFilter = [
        "@system-service"
        "~@privileged @resources"
      ];
      RestrictAddressFamilies = [
        "AF_UNIX"
        "AF_INET"
        "AF_INET6"
      ];
      UMask = "0077";
    })
    (check "minimal: no unit besides the agent's" (lib.attrNames minimal.systemd.services) [ "msp-agent" ])

    (check "full: config file" (configText full) fullConfig)
    (check "full: secrets arrive as credentials, by name" (agentService full).LoadCredential [
      "signing-key:/run/keys/msp-signing-key"
      "s3-credentials:/run/keys/msp-s3"
    ])
    (check "full: polkit rule names the backup units and explicit units; globs as patterns"
      full.security.polkit.extraConfig
      (expectedRule [
        "restic-backups-legacy.service"
        "restic-backups-local.service"
        "nginx.service"
      ] [ "demo*.service" ])
    )
    (check "full: polkit rule turns the glob into an anchored RegExp" (lib.hasInfix ''new RegExp("^demo.*\\.service$")''
      full.security.polkit.extraConfig
    ) true)
    (check "full: firewall opens the metrics port" full.networking.firewall.allowedTCPPorts [ 9465 ])
    (check "full: no assertion fails" (failedAssertions full) [ ])
    (check "full: no unit besides the agent's" (lib.attrNames full.systemd.services) [ "msp-agent" ])

    (check "disabled: no unit, no rule, no user" {
      services = lib.attrNames disabled.systemd.services;
      rule = disabled.security.polkit.extraConfig;
      users = lib.attrNames disabled.users.users;
    } {
      services = [ ];
      rule = "";
      users = [ ];
    })

    (check "IPv6 listen address is bracketed" (lib.hasInfix ''listen = "[::]:9465"'' (configText cases.ipv6)) true)
    (check "checkConfig: the build runs msp-agent check-config on the rendered file" (
      builtins.match ".*msp-agent check-config /nix/store/[a-z0-9]+-msp-agent\\.toml\n.*" (configText checked) != null
    ) true)
    (check "backups without remediation: watched, not in the rule" {
      rule = lib.hasInfix "restic-backups-local" cases.backupsNotRemediated.security.polkit.extraConfig;
      config = lib.hasInfix "expect_active = false\npattern = \"restic-backups-local.service\"\nremediate = false\n" (
        configText cases.backupsNotRemediated
      );
    } {
      rule = false;
      config = true;
    })
    (check "discovery off: no backup in file or rule" (
      lib.hasInfix "restic" (configText cases.discoveryOff + cases.discoveryOff.security.polkit.extraConfig)
    ) false)
    (check "an explicit entry for a backup unit replaces the discovered one, in the user's place" {
      patterns = lib.filter (l: lib.hasPrefix "pattern = " l) (lib.splitString "\n" (configText cases.explicitBackup));
      rule = lib.hasInfix "restic-backups-local" cases.explicitBackup.security.polkit.extraConfig;
    } {
      patterns = [
        ''pattern = "restic-backups-other.service"''
        ''pattern = "restic-backups-local.service"''
        ''pattern = "*"''
      ];
      rule = false;
    })
    (check "a user glob over the backup units does not shadow the discovered entries" (
      lib.take 2 (lib.filter (l: lib.hasPrefix "pattern = " l) (lib.splitString "\n" (configText cases.backupGlob)))
    ) [ ''pattern = "restic-backups-local.service"'' ''pattern = "restic-*"'' ])
    (check "grafana: dashboard directory provisioned from the package" cases.grafana.services.grafana.provision {
      enable = true;
      dashboards.settings.providers = [
        {
          name = "msp-agent";
          options.path = "/nix/store/00000000000000000000000000000000-msp-agent/share/msp-agent/grafana";
        }
      ];
    })
    (check "dry_run passes through" (lib.hasInfix "dry_run = true" (configText cases.dryRun)) true)
    (check "S3 without credentials: a warning about the default chain" (lib.length cases.s3DefaultChain.warnings) 1)
    (check "every rendered key is one the agent reads (src/config.rs, [metrics], [evidence])" (lib.filter (
      k: !(lib.elem k agentKeys)
    ) (lib.unique (lib.concatMap (t: keyPaths [ ] (builtins.fromTOML t)) (lib.attrValues configs)))) [ ])

    # Contradictory settings, refused with a message that says what to do.
    (refused "state_dir outside /var/lib" {
      services.msp-agent.settings.agent.state_dir = "/srv/msp-agent";
    } "must be below /var/lib/")
    (refused "signing key twice" {
      services.msp-agent.evidence.signingKeyFile = "/run/keys/k";
      services.msp-agent.settings.evidence.key_file = "/etc/msp/k";
    } "both settings.evidence.key_file and evidence.signingKeyFile")
    (refused "S3 credentials twice" {
      services.msp-agent.evidence.s3.credentialsFile = "/run/keys/s3";
      services.msp-agent.settings.evidence.s3 = {
        bucket = "b";
        credentials_file = "/etc/msp/s3";
      };
    } "both settings.evidence.s3.credentials_file and evidence.s3.credentialsFile")
    (refused "S3 credentials without a bucket" {
      services.msp-agent.evidence.s3.credentialsFile = "/run/keys/s3";
    } "settings.evidence.s3 (the bucket) is not")
    (refused "metrics.listen set by hand" {
      services.msp-agent.settings.metrics.listen = "0.0.0.0:1";
    } "use services.msp-agent.listenAddress and .port")
    (refused "a host name as listen address" {
      services.msp-agent.listenAddress = "localhost";
    } "is not an IP address")
    (refused "open firewall for a loopback listener" {
      services.msp-agent.openFirewall = true;
    } "is a loopback address")
    (refused "remediate everything" {
      services.msp-agent.settings.watch.units = [
        {
          pattern = "*";
          remediate = true;
        }
      ];
    } "would let the agent restart msp-agent.service, dbus.service")
    (refused "remediate a pattern that reaches sshd" {
      services.msp-agent.settings.watch.units = [
        {
          pattern = "*d.service";
          remediate = true;
        }
      ];
    } "sshd.service")
    (refused "remediate the agent itself" {
      services.msp-agent.settings.watch.units = [
        {
          pattern = "msp-agent.service";
          remediate = true;
        }
      ];
    } "cannot remediate its own unit")
    (refused "a character no unit name has" {
      services.msp-agent.settings.watch.units = [ { pattern = "web/*.service"; } ];
    } ''contains "/"'')
    (refused "dashboard without grafana" {
      services.msp-agent.grafana.provisionDashboard = true;
    } "needs services.grafana.enable")
    (refused "removed option backups.restic.maxAge, with the reason" {
      services.msp-agent.backups.restic.maxAge = "26h";
    } "backup freshness (RPO) comes with it")
    (refused "removed option backups.restic.unlockStale, with the reason" {
      services.msp-agent.backups.restic.unlockStale = true;
    } "stale restic lock comes with the backup runbook")
    (refused "removed options runbooks.freeDisk.*, pointing to their settings" {
      services.msp-agent.runbooks.freeDisk.extraPaths = [ "/var/cache/app" ];
    } "settings.watch.disks (remediate = true and the clean paths of each mount) and settings.runbooks.free_disk")
    (refused "polkit switched off" {
      security.polkit.enable = false;
    } "security.polkit.enable must stay true")

    # Secrets never in the store: the option types refuse them.
    (rejected "signing key given as a store path" {
      services.msp-agent.evidence.signingKeyFile = "/nix/store/00000000000000000000000000000000-key";
    })
    (rejected "S3 credentials given as a path literal (copied into the store)" {
      services.msp-agent.settings.evidence.s3.bucket = "b";
      services.msp-agent.evidence.s3.credentialsFile = ./stubs.nix;
    })
    (rejected "relative signing key path" {
      services.msp-agent.evidence.signingKeyFile = "keys/k";
    })
    (rejected "an unclosed [ in a pattern" {
      services.msp-agent.settings.watch.units = [
        {
          pattern = "web-[0-9.service";
          remediate = true;
        }
      ];
    })

    # Glob semantics shared by the rule and the breadth check.
    (check "glob: * ? [..] [!..] and escaped dots" (map (p: helpers.globToRegex p) [
      "demo*.service"
      "web-?.service"
      "db-[0-9].service"
      "x[!ab].service"
    ]) [ "demo.*\\.service" "web-.\\.service" "db-[0-9]\\.service" "x[^ab]\\.service" ])
    (check "glob: matches like the agent's patterns"
      (map (pair: helpers.globMatches (lib.elemAt pair 0) (lib.elemAt pair 1)) [
        [
          "demo*.service"
          "demo-crash.service"
        ]
        [
          "demo*.service"
          "xdemo.service"
        ]
        [
          "db-[0-9].service"
          "db-7.service"
        ]
        [
          "db-[0-9].service"
          "db-x.service"
        ]
        [
          "x[!ab].service"
          "xa.service"
        ]
      ])
      [
        true
        false
        true
        false
        false
      ]
    )
  ]
  ++ generatorChecks
  ++ diskChecks
  ++ vmChecks
  ++ distChecks;
}

# The [Service] settings of msp-agent.service that do not depend on the host:
# how systemd runs the daemon, and the sandbox it runs in.
#
# One source of truth for two unit files: the NixOS module merges these into
# systemd.services.msp-agent.serviceConfig, and tests/nix/check.sh fails when the
# plain unit for other distributions (dist/systemd/msp-agent.service) disagrees on
# any key listed here. ExecStart, LoadCredential and the paths differ by design
# and are set by the module only.
#
# The same for RB-DISK-001's helper, msp-agent-free-disk@.service (`freeDisk`),
# against dist/systemd/msp-agent-free-disk@.service; its ExecStart and
# TimeoutStartSec= (from [runbooks.free_disk] timeout) are the module's.
#
# Values are written the way NixOS renders them: a list becomes one line per
# element, a bool becomes true/false.
{
  service = {
    # READY=1 only once D-Bus is subscribed, the journal cursor loaded and the
    # spool opened; STATUS= on each state change; WATCHDOG=1 at half the interval.
    Type = "notify";
    NotifyAccess = "main";
    WatchdogSec = "30s";
    Restart = "on-failure";
    RestartSec = "5s";
    # A configuration error (EX_CONFIG) is not fixed by restarting.
    RestartPreventExitStatus = 78;
    # SIGTERM drains: in-flight runbook steps are recorded and the spool flushed.
    TimeoutStopSec = "45s";

    User = "msp-agent";
    Group = "msp-agent";
    # Reading the system journal (journalctl --follow) needs this group; it is
    # given to the service only, not to the user account.
    SupplementaryGroups = [ "systemd-journal" ];
    StateDirectory = "msp-agent";
    # Group msp-agent may read the history (msp-agent status, sqlite3).
    StateDirectoryMode = "0750";
  };

  # Goal: `systemd-analyze security msp-agent.service` at most 2.0. Each setting
  # that is weaker than the strictest value says why.
  sandbox = {
    ProtectSystem = "strict";
    ProtectHome = true;
    PrivateTmp = true;
    PrivateDevices = true;
    PrivateIPC = true;
    # Only root and the service's own user and group are mapped. D-Bus and
    # polkit still see the real uid (SO_PEERCRED is translated into the bus
    # daemon's namespace), and file access still uses the real groups.
    PrivateUsers = true;
    NoNewPrivileges = true;
    ProtectKernelTunables = true;
    ProtectKernelModules = true;
    ProtectKernelLogs = true;
    ProtectControlGroups = true;
    ProtectClock = true;
    ProtectHostname = true;
    ProtectProc = "invisible";
    ProcSubset = "pid";
    # AF_UNIX: the system bus, sd_notify and the journal; AF_INET(6): S3 and
    # the metrics listener. No netlink, no packet sockets.
    RestrictAddressFamilies = [
      "AF_UNIX"
      "AF_INET"
      "AF_INET6"
    ];
    # No address allow list: the S3 endpoint is configurable.
    IPAddressDeny = "";
    RestrictNamespaces = true;
    RestrictRealtime = true;
    RestrictSUIDSGID = true;
    LockPersonality = true;
    MemoryDenyWriteExecute = true;
    SystemCallArchitectures = "native";
    SystemCallFilter = [
      "@system-service"
      "~@privileged @resources"
    ];
    # A refused call fails with EPERM instead of killing the process, so a
    # child such as journalctl that probes setrlimit() degrades gracefully.
    SystemCallErrorNumber = "EPERM";
    CapabilityBoundingSet = "";
    AmbientCapabilities = "";
    DevicePolicy = "closed";
    RemoveIPC = true;
    KeyringMode = "private";
    UMask = "0077";
  };

  # msp-agent-free-disk@<escaped mount>.service: frees the mount %f as root,
  # started (restarted) by the agent over D-Bus, never at boot.
  freeDisk = {
    service = {
      Type = "oneshot";
      # Stays active (exited) after a run, so its InvocationID and Result are
      # still there when the agent reads them; the agent restarts it each time.
      RemainAfterExit = true;
      # /run/msp-agent-free-disk/<instance>.json, the result the agent reads.
      RuntimeDirectory = "msp-agent-free-disk";
      RuntimeDirectoryMode = "0755";
      RuntimeDirectoryPreserve = "yes";
      # The helper's result is the one line the agent needs from the journal.
      LogRateLimitIntervalSec = 0;
    };

    # Root without what it does not need: write access to the mount, the
    # journal directory (vacuum) and the temporary directories
    # (systemd-tmpfiles --clean), no network, three capabilities. The module
    # adds the Nix daemon's socket and the profiles to ReadWritePaths when
    # [runbooks.free_disk] nix_gc_older_than is set.
    sandbox = {
      ProtectSystem = "strict";
      ReadWritePaths = [
        "%f"
        "-/var/log/journal"
        "-/tmp"
        "-/var/tmp"
      ];
      ProtectHome = "read-only";
      PrivateTmp = false;
      PrivateNetwork = true;
      IPAddressDeny = "any";
      PrivateDevices = true;
      DevicePolicy = "closed";
      NoNewPrivileges = true;
      # Deleting files it does not own (DAC_OVERRIDE, FOWNER for sticky
      # directories), reading any directory.
      CapabilityBoundingSet = "CAP_DAC_OVERRIDE CAP_DAC_READ_SEARCH CAP_FOWNER";
      AmbientCapabilities = "";
      ProtectKernelTunables = true;
      ProtectKernelModules = true;
      ProtectKernelLogs = true;
      ProtectControlGroups = true;
      ProtectClock = true;
      ProtectHostname = true;
      ProtectProc = "invisible";
      ProcSubset = "pid";
      # The journal and, for Nix garbage collection, the Nix daemon's socket.
      RestrictAddressFamilies = "AF_UNIX";
      RestrictNamespaces = true;
      RestrictRealtime = true;
      RestrictSUIDSGID = true;
      LockPersonality = true;
      MemoryDenyWriteExecute = true;
      RemoveIPC = true;
      KeyringMode = "private";
      PrivateIPC = true;
      PrivateMounts = true;
      SystemCallArchitectures = "native";
      SystemCallFilter = [
        "@system-service"
        "~@privileged @resources @mount"
      ];
      SystemCallErrorNumber = "EPERM";
      UMask = "0022";
    };
  };
}

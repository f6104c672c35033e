# The [Service] settings of msp-agent.service that do not depend on the host:
# how systemd runs the daemon, and the sandbox it runs in.
#
# One source of truth for two unit files: the NixOS module merges these into
# systemd.services.msp-agent.serviceConfig, and tests/nix/check.sh fails when the
# plain unit for other distributions (dist/systemd/msp-agent.service) disagrees on
# any key listed here. ExecStart, LoadCredential and the paths differ by design
# and are set by the module only.
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
}

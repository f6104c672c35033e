#!/usr/bin/env bash
# Builds (once) the Debian root file system the system-test bench and the lab boot with
# systemd-nspawn, and prints its path.
#
# The root is cached under /var/tmp/msp-agent-bench/rootfs-<hash>, where the hash covers
# this script (and so the package list and the setup below): change either and a new root
# is built; an unchanged script reuses the cached one. The build goes into a temporary
# directory that is renamed into place only when complete, so an interrupted build never
# leaves a half-made root behind that a later run would trust.
#
# Usage: tests/bench/rootfs.sh            # print the cached path, building it if needed
#        MSP_BENCH_MIRROR=URL tests/bench/rootfs.sh   # use another Debian mirror
#        MSP_BENCH_CACHE=DIR tests/bench/rootfs.sh    # cache somewhere else
# Needs root. Installs debootstrap itself when missing (Debian/Ubuntu hosts).
set -euo pipefail

SUITE=bookworm
# Everything a boot of the bench needs:
#  systemd, systemd-sysv  init inside the container
#  dbus                   the system bus the agent talks to systemd over
#  libpam-systemd         polkitd needs logind's PAM hook to be configured, or it refuses
#  polkitd                decides whether the agent's user may restart a unit
#  restic                 backup scenarios
#  procps                 ps, pgrep for checks and the benchmark
#  python3                demo services and helper scripts inside
#  sqlite3                read the agent's history the way an auditor would
#  iproute2               ss, to see the metrics endpoint listening
PACKAGES=systemd,systemd-sysv,dbus,libpam-systemd,polkitd,restic,procps,python3,sqlite3,iproute2,ca-certificates

CACHE=${MSP_BENCH_CACHE:-/var/tmp/msp-agent-bench}
self=$(readlink -f "${BASH_SOURCE[0]}")
hash=$( { cat "$self"; echo "$SUITE $PACKAGES"; } | sha256sum | cut -c1-16)
ROOT=$CACHE/rootfs-$hash

log() { echo "rootfs: $*" >&2; }

if [ "$(id -u)" != 0 ]; then
    echo "rootfs: must run as root (debootstrap and chroot need it)" >&2
    exit 1
fi

# What the host needs to build and boot the bench, installed on a fresh machine.
missing=()
command -v debootstrap >/dev/null || missing+=(debootstrap)
command -v systemd-nspawn >/dev/null || missing+=(systemd-container)
command -v nsenter >/dev/null || missing+=(util-linux)
if [ ${#missing[@]} -gt 0 ]; then
    log "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q --no-install-recommends "${missing[@]}" >&2 \
        || { apt-get update -q >&2 && apt-get install -y -q --no-install-recommends "${missing[@]}" >&2; }
fi

mkdir -p "$CACHE"
# One builder at a time: the lab and the bench may be started together.
exec 9>"$CACHE/.lock"
flock 9

if [ -f "$ROOT/.complete" ]; then
    echo "$ROOT"
    exit 0
fi


tmp=$(mktemp -d "$CACHE/.build-$hash.XXXXXX")
# mktemp makes the directory 0700; as the container's / it must be readable by all.
chmod 0755 "$tmp"
cleanup() { rm -rf --one-file-system "$tmp"; }
trap cleanup EXIT

start=$(date +%s)
log "debootstrap $SUITE into $tmp (takes about a minute)"
# shellcheck disable=SC2086  # the mirror is optional: no argument means debootstrap's default
debootstrap --variant=minbase --include="$PACKAGES" "$SUITE" "$tmp" ${MSP_BENCH_MIRROR:-} >&2 \
    || { log "debootstrap failed; see $tmp/debootstrap/debootstrap.log"; cp "$tmp/debootstrap/debootstrap.log" "$CACHE/debootstrap-failed.log" 2>/dev/null || true; exit 1; }

log "configuring the root for repeated boots"
# Every boot gets its own machine ID: an empty file makes systemd generate a transient
# one at boot without treating the boot as a first boot (no presets, no firstboot prompt).
: >"$tmp/etc/machine-id"
rm -f "$tmp/var/lib/dbus/machine-id"
ln -s /etc/machine-id "$tmp/var/lib/dbus/machine-id"
# The host name comes from the container's machine name (systemd-nspawn -M).
rm -f "$tmp/etc/hostname"
echo 'LANG=C.UTF-8' >"$tmp/etc/default/locale"

# Nothing the tests did not ask for: no consoles to log in on, no periodic jobs that
# would wake up in the middle of a measurement.
for unit in console-getty.service getty@.service getty.target \
            apt-daily.timer apt-daily-upgrade.timer dpkg-db-backup.timer \
            e2scrub_all.timer e2scrub_reap.service fstrim.timer \
            systemd-tmpfiles-clean.timer; do
    ln -sf /dev/null "$tmp/etc/systemd/system/$unit"
done

# A persistent journal, as on a real host (the disk runbook vacuums it, and the
# "persistent journald" control checks it), kept small.
mkdir -p "$tmp/var/log/journal" "$tmp/etc/systemd/journald.conf.d"
cat >"$tmp/etc/systemd/journald.conf.d/50-bench.conf" <<'CONF'
[Journal]
Storage=persistent
SystemMaxUse=64M
RateLimitIntervalSec=0
CONF

mkdir -p "$tmp/etc/msp-agent" "$tmp/etc/polkit-1/rules.d"

# Smaller root, faster copies for every boot.
rm -rf "$tmp"/var/cache/apt/archives/*.deb "$tmp"/var/lib/apt/lists/* "$tmp/debootstrap"

touch "$tmp/.complete"
mv -T "$tmp" "$ROOT"
trap - EXIT
log "built $ROOT in $(( $(date +%s) - start )) s ($(du -sh "$ROOT" | cut -f1))"

# Older roots of this bench are no longer used by anything that reads this script.
for old in "$CACHE"/rootfs-*; do
    [ "$old" = "$ROOT" ] || rm -rf --one-file-system "$old"
done

echo "$ROOT"

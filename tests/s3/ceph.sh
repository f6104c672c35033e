#!/usr/bin/env bash
# A single-node Ceph (1 mon, 1 OSD on a sparse file, no mgr) with radosgw on 127.0.0.1:
# the loopback S3 server the evidence tests run against. Ceph's radosgw enforces Object
# Lock for real (COMPLIANCE deletes and retention shortening are refused), which is the
# behaviour the tests must see. It installs its own packages (Debian 12) when missing.
#
# usage: tests/s3/ceph.sh up|env|stop|start|stop-rgw|start-rgw|down|status
#   up        install if needed, start from nothing (or restart existing data), print env
#   env       print the environment the s3_* tests read (eval "$(tests/s3/ceph.sh env)")
#   stop      stop the daemons, keep the data       start  restart them on the data
#   stop-rgw  stop only radosgw (S3 down)            start-rgw  bring radosgw back
#   down      stop the daemons and delete the data
# env: CEPH_DIR (/var/tmp/msp-agent-ceph) RGW_PORT (7480) MON_PORT (3300)
#      OBJECTSTORE=bluestore|memstore  S3_ACCESS_KEY / S3_SECRET_KEY
set -euo pipefail
D=${CEPH_DIR:-/var/tmp/msp-agent-ceph}
STORE=${OBJECTSTORE:-bluestore}
RGW_PORT=${RGW_PORT:-7480}
MON_PORT=${MON_PORT:-3300}
AK=${S3_ACCESS_KEY:-mspagentaccess}
SK=${S3_SECRET_KEY:-mspagentsecret0123456789}
C="$D/ceph.conf"
export CEPH_CONF="$C"
CEPH="ceph -c $C --connect-timeout 20"
ENDPOINT="http://127.0.0.1:$RGW_PORT"

print_env() {
  echo "export MSP_AGENT_S3_ENDPOINT=$ENDPOINT"
  echo "export AWS_ACCESS_KEY_ID=$AK"
  echo "export AWS_SECRET_ACCESS_KEY=$SK"
  echo "export AWS_REGION=us-east-1"
  echo "export MSP_AGENT_CEPH_SCRIPT=$(readlink -f "$0")"
}

install_packages() {
  command -v radosgw >/dev/null && command -v ceph-mon >/dev/null && command -v ceph-osd >/dev/null \
    && command -v ceph >/dev/null && command -v curl >/dev/null && return 0
  [ "$(id -u)" = 0 ] || { echo "ceph.sh: radosgw is not installed and this is not root" >&2; exit 1; }
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends radosgw ceph-mon ceph-osd ceph-common curl >/dev/null
}

rgw_up() { curl -s -o /dev/null --max-time 2 "$ENDPOINT/"; }

stop_one() {
  for p in "$D"/run/*"$1"*.pid; do
    [ -f "$p" ] || continue
    pid=$(cat "$p"); kill "$pid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    kill -9 "$pid" 2>/dev/null || true; rm -f "$p"
  done
}
stop_daemons() { for n in rgw osd mon; do stop_one "$n"; done; }

wait_rgw() {
  for _ in $(seq 240); do rgw_up && return 0; sleep 0.25; done
  echo "radosgw did not come up; see $D/log" >&2; return 1
}
start_rgw() { rgw_up || radosgw -c "$C" -n client.rgw.a; wait_rgw; }

start_daemons() {
  ceph-mon -c "$C" -i a
  ceph-osd -c "$C" -i 0
  for _ in $(seq 120); do $CEPH osd stat 2>/dev/null | grep -q '1 up' && break; sleep 0.5; done
  start_rgw
}

create_from_nothing() {
  mkdir -p "$D"/{run,log,mon/ceph-a,osd/ceph-0,rgw}
  FSID=$(cat /proc/sys/kernel/random/uuid)
  cat > "$C" <<EOF
[global]
fsid = $FSID
mon host = v2:127.0.0.1:$MON_PORT
mon initial members = a
public network = 127.0.0.0/8
cluster network = 127.0.0.0/8
ms bind ipv6 = false
auth cluster required = none
auth service required = none
auth client required = none
auth allow insecure global id reclaim = false
run dir = $D/run
pid file = $D/run/\$name.pid
admin socket = $D/run/\$name.asok
log file = $D/log/\$name.log
log to stderr = false
err to stderr = false
keyring = $D/keyring
osd pool default size = 1
osd pool default min size = 1
osd pool default pg num = 8
osd pool default pgp num = 8
osd pool default pg autoscale mode = off
osd crush chooseleaf type = 0
mon allow pool size one = true
mon allow pool delete = true
mon warn on pool no redundancy = false
mon max pg per osd = 1000
mon data avail warn = 2
mon data avail crit = 1
[mon]
mon data = $D/mon/ceph-\$id
mon cluster log file = $D/log/cluster.log
[osd]
osd data = $D/osd/ceph-\$id
osd objectstore = $STORE
memstore device bytes = 2147483648
bluestore block path = $D/osd/block
bluestore block create = true
bluestore block size = 10737418240
bluestore block db create = false
bluestore block wal create = false
osd memory target = 939524096
bluestore cache autotune = true
osd op num shards = 1
osd op num threads per shard = 2
[client.rgw.a]
rgw frontends = beast endpoint=127.0.0.1:$RGW_PORT
rgw data = $D/rgw
rgw thread pool size = 32
rgw dns name = 127.0.0.1
# radosgw defaults ms_mon_client_mode to "secure", which auth=none cannot provide:
# without this it loops on "get_initial_auth_request returned -13"
ms mon client mode = crc secure
EOF
  ceph-authtool --create-keyring "$D/keyring" --gen-key -n mon. --cap mon 'allow *' >/dev/null
  monmaptool --create --fsid "$FSID" --addv a "[v2:127.0.0.1:$MON_PORT]" "$D/monmap" >/dev/null
  ceph-mon -c "$C" --mkfs -i a --monmap "$D/monmap" --keyring "$D/keyring"
  ceph-mon -c "$C" -i a
  for _ in $(seq 60); do $CEPH mon stat >/dev/null 2>&1 && break; sleep 0.5; done
  OSD_UUID=$(cat /proc/sys/kernel/random/uuid)
  OSD_ID=$($CEPH osd new "$OSD_UUID")
  [ "$OSD_ID" = 0 ] || { echo "unexpected osd id $OSD_ID" >&2; exit 1; }
  ceph-osd -c "$C" -i 0 --mkfs --osd-uuid "$OSD_UUID" >"$D/log/osd-mkfs.log" 2>&1
  ceph-osd -c "$C" -i 0
  for _ in $(seq 120); do $CEPH osd stat 2>/dev/null | grep -q '1 up' && break; sleep 0.5; done
  radosgw -c "$C" -n client.rgw.a
  wait_rgw
  radosgw-admin -c "$C" user create --uid=msp-agent-tests --display-name=msp-agent-tests \
    --access-key="$AK" --secret-key="$SK" >/dev/null
  touch "$D/.ready"
}

case "${1:-up}" in
up)
  install_packages
  if rgw_up; then :
  elif [ -f "$D/.ready" ]; then start_daemons >&2
  else rm -rf "$D"; create_from_nothing >&2
  fi
  print_env;;
env) print_env;;
status) rgw_up && echo "radosgw answers at $ENDPOINT" || { echo "radosgw is down"; exit 1; };;
stop) stop_daemons; echo "ceph daemons stopped (data kept in $D)" >&2;;
start) start_daemons >&2; print_env;;
stop-rgw) stop_one rgw; echo "radosgw stopped" >&2;;
start-rgw) start_rgw;;
down) stop_daemons; rm -rf "$D"; echo "ceph torn down" >&2;;
*) echo "usage: $0 up|env|status|stop|start|stop-rgw|start-rgw|down" >&2; exit 2;;
esac

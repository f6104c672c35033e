#!/usr/bin/env bash
# The lab: the agent running on a real systemd in a container, to break things and watch
# it repair them. `lab/lab.sh up` is all a newcomer needs; `lab/lab.sh help` lists the rest.
# Needs root (systemd-nspawn). The logic lives in lab.py next to this file.
set -euo pipefail
if [ "$(id -u)" != 0 ]; then
    exec sudo -- "$0" "$@"
fi
exec python3 "$(dirname "$(readlink -f "$0")")/lab.py" "$@"

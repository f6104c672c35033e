#!/usr/bin/env bash
# The checks of the Nix side that run without NixOS, a binary cache or a copy
# of nixpkgs:
#   (a) every .nix file of the repository parses (nix-instantiate --parse), and
#       flake.nix with flake.lock reads as a flake when this nix has flakes;
#   (b) with nixpkgs' lib (github:nix-community/nixpkgs.lib, its lib/ folder),
#       the NixOS module is evaluated with lib.evalModules against stub option
#       declarations (tests/nix/module.nix): rendered config file, ExecStart,
#       credentials, polkit rule, sandbox and assertions; the polkit rule is
#       run in a JavaScript engine; the rendered unit goes through
#       `systemd-analyze security --offline` (exposure at most 2.0); the
#       plain unit in dist/systemd/ must agree with nixos-modules/unit.nix;
#       the VM tests wired into the flake's checks are those whose scenarios
#       the testScripts find; and, with MSP_AGENT_BIN, the agent accepts every
#       rendered config file.
# Without nixpkgs.lib, (b) is skipped and says so.
#
#   tests/nix/check.sh [NIXPKGS_LIB_PATH]
#       default: ../shared/nixpkgs-lib beside the repository's root (a
#       read-only copy is fine: nothing is written there), else
#       /var/tmp/nixpkgs-lib, whichever exists first
#   MSP_AGENT_BIN=target/debug/msp-agent tests/nix/check.sh ...
#       also runs `msp-agent check-config` on every rendered file; a file the
#       agent refuses is a failure (tests/run.sh sets MSP_AGENT_BIN).
#   NIX_INSTANTIATE=CMD tests/nix/check.sh ...
#       evaluates (b) with another nix-instantiate, e.g. a newer Nix in a chroot
#       that sees the repository and nixpkgs.lib at the same paths; Nix 2.8
#       cannot evaluate lib.fileset and skips the checks of the package's source.
#
# Installs what it needs when missing and running as root on Debian (nix-bin,
# python3; duktape and systemd for the optional parts). Exit status 0 only if
# nothing failed; the last line is "N passed, M failed".
set -uo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
lib_path=${1:-}
if [ -z "$lib_path" ]; then
  for candidate in "$root/../shared/nixpkgs-lib" /var/tmp/nixpkgs-lib; do
    if [ -f "$candidate/lib/default.nix" ]; then
      lib_path=$candidate
      break
    fi
  done
fi

passed=0
failed=0
pass() { passed=$((passed + 1)); printf 'ok    %s\n' "$*"; }
fail() { failed=$((failed + 1)); printf 'FAIL  %s\n' "$*"; }
skip() { printf 'skip  %s\n' "$*"; }
finish() {
  echo "$passed passed, $failed failed"
  [ "$failed" -eq 0 ]
  exit
}

# Debian packages for the commands this script uses, installed only if missing.
ensure() {
  local cmd=$1 pkg=$2
  command -v "$cmd" >/dev/null 2>&1 && return 0
  if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
    if [ -z "${apt_updated:-}" ]; then
      DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null 2>&1 || true
      apt_updated=1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$pkg" >/dev/null 2>&1 || true
  fi
  command -v "$cmd" >/dev/null 2>&1
}

if ! ensure nix-instantiate nix-bin; then
  fail "nix-instantiate is not available (install Debian's nix-bin)"
  finish
fi
if ! ensure python3 python3; then
  fail "python3 is not available"
  finish
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# --- (a) every .nix file parses ----------------------------------------------

cd "$root" || exit 1
mapfile -t nix_files < <(git ls-files --cached --others --exclude-standard -- '*.nix' | sort -u)
for f in "${nix_files[@]}"; do
  [ -f "$f" ] || continue
  if err=$(nix-instantiate --parse "$f" 2>&1 >/dev/null); then
    pass "parses: $f"
  else
    fail "parses: $f: $err"
  fi
done

if [ -f flake.lock ]; then
  if out=$(python3 - flake.lock <<'EOF'
import json, sys
lock = json.load(open(sys.argv[1]))
node = lock["nodes"][lock["nodes"][lock["root"]]["inputs"]["nixpkgs"]]
locked, original = node["locked"], node["original"]
assert lock["version"] == 7, "lock version %r" % lock["version"]
assert locked["type"] == "github" and locked["owner"] == "NixOS" and locked["repo"] == "nixpkgs", locked
assert len(locked["rev"]) == 40 and locked["narHash"].startswith("sha256-"), locked
assert isinstance(locked["lastModified"], int), locked
assert original.get("ref", "").startswith("nixos-"), original
print("nixpkgs %s at %s" % (original["ref"], locked["rev"]))
EOF
  ); then
    pass "flake.lock pins $out"
  else
    fail "flake.lock: $out"
  fi
fi

# A flake read needs the flake features (nix >= 2.4); only flake.nix and
# flake.lock are copied, so build output in the work tree is not.
if [ -f flake.nix ] && [ -f flake.lock ]; then
  if nix --extra-experimental-features 'nix-command flakes' flake --help >/dev/null 2>&1; then
    mkdir -p "$work/flake"
    cp flake.nix flake.lock "$work/flake/"
    if err=$(nix --extra-experimental-features 'nix-command flakes' flake metadata --offline --json \
      "path:$work/flake" 2>&1 >"$work/metadata.json"); then
      pass "nix flake metadata reads flake.nix and flake.lock offline"
    else
      fail "nix flake metadata: $err"
    fi
  else
    skip "nix flake metadata: this nix has no flake support"
  fi
fi

# --- (b) the module's logic against nixpkgs.lib ----------------------------

if [ -z "$lib_path" ] || [ ! -f "$lib_path/lib/default.nix" ]; then
  skip "module evaluation: no nixpkgs.lib (looked for ${lib_path:-../shared/nixpkgs-lib beside the repository and /var/tmp/nixpkgs-lib}); fetch github:nix-community/nixpkgs.lib, extract it (git archive) and pass its path, e.g. tests/nix/check.sh /var/tmp/nixpkgs-lib"
  finish
fi
lib_path=$(cd "$lib_path" && pwd)
echo "# nixpkgs.lib $(cat "$lib_path/lib/.version" 2>/dev/null) at $lib_path"

eval_args=(--eval --strict --json --read-write-mode "$root/tests/nix/module.nix" --arg nixpkgsLib "$lib_path")
if [ -f dist/systemd/msp-agent.service ]; then
  eval_args+=(--arg distUnit "builtins.readFile $root/dist/systemd/msp-agent.service")
else
  skip "dist/systemd/msp-agent.service does not exist yet: nothing to compare with nixos-modules/unit.nix"
fi
if [ -f dist/systemd/msp-agent-free-disk@.service ]; then
  eval_args+=(--arg distFreeDiskUnit "builtins.readFile ($root/dist/systemd + \"/msp-agent-free-disk@.service\")")
else
  skip "dist/systemd/msp-agent-free-disk@.service does not exist yet: nothing to compare with nixos-modules/unit.nix"
fi

nix_eval=${NIX_INSTANTIATE:-nix-instantiate}
echo "# evaluating with $($nix_eval --version 2>/dev/null)"
if ! $nix_eval "${eval_args[@]}" >"$work/module.json" 2>"$work/module.err"; then
  fail "module evaluation: $(tail -n 20 "$work/module.err")"
  finish
fi

# results, the rendered files, the unit text and the polkit test, one file each
mkdir -p "$work/configs"
if ! python3 - "$work" <<'EOF'
import json, os, sys
work = sys.argv[1]
out = json.load(open(os.path.join(work, "module.json")))
with open(os.path.join(work, "results.tsv"), "w") as f:
    for r in out["results"]:
        f.write("%s\t%s\t%s\n" % ("ok" if r["ok"] else "FAIL", r["name"], "" if r["ok"] else r["detail"].replace("\n", "\\n")))
for key, name in [("serviceUnit", "msp-agent.service"), ("polkitTest", "polkit-test.js"),
                  ("vmPreamble", "preamble.py"),
                  ("freeDiskUnit", "msp-agent-free-disk@srv-data.service")]:
    with open(os.path.join(work, name), "w") as f:
        f.write(out[key])
for name, text in out["configs"].items():
    with open(os.path.join(work, "configs", name + ".toml"), "w") as f:
        f.write(text)
for test, script in out["vmScripts"].items():
    with open(os.path.join(work, "vm-%s.py" % test), "w") as f:
        f.write(script)
with open(os.path.join(work, "vm-groups.json"), "w") as f:
    json.dump({"root": out["vmScenarioRoot"], "wired": out["vmWiredGroups"]}, f)
with open(os.path.join(work, "escape.tsv"), "w") as f:
    for path, escaped in sorted(out["escapeCases"].items()):
        f.write("%s\t%s\n" % (path, escaped))
EOF
then
  fail "module evaluation: unreadable result"
  finish
fi
while IFS=$'\t' read -r status name detail; do
  if [ "$status" = ok ]; then pass "module: $name"; else fail "module: $name: $detail"; fi
done <"$work/results.tsv"

# flake.nix's outputs, called with a stand-in nixpkgs.
if $nix_eval --eval --strict --json --read-write-mode "$root/tests/nix/flake-outputs.nix" \
  --arg nixpkgsLib "$lib_path" -A results >"$work/flake.json" 2>"$work/flake.err"; then
  python3 - "$work/flake.json" >"$work/flake.tsv" <<'PY'
import json, sys
for r in json.load(open(sys.argv[1])):
    status = "skip" if r.get("skip") else ("ok" if r["ok"] else "FAIL")
    print("%s\t%s\t%s" % (status, r["name"], r.get("skip") or ("" if r["ok"] else r["detail"])))
PY
  while IFS=$'\t' read -r status name detail; do
    case $status in
      ok) pass "$name" ;;
      skip) skip "$name: $detail" ;;
      *) fail "$name: $detail" ;;
    esac
  done <"$work/flake.tsv"
else
  fail "flake outputs: $(tail -n 20 "$work/flake.err")"
fi

# vm-disk joins the checks with the first disk scenario file and the flake
# evaluates either way: the checks of this tree, and of a copy of it with a
# vm-tests/scenarios/disk_*.py.
names() {
  $nix_eval --eval --strict --json --read-write-mode "$1/tests/nix/flake-outputs.nix" \
    --arg nixpkgsLib "$lib_path" --arg root "$1" -A checkNames 2>"$work/names.err"
}
mkdir -p "$work/with-disk"
git ls-files --cached --others --exclude-standard -z | xargs -0 cp --parents -t "$work/with-disk" 2>/dev/null
if [ -z "$(ls "$root"/vm-tests/scenarios/*disk*.py 2>/dev/null)" ]; then
  printf 'def scenario_disk_probe(machine):\n    pass\n' >"$work/with-disk/vm-tests/scenarios/disk_probe.py"
fi
if here=$(names "$root") && there=$(names "$work/with-disk"); then
  has_disk_here=$(grep -c '"vm-disk"' <<<"$here")
  want_here=$([ -n "$(ls "$root"/vm-tests/scenarios/*disk*.py 2>/dev/null)" ] && echo 1 || echo 0)
  if [ "$has_disk_here" = "$want_here" ] && grep -q '"vm-disk"' <<<"$there"; then
    pass "flake: vm-disk is in checks exactly when a disk scenario file exists (here: $([ "$want_here" = 1 ] && echo yes || echo no); with disk_probe.py: yes)"
  else
    fail "flake: vm-disk wiring: checks here $here, with a disk scenario $there"
  fi
else
  fail "flake: checks with and without a disk scenario: $(tail -n 5 "$work/names.err")"
fi

# The rendered files are TOML a standard parser reads the same way.
if out=$(python3 - "$work/configs" <<'EOF' 2>&1
import os, sys, tomllib
d = sys.argv[1]
configs = {f[:-5]: tomllib.load(open(os.path.join(d, f), "rb")) for f in os.listdir(d)}
minimal, full = configs["minimal"], configs["full"]
assert minimal["watch"]["units"] == [{"pattern": "*", "remediate": False, "expect_active": False}], minimal
assert [u["pattern"] for u in full["watch"]["units"]] == [
    "restic-backups-legacy.service", "restic-backups-local.service",
    "demo*.service", "nginx.service", "*"], full
assert all(u["remediate"] for u in full["watch"]["units"][:2]), full
assert full["metrics"] == {"listen": "0.0.0.0:9465"}, full
assert full["evidence"] == {"spool_max_bytes": 536870912,
                            "s3": {"bucket": "msp-evidence", "endpoint": "http://s3:9000",
                                   "region": "eu-central-1", "path_style": True,
                                   "retention_days": 2190, "prefix": "clinic-01"}}, full
disks = configs["disks"]
assert [d["path"] for d in disks["watch"]["disks"]] == ["/", "/srv/data", "/srv/my-data", "/var"], disks
data = disks["watch"]["disks"][1]
assert data["warn_above"] == 0.85 and isinstance(data["warn_above"], float), data
assert data["clean"] == [{"path": "/srv/data/cache", "older_than": "7d"},
                         {"path": "/srv/data/tmp", "glob": "*.tmp", "older_than": "2h"}], data
assert "clean" not in disks["watch"]["disks"][0] and disks["watch"]["disks"][3]["remediate"] is False, disks
assert disks["runbooks"]["free_disk"]["tmpfiles_clean"] is False, disks
assert configs["disksNone"]["watch"]["disks"] == [], configs["disksNone"]
EOF
); then
  pass "rendered config files ($(ls "$work/configs" | wc -l)) parse as TOML (tomllib) with the intended structure"
else
  fail "rendered config files as TOML: $out"
fi

# The testScripts' scenario selection (Python) and the flake's wiring
# (vm-tests/groups.nix) agree on vm-tests/scenarios: the groups with at least
# one scenario are exactly the wired ones.
if out=$(python3 - "$work" "$root/vm-tests/scenarios" <<'EOF' 2>&1
import json, os, sys
work, scenarios_dir = sys.argv[1], sys.argv[2]
groups = json.load(open(os.path.join(work, "vm-groups.json")))
os.makedirs(os.path.join(work, "scenario-root"), exist_ok=True)
os.symlink(scenarios_dir, os.path.join(work, "scenario-root", "scenarios"))
preamble = open(os.path.join(work, "preamble.py")).read()
preamble = preamble.replace(groups["root"], os.path.join(work, "scenario-root"))
env = {"subtest": None}
exec(compile(preamble, "preamble.py", "exec"), env)
groups_run = ("remediation", "backup", "evidence", "disk")
selected = {g: [s.__name__ for s in env["scenarios_of"](g)] for g in groups_run}
with_scenarios = sorted(g for g in groups_run if selected[g])
assert with_scenarios == groups["wired"], "testScripts select %s, the flake wires %s" % (selected, groups["wired"])
print(", ".join("%s: %d scenarios" % (g, len(selected[g])) for g in with_scenarios))
EOF
); then
  pass "VM scenario groups: the testScripts and the flake's wiring agree ($out)"
else
  fail "VM scenario groups: $out"
fi

# The VM tests' Python: it compiles, and pyflakes (the NixOS test driver's lint)
# finds no undefined name, given the names the driver defines.
driver_names="start_all,subtest,agent,s3,machines,driver,log,join_all,retry,serial_stdout_off,serial_stdout_on,polling_condition,Machine,create_machine,run_tests,t"
pyflakes=""
if ensure pyflakes3 python3-pyflakes; then
  pyflakes=pyflakes3
elif python3 -m pyflakes --version >/dev/null 2>&1; then
  pyflakes="python3 -m pyflakes"
fi
for script in "$work"/vm-*.py; do
  name=$(basename "$script" .py)
  if ! err=$(python3 -m py_compile "$script" 2>&1); then
    fail "$name testScript does not compile: $err"
  elif [ -n "$pyflakes" ] && ! err=$(PYFLAKES_BUILTINS="$driver_names" $pyflakes "$script" 2>&1); then
    fail "$name testScript: pyflakes: $err"
  else
    pass "$name testScript compiles${pyflakes:+ and passes pyflakes}"
  fi
done

# The instance names of the helper, as systemd itself escapes mount points.
if command -v systemd-escape >/dev/null 2>&1 || ensure systemd-escape systemd; then
  while IFS=$'\t' read -r path escaped; do
    want=$(systemd-escape --path -- "$path")
    if [ "$want" = "$escaped" ]; then
      pass "escapePath \"$path\" is systemd-escape --path: $escaped"
    else
      fail "escapePath \"$path\": $escaped, systemd-escape --path says $want"
    fi
  done <"$work/escape.tsv"
else
  skip "escapePath against systemd-escape: no systemd-escape"
fi

# The polkit rule, executed.
js=""
if command -v duk >/dev/null 2>&1 || ensure duk duktape; then
  js=duk
elif command -v node >/dev/null 2>&1; then
  js=node
fi
if [ -n "$js" ]; then
  if "$js" "$work/polkit-test.js" >"$work/polkit.out" 2>&1; then
    while IFS=$'\t' read -r status name; do
      if [ "$status" = ok ]; then pass "$name ($js)"; else fail "$name ($js)"; fi
    done <"$work/polkit.out"
  else
    fail "polkit rule does not run in $js: $(tail -n 5 "$work/polkit.out")"
  fi
else
  skip "polkit rule execution: no JavaScript engine (duktape or node)"
fi

# The sandbox, scored by systemd itself.
security() {
  local label=$1 file=$2 out level
  out=$(systemd-analyze security --offline=true "$file" 2>&1)
  level=$(grep -o 'exposure level for [^:]*: [0-9.]*' <<<"$out" | sed 's/.*: //')
  if [ -z "$level" ]; then
    fail "systemd-analyze security: $label: no score: $(tail -n 5 <<<"$out")"
  elif awk -v l="$level" 'BEGIN { exit !(l <= 2.0) }'; then
    pass "systemd-analyze security: $label: exposure $level (at most 2.0)"
  else
    fail "systemd-analyze security: $label: exposure $level, more than 2.0: $(grep '✗' <<<"$out" | tr -s ' ' | tr '\n' ';')"
  fi
}
if ensure systemd-analyze systemd && systemd-analyze security --help 2>/dev/null | grep -q -- '--offline'; then
  security "NixOS unit" "$work/msp-agent.service"
  if [ -f dist/systemd/msp-agent.service ]; then
    cp dist/systemd/msp-agent.service "$work/dist-msp-agent.service"
    security "dist/systemd/msp-agent.service" "$work/dist-msp-agent.service"
  fi
  # The helper as its instance for /srv/data, so %f and %i resolve.
  security "NixOS free-disk helper, instance srv-data" "$work/msp-agent-free-disk@srv-data.service"
  if [ -f dist/systemd/msp-agent-free-disk@.service ]; then
    mkdir -p "$work/dist"
    cp dist/systemd/msp-agent-free-disk@.service "$work/dist/msp-agent-free-disk@srv-data.service"
    security "dist/systemd/msp-agent-free-disk@.service, instance srv-data" "$work/dist/msp-agent-free-disk@srv-data.service"
  fi
else
  skip "systemd-analyze security: needs systemd >= 250 (--offline)"
fi

# The rendered files against the agent's own schema: every file the module
# cases render must pass `msp-agent check-config`, or the check fails. The
# agent stops at its first unknown key; when that is a section the module
# renders for a feature still being added to the agent ([metrics],
# [evidence]), the file is tried again without it, so the message says whether
# that section is the only reason. It is a failure either way.
without_section() {
  python3 - "$1" "$2" <<'PY'
import re, sys
path, section = sys.argv[1], sys.argv[2]
out, skipping = [], False
for line in open(path).read().splitlines(keepends=True):
    m = re.match(r"\s*\[\[?\s*([A-Za-z0-9_.-]+)", line)
    if m:
        skipping = m.group(1) == section or m.group(1).startswith(section + ".")
    if not skipping:
        out.append(line)
open(path, "w").write("".join(out))
PY
}
one_line() { tr '\n' ' ' <<<"$1" | tr -s ' '; }
if [ -n "${MSP_AGENT_BIN:-}" ]; then
  if [ ! -x "$MSP_AGENT_BIN" ]; then
    fail "msp-agent check-config: MSP_AGENT_BIN=$MSP_AGENT_BIN is not an executable"
  else
    for file in "$work"/configs/*.toml; do
      name=$(basename "$file" .toml)
      if first=$("$MSP_AGENT_BIN" check-config "$file" 2>&1); then
        pass "msp-agent check-config accepts the rendered $name config"
        continue
      fi
      cp "$file" "$work/try.toml"
      err=$first
      missing=()
      accepted=""
      while true; do
        section=$(sed -n 's/.*unknown field `\(metrics\|evidence\)`, expected one of `agent`.*/\1/p' <<<"$err" | head -n 1)
        if [ -z "$section" ] || [[ " ${missing[*]} " == *" [$section] "* ]]; then
          break
        fi
        missing+=("[$section]")
        without_section "$work/try.toml" "$section"
        if err=$("$MSP_AGENT_BIN" check-config "$work/try.toml" 2>&1); then
          accepted=1
          break
        fi
      done
      if [ -n "$accepted" ]; then
        fail "msp-agent check-config refuses the rendered $name config ONLY because this agent does not accept ${missing[*]} yet; everything else in it passes"
      elif [ ${#missing[@]} -gt 0 ]; then
        fail "msp-agent check-config refuses the rendered $name config: this agent does not accept ${missing[*]} yet, and without it: $(one_line "$err")"
      else
        fail "msp-agent check-config refuses the rendered $name config: $(one_line "$first")"
      fi
    done
  fi
else
  skip "msp-agent check-config on the rendered files: set MSP_AGENT_BIN to a built binary"
fi

finish

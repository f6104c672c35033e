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
#       `systemd-analyze security --offline` (exposure at most 2.0); and the
#       plain unit in dist/systemd/ must agree with nixos-modules/unit.nix.
# Without nixpkgs.lib, (b) is skipped and says so.
#
#   tests/nix/check.sh [NIXPKGS_LIB_PATH]     default: /var/tmp/nixpkgs-lib if present
#   MSP_AGENT_BIN=target/debug/msp-agent tests/nix/check.sh ...
#       also runs `msp-agent check-config` on the rendered files.
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
if [ -z "$lib_path" ] && [ -d /var/tmp/nixpkgs-lib/lib ]; then
  lib_path=/var/tmp/nixpkgs-lib
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
  skip "module evaluation: no nixpkgs.lib; fetch github:nix-community/nixpkgs.lib, extract it (git archive) and pass its path, e.g. tests/nix/check.sh /var/tmp/nixpkgs-lib"
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

nix_eval=${NIX_INSTANTIATE:-nix-instantiate}
echo "# evaluating with $($nix_eval --version 2>/dev/null)"
if ! $nix_eval "${eval_args[@]}" >"$work/module.json" 2>"$work/module.err"; then
  fail "module evaluation: $(tail -n 20 "$work/module.err")"
  finish
fi

# results, the rendered files, the unit text and the polkit test, one file each
if ! python3 - "$work" <<'EOF'
import json, os, sys
work = sys.argv[1]
out = json.load(open(os.path.join(work, "module.json")))
with open(os.path.join(work, "results.tsv"), "w") as f:
    for r in out["results"]:
        f.write("%s\t%s\t%s\n" % ("ok" if r["ok"] else "FAIL", r["name"], "" if r["ok"] else r["detail"].replace("\n", "\\n")))
for key, name in [("minimalConfig", "minimal.toml"), ("fullConfig", "full.toml"),
                  ("serviceUnit", "msp-agent.service"), ("polkitTest", "polkit-test.js")]:
    with open(os.path.join(work, name), "w") as f:
        f.write(out[key])
for test, script in out["vmScripts"].items():
    with open(os.path.join(work, "vm-%s.py" % test), "w") as f:
        f.write(script)
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

# The rendered files are TOML a standard parser reads the same way.
if out=$(python3 - "$work/minimal.toml" "$work/full.toml" <<'EOF' 2>&1
import sys, tomllib
minimal = tomllib.load(open(sys.argv[1], "rb"))
full = tomllib.load(open(sys.argv[2], "rb"))
assert minimal["watch"]["units"] == [{"pattern": "*", "remediate": False, "expect_active": False}], minimal
assert [b["name"] for b in full["backups"]] == ["legacy", "local"], full
assert full["evidence"] == {"s3": {"bucket": "msp-evidence", "endpoint": "http://s3:9000",
                                   "path_style": True, "prefix": "clinic-01"}}, full
EOF
); then
  pass "rendered config files parse as TOML (tomllib) with the intended structure"
else
  fail "rendered config files as TOML: $out"
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
else
  skip "systemd-analyze security: needs systemd >= 250 (--offline)"
fi

# The rendered files against the agent's own schema. The module renders some
# sections for features the agent may not have yet ([metrics], [[backups]],
# [runbooks.free_disk], [evidence]); the rest of each file must be accepted,
# and a refused module-owned section is reported as pending, not passed.
if [ -n "${MSP_AGENT_BIN:-}" ] && [ -x "$MSP_AGENT_BIN" ]; then
  for f in minimal full; do
    python3 - "$work/$f.toml" "$work/$f.core.toml" <<'PY'
import sys
owned = ("[metrics]", "[[backups]]", "[runbooks.free_disk]", "[evidence]", "[evidence.s3]")
blocks = open(sys.argv[1]).read().split("\n\n")
core = [b for b in blocks if b.strip().splitlines()[0].strip() not in owned]
open(sys.argv[2], "w").write("\n\n".join(core).rstrip("\n") + "\n")
PY
    if err=$("$MSP_AGENT_BIN" check-config "$work/$f.core.toml" 2>&1); then
      pass "msp-agent check-config accepts the rendered $f config (the sections the agent owns)"
    else
      fail "msp-agent check-config rejects the rendered $f config: $err"
    fi
    if err=$("$MSP_AGENT_BIN" check-config "$work/$f.toml" 2>&1); then
      pass "msp-agent check-config accepts the rendered $f config (with the module's sections)"
    else
      skip "pending: the agent does not accept all the module renders in the $f config yet: $(tr '\n' ' ' <<<"$err" | tr -s ' ')"
    fi
  done
else
  skip "msp-agent check-config on the rendered files: set MSP_AGENT_BIN to a built binary"
fi

finish

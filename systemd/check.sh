#!/usr/bin/env bash
# Check the systemd units: `systemd-analyze verify` must print nothing, and `systemd-analyze security`
# must rate the system unit's exposure at most MAX_EXPOSURE (4.0). Works without a running systemd
# (CI containers): verify runs against a scratch root holding the unit, the distribution's units and a
# stand-in for the ExecStart program; security runs with --offline=true.
#
#   systemd/check.sh                      # the units in this folder
#   systemd/check.sh path/to/edgecap.service [path/to/user.service]
set -euo pipefail

MAX_EXPOSURE="${MAX_EXPOSURE:-4.0}"
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
system_unit="${1:-$here/edgecap.service}"
user_unit="${2:-$here/edgecap-user.service}"
scratch=""

die() { echo "check.sh: $*" >&2; exit 1; }
cleanup() { if [[ -n "$scratch" ]]; then rm -rf -- "$scratch"; fi; }
trap cleanup EXIT

ensure_systemd_analyze() {
    command -v systemd-analyze >/dev/null 2>&1 && return 0
    # CI images are minimal; Debian's systemd package brings systemd-analyze (no need to boot it).
    if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null 2>&1; then
        echo "check.sh: installing Debian's systemd package for systemd-analyze" >&2
        DEBIAN_FRONTEND=noninteractive apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends systemd >/dev/null
    fi
    command -v systemd-analyze >/dev/null 2>&1 || die "systemd-analyze not found (apt-get install systemd)"
}

# The program a unit starts, with %h expanded to $2 (for user units).
exec_path() {
    local line
    line="$(grep -m1 '^ExecStart=' "$1")" || die "$1: no ExecStart="
    line="${line#ExecStart=}"
    line="${line#[-@:+!]}"
    line="${line%% *}"
    echo "${line//%h/$2}"
}

# Fail on a non-zero status or on any message: verify only warns (exit 0) about unknown keys.
run_quiet() {
    local what="$1" out
    shift
    if ! out="$("$@" 2>&1)" || [[ -n "$out" ]]; then
        echo "$out" >&2
        die "$what: not clean"
    fi
    echo "ok   $what"
}

verify_system_unit() {
    local unit="$1" name prog sysdir
    name="$(basename "$unit")"
    # A scratch root: verify resolves ExecStart= and dependencies (sysinit.target, ...) inside --root.
    mkdir -p "$scratch/root/etc/systemd/system" "$scratch/root/usr/lib/systemd"
    for sysdir in /usr/lib/systemd/system /lib/systemd/system; do
        if [[ -d "$sysdir" ]]; then cp -a "$sysdir" "$scratch/root/usr/lib/systemd/"; break; fi
    done
    cp "$unit" "$scratch/root/etc/systemd/system/$name"
    prog="$(exec_path "$unit" /root)"
    mkdir -p "$scratch/root$(dirname "$prog")"
    printf '#!/bin/sh\n' > "$scratch/root$prog"
    chmod 0755 "$scratch/root$prog"
    run_quiet "verify $name" systemd-analyze verify --man=no --root="$scratch/root" "$name"
}

verify_user_unit() {
    local unit="$1" home prog
    home="$scratch/home"
    prog="$(exec_path "$unit" "$home")"
    mkdir -p "$(dirname "$prog")" "$scratch/run"
    chmod 0700 "$scratch/run"
    printf '#!/bin/sh\n' > "$prog"
    chmod 0755 "$prog"
    run_quiet "verify --user $(basename "$unit")" \
        env HOME="$home" XDG_RUNTIME_DIR="$scratch/run" XDG_CONFIG_HOME="$home/.config" \
        systemd-analyze --user verify --man=no "$unit"
}

security_check() {
    local unit="$1" out exposure threshold
    # --threshold counts in tenths (0..100); the table shows 0.0..10.0.
    threshold="$(awk -v m="$MAX_EXPOSURE" 'BEGIN { printf "%d", m * 10 + 0.5 }')"
    if ! out="$(systemd-analyze security --offline=true --threshold="$threshold" --no-pager "$unit" 2>&1)"; then
        echo "$out" | grep -E '^✗' >&2 || echo "$out" >&2
        exposure="$(echo "$out" | sed -n 's/.*Overall exposure level for .*: \([0-9.]*\).*/\1/p')"
        die "security $(basename "$unit"): exposure ${exposure:-?} > $MAX_EXPOSURE"
    fi
    exposure="$(echo "$out" | sed -n 's/.*Overall exposure level for .*: \([0-9.]*\).*/\1/p')"
    [[ -n "$exposure" ]] || die "security: could not read the exposure level from systemd-analyze"
    echo "ok   security $(basename "$unit"): exposure $exposure <= $MAX_EXPOSURE"
}

main() {
    [[ -f "$system_unit" ]] || die "no such unit file: $system_unit"
    ensure_systemd_analyze
    scratch="$(mktemp -d)"
    verify_system_unit "$system_unit"
    if [[ -f "$user_unit" ]]; then verify_user_unit "$user_unit"; fi
    security_check "$system_unit"
}

main

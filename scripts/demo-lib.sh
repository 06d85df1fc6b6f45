# SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
# shellcheck shell=bash
#
# What scripts/demo and scripts/demo-restart share; sourced by both, after
# `cd` to the repository: messages, the ROUNDS argument, a work directory
# and the processes started (removed and killed on exit), waiting for a
# line, reading a key=value field.

say() { printf 'demo: %s\n' "$*"; }
fail() { printf 'demo: FAILED: %s\n' "$*" >&2; exit 1; }

# check_rounds N: N must be a number (exit 2 otherwise).
check_rounds() {
    case "$1" in '' | *[!0-9]*) echo "demo: ROUNDS must be a number" >&2; exit 2 ;; esac
}

work=$(mktemp -d /tmp/ivvmm-demo.XXXXXX)
pids=()    # killed on exit
remove=()  # files removed on exit, besides $work
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
    rm -f "${remove[@]}"
}
trap cleanup EXIT INT TERM

# wait_for FILE PATTERN PID: until FILE has PATTERN, or PID died, or 30 s.
wait_for() {
    for _ in $(seq 600); do
        grep -qa "$2" "$1" 2>/dev/null && return 0
        kill -0 "$3" 2>/dev/null || return 1
        sleep 0.05
    done
    return 1
}

# field LINE KEY: the number after KEY= in LINE.
field() { grep -o "$2=[0-9]*" <<<"$1" | head -1 | cut -d= -f2; }

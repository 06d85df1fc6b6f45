# SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
# shellcheck shell=bash
#
# Shared helpers for scripts/bench: building, results directory, background
# processes we started (and only those) cleaned up on exit, sample statistics.

say() { printf 'bench: %s\n' "$*" >&2; }
die() { printf 'bench: %s\n' "$*" >&2; exit 1; }

# Paths every mode uses. ROOT is the repository root.
bench_paths() {
    IVVMM="$ROOT/target/release/ivvmm"
    # The server/client binary. Normally the same ivvmm; IVVMM_SERVER may
    # point at another build (e.g. a branch whose `server` is not merged yet).
    IVVMM_SERVER="${IVVMM_SERVER:-$IVVMM}"
    EXAMPLES="$ROOT/target/release/examples"
    TG="$ROOT/guest/testguest/build"
    QEMU="${QEMU:-qemu-system-x86_64}"
}

# Builds ivvmm, the measuring examples and the test guest (no-ops when fresh).
bench_build() {
    say "building ivvmm, examples and the test guest (release)"
    (cd "$ROOT" && cargo build --release --quiet --bin ivvmm \
        --example doorbell_floor --example boot_floor --example boot_timer --example shm_bw) ||
        die "cargo build failed"
    make -s -C "$ROOT/guest/testguest" || die "test guest build failed"
    [ -e /dev/kvm ] || die "/dev/kvm is missing: these benchmarks boot VMs on KVM"
    command -v "$QEMU" >/dev/null || die "$QEMU not found: run scripts/setup (installs qemu-system-x86)"
}

# RESULTS: a fresh directory for this mode's raw numbers; WORK: scratch.
bench_dirs() {
    local mode=$1
    RESULTS="$ROOT/bench-results/$(date +%Y%m%d-%H%M%S)-$mode"
    mkdir -p "$RESULTS"
    WORK=$(mktemp -d "/tmp/ivvmm-bench-$mode.XXXXXX")
    chmod 700 "$WORK"
    BG_PIDS=()
    trap bench_cleanup EXIT
    trap 'exit 130' INT TERM
}

bench_cleanup() {
    local pid
    for pid in "${BG_PIDS[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    for pid in "${BG_PIDS[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
    BG_PIDS=()
    [ -n "${WORK:-}" ] && rm -rf "$WORK"
}

# bg_start VAR cmd... : runs cmd in the background, its pid in VAR.
bg_start() {
    local var=$1
    shift
    "$@" &
    local pid=$!
    BG_PIDS+=("$pid")
    printf -v "$var" '%s' "$pid"
}

# bg_stop PID: stops one background process we started and reaps it.
bg_stop() {
    kill "$1" 2>/dev/null || true
    wait "$1" 2>/dev/null || true
}

# wait_for FILE TEXT SECONDS: until FILE contains TEXT (fails on timeout).
wait_for() {
    local file=$1 text=$2 limit=$3 i
    for ((i = 0; i < limit * 100; i++)); do
        grep -qF -- "$text" "$file" 2>/dev/null && return 0
        sleep 0.01
    done
    return 1
}

# wait_for_socket PATH SECONDS
wait_for_socket() {
    local i
    for ((i = 0; i < $2 * 100; i++)); do
        [ -S "$1" ] && return 0
        sleep 0.01
    done
    return 1
}

# stats FILE: "n min p50 p90 p99 max" of the numbers in FILE (one per line),
# with rank floor(n*p/100) in the sorted list, as the test guest computes.
stats() {
    sort -n "$1" | awk '
        { v[n++] = $1 }
        END {
            if (n == 0) { print "0 - - - - -"; exit }
            i50 = int(n * 50 / 100); i90 = int(n * 90 / 100); i99 = int(n * 99 / 100)
            print n, v[0], v[i50], v[i90], v[i99], v[n - 1]
        }'
}

# shm_samples SHM_NAME OFFSET COUNT: COUNT little-endian u32 from /dev/shm/NAME.
shm_samples() {
    od -An -tu4 -v -j "$2" -N "$(($3 * 4))" "/dev/shm/$1" | tr -s ' ' '\n' | sed '/^$/d'
}

# tsc_from FILE: the tsc_per_us=N word a tool printed.
tsc_from() {
    grep -o 'tsc_per_us=[0-9.]*' "$1" | head -n 1 | cut -d= -f2
}

# ratio A B: A/B with two decimals ("-" if either is missing).
ratio() {
    awk -v a="$1" -v b="$2" 'BEGIN {
        if (a == "" || b == "" || a == "-" || b == "-" || b == 0) print "-"
        else printf "%.2f", a / b }'
}

# verdict VALUE GOAL le|ge: "met" or "NOT met".
verdict() {
    awk -v v="$1" -v g="$2" -v op="$3" 'BEGIN {
        if (v == "-" || v == "") { print "n/a"; exit }
        ok = (op == "le") ? (v <= g) : (v >= g)
        print ok ? "met" : "NOT met" }'
}

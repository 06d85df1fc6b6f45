#!/bin/bash
# SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
#
# Linux in ivvmm on a real (emulated) SVM: QEMU TCG runs an L1 Linux with
# KVM_AMD, and inside it ivvmm boots our guest kernel and initramfs (L2).
# See guest/nested/README.md.
#
#   run.sh [--verbose] [--rounds N] [SCENARIO[,SCENARIO...]]
#
# Scenarios (guest/nested/init): info, host, pingpong, phases, sysfs, pat, realloc,
# rmmod, presence, rejoin, term, demo; default all of them. Builds what is
# missing first (L1 kernel ~2.5 min, static ivvmm, L2 images). Prints
# L1's console on stderr as it comes (L2's lines prefixed `L2 <vm>| `), the
# result lines again on stdout at the end, and exits 0 only when every
# scenario passed.
#
# Environment:
#   IVVMM_NESTED_TIMEOUT  seconds for the whole QEMU run (default 300)
#   IVVMM_NESTED_STALL    seconds without console output that count as a
#                         stall (default 60); a stalled run, or one whose
#                         L1 kernel panicked, is retried
#   IVVMM_NESTED_RETRIES  how many times (default 3); `nested: retries=N`
#                         on stderr says how many it took. A retry runs
#                         only the scenarios the stalled run had not
#                         completed (those it did are kept); one that
#                         completed and failed is never retried
#   IVVMM_NESTED_CPU      QEMU -cpu (default max,-xsave; see the README)
#   IVVMM_NESTED_SMP      L1's CPUs, QEMU -smp (default 2: L2 runs with --cpus 2)
#   IVVMM_NESTED_TSC_KHZ  the host TSC frequency for L1 (default: from dmesg)
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
timeout_s=${IVVMM_NESTED_TIMEOUT:-300}
stall_s=${IVVMM_NESTED_STALL:-60}
retries=${IVVMM_NESTED_RETRIES:-3}
cpu=${IVVMM_NESTED_CPU:-max,-xsave}
smp=${IVVMM_NESTED_SMP:-2}

die() {
	echo "guest/nested/run.sh: $*" >&2
	exit 2
}

verbose=0 rounds=100 runs=""
while [ $# -gt 0 ]; do
	case "$1" in
	--verbose) verbose=1 ;;
	--rounds)
		[ $# -ge 2 ] || die "--rounds needs a number"
		rounds=$2
		shift
		;;
	-*) die "unknown option '$1' (use --verbose, --rounds N)" ;;
	*) runs=$1 ;;
	esac
	shift
done
case "$rounds" in '' | *[!0-9]*) die "--rounds must be a number" ;; esac
case "$runs" in *[!a-z0-9,-]*) die "scenarios are a comma-separated list of names" ;; esac

command -v qemu-system-x86_64 >/dev/null || die "qemu-system-x86_64 is missing: install qemu-system-x86 (scripts/setup)"

l1=$("$(dirname "$here")/kernel/build.sh" --nested | tail -n1)
l1initrd=$("$here/build-initramfs.sh" | tail -n1)

# Under TCG the guest's TSC runs at the host's rate; telling L1 the
# frequency spares it a PIT calibration that fails on a busy host.
tsc_khz=${IVVMM_NESTED_TSC_KHZ:-}
if [ -z "$tsc_khz" ]; then
	mhz=$(dmesg 2>/dev/null | sed -n 's/.*tsc: Refined TSC clocksource calibration: \([0-9.]*\) MHz.*/\1/p' | tail -n1)
	[ -n "$mhz" ] || mhz=$(dmesg 2>/dev/null | sed -n 's/.*tsc: Detected \([0-9.]*\) MHz processor.*/\1/p' | tail -n1)
	[ -z "$mhz" ] || tsc_khz=$(awk -v m="$mhz" 'BEGIN { printf "%d", m * 1000 }')
fi
# The kernel command line for L1, running the scenarios in $1 (empty: all).
l1_append() {
	local a="console=ttyS0 panic=-1 quiet nested.rounds=$rounds nested.verbose=$verbose"
	[ -z "$1" ] || a="$a nested.run=$1"
	[ -z "$tsc_khz" ] || a="$a tsc_early_khz=$tsc_khz tsc=reliable"
	echo "$a"
}
append=$(l1_append "$runs")

log=$(mktemp /tmp/ivvmm-nested.XXXXXX)
done_log=$(mktemp /tmp/ivvmm-nested-done.XXXXXX)
qemu_pid=""
cleanup() {
	[ -z "$qemu_pid" ] || kill "$qemu_pid" 2>/dev/null || true
	rm -f "$log" "$log.qemu" "$done_log"
}
trap cleanup EXIT INT TERM

# One QEMU run, its console streamed to stdout. Returns 0 when it ended by
# itself after L1's last line, 3 on a stall, 4 on the overall timeout, 5 when
# L1's kernel panicked (L2's panics are in L2's output, prefixed `L2 <vm>| `),
# 6 when it ended by itself before that line (L1 reset or died silently).
run_once() {
	: >"$log"
	qemu-system-x86_64 -accel tcg -M pc -cpu "$cpu" -smp "$smp" -m 1G -display none -no-reboot \
		-serial "file:$log" -monitor none -kernel "$l1" -initrd "$l1initrd" \
		-append "$append" </dev/null >"$log.qemu" 2>&1 &
	qemu_pid=$!
	local start last_change size=0 new shown=0
	start=$(date +%s)
	last_change=$start
	while kill -0 "$qemu_pid" 2>/dev/null; do
		sleep 1
		new=$(stat -c %s "$log")
		if [ "$new" != "$size" ]; then
			size=$new
			last_change=$(date +%s)
		fi
		# Stream whole lines as they come.
		shown=$(stream "$shown")
		if [ $(($(date +%s) - last_change)) -ge "$stall_s" ]; then
			kill "$qemu_pid" 2>/dev/null || true
			wait "$qemu_pid" 2>/dev/null || true
			qemu_pid=""
			return 3
		fi
		if [ $(($(date +%s) - start)) -ge "$timeout_s" ]; then
			kill "$qemu_pid" 2>/dev/null || true
			wait "$qemu_pid" 2>/dev/null || true
			qemu_pid=""
			return 4
		fi
	done
	wait "$qemu_pid" 2>/dev/null || true
	qemu_pid=""
	stream "$shown" >/dev/null
	[ ! -s "$log.qemu" ] || sed 's/^/qemu: /' "$log.qemu" >&2
	if grep -q '^Kernel panic - not syncing' "$log"; then return 5; fi
	grep -q 'NESTED-DONE: ' "$log" || return 6
	return 0
}

# After an attempt that L1 did not finish: the scenarios it completed
# (each from `NESTED-START: name` to its `NESTED-RESULT: name rc=0` line)
# are kept in $done_log, and the next attempt runs only the rest of $runs.
# A scenario that completed and failed is a real failure: no retry hides it.
keep_passed() {
	local failed passed
	failed=$(tr -d '\r' <"$log" | sed -n 's/^NESTED-RESULT: \([a-z0-9-]*\) rc=[1-9].*/\1/p')
	if [ -n "$failed" ]; then
		echo "nested: FAILED: $(echo "$failed" | tr '\n' ' ')(not retried: they failed, they did not stall)" >&2
		exit 1
	fi
	passed=$(tr -d '\r' <"$log" | sed -n 's/^NESTED-RESULT: \([a-z0-9-]*\) rc=0.*/\1/p')
	[ -n "$passed" ] || return 0
	tr -d '\r' <"$log" | awk '
		/^NESTED-START: / { cur = $2; buf = $0 "\n"; next }
		cur != "" { buf = buf $0 "\n" }
		cur != "" && $1 == "NESTED-RESULT:" && $2 == cur { if ($3 == "rc=0") printf "%s", buf; cur = "" }
	' | grep -E '^(NESTED-|L2 [a-z]+\| |L1 )' >>"$done_log"
	local rest="" s
	for s in $(echo "$runs" | tr ',' ' '); do
		echo "$passed" | grep -qx "$s" || rest="$rest${rest:+,}$s"
	done
	runs=$rest
	if [ -z "$runs" ]; then
		# Every scenario had passed when L1 stopped: nothing to run again.
		echo "NESTED-DONE: failed=0" >"$log"
		return 0
	fi
	append=$(l1_append "$runs")
	echo "nested: kept the scenarios that passed ($(echo "$passed" | tr '\n' ' ')); the next attempt runs $runs" >&2
}

# stream N: print the log's complete lines after line N; echo the new count.
stream() {
	local total
	total=$(grep -c '' "$log" || true)
	# The last line may still be growing: hold it back until QEMU is gone.
	if [ -n "$qemu_pid" ] && kill -0 "$qemu_pid" 2>/dev/null; then
		total=$((total - 1))
	fi
	if [ "$total" -gt "$1" ]; then
		sed -n "$(($1 + 1)),${total}p" "$log" | tr -d '\r' | sed 's/\x1b\[[0-9;?]*[A-Za-z]//g; s/\x1bc//g' >&2
		echo "$total"
	else
		echo "$1"
	fi
}

echo "nested: L1 $l1 ($cpu), initramfs $l1initrd" >&2
echo "nested: append: $append" >&2
begin=$(date +%s)
case "$retries" in '' | *[!0-9]*) die "IVVMM_NESTED_RETRIES must be a number" ;; esac
attempt=0 stalls=0 crashes=0
while [ "$attempt" -le "$retries" ]; do
	attempt=$((attempt + 1))
	rc=0
	run_once || rc=$?
	# A retry runs only what is left (with a list to take it from).
	if [ "$rc" != 0 ] && [ "$rc" != 4 ] && [ -n "$runs" ]; then
		keep_passed
		[ -n "$runs" ] || rc=0
	fi
	case $rc in
	0) break ;;
	3)
		stalls=$((stalls + 1))
		echo "nested: L1 stalled: no console output for ${stall_s} s (attempt $attempt)." >&2
		echo "nested: QEMU 7.2 TCG can leave the L1 CPU halted with a deliverable timer interrupt" >&2
		echo "nested: pending after an SVM guest runs (see guest/nested/README.md)." >&2
		[ "$attempt" -le "$retries" ] && echo "nested: retrying ($attempt of $retries retries)" >&2
		;;
	5 | 6)
		crashes=$((crashes + 1))
		if [ "$rc" = 5 ]; then
			echo "nested: L1's kernel panicked (attempt $attempt; above)." >&2
		else
			echo "nested: L1 ended before its last line, without a panic (attempt $attempt; above)." >&2
		fi
		echo "nested: seen with two L1 CPUs under QEMU 7.2 multi-threaded TCG: L1's PID 1 (busybox)" >&2
		echo "nested: aborts in glibc with no message, at random points (see guest/nested/README.md)." >&2
		[ "$attempt" -le "$retries" ] && echo "nested: retrying ($attempt of $retries retries)" >&2
		;;
	4)
		echo "nested: FAILED: still running after ${timeout_s} s (IVVMM_NESTED_TIMEOUT)" >&2
		exit 1
		;;
	esac
done
echo "nested: retries=$((attempt - 1)) (L1 stalls $stalls, L1 panics $crashes)" >&2
[ "$rc" = 0 ] || {
	echo "nested: FAILED: L1 stalled or panicked $attempt times" >&2
	exit 1
}
echo "nested: QEMU ran $(($(date +%s) - begin)) s" >&2
# The result lines again on stdout, for callers that parse them: the
# scenarios earlier attempts completed, then the last attempt's.
cat "$done_log"
tr -d '\r' <"$log" | grep -E '^(NESTED-|L2 [a-z]+\| |L1 )' || true
grep -q 'NESTED-DONE: failed=0' "$log" || {
	echo "nested: FAILED: $(grep -E 'NESTED-(RESULT.*rc=[^0]|DONE)' "$log" | tr -d '\r' | tr '\n' ' ')" >&2
	exit 1
}

# SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
# shellcheck shell=bash
#
# scripts/bench doorbell: ping-pong round trips, in one run, of
#   floor   two bare-KVM VMs in one process (examples/doorbell_floor)
#   floortg the same VMs running the test guest's own round loop, which
#           does more per round than the minimal floor loop
#   ivvmm   two ivvmm VMs running the test guest on `ivvmm server`
#   qemu    two QEMU VMs (-M pc, ivshmem-doorbell) on the same kind of server
#   host    `ivvmm client ping` against a test-guest pong (when available)
#   poll    the test guest's mode=poll (shared-memory spin, no interrupts)
# Each kind runs ROUNDS/REPS rounds REPS times, interleaved, so that the
# load other users put on this machine falls on all kinds alike.

DB_SHM_SIZE=4M
DB_SAMPLES=$((0x10000)) # where ping keeps its u32 samples in the shm

# A name for the shm object, unique to this run.
db_shm_name() { printf 'ivvmm-bench-%s-%s' "$$" "$1"; }

# db_vm KIND SOCK SERIAL CMDLINE: one test-guest VM. It execs, so call it
# in the background or in a subshell: its pid is then the VM's `timeout`,
# which passes a kill on to the VM.
db_vm() {
    local kind=$1 sock=$2 serial=$3 cmdline=$4
    case "$kind" in
        ivvmm)
            exec timeout 300 "$IVVMM" --kernel "$TG/testguest.bzImage" --mem 256M \
                --serial "$serial" --server "$sock" --vectors 1 --stats \
                --cmdline "$cmdline" 2>"$serial.stderr"
            ;;
        qemu)
            exec timeout 300 "$QEMU" -M pc -accel kvm -cpu host,-arch-capabilities -m 256M \
                -nodefaults -no-user-config -display none -no-reboot \
                -kernel "$TG/testguest.pvh.elf" -append "$cmdline" \
                -device isa-debug-exit,iobase=0xf4,iosize=1 -serial "file:$serial" \
                -chardev "socket,path=$sock,id=ivs" \
                -device ivshmem-doorbell,chardev=ivs,vectors=1 2>"$serial.stderr"
            ;;
    esac
}

# db_server LABEL: starts a server; sets DB_SOCK, DB_SHM, DB_SERVER_PID.
db_server() {
    DB_SOCK="$WORK/$1.sock"
    DB_SHM=$(db_shm_name "$1")
    rm -f "$DB_SOCK"
    bg_start DB_SERVER_PID "$IVVMM_SERVER" server -S "$DB_SOCK" -l "$DB_SHM_SIZE" -n 1 \
        -M "$DB_SHM" 2>>"$WORK/$1.server.log"
    wait_for_socket "$DB_SOCK" 5 || die "ivvmm server did not listen on $DB_SOCK (see $WORK/$1.server.log)"
}

# db_pair KIND LABEL ROUNDS "EXTRA WORDS": pong and ping VMs on a fresh
# server; ping's samples are appended to $RESULTS/LABEL.cycles, the VMs'
# serial output and --stats kept under $RESULTS/LABEL-N.*.
db_pair() {
    local kind=$1 label=$2 rounds=$3 extra=$4 pong_pid rc
    local n=$((${DB_RUN[$label]:-0} + 1))
    DB_RUN[$label]=$n
    local out="$RESULTS/$label-$n"
    db_server "$label-$n"
    bg_start pong_pid db_vm "$kind" "$DB_SOCK" "$out.pong" \
        "test=pingpong role=pong rounds=$rounds $extra"
    wait_for "$out.pong" "ready" 60 || die "$label: pong never got ready (see $out.pong*)"
    rc=0
    (db_vm "$kind" "$DB_SOCK" "$out.ping" "test=pingpong role=ping rounds=$rounds $extra") || rc=$?
    wait "$pong_pid" 2>/dev/null || true
    grep -q '^PASS' "$out.ping" || die "$label: ping failed (exit $rc): $(tail -n 2 "$out.ping" | tr -d '\r')"
    shm_samples "$DB_SHM" "$DB_SAMPLES" "$rounds" >"$out.cycles"
    cat "$out.cycles" >>"$RESULTS/$label.cycles"
    bg_stop "$DB_SERVER_PID"
}

# db_floor LABEL GUEST ROUNDS
db_floor() {
    local label=$1 guest=$2 rounds=$3 n=$((${DB_RUN[$1]:-0} + 1))
    DB_RUN[$label]=$n
    "$EXAMPLES/doorbell_floor" --guest "$guest" --rounds "$rounds" --out "$WORK/floor.tmp" \
        >"$RESULTS/$label-$n.out" || die "doorbell_floor --guest $guest failed (see $RESULTS/$label-$n.out)"
    cp "$WORK/floor.tmp" "$RESULTS/$label-$n.cycles"
    cat "$WORK/floor.tmp" >>"$RESULTS/$label.cycles"
}

# `ivvmm client ping` against a test-guest pong: the host as one peer.
db_host_available() {
    "$IVVMM_SERVER" client ping --help >/dev/null 2>&1
}

db_host() {
    local rounds=$1 pong_pid n=$((${DB_RUN[host]:-0} + 1)) peer rc=0
    DB_RUN[host]=$n
    local out="$RESULTS/host-$n"
    db_server "host-$n"
    bg_start pong_pid db_vm ivvmm "$DB_SOCK" "$out.pong" "test=pingpong role=pong rounds=$rounds timeout_ms=20000"
    wait_for "$out.pong" "ready" 60 || die "host: pong never got ready"
    peer=$(grep -o 'role=pong id=[0-9]*' "$out.pong" | head -n 1 | cut -d= -f3)
    timeout 120 "$IVVMM_SERVER" client -S "$DB_SOCK" ping --peer "$peer" --count "$rounds" \
        >"$out.client" 2>&1 || rc=$?
    ((rc == 0)) || bg_stop "$pong_pid" # it would wait for its timeout
    wait "$pong_pid" 2>/dev/null || true
    bg_stop "$DB_SERVER_PID"
    if ((rc)); then
        DB_SKIPPED[host]="failed: $(tail -n 1 "$out.client") (exit $rc)"
        return 1
    fi
    # The client prints percentiles in us, not raw samples: keep its line.
    grep '^ping ' "$out.client" >>"$RESULTS/host.summary"
}

# One row: LABEL DESCRIPTION; converts cycles to µs with $DB_TSC.
db_row() {
    local label=$1 desc=$2 file="$RESULTS/$1.cycles"
    if [ "$label" = host ] && [ -s "$RESULTS/host.summary" ] && [ -z "${DB_SKIPPED[host]:-}" ]; then
        # Percentiles per run from `ivvmm client ping` (us); the median run's.
        sort -t= -k5 -n "$RESULTS/host.summary" | awk -v d="$desc" '{ l[n++] = $0 } END {
            split(l[int(n / 2)], w, " "); for (i in w) { split(w[i], a, "="); v[a[1]] = a[2] + 0 }
            printf "%-26s %7d %9.2f %9.2f %9.1f %9s %9s  (client, median of %d runs)\n", d, v["count"], v["p50"], v["p99"], v["max"], "-", "-", n }'
        return
    fi
    if [ ! -s "$file" ]; then
        printf '%-26s %s\n' "$desc" "${DB_SKIPPED[$label]:-not run}"
        return
    fi
    read -r n _min p50 _p90 p99 max < <(stats "$file")
    awk -v d="$desc" -v n="$n" -v a="$p50" -v b="$p99" -v c="$max" -v t="$DB_TSC" \
        -v fa="${DB_P50[floor]:-}" -v fb="${DB_P99[floor]:-}" 'BEGIN {
        ra = (fa > 0) ? sprintf("%.2f", a / fa) : "-"
        rb = (fb > 0) ? sprintf("%.2f", b / fb) : "-"
        printf "%-26s %7d %9.2f %9.2f %9.1f %9s %9s\n", d, n, a / t, b / t, c / t, ra, rb }'
}

# db_paired A B [FIELD]: the median over runs of p50(A in run n) / p50(B in
# run n) (FIELD 5: p99): each pair ran back to back, so this ratio is the
# least disturbed by load that comes and goes.
db_paired() {
    local n a b f=${3:-3}
    for ((n = 1; n <= ${DB_RUN[$1]:-0}; n++)); do
        [ -s "$RESULTS/$1-$n.cycles" ] && [ -s "$RESULTS/$2-$n.cycles" ] || continue
        a=$(stats "$RESULTS/$1-$n.cycles" | cut -d' ' -f"$f")
        b=$(stats "$RESULTS/$2-$n.cycles" | cut -d' ' -f"$f")
        ratio "$a" "$b"
        echo
    done | sort -n | awk '{ v[n++] = $1 } END { if (n) printf "%.2f", v[int(n / 2)]; else print "-" }'
}

# The --stats lines of a VM, reduced to what a doorbell could cost.
db_counters() {
    local f=$1
    awk '/vcpu_exits/ { for (i = 1; i <= NF; i++) if ($i ~ /^mmio_(read|write)=|^pio_(in|out)=/) x = x " " $i }
         /event_loop/ { sub(/.*event_loop /, ""); e = $0 }
         END { printf "vcpu_exits:%s | event_loop: %s\n", x, e }' "$f"
}

# Writes the plot data (cumulative fraction against us) and draws the PNG:
# left, the interrupt-driven kinds on a linear axis around their bulk;
# right, every kind (polling included) on a log axis.
db_plot() {
    local label lin="" all="" xmin xmax p
    for label in floor floortg ivvmm qemu host poll; do
        [ -s "$RESULTS/$label.cycles" ] || continue
        sort -n "$RESULTS/$label.cycles" | awk -v t="$DB_TSC" '{ v[n++] = $1 }
            END { for (i = 0; i < n; i++) print v[i] / t, (i + 1) / n }' >"$RESULTS/$label.cdf"
        p="'$RESULTS/$label.cdf' using 1:2 with lines lw 2 title '${DB_TITLE[$label]}'"
        all+="${all:+, }$p"
        [ "$label" = poll ] || lin+="${lin:+, }$p"
    done
    command -v gnuplot >/dev/null || { say "gnuplot missing: no plot (scripts/setup installs gnuplot-nox)"; return; }
    # Linear panel: from 0.8x the fastest p50 to 1.3x the slowest p99.
    read -r xmin xmax < <(for label in floor floortg ivvmm qemu host; do
        [ -n "${DB_P50[$label]:-}" ] && echo "${DB_P50[$label]} ${DB_P99[$label]}"
    done | awk -v t="$DB_TSC" 'NR == 1 || $1 < a { a = $1 } $2 > b { b = $2 }
        END { printf "%.1f %.1f\n", 0.8 * a / t, 1.3 * b / t }')
    gnuplot <<EOF || { say "gnuplot failed: no plot"; rm -f "$RESULTS/doorbell.png"; }
set terminal pngcairo size 1400,600 noenhanced font ",10"
set output '$RESULTS/doorbell.png'
set multiplot layout 1,2 title "Doorbell ping-pong round trip, ${DB_ROUNDS} rounds per kind ($(date +%F), 2-core PVM host)"
set ylabel "fraction of rounds"
set grid
set key bottom right
set yrange [0:1]
set title "interrupt-driven (linear)"
set xlabel "round trip (us)"
set xrange [$xmin:$xmax]
plot $lin
set title "all, including polling (log)"
set xlabel "round trip (us, log scale)"
set logscale x
set autoscale x
plot $all
unset multiplot
EOF
}

bench_doorbell() {
    local rounds=${ROUNDS:-10000} reps=${REPS:-5} per rep
    per=$(((rounds + reps - 1) / reps))
    DB_ROUNDS=$((per * reps))
    declare -gA DB_RUN=() DB_P50=() DB_P99=() DB_SKIPPED=() DB_TITLE=(
        [floor]="floor: bare KVM, 2 VMs in 1 process"
        [floortg]="floor VMs running the test-guest loop"
        [ivvmm]="ivvmm VM <-> ivvmm VM"
        [qemu]="QEMU VM <-> QEMU VM (-M pc)"
        [host]="host (ivvmm client) <-> ivvmm VM"
        [poll]="poll: test guest mode=poll (CPL3 spin)")
    local host=1
    db_host_available || { host=0; DB_SKIPPED[host]="skipped: '$IVVMM_SERVER client ping' is not available"; }
    rm -f "$RESULTS/host.summary"

    say "doorbell: $DB_ROUNDS rounds per kind in $reps interleaved runs of $per; results in $RESULTS"
    for ((rep = 1; rep <= reps; rep++)); do
        say "run $rep/$reps: floor (2 loops), ivvmm, qemu$( ((host)) && echo ", host"), poll"
        db_floor floor minimal "$per"
        db_floor floortg testguest "$per"
        db_pair ivvmm ivvmm "$per" ""
        db_pair qemu qemu "$per" ""
        if ((host)) && ! db_host "$per"; then host=0; fi
        db_pair ivvmm poll "$per" "mode=poll"
    done
    # The same ivvmm pair with 100 rounds: its counters must equal the long run's.
    db_pair ivvmm short 100 ""

    DB_TSC=$(tsc_from "$RESULTS/floor-1.out")
    # Percentiles of every kind, here and not inside the summary pipeline
    # below (a subshell): the plot needs them too.
    local label n
    for label in floor floortg ivvmm qemu poll; do
        [ -s "$RESULTS/$label.cycles" ] || continue
        read -r n _ DB_P50[$label] _ DB_P99[$label] _ < <(stats "$RESULTS/$label.cycles")
    done
    {
        echo "Doorbell round trip, $DB_ROUNDS rounds per kind ($reps interleaved runs), tsc_per_us=$DB_TSC"
        printf '%-26s %7s %9s %9s %9s %9s %9s\n' "" rounds "p50 us" "p99 us" "max us" "p50/floor" "p99/floor"
        db_row floor "floor (bare KVM)"
        db_row floortg "floor, test-guest loop"
        db_row ivvmm "ivvmm VM<->VM"
        db_row qemu "QEMU VM<->VM"
        db_row host "host<->ivvmm VM"
        db_row poll "poll (mode=poll)"
        echo
        local r50 r99
        r50=$(ratio "${DB_P50[ivvmm]:-}" "${DB_P50[floor]:-}")
        r99=$(ratio "${DB_P99[ivvmm]:-}" "${DB_P99[floor]:-}")
        echo "goal: ivvmm p50 <= 1.05x floor: ${r50}x ($(verdict "$r50" 1.05 le)); p99 <= 1.05x floor: ${r99}x ($(verdict "$r99" 1.05 le))"
        echo "paired ratios (median over the $reps runs of run-by-run ratios):"
        echo "  p50: ivvmm/floor $(db_paired ivvmm floor)x, ivvmm/floortg $(db_paired ivvmm floortg)x, qemu/floor $(db_paired qemu floor)x, ivvmm/qemu $(db_paired ivvmm qemu)x"
        echo "  p99: ivvmm/floor $(db_paired ivvmm floor 5)x, ivvmm/floortg $(db_paired ivvmm floortg 5)x, qemu/floor $(db_paired qemu floor 5)x, ivvmm/qemu $(db_paired ivvmm qemu 5)x"
        echo "VMM cost (ivvmm vs the floor VMs running the same guest loop): p50 $(ratio "${DB_P50[ivvmm]:-}" "${DB_P50[floortg]:-}")x, p99 $(ratio "${DB_P99[ivvmm]:-}" "${DB_P99[floortg]:-}")x"
        echo "test guest's loop vs the minimal loop (guest code, not VMM): p50 $(ratio "${DB_P50[floortg]:-}" "${DB_P50[floor]:-}")x"
        echo "ivvmm vs QEMU: p50 $(ratio "${DB_P50[ivvmm]:-}" "${DB_P50[qemu]:-}")x, p99 $(ratio "${DB_P99[ivvmm]:-}" "${DB_P99[qemu]:-}")x"
        echo
        echo "VMM userspace work per doorbell (ivvmm --stats; the same after 100 and $per rounds = none per round):"
        printf '  %-22s %s\n' "ping, 100 rounds:" "$(db_counters "$RESULTS/short-1.ping.stderr")"
        printf '  %-22s %s\n' "ping, $per rounds:" "$(db_counters "$RESULTS/ivvmm-1.ping.stderr")"
        printf '  %-22s %s\n' "pong, 100 rounds:" "$(db_counters "$RESULTS/short-1.pong.stderr")"
        printf '  %-22s %s\n' "pong, $per rounds:" "$(db_counters "$RESULTS/ivvmm-1.pong.stderr")"
        echo "floor exits to userspace: $(grep -h 'floor exits' "$RESULTS/floor-1.out" | sed 's/floor exits //' | tr '\n' ';')"
    } | tee "$RESULTS/summary.txt"
    db_plot
    [ -s "$RESULTS/doorbell.png" ] && say "plot: $RESULTS/doorbell.png"
    if ((${PUBLISH:-0})) && [ -s "$RESULTS/doorbell.png" ]; then
        mkdir -p "$ROOT/docs/bench"
        cp "$RESULTS/doorbell.png" "$ROOT/docs/bench/doorbell.png"
        say "copied the plot to docs/bench/doorbell.png"
    fi
}

# SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
# shellcheck shell=bash
#
# scripts/bench bandwidth: the test guest's `rep movsb` into and out of BAR2
# (test=ivshmem-bw, run at CPL3, native on PVM) against the host copying
# into the same shared-memory object (examples/shm_bw: rep movsb and libc
# memcpy), all timed in TSC cycles; QEMU's ivshmem-plain as a reference.
# Each size runs REPS times (default 3), interleaved; medians are reported.

BW_SHM_SIZE=64M
BW_SIZES=("1048576:2048" "16777216:128") # bytes per copy : timed copies

# bw_guest KIND SHM SIZE ITERS OUT: one guest run; its "bw dir=..." lines in OUT.
bw_guest() {
    local kind=$1 shm=$2 size=$3 iters=$4 out=$5 cmdline="test=ivshmem-bw size=$3 iters=$4"
    case "$kind" in
        ivvmm)
            timeout 120 "$IVVMM" --kernel "$TG/testguest.bzImage" --mem 256M \
                --shm "$shm" --size "$BW_SHM_SIZE" --serial "$out" --cmdline "$cmdline" 2>"$out.stderr" || true
            ;;
        qemu)
            timeout 120 "$QEMU" -M pc -accel kvm -cpu host,-arch-capabilities -m 256M \
                -nodefaults -no-user-config -display none -no-reboot \
                -kernel "$TG/testguest.pvh.elf" -append "$cmdline" \
                -device isa-debug-exit,iobase=0xf4,iosize=1 -serial "file:$out" \
                -object "memory-backend-file,id=shm,share=on,mem-path=/dev/shm/$shm,size=$BW_SHM_SIZE" \
                -device ivshmem-plain,memdev=shm 2>"$out.stderr" || true
            ;;
    esac
    # The verdict is the guest's PASS line (QEMU's isa-debug-exit exits 1 on PASS).
    grep -q '^PASS' "$out" || die "$kind ivshmem-bw size=$size failed: $(tail -n 2 "$out" | tr -d '\r')"
}

# bw_rate FILE KEY: MB/s (bytes per us) of the "bw ... KEY ..." line in FILE.
bw_rate() {
    awk -v k="$2" -v t="$BW_TSC" '$1 == "bw" && index($0, k) {
        for (i = 1; i <= NF; i++) { split($i, a, "="); v[a[1]] = a[2] }
        if (v["cycles"] > 0) printf "%.0f\n", v["bytes"] / v["cycles"] * t }' "$1" | tr -d '\r'
}

# median of the numbers on stdin
median() { sort -n | awk '{ v[n++] = $1 } END { if (n) print v[int(n / 2)]; else print "-" }'; }

bench_bandwidth() {
    local reps=${REPS:-3} shm spec size iters rep
    shm="ivvmm-bench-bw-$$"
    # ivvmm creates the object (0600) on its first run; it is ours to remove.
    [ -e "/dev/shm/$shm" ] && die "/dev/shm/$shm exists already"
    BW_SHM=$shm
    trap 'rm -f "/dev/shm/$BW_SHM"; bench_cleanup' EXIT
    say "bandwidth: sizes ${BW_SIZES[*]} (bytes:iters), $reps interleaved runs; results in $RESULTS"
    for spec in "${BW_SIZES[@]}"; do
        size=${spec%:*}
        iters=${spec#*:}
        for ((rep = 1; rep <= reps; rep++)); do
            bw_guest ivvmm "$shm" "$size" "$iters" "$RESULTS/ivvmm-$size-$rep.out"
            "$EXAMPLES/shm_bw" --shm "$shm" --size "$size" --iters "$iters" \
                >"$RESULTS/host-$size-$rep.out" || die "shm_bw failed"
            bw_guest qemu "$shm" "$size" "$iters" "$RESULTS/qemu-$size-$rep.out"
        done
    done

    BW_TSC=$(tsc_from "$RESULTS/host-${BW_SIZES[0]%:*}-1.out")
    {
        echo "Copy bandwidth into (to) and out of (from) the shared memory, MB/s, median of $reps runs; tsc_per_us=$BW_TSC"
        printf '%-34s' ""
        for spec in "${BW_SIZES[@]}"; do printf '%22s' "$((${spec%:*} >> 10)) KiB x ${spec#*:}"; done
        echo
        printf '%-34s' ""
        for spec in "${BW_SIZES[@]}"; do printf '%11s%11s' to from; done
        echo
        local row label method file who
        declare -A med
        for row in "host:movsb:host rep movsb (examples/shm_bw)" "host:memcpy:host memcpy" \
            "ivvmm::ivvmm guest rep movsb (CPL3)" "qemu::QEMU guest rep movsb (CPL3)"; do
            who=${row%%:*}
            label=${row#*:}
            method=${label%%:*}
            label=${label#*:}
            printf '%-34s' "$label"
            for spec in "${BW_SIZES[@]}"; do
                size=${spec%:*}
                for dir in to from; do
                    if [ "$who" = host ]; then
                        key="method=$method dir=${dir}_shm"
                    else
                        key="dir=${dir}_bar2"
                    fi
                    med[$who$method-$size-$dir]=$(for file in "$RESULTS/$who-$size-"*.out; do
                        bw_rate "$file" "$key"
                    done | median)
                    printf '%11s' "${med[$who$method-$size-$dir]}"
                done
            done
            echo
        done
        echo
        local r
        for spec in "${BW_SIZES[@]}"; do
            size=${spec%:*}
            for dir in to from; do
                r=$(ratio "${med[ivvmm-$size-$dir]}" "${med[hostmovsb-$size-$dir]}")
                echo "ivvmm guest / host rep movsb, $((size >> 10)) KiB $dir: ${r}x (goal >= 0.95: $(verdict "$r" 0.95 ge)); vs host memcpy $(ratio "${med[ivvmm-$size-$dir]}" "${med[hostmemcpy-$size-$dir]}")x; vs QEMU guest $(ratio "${med[ivvmm-$size-$dir]}" "${med[qemu-$size-$dir]}")x"
            done
        done
    } | tee "$RESULTS/summary.txt"
}

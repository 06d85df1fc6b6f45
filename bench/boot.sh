# SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
# shellcheck shell=bash
#
# scripts/bench boot: process start -> the test guest's "Hello from
# testguest" line, and -> process exit; peak RSS (wait4's ru_maxrss) and
# the part of it that is not guest memory. ivvmm (bzImage, the Linux boot
# path, and PVH) against QEMU -M microvm, RUNS runs each, interleaved.
# And the floor: process start -> the first serial byte of a guest whose
# first instructions write it (guest/testguest/first.S), booted by ivvmm
# (bzImage) and by examples/boot_floor.rs, a bare KVM program that creates
# the VM with the same memory and in-kernel irqchip and runs the same
# instructions; their ratio is what ivvmm costs before the guest's first
# instruction.

BOOT_LINE="Hello from testguest"
BOOT_MEM=256M
BOOT_MEM_BYTES=$((256 << 20))

# The text each kind's timed line holds: the first guest's one byte, or
# the test guest's line.
boot_pattern() { case "$1" in floor | ivvmm-first) echo F ;; *) echo "$BOOT_LINE" ;; esac; }

# The command line of each kind, by label.
boot_cmd() {
    local microvm_lean="microvm,x-option-roms=off,pit=off,pic=off,rtc=off,acpi=off,pcie=off,isa-serial=on"
    case "$1" in
        floor) BOOT_CMD=("$EXAMPLES/boot_floor" --mem "$BOOT_MEM") ;;
        ivvmm-first) BOOT_CMD=("$IVVMM" --kernel "$TG/first.bzImage" --mem "$BOOT_MEM") ;;
        ivvmm-bzimage) BOOT_CMD=("$IVVMM" --kernel "$TG/testguest.bzImage" --mem "$BOOT_MEM" --cmdline test=hello) ;;
        ivvmm-pvh) BOOT_CMD=("$IVVMM" --kernel "$TG/testguest.pvh.elf" --mem "$BOOT_MEM" --cmdline test=hello) ;;
        # The leanest fair microvm: no default devices, no option ROMs, no
        # PIT/PIC/RTC/ACPI/PCIe, one ISA serial port on stdio.
        qemu-lean) BOOT_CMD=("$QEMU" -M "$microvm_lean" -accel kvm -cpu host,-arch-capabilities
            -m "$BOOT_MEM" -nodefaults -no-user-config -display none -serial stdio -no-reboot
            -kernel "$TG/testguest.pvh.elf" -append test=hello
            -device isa-debug-exit,iobase=0xf4,iosize=1) ;;
        # The command the brief names, as a reference.
        qemu-brief) BOOT_CMD=("$QEMU" -M microvm -accel kvm -cpu host,-arch-capabilities
            -m "$BOOT_MEM" -nographic -no-reboot
            -kernel "$TG/testguest.pvh.elf" -append test=hello
            -device isa-debug-exit,iobase=0xf4,iosize=1) ;;
    esac
}

# The exit status each kind gives for PASS (QEMU's isa-debug-exit: (0<<1)|1).
boot_pass_status() { case "$1" in ivvmm-* | floor) echo 0 ;; *) echo 1 ;; esac; }

# boot_once LABEL RUN [--guest-mem BYTES]: one timed run, appended to boot.raw.
boot_once() {
    local label=$1 run=$2 line pattern
    shift 2
    boot_cmd "$label"
    pattern=$(boot_pattern "$label")
    line=$("$EXAMPLES/boot_timer" --pattern "$pattern" "$@" -- "${BOOT_CMD[@]}" 2>>"$RESULTS/$label.stderr") ||
        die "$label: no '$pattern' line (see $RESULTS/$label.stderr)"
    local status
    status=$(sed 's/.*status=\([0-9]*\).*/\1/' <<<"$line")
    [ "$status" = "$(boot_pass_status "$label")" ] || die "$label: exit status $status: the guest did not pass"
    echo "$label $run $line" >>"$RESULTS/boot.raw"
}

# boot_field LABEL KEY: the KEY= values of LABEL's timed runs, one per line.
boot_field() {
    awk -v l="$1" -v k="$2" '$1 == l && $2 != "rss" {
        for (i = 3; i <= NF; i++) if (index($i, k "=") == 1) print substr($i, length(k) + 2) }' \
        "$RESULTS/boot.raw"
}

bench_boot() {
    local runs=${RUNS:-20} labels=(floor ivvmm-first ivvmm-bzimage ivvmm-pvh qemu-lean qemu-brief) run label
    say "boot: $runs interleaved runs of each of ${labels[*]}; results in $RESULTS"
    for label in "${labels[@]}"; do
        boot_cmd "$label"
        printf '%s:' "$label" >>"$RESULTS/commands.txt"
        printf ' %q' "${BOOT_CMD[@]}" >>"$RESULTS/commands.txt"
        echo >>"$RESULTS/commands.txt"
    done
    for ((run = 1; run <= runs; run++)); do
        for label in "${labels[@]}"; do boot_once "$label" "$run"; done
    done
    # Three more runs each, stopped at the line to sum the guest-memory RSS
    # (the largest of the three is used).
    for ((run = 1; run <= 3; run++)); do
        for label in "${labels[@]}"; do boot_once "$label" rss --guest-mem "$BOOT_MEM_BYTES"; done
    done

    declare -A first_med exit_med beyond
    {
        echo "Boot to the first line (\"$BOOT_LINE\"; floor and ivvmm-first: the first serial byte, \"F\") and to exit, $runs runs each, interleaved; ms"
        printf '%-14s %26s %26s %9s %9s %9s\n' "" "first line min/med/max" "exit min/med/max" \
            "RSS MiB" "guest MiB" "beyond"
        for label in "${labels[@]}"; do
            local f e rss grss
            read -r f fmed < <(boot_field "$label" first_line_us | sort -n | awk '{ v[n++] = $1 }
                END { printf "%.1f/%.1f/%.1f %.1f\n", v[0] / 1000, v[int(n / 2)] / 1000, v[n - 1] / 1000, v[int(n / 2)] / 1000 }')
            read -r e emed < <(boot_field "$label" exit_us | sort -n | awk '{ v[n++] = $1 }
                END { printf "%.1f/%.1f/%.1f %.1f\n", v[0] / 1000, v[int(n / 2)] / 1000, v[n - 1] / 1000, v[int(n / 2)] / 1000 }')
            rss=$(boot_field "$label" maxrss_kib | sort -n | awk '{ v[n++] = $1 } END { printf "%.2f", v[int(n / 2)] / 1024 }')
            grss=$(awk -v l="$label" '$1 == l && $2 == "rss" { for (i = 3; i <= NF; i++)
                if ($i ~ /^guest_rss_kib=/) { split($i, a, "="); if (a[2] > m) m = a[2]; seen = 1 } }
                END { if (seen) printf "%.2f", m / 1024 }' "$RESULTS/boot.raw")
            first_med[$label]=$fmed
            exit_med[$label]=$emed
            beyond[$label]=$(awk -v a="$rss" -v b="${grss:-0}" 'BEGIN { printf "%.2f", a - b }')
            printf '%-14s %26s %26s %9s %9s %9s\n' "$label" "$f" "$e" "$rss" "${grss:--}" "${beyond[$label]}"
        done
        echo
        echo "RSS: median peak RSS (ru_maxrss); guest: resident guest memory at the line (smaps, largest of 3 separate runs); beyond = RSS - guest"
        local r
        r=$(ratio "${first_med[ivvmm-first]}" "${first_med[floor]}")
        echo "ivvmm-first vs floor: first serial byte ${r}x (goal: VMM overhead to the first guest instruction <= 1.5x the floor: $(verdict "$r" 1.5 le)), exit $(ratio "${exit_med[ivvmm-first]}" "${exit_med[floor]}")x"
        echo "ivvmm-bzimage vs floor: the test guest's first line $(ratio "${first_med[ivvmm-bzimage]}" "${first_med[floor]}")x the floor's first byte (the test guest's own start-up included)"
        for label in ivvmm-bzimage ivvmm-pvh; do
            r=$(ratio "${first_med[$label]}" "${first_med[qemu-lean]}")
            echo "$label vs qemu-lean: first line ${r}x (goal <= 0.2x: $(verdict "$r" 0.2 le)), exit $(ratio "${exit_med[$label]}" "${exit_med[qemu-lean]}")x, RSS beyond guest memory ${beyond[$label]} MiB (goal <= 3 MiB: $(verdict "${beyond[$label]}" 3 le))"
        done
        echo "qemu-lean vs qemu-brief: first line $(ratio "${first_med[qemu-lean]}" "${first_med[qemu-brief]}")x"
    } | tee "$RESULTS/summary.txt"
}

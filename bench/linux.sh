# SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
# shellcheck shell=bash
#
# scripts/bench linux: the Linux guest's tool (`ivshm`, through the guest
# driver): doorbell ping-pong between two VMs on `ivvmm server` (interrupt:
# the driver's wait ioctl and epoll; and polling on shared memory), and copy
# bandwidth into and out of BAR2, in each environment available:
#   - "ivvmm": two ivvmm VMs, where /dev/kvm is hardware-backed;
#   - "QEMU TCG": QEMU's ivshmem under software emulation, always — labelled
#     as such: it says what the guest side costs emulated, not what ivvmm
#     costs;
#   - "ivvmm on nested SVM": on PVM, where no ordinary Linux boots, ivvmm
#     inside an L1 Linux with KVM_AMD under QEMU TCG (guest/nested/run.sh),
#     labelled as such: emulated twice over, so only the shape counts.
# Needs the kernel and initramfs from scripts/setup (IVVMM_KERNEL and
# IVVMM_INITRAMFS override them).

LX_ROUNDS_DEFAULT=2000

# Finds the images; on failure says why in LX_MISSING.
lx_images() {
    LX_MISSING=""
    local script
    for script in guest/kernel/build.sh guest/initramfs/build.sh; do
        if [ ! -x "$ROOT/$script" ] && [ -z "${IVVMM_KERNEL:-}" ]; then
            LX_MISSING="$script is not in this tree (the Linux guest, branch linux, is not merged)"
            return 1
        fi
    done
    LX_KERNEL=${IVVMM_KERNEL:-$("$ROOT/guest/kernel/build.sh" --print-path 2>/dev/null)} || true
    LX_INITRAMFS=${IVVMM_INITRAMFS:-$("$ROOT/guest/initramfs/build.sh" --print-path 2>/dev/null)} || true
    if [ ! -f "${LX_KERNEL:-}" ] || [ ! -f "${LX_INITRAMFS:-}" ]; then
        LX_MISSING="the guest kernel/initramfs are not built: run scripts/setup"
        return 1
    fi
}

# lx_vm ENV NAME RUN DEVICE...: one Linux VM in the foreground (exec: call
# it in the background or in a subshell); serial output in $RESULTS/NAME.out.
# DEVICE is `doorbell SOCKET` or `plain FILE SIZE`.
lx_vm() {
    local env=$1 name=$2 run=$3 kind=$4
    shift 4
    local dev=()
    if [ "$env" = qemu ]; then
        # shellcheck disable=SC2054 # QEMU's option values have commas
        case "$kind" in
        doorbell) dev=(-chardev "socket,id=ivs,path=$1" -device ivshmem-doorbell,chardev=ivs,vectors=1) ;;
        plain) dev=(-object "memory-backend-file,id=m,share=on,mem-path=$1,size=$2" -device ivshmem-plain,memdev=m) ;;
        esac
        exec timeout 600 "$QEMU" -accel tcg -M pc -cpu max -m 256M -nographic -no-reboot \
            -kernel "$LX_KERNEL" -initrd "$LX_INITRAMFS" \
            -append "console=ttyS0 panic=-1 quiet tsc_early_khz=$LX_TSC_KHZ tsc=reliable ivvmm.run=\"$run\"" \
            "${dev[@]}" </dev/null >"$RESULTS/$name.out" 2>"$RESULTS/$name.stderr"
    fi
    case "$kind" in
    doorbell) dev=(--server "$1" --vectors 1) ;;
    plain) dev=(--shm-path "$1" --size "$2") ;;
    esac
    exec timeout 600 "$IVVMM" --kernel "$LX_KERNEL" --initrd "$LX_INITRAMFS" --mem 256M \
        --cmdline "quiet ivvmm.run=\"$run\"" --serial stdio \
        "${dev[@]}" </dev/null >"$RESULTS/$name.out" 2>"$RESULTS/$name.stderr"
}

lx_ok() {
    grep -q 'IVVMM-RESULT: rc=0' "$RESULTS/$1.out" ||
        die "linux: $1 failed: $(grep -a 'IVVMM-RESULT\|rror' "$RESULTS/$1.out" | tail -n 3 | tr -d '\r')"
}

# lx_env ENV LABEL: ping-pong in three modes and bandwidth in one environment.
lx_env() {
    local env=$1 label=$2 rounds=${ROUNDS:-$LX_ROUNDS_DEFAULT} pong_pid sock="$WORK/linux-$1.sock"
    rm -f "$sock"
    bg_start LX_SERVER "$IVVMM_SERVER" server -S "$sock" -l 4M -n 1 2>"$RESULTS/$env-server.log"
    wait_for_socket "$sock" 5 || die "ivvmm server did not start (see $RESULTS/$env-server.log)"
    bg_start pong_pid lx_vm "$env" "$env-pong" "ivshm pong && ivshm pong --epoll && ivshm pong --poll" doorbell "$sock"
    (lx_vm "$env" "$env-ping" "ivshm ping --count $rounds && ivshm ping --epoll --count $rounds && ivshm ping --poll --count $rounds" doorbell "$sock") || true
    wait "$pong_pid" 2>/dev/null || true
    bg_stop "$LX_SERVER"
    lx_ok "$env-ping"
    lx_ok "$env-pong"

    # Bandwidth: one VM, ivshmem-plain on a file in /dev/shm that we remove.
    LX_SHM="/dev/shm/ivvmm-bench-linux-$$"
    trap 'rm -f "$LX_SHM"; bench_cleanup' EXIT
    # Then the same BAR through an uncached mapping (the driver's cache=uc),
    # which is what write-back spares the guest on hardware KVM.
    (lx_vm "$env" "$env-bw" "ivshm bw --size 16M --ms 1000 && rmmod ivshmem && \
insmod /lib/modules/ivshmem.ko cache=uc && ivshm bw --size 16M --ms 1000" plain "$LX_SHM" 16M) || true
    rm -f "$LX_SHM"
    lx_ok "$env-bw"

    lx_summary "$env" "$label"
}

# lx_summary ENV LABEL: the ping and bw lines of one environment.
lx_summary() {
    local env=$1 label=$2
    {
        printf '%-34s %9s %9s %9s %9s\n' "$label ping-pong" p50 p90 p99 max
        grep -a '^ping: ok' "$RESULTS/$env-ping.out" | tr -d '\r' | awk '{
            for (i = 1; i <= NF; i++) { split($i, a, "="); v[a[1]] = a[2] }
            printf "%-34s %9.1f %9.1f %9.1f %9.1f\n", "mode=" v["mode"], v["p50"] / 1000, v["p90"] / 1000, v["p99"] / 1000, v["max"] / 1000 }'
        grep -a '^bw: ok' "$RESULTS/$env-bw.out" | tr -d '\r' | awk -v l="$label" '{
            for (i = 1; i <= NF; i++) { split($i, a, "="); v[a[1]] = a[2] }
            size = v["bytes"] >= 1048576 ? v["bytes"] / 1048576 " MiB" : v["bytes"] / 1024 " KiB"
            printf "%s bw (%s, cache=%s): write %s MB/s, read %s MB/s\n", l, size, v["cache"], v["write_mbps"], v["read_mbps"] }'
    } | tee -a "$RESULTS/summary.txt"
}

# lx_nested: Linux in ivvmm on nested SVM (guest/nested/run.sh: an L1 Linux
# with KVM_AMD under QEMU TCG runs ivvmm), the only way Linux boots in ivvmm
# on PVM. Both L2 VMs share L1's one emulated CPU, so polling is bounded by
# L1's scheduler tick there.
lx_nested() {
    local rounds=$1
    if ! "$ROOT/guest/kernel/build.sh" --nested --print-path >/dev/null 2>&1; then
        echo "ivvmm on nested SVM: SKIPPED (no L1 kernel: run scripts/setup)" | tee -a "$RESULTS/summary.txt"
        return 0
    fi
    "$ROOT/guest/nested/run.sh" --rounds "$rounds" phases,pat >"$RESULTS/nested.out" 2>"$RESULTS/nested.log" ||
        die "linux: guest/nested/run.sh failed (see $RESULTS/nested.log)"
    sed -n 's/^L2 ping| //p' "$RESULTS/nested.out" >"$RESULTS/nested-ping.out"
    # pat.sh: bw through the write-back mapping, then reloaded with cache=uc.
    sed -n 's/^L2 pat| //p' "$RESULTS/nested.out" >"$RESULTS/nested-bw.out"
    lx_ok nested-ping
    lx_ok nested-bw
    lx_summary nested "ivvmm on nested SVM (QEMU TCG L1)"
}

bench_linux() {
    if ! lx_images; then
        echo "linux: SKIPPED: $LX_MISSING" | tee "$RESULTS/summary.txt"
        return 0
    fi
    LX_TSC_KHZ=$("$EXAMPLES/shm_bw" --tsc | awk -F= '{ printf "%d", $2 * 1000 }')
    local rounds=${ROUNDS:-$LX_ROUNDS_DEFAULT}
    say "linux: kernel $LX_KERNEL, $rounds rounds per mode; results in $RESULTS"
    echo "Linux guest tool (driver + ivshm) on ivvmm server, $rounds rounds per mode; us" | tee "$RESULTS/summary.txt"
    if [ -e /sys/module/kvm_pvm ]; then
        echo "ivvmm: SKIPPED (PVM: no hardware virtualization; no ordinary Linux boots here)" | tee -a "$RESULTS/summary.txt"
        lx_nested "$rounds"
    else
        lx_env ivvmm "ivvmm"
    fi
    lx_env qemu "QEMU TCG"
    echo "(mode=irq: driver wait ioctl; epoll: epoll + read; poll: spinning on shared memory)" | tee -a "$RESULTS/summary.txt"
}

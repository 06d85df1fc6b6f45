# SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
# shellcheck shell=bash
#
# scripts/bench linux: the Linux guest's tool (`ivshm`, through the guest
# driver) under QEMU TCG with QEMU's ivshmem: doorbell ping-pong between two
# VMs on `ivvmm server` (interrupt: the driver's wait ioctl and epoll; and
# polling on shared memory), and copy bandwidth into and out of BAR2.
# Labelled "QEMU TCG": no ordinary Linux kernel boots on this host's PVM
# KVM, so these numbers say what the guest side costs under emulation, not
# what ivvmm costs. Needs the kernel and initramfs from scripts/setup
# (IVVMM_KERNEL and IVVMM_INITRAMFS override them).

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

# lx_vm NAME RUN DEVICE_ARGS...: one TCG VM in the foreground (exec: call
# it in the background or in a subshell); serial output in $RESULTS/NAME.out.
lx_vm() {
    local name=$1 run=$2
    shift 2
    exec timeout 600 "$QEMU" -accel tcg -M pc -cpu max -m 256M -nographic -no-reboot \
        -kernel "$LX_KERNEL" -initrd "$LX_INITRAMFS" \
        -append "console=ttyS0 panic=-1 quiet tsc_early_khz=$LX_TSC_KHZ tsc=reliable ivvmm.run=\"$run\"" \
        "$@" </dev/null >"$RESULTS/$name.out" 2>"$RESULTS/$name.stderr"
}

lx_ok() {
    grep -q 'IVVMM-RESULT: rc=0' "$RESULTS/$1.out" ||
        die "linux: $1 failed: $(grep -a 'IVVMM-RESULT\|rror' "$RESULTS/$1.out" | tail -n 3 | tr -d '\r')"
}

bench_linux() {
    if ! lx_images; then
        echo "linux (QEMU TCG): SKIPPED: $LX_MISSING" | tee "$RESULTS/summary.txt"
        return 0
    fi
    local rounds=${ROUNDS:-$LX_ROUNDS_DEFAULT} pong_pid sock="$WORK/linux.sock"
    LX_TSC_KHZ=$("$EXAMPLES/shm_bw" --tsc | awk -F= '{ printf "%d", $2 * 1000 }')
    say "linux: QEMU TCG, kernel $LX_KERNEL, $rounds rounds per mode; results in $RESULTS"

    rm -f "$sock"
    bg_start LX_SERVER "$IVVMM_SERVER" server -S "$sock" -l 4M -n 1 2>"$RESULTS/server.log"
    wait_for_socket "$sock" 5 || die "ivvmm server did not start (see $RESULTS/server.log)"
    local dev=(-chardev "socket,id=ivs,path=$sock" -device ivshmem-doorbell,chardev=ivs,vectors=1)
    bg_start pong_pid lx_vm pong "ivshm pong && ivshm pong --epoll && ivshm pong --poll" "${dev[@]}"
    (lx_vm ping "ivshm ping --count $rounds && ivshm ping --epoll --count $rounds && ivshm ping --poll --count $rounds" "${dev[@]}") || true
    wait "$pong_pid" 2>/dev/null || true
    bg_stop "$LX_SERVER"
    lx_ok ping
    lx_ok pong

    # Bandwidth: one VM, ivshmem-plain on a file in /dev/shm that we remove.
    LX_SHM="/dev/shm/ivvmm-bench-linux-$$"
    trap 'rm -f "$LX_SHM"; bench_cleanup' EXIT
    (lx_vm bw "ivshm bw --size 16M --ms 1000" \
        -object "memory-backend-file,id=m,share=on,mem-path=$LX_SHM,size=16M" \
        -device ivshmem-plain,memdev=m) || true
    rm -f "$LX_SHM"
    lx_ok bw

    {
        echo "Linux guest tool under QEMU TCG (QEMU's ivshmem, ivvmm server), $rounds rounds per mode; us"
        printf '%-34s %9s %9s %9s %9s\n' "QEMU TCG ping-pong" p50 p90 p99 max
        grep -a '^ping: ok' "$RESULTS/ping.out" | tr -d '\r' | awk '{
            for (i = 1; i <= NF; i++) { split($i, a, "="); v[a[1]] = a[2] }
            printf "%-34s %9.1f %9.1f %9.1f %9.1f\n", "mode=" v["mode"], v["p50"] / 1000, v["p90"] / 1000, v["p99"] / 1000, v["max"] / 1000 }'
        grep -a '^bw: ok' "$RESULTS/bw.out" | tr -d '\r' | awk '{
            for (i = 1; i <= NF; i++) { split($i, a, "="); v[a[1]] = a[2] }
            printf "QEMU TCG bw (%d MiB, cache=%s): write %s MB/s, read %s MB/s\n", v["bytes"] / 1048576, v["cache"], v["write_mbps"], v["read_mbps"] }'
        echo "(mode=irq: driver wait ioctl; epoll: epoll + read; poll: spinning on shared memory)"
    } | tee "$RESULTS/summary.txt"
}

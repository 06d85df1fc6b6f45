#!/bin/sh
# SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
# Unload paths while a process holds a mapping of BAR2:
#  1. rmmod is refused (the mapping pins the module) and the mapping works;
#  2. unbinding the device revokes the mapping: the holder gets SIGBUS;
#  3. then rmmod succeeds, and the kernel logged no oops/warning.
pci=$(basename "$(readlink /sys/class/ivshmem/ivshmem0/device)")
ivshm hold --secs 20 &
holder=$!
sleep 1
rmmod ivshmem
echo "STEP rmmod-while-mapped rc=$?"
kill -0 "$holder" 2>/dev/null && alive=yes || alive=no
echo "STEP holder-after-rmmod alive=$alive"
echo "$pci" >/sys/bus/pci/drivers/ivshmem/unbind
# shellcheck disable=SC2320 # the status of that echo is the unbind's
echo "STEP unbind rc=$?"
wait "$holder"
echo "STEP holder-exit rc=$?"
rmmod ivshmem
echo "STEP rmmod-after-unbind rc=$?"
lsmod | grep -q '^ivshmem ' && loaded=yes || loaded=no
echo "STEP loaded=$loaded"
insmod /lib/modules/ivshmem.ko
echo "STEP reinsmod rc=$? node=$([ -c /dev/ivshmem0 ] && echo yes || echo no)"
ivshm info
bad=$(dmesg | grep -cE 'BUG|Oops|WARNING|Call Trace')
echo "STEP dmesg-bad=$bad"
dmesg | grep -iE 'ivshmem' | sed 's/^/DMESG /'

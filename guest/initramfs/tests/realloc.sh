#!/bin/sh
# SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
# realloc.sh [HOSTDEV]: Linux places the ivshmem devices' BARs itself, from the host
# bridge's windows (the DSDT's _CRS), as after a hot-plug: each device's
# driver is unbound, its memory decode turned off, its BARs cleared, the
# device removed; then one rescan, and the PCI core assigns every BAR
# afresh, in its own order (the largest first). Prints the windows, the
# BARs before and after, and what the kernel assigned; then checks each
# device where it is now: `ivshm check --host` on HOSTDEV (default
# 0000:00:01.0, the first device in ivvmm; the host wrote its pattern),
# `ivshm check` on the others.
ivshmem_devices() {
	for d in /sys/bus/pci/devices/*; do
		[ "$(cat "$d/vendor"):$(cat "$d/device")" = 0x1af4:0x1110 ] && echo "${d##*/}"
	done
}
bars() {
	for dev in $devs; do
		i=0
		while read -r start end flags; do
			case "$start" in
			0x0000000000000000) ;;
			*) echo "REALLOC $1 $dev bar$i start=$start end=$end" ;;
			esac
			i=$((i + 1))
		done <"/sys/bus/pci/devices/$dev/resource"
	done
}
hostdev=${1:-0000:00:01.0}
devs=$(ivshmem_devices)
[ -n "$devs" ] || { echo "REALLOC no ivshmem device"; exit 1; }
grep 'PCI Bus 0000:00' /proc/iomem | sed 's/^ */REALLOC window /'
bars before
for dev in $devs; do
	d=/sys/bus/pci/devices/$dev
	[ -e "$d/driver" ] && echo "$dev" >"$d/driver/unbind"
	# Config space through sysfs: the command register (memory decode
	# off), then BAR0..BAR5 cleared, each an aligned 4-byte write.
	printf '\000\000' | dd of="$d/config" bs=2 seek=2 count=1 conv=notrunc 2>/dev/null
	for n in 4 5 6 7 8 9; do
		printf '\000\000\000\000' | dd of="$d/config" bs=4 seek=$n count=1 conv=notrunc 2>/dev/null
	done
	echo 1 >"$d/remove"
done
echo 1 >/sys/bus/pci/rescan
rc=0
for dev in $devs; do
	i=0
	while [ ! -e "/sys/bus/pci/devices/$dev/driver" ] && [ $i -lt 50 ]; do sleep 0.1; i=$((i + 1)); done
	dmesg | grep "$dev" | grep ': assigned' | sed -e 's/^\[[^]]*\] //' -e 's/^/REALLOC kernel /'
done
bars after
for n in /sys/class/ivshmem/ivshmem*; do
	dev=$(basename "$(readlink "$n/device")")
	if [ "$dev" = "$hostdev" ]; then
		ivshm --dev "/dev/${n##*/}" check --host || rc=1
	else
		ivshm --dev "/dev/${n##*/}" check || rc=1
	fi
done
exit $rc

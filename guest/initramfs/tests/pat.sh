#!/bin/sh
# SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
# Show BAR2's physical range, the memory type the driver reports and the
# PAT memtype list, first with the default (write-back) driver, then
# reloaded with cache=uc as a control.
touch_all() {
	# Fault the user mappings in: pfns get the reserved memory type.
	for d in /dev/ivshmem*; do
		ivshm --dev "$d" bw --size 64K --ms 20 || return 1
	done
}
dump() {
	for d in /sys/class/ivshmem/ivshmem*; do
		# line 3 of the PCI resource file is BAR2: start end flags
		# shellcheck disable=SC2046 # split into its three words on purpose
		set -- $(sed -n 3p "$(readlink -f "$d/device")/resource")
		echo "BAR2 $MODE ${d##*/} $1 $2 cache=$(cat "$d/cache")"
	done
	echo "PAT-BEGIN $MODE"
	cat /sys/kernel/debug/x86/pat_memtype_list
	echo "PAT-END $MODE"
}
touch_all || exit 1
MODE=wb dump
rmmod ivshmem || exit 1
insmod /lib/modules/ivshmem.ko cache=uc || exit 1
touch_all || exit 1
MODE=uc dump

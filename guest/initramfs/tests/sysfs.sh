#!/bin/sh
# SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
# Print what the driver exposes for every bound device, one line each, then
# exercise each device (info, self check, a short bandwidth run).
rc=0
for d in /sys/class/ivshmem/ivshmem*; do
	[ -e "$d" ] || { echo "SYSFS none"; exit 1; }
	n=${d##*/}
	if [ -c "/dev/$n" ]; then node=yes; else node=no; fi
	echo "SYSFS $n size=$(cat "$d/size") position=$(cat "$d/position")" \
		"vectors=$(cat "$d/vectors") cache=$(cat "$d/cache")" \
		"events=$(tr ' ' , <"$d/events") node=$node" \
		"pci=$(basename "$(readlink "$d/device")")" \
		"mode=$(stat -c %a "/dev/$n")"
	ivshm --dev "/dev/$n" info || rc=1
	ivshm --dev "/dev/$n" check || rc=1
	ivshm --dev "/dev/$n" bw --ms 20 || rc=1
done
exit $rc

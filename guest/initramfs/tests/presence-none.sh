#!/bin/sh
# SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
# Peer presence where the device has no IVPR capability (QEMU's ivshmem,
# plain devices): every presence attribute reads `unsupported`, `ivshm
# peers` says so and succeeds, `--watch` refuses, and the device works as
# before (info, and a doorbell to ourselves on a doorbell device).
rc=0
for d in /sys/class/ivshmem/ivshmem*; do
	n=${d##*/}
	line="PRESENCE $n"
	for a in peers link generation own_id rejoins notify; do
		line="$line $a=$(tr '\n' ' ' <"$d/$a" | sed 's/ $//; s/ /_/g')"
	done
	echo "$line"
	ivshm --dev "/dev/$n" peers
	echo "STEP peers-$n rc=$?"
	ivshm --dev "/dev/$n" peers --watch --timeout 5
	echo "STEP watch-$n rc=$?"
	ivshm --dev "/dev/$n" info || rc=1
done
echo "STEP dmesg-presence n=$(dmesg | grep -c 'peer presence')"
exit $rc

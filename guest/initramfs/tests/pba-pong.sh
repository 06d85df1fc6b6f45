#!/bin/sh
# SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
# One pong round without the driver (boot with ivvmm.driver=0), for the
# interop test: drive an ivshmem-doorbell device from the shell through
# its sysfs config file and resource files (`ivshm mmio` is busybox devmem
# for resource files: our kernel has no /dev/mem). MSI-X is enabled with
# the function mask set, so ping's doorbell sets PBA bit 0 instead of
# raising an interrupt. Speaks docs/pingpong.md on vector 0:
#   publish PONG, pair with a PING, wait for the PBA bit (ping rang us),
#   ring ping's vector 0 back, wait for DONE.
# Prints `PBA ...` lines of key=value words; exit 0 once ping wrote DONE.
#
#   pba-pong.sh [TIMEOUT_S]      (default 40: for the whole exchange)
limit=${1:-40}
deadline=$(($(date +%s) + limit))

fail() {
	echo "PBA FAIL: $*"
	exit 1
}
in_time() { [ "$(date +%s)" -lt "$deadline" ] || fail "$1 (after ${limit}s)"; }
hex() { printf '0x%x' "$1"; }

dev=
for d in /sys/bus/pci/devices/*; do
	if [ "$(cat "$d/vendor")" = 0x1af4 ] && [ "$(cat "$d/device")" = 0x1110 ]; then
		dev=$d
		break
	fi
done
[ -n "$dev" ] || fail "no ivshmem device (1af4:1110) on the PCI bus"
[ -e "$dev/driver" ] && fail "a driver is bound to ${dev##*/}: boot with ivvmm.driver=0"

# Config space: little-endian reads of 1, 2 or 4 bytes, single-byte writes.
cfg() { od -An -tu"$2" -j"$1" -N"$2" "$dev/config" | tr -d ' '; }
cfg_write8() {
	# shellcheck disable=SC2059 # the format is the octal escape we build
	printf "$(printf '\\%03o' "$2")" |
		dd of="$dev/config" bs=1 seek="$1" count=1 conv=notrunc 2>/dev/null
}
reg() { ivshm mmio "$dev/resource0" "$@"; }
shm() { ivshm mmio "$dev/resource2" "$@"; }

# Memory decode on: PCI_COMMAND bit 1.
cmd=$(cfg 4 2)
cfg_write8 4 $(((cmd | 2) & 0xff))
echo "PBA dev=${dev##*/} cmd_before=$(hex "$cmd") cmd=$(hex "$(cfg 4 2)")"

# The MSI-X capability (id 0x11), from the list at 0x34.
cap=$(cfg 52 1)
hops=0
while [ "$cap" -ne 0 ] && [ "$(cfg "$cap" 1)" -ne 17 ]; do
	cap=$(cfg $((cap + 1)) 1)
	hops=$((hops + 1))
	[ "$hops" -lt 48 ] || fail "the capability list loops"
done
[ "$cap" -ne 0 ] || fail "no MSI-X capability: is this an ivshmem-doorbell device?"

# Message control: bit 15 MSI-X enable, bit 14 function mask. Enabled
# before anyone can ring us: with MSI-X off a doorbell leaves no trace.
ctrl=$(cfg $((cap + 2)) 2)
cfg_write8 $((cap + 3)) $(((ctrl >> 8) | 0xc0))
ctrl=$(cfg $((cap + 2)) 2)
[ $((ctrl & 0xc000)) -eq $((0xc000)) ] ||
	fail "MSI-X control reads $(hex "$ctrl") after setting enable and function mask"
pba=$(cfg $((cap + 8)) 4)
pba_file=$dev/resource$((pba & 7))
pba_off=$((pba & ~7))
pending() { echo $(($(ivshm mmio "$pba_file" "$pba_off") & 1)); }
echo "PBA msix_cap=$(hex "$cap") ctrl=$(hex "$ctrl") pba=$((pba & 7)):$(hex "$pba_off")"

pos=$(($(reg 8)))
echo "PBA position=$pos"

# docs/pingpong.md, pong side. Magic words are "PONG", "PING", "DONE"
# read as little-endian u32s.
MAGIC_PONG=$((0x474e4f50))
MAGIC_PING=$((0x474e4950))
MAGIC_DONE=$((0x454e4f44))
shm 0x000 32 0
shm 0x0c0 32 0
shm 0x100 64 0
shm 0x140 64 0
shm 0x004 32 "$pos"
# A fresh odd nonce (15 random hex digits, then 1), read back so that it
# compares as a string with what ping echoes.
shm 0x008 64 "0x$(od -An -N8 -tx8 /dev/urandom | tr -d ' ' | cut -c1-15)1"
nonce=$(shm 0x008 64)
shm 0x010 64 0
shm 0x000 32 "$MAGIC_PONG"
echo "PBA pong published id=$pos"

until [ $(($(shm 0x040))) -eq "$MAGIC_PING" ] && [ "$(shm 0x048 64)" = "$nonce" ]; do
	in_time "no PING echoed our nonce"
	sleep 0.05
done
peer=$(($(shm 0x044)))
before=$(pending)
shm 0x010 64 "$(shm 0x050 64)"
echo "PBA paired peer=$peer pending_before=$before"

polls=0
while [ "$(pending)" -eq 0 ]; do
	in_time "PBA bit 0 never set: ping did not ring us"
	polls=$((polls + 1))
	sleep 0.02
done
echo "PBA pending=1 polls=$polls"

reg 12 32 $((peer << 16))
echo "PBA rang peer=$peer vector=0"

until [ $(($(shm 0x0c0))) -eq "$MAGIC_DONE" ]; do
	in_time "ping never wrote DONE"
	sleep 0.05
done
shm 0x000 32 0
echo "PBA done position=$pos peer=$peer"
